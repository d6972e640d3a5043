// Polls: an owner's newest polls (and one pinned by `#poll=<id>`), each with
// its tallies as a bar chart that moves as votes land. Each shown poll has
// its own stream (`/v1/stream?poll=<id>` filters one poll), so the number
// shown live is bounded; the owner's list is re-read every few seconds to
// pick up new polls.

import { getJson, describe, HttpError, Stream } from './api.js';
import { BarChart } from './charts.js';
import { h, replace, setText, time, fmt, flash, isTextId } from './dom.js';

/**
 * Polls shown with live charts. A browser opens at most six connections per
 * host over HTTP/1.1; with one for the feed and session stream, three here
 * leave two for reads and images.
 */
const LIVE = 3;
/** How many of the owner's polls are listed at all. */
const LISTED = 12;
const REFRESH_MS = 4000;

/** Whether `next` is the same poll state as `prev` or newer (by log position). */
function notOlder(prev, next) {
  if (!prev?.version || !next?.version) return true;
  return next.version.offset >= prev.version.offset;
}

/** One poll's card: header, chart, voters; fed by its stream and a first read. */
class PollCard {
  constructor(id, pinned) {
    this.id = id;
    this.poll = null;
    this.el = h('article', { class: 'poll', 'data-poll-id': id });
    this.el.classList.toggle('pinned', pinned);
    this.head = h('h3', { class: 'poll-head' }, 'loading…');
    this.meta = h('div', { class: 'poll-meta' });
    this.message = h('p', { class: 'poll-message' });
    this.chartBox = h('div', { class: 'poll-chart' });
    this.foot = h('div', { class: 'poll-foot' });
    this.el.append(this.head, this.meta, this.message, this.chartBox, this.foot);
    this.chart = new BarChart(this.chartBox, 'tallies');
    this.stream = new Stream({ poll: id }, { poll: (p) => this.show(p) }, () => this.read());
    this.read();
  }

  /** Reads the poll once: its snapshot on the stream comes only if it exists. */
  async read() {
    try {
      this.show(await getJson(`/v1/polls/${encodeURIComponent(this.id)}`));
    } catch (err) {
      if (this.poll) return;
      setText(this.head, err instanceof HttpError && err.status === 404 ? 'no such poll' : 'unavailable');
      setText(this.meta, describe(err));
    }
  }

  show(p) {
    if (p.poll_id !== this.id || !notOlder(this.poll, p)) return;
    const grew = this.poll !== null && p.voters !== this.poll.voters;
    this.poll = p;
    setText(this.head, p.head);
    this.head.title = p.head;
    const state = p.closed
      ? h('span', { class: 'chip closed' }, 'closed')
      : p.ends_at && Date.parse(p.ends_at) <= Date.now()
        ? h('span', { class: 'chip closed' }, 'ended')
        : h('span', { class: 'chip open' }, 'open');
    replace(
      this.meta,
      state,
      this.el.classList.contains('pinned')
        ? h('span', { class: 'chip' }, 'pinned ', h('a', { href: '#poll=', title: 'unpin' }, '×'))
        : null,
      p.multiple_choice ? h('span', { class: 'chip' }, 'multiple choice') : null,
      p.anonymous ? h('span', { class: 'chip' }, 'anonymous') : null,
      h('span', { class: 'voters', 'data-voters': p.voters }, `${fmt(p.voters)} ${p.voters === 1 ? 'voter' : 'voters'}`),
      h('span', { class: 'muted' }, 'by ', p.owner?.name ?? p.owner?.id ?? '?', ' · '),
      time(p.created_at),
    );
    if (grew) flash(this.meta.querySelector('.voters'));
    setText(this.message, p.message ?? '');
    this.message.hidden = !p.message;
    this.chart.update(
      p.questions.map((q) => ({ key: String(q.id), label: q.text, value: q.votes })),
      // Shares of voters: on a multiple-choice poll the bars add up to more than 100%.
      p.voters || p.questions.reduce((n, q) => n + q.votes, 0),
    );
    const rejected = Object.entries(p.rejected ?? {}).filter(([, n]) => n > 0);
    replace(
      this.foot,
      p.recent_voters?.length
        ? h('span', {}, 'recent: ', p.recent_voters.slice(0, 5).map((v) => v.name).join(', '))
        : null,
      rejected.length
        ? h('span', { class: 'muted' }, 'rejected: ', rejected.map(([why, n]) => `${why} ${fmt(n)}`).join(', '))
        : null,
    );
  }

  close() {
    this.stream.close();
    this.el.remove();
  }
}

export class Polls {
  constructor(root) {
    this.list = root.querySelector('#poll-list');
    this.more = root.querySelector('#poll-more');
    this.status = root.querySelector('#poll-status');
    this.form = root.querySelector('#owner-form');
    this.input = root.querySelector('#owner');
    this.owner = null;
    this.pinned = null;
    this.cards = new Map();
    this.timer = null;
    this.generation = 0;
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.setOwner(this.input.value.trim());
    });
  }

  /** Shows `owner`'s polls; an invalid id is refused at the form. */
  setOwner(owner) {
    if (!isTextId(owner)) {
      setText(this.status, 'an owner is 1 to 64 of A-Z a-z 0-9 _ . : @ -');
      return;
    }
    this.input.value = owner;
    if (owner === this.owner) return;
    this.owner = owner;
    const url = new URL(location.href);
    url.searchParams.set('owner', owner);
    history.replaceState(null, '', url);
    this.refresh();
  }

  /** Pins one poll above the owner's (or unpins, with null). */
  pin(id) {
    if (id === this.pinned) return;
    // A card's pinned look is set at creation: both start afresh.
    for (const old of [this.pinned, id]) {
      this.cards.get(old)?.close();
      this.cards.delete(old);
    }
    this.pinned = id;
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    const generation = ++this.generation;
    let items = [];
    if (this.owner) {
      try {
        const page = await getJson(`/v1/users/${encodeURIComponent(this.owner)}/polls?limit=${LISTED}`);
        items = page.items;
        setText(this.status, items.length ? '' : `${this.owner} has no polls yet`);
      } catch (err) {
        setText(this.status, `could not list polls (${describe(err)})`);
        items = null;
      }
    }
    // A newer refresh (another owner) started meanwhile: its answer wins.
    if (generation !== this.generation) return;
    if (items) this.render(items);
    this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }

  render(items) {
    const ids = [];
    if (this.pinned) ids.push(this.pinned);
    for (const p of items) {
      if (ids.length >= LIVE) break;
      if (!ids.includes(p.poll_id)) ids.push(p.poll_id);
    }
    for (const [id, card] of this.cards) {
      if (!ids.includes(id)) {
        card.close();
        this.cards.delete(id);
      }
    }
    ids.forEach((id, i) => {
      let card = this.cards.get(id);
      if (!card) {
        card = new PollCard(id, id === this.pinned);
        this.cards.set(id, card);
      }
      if (this.list.children[i] !== card.el) this.list.insertBefore(card.el, this.list.children[i] ?? null);
    });
    const rest = items.filter((p) => !ids.includes(p.poll_id));
    replace(
      this.more,
      rest.map((p) =>
        h(
          'li',
          {},
          h('a', { href: `#poll=${p.poll_id}`, title: 'pin this poll' }, p.head),
          h('span', { class: 'muted' }, ` · ${fmt(p.voters)} ${p.voters === 1 ? 'voter' : 'voters'}`, p.closed ? ' · closed' : ''),
        ),
      ),
    );
    this.more.hidden = rest.length === 0;
  }
}
