// The dashboard's entry module: reads the page's parameters (`?owner=`,
// `?session=`, `?poll=` or `#poll=`), starts the four sections and the
// sign-in, and keeps the connection indicator and the relative times
// current.

import { Hub, watchConnections } from './api.js';
import { setText, tickTimes } from './dom.js';
import { Feed } from './feed.js';
import { Polls } from './polls.js';
import { Gallery } from './gallery.js';
import { Account } from './account.js';
import { Pipeline } from './pipeline.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The poll pinned by the address: `#poll=<id>` first, else `?poll=<id>`. */
function pinnedPoll() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('poll');
  const id = fromHash ?? new URLSearchParams(location.search).get('poll');
  return id && UUID.test(id) ? id.toLowerCase() : null;
}

const params = new URLSearchParams(location.search);
const hub = new Hub();

const conn = document.getElementById('conn');
watchConnections((state, count) => {
  conn.dataset.state = state;
  setText(conn, state === 'live' ? `live · ${count} ${count === 1 ? 'stream' : 'streams'}` : state);
});

// Subscribers first: the shared stream is opened with their event names.
const feed = new Feed(document.getElementById('feed'), hub);
const account = new Account(document.querySelector('header.top'));
const gallery = new Gallery(document.getElementById('gallery'), hub, account);
const polls = new Polls(document.getElementById('polls'));
const pipeline = new Pipeline(document.getElementById('pipeline'));

hub.set('kind', 'all');
feed.start();
pipeline.start();
polls.pin(pinnedPoll());
polls.setOwner(params.get('owner') || 'dev');
const session = params.get('session');
if (session) gallery.open({ key: session, exp: params.get('exp'), sig: params.get('sig') });
account.start();

window.addEventListener('hashchange', () => polls.pin(pinnedPoll()));
setInterval(tickTimes, 10000);
document.documentElement.dataset.ready = 'true';
