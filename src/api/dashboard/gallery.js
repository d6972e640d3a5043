// The session gallery: a session's three card slots, each with the uploaded
// image beside its stylized output and the job's status, moved live by the
// session's `cards` events on the shared stream.
//
// Sessions are their owners': the gallery opens one through its share link
// (`?session=&exp=&sig=`, from `POST /v1/sessions` or
// `POST /v1/sessions/{key}/share`), and shows images through the signed
// links each card carries. A signed-in user also sees a list of their own
// sessions (`GET /v1/sessions`), each opened through the share link the
// list carries.

import { getJson, describe } from './api.js';
import { h, replace, setText, time, fmt, isTextId } from './dom.js';

/** Sessions per page of the signed-in user's list. */
const MINE_PAGE = 12;

const SLOTS = [1, 2, 3];

const STATUS_TEXT = {
  received: 'waiting for a worker',
  started: 'stylizing…',
  completed: 'done',
  failed: 'failed',
};

// The server's merge order: a card's status only moves forward.
const RANK = { received: 1, started: 2, failed: 3, completed: 4 };

/**
 * A session and its grant from what was typed or linked: a share link (any
 * URL with `session`, `exp` and `sig`), or a bare key (then only its owner
 * could read it, and the page says so).
 */
export function parseShare(text) {
  const t = text.trim();
  if (t.includes('?') || t.includes('://')) {
    try {
      const q = new URL(t, location.href).searchParams;
      return { key: q.get('session') ?? '', exp: q.get('exp'), sig: q.get('sig') };
    } catch {
      return { key: t, exp: null, sig: null };
    }
  }
  return { key: t, exp: null, sig: null };
}

/** Sets an image's source only when it changes, so a re-render never refetches. */
function source(img, url) {
  if (img.getAttribute('src') !== url) img.setAttribute('src', url);
}

/** One slot: built once, filled from each new card state. */
class Slot {
  constructor(n) {
    this.el = h('article', { class: 'card', 'data-slot': n, 'data-status': 'empty' });
    this.status = h('span', { class: 'status' }, 'empty');
    this.style = h('span', { class: 'chip' });
    this.input = h('img', { class: 'input', alt: 'uploaded image', decoding: 'async' });
    this.output = h('img', { class: 'output', alt: 'stylized output', decoding: 'async' });
    this.waiting = h('div', { class: 'placeholder' });
    this.noInput = h('div', { class: 'placeholder' }, '–');
    this.info = h('div', { class: 'card-info' });
    this.error = h('p', { class: 'card-error' });
    this.el.append(
      h('header', {}, h('strong', {}, `Slot ${n}`), this.style, this.status),
      h(
        'div',
        { class: 'pair' },
        h('figure', {}, this.input, this.noInput, h('figcaption', {}, 'input')),
        h('figure', {}, this.output, this.waiting, h('figcaption', {}, 'output')),
      ),
      this.error,
      this.info,
    );
    this.show(null);
  }

  /**
   * Shows `card` unless what is shown is newer: a read answered before a
   * stream event can arrive after it. A newer upload (UUID v7 ids sort by
   * time) replaces an older one; within one upload, status only advances.
   */
  merge(card) {
    const cur = this.card;
    if (cur && !card) return;
    if (cur && card) {
      if ((card.upload_id ?? '') < (cur.upload_id ?? '')) return;
      if (card.upload_id === cur.upload_id && (RANK[card.status] ?? 0) < (RANK[cur.status] ?? 0)) return;
    }
    this.show(card);
  }

  show(card) {
    this.card = card;
    const status = card?.status ?? (card ? 'received' : 'empty');
    this.el.dataset.status = status;
    this.el.dataset.uploadId = card?.upload_id ?? '';
    setText(this.status, card ? status : 'empty');
    this.status.className = `status status-${status}`;
    setText(this.style, card?.style ?? '');
    this.style.hidden = !card?.style;

    // Signed links: the same within a period, so a re-render never refetches.
    this.input.hidden = !card?.input_url;
    this.noInput.hidden = Boolean(card?.input_url);
    if (card?.input_url) source(this.input, card.input_url);
    else this.input.removeAttribute('src');

    // The output exists only once completed.
    const done = Boolean(status === 'completed' && card.output_url);
    this.output.hidden = !done;
    if (done) source(this.output, card.output_url);
    else this.output.removeAttribute('src');
    this.waiting.hidden = done;
    setText(this.waiting, card ? STATUS_TEXT[status] ?? status : 'no upload in this slot');
    this.waiting.classList.toggle('busy', status === 'received' || status === 'started');

    setText(this.error, card?.error ? `${card.error}${card.retriable ? ' (retriable)' : ''}` : '');
    this.error.hidden = !card?.error;

    const t = card?.timings;
    replace(
      this.info,
      card?.width ? h('span', {}, `${card.width}×${card.height}`) : null,
      card?.bytes ? h('span', {}, `${fmt(card.bytes / 1024)} KiB`) : null,
      card?.model_version ? h('span', {}, `model ${card.model_version}`) : null,
      t
        ? h(
            'span',
            { title: 'time per stage' },
            `queue ${fmt(t.queue_ms)} · decode ${fmt(t.decode_ms)} · model ${fmt(t.infer_ms)} · encode ${fmt(t.encode_ms)} ms`,
          )
        : null,
      card?.received_at ? time(card.received_at) : null,
    );
  }
}

/** The signed-in user's sessions, newest first, paged on demand. */
class MySessions {
  constructor(root, onOpen) {
    this.box = root.querySelector('#my-sessions-box');
    this.list = root.querySelector('#my-sessions');
    this.more = root.querySelector('#my-sessions-more');
    this.status = root.querySelector('#my-sessions-status');
    this.onOpen = onOpen;
    this.token = null;
    this.next = null;
    this.epoch = 0;
    this.more.addEventListener('click', () => this.load(this.next));
    root.querySelector('#my-sessions-refresh').addEventListener('click', () => this.reload());
  }

  /** Follows a sign-in (a token) or a sign-out (none). */
  follow(token) {
    this.token = token;
    this.box.hidden = !token;
    this.reload();
  }

  reload() {
    this.epoch += 1;
    this.next = null;
    this.list.replaceChildren();
    this.more.hidden = true;
    if (this.token) this.load(null);
  }

  async load(cursor) {
    const epoch = this.epoch;
    const q = new URLSearchParams({ limit: String(MINE_PAGE) });
    if (cursor) q.set('cursor', cursor);
    setText(this.status, 'loading…');
    try {
      const page = await getJson(`/v1/sessions?${q}`, { token: this.token });
      if (epoch !== this.epoch) return;
      this.list.append(...page.sessions.map((s) => this.item(s)));
      this.next = page.next_cursor ?? null;
      this.more.hidden = !this.next;
      setText(
        this.status,
        this.list.childElementCount ? '' : 'no sessions with an upload yet (atelier emit upload makes one)',
      );
    } catch (err) {
      if (epoch !== this.epoch) return;
      setText(this.status, `could not list your sessions (${describe(err)})`);
    }
  }

  item(s) {
    const open = () => this.onOpen({ key: s.session_key, exp: String(s.link.exp), sig: s.link.sig });
    return h(
      'li',
      { 'data-session': s.session_key },
      h(
        'button',
        { type: 'button', class: 'session-pick', title: s.session_key, onclick: open },
        h('img', { src: s.last_input_url, alt: 'latest upload', loading: 'lazy', decoding: 'async' }),
        h(
          'span',
          { class: 'session-meta' },
          h('span', { class: 'chip' }, s.last_style),
          time(s.last_received_at),
        ),
      ),
    );
  }
}

export class Gallery {
  constructor(root, hub, account) {
    this.hub = hub;
    this.mine = new MySessions(root, (share) => this.open(share));
    account.onChange((a) => this.mine.follow(a.token));
    this.grid = root.querySelector('#cards');
    this.form = root.querySelector('#session-form');
    this.input = root.querySelector('#session');
    this.status = root.querySelector('#session-status');
    this.key = null;
    this.slots = new Map(SLOTS.map((n) => [n, new Slot(n)]));
    this.grid.append(...[...this.slots.values()].map((s) => s.el));
    this.grid.hidden = true;
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.open(parseShare(this.input.value));
    });
    hub.subscribe({
      handlers: { cards: (c) => this.show(c) },
      onOpen: () => this.read(),
    });
  }

  /**
   * Shows a session's cards (and follows them) with its share link's grant;
   * an invalid key is refused at the form.
   */
  open({ key, exp, sig }) {
    if (!isTextId(key)) {
      setText(this.status, 'paste a session\'s share link (or its key: 1 to 64 of A-Z a-z 0-9 _ . : @ -)');
      return;
    }
    this.input.value = key;
    if (key === this.key && exp === this.exp && sig === this.sig) return;
    this.key = key;
    this.exp = exp;
    this.sig = sig;
    const url = new URL(location.href);
    url.searchParams.set('session', key);
    for (const [name, value] of [['exp', exp], ['sig', sig]]) {
      if (value) url.searchParams.set(name, value);
      else url.searchParams.delete(name);
    }
    history.replaceState(null, '', url);
    setText(this.status, '');
    for (const slot of this.slots.values()) slot.show(null);
    this.grid.hidden = false;
    this.grid.dataset.session = key;
    // Read first: the session joins the shared stream (the grant riding
    // along) only once the grant is known to work, since a refused filter
    // would refuse the feed's stream too.
    this.hub.setAll({ session: null, exp: null, sig: null });
    this.read();
  }

  /** The grant's query string (empty without one). */
  grant() {
    return this.exp && this.sig
      ? `?${new URLSearchParams({ exp: this.exp, sig: this.sig })}`
      : '';
  }

  async read() {
    if (!this.key) return;
    const key = this.key;
    try {
      const cards = await getJson(`/v1/sessions/${encodeURIComponent(key)}/cards${this.grant()}`);
      if (key !== this.key) return;
      this.show(cards);
      // The stream then starts again with the session's current cards.
      this.hub.setAll({ session: key, exp: this.exp || null, sig: this.sig || null });
    } catch (err) {
      if (key !== this.key) return;
      setText(
        this.status,
        err.status === 404
          ? 'this session is not shared with you: open it with its share link'
          : `could not read the cards (${describe(err)})`,
      );
    }
  }

  show({ session_key, cards }) {
    if (session_key !== this.key) return;
    setText(this.status, cards.length ? '' : 'no uploads in this session yet');
    for (const n of SLOTS) this.slots.get(n).merge(cards.find((c) => c.slot === n) ?? null);
  }
}
