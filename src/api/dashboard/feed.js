// The live feed: the timeline newest first, older pages loaded as the list
// scrolls to its end (`next_cursor`), and items created, liked, joined or
// deleted meanwhile applied from the shared stream (`kind=all`).

import { getJson, describe } from './api.js';
import { h, replace, setText, time, fmt, flash } from './dom.js';

const PAGE = 20;

/** Newest first, as the API orders the timeline: by time, then id. */
function newer(a, b) {
  const ta = Date.parse(a.created_at);
  const tb = Date.parse(b.created_at);
  if (ta !== tb) return ta > tb;
  return a.item_id > b.item_id;
}

function headline(item) {
  switch (item.kind) {
    case 'post':
      return item.title;
    case 'game':
      return `${item.name} · ${item.location}`;
    case 'team':
      return `Team in ${item.room}`;
    default:
      return item.kind;
  }
}

export class Feed {
  constructor(root, hub) {
    this.list = root.querySelector('#feed-list');
    this.scroller = root.querySelector('#feed-scroll');
    this.sentinel = root.querySelector('#feed-sentinel');
    this.status = root.querySelector('#feed-status');
    this.count = root.querySelector('#feed-count');
    // item_id → {item, el}; the list's DOM order is the display order.
    this.items = new Map();
    this.cursor = null;
    this.done = false;
    this.loading = false;
    this.started = false;

    this.observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) this.more();
      },
      // Start loading a little before the end comes into view.
      { root: this.scroller, rootMargin: '0px 0px 200px 0px' },
    );
    hub.subscribe({
      handlers: {
        feed: (item) => this.upsert(item, true),
        feed_deleted: ({ item_id }) => this.remove(item_id),
      },
      // Items created while the stream was down are only in the first page.
      onOpen: () => this.resync(),
    });
  }

  start() {
    this.started = true;
    this.observer.observe(this.sentinel);
  }

  /** The next page after what is shown. */
  async more() {
    if (this.loading || this.done) return;
    this.loading = true;
    setText(this.status, 'loading…');
    try {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (this.cursor) q.set('cursor', this.cursor);
      const page = await getJson(`/v1/feed?${q}`);
      for (const item of page.items) this.upsert(item, false);
      this.cursor = page.next_cursor ?? null;
      this.done = !this.cursor;
      setText(this.status, '');
    } catch (err) {
      setText(this.status, `could not load the feed (${describe(err)}); retrying`);
      setTimeout(() => this.reobserve(), 3000);
      return;
    } finally {
      this.loading = false;
      this.updateCount();
    }
    this.reobserve();
  }

  /**
   * An observer only reports changes: when a page did not fill the list,
   * the end is still in view and nothing would fire. Observing anew reports
   * the current state once.
   */
  reobserve() {
    if (this.done) return;
    this.observer.unobserve(this.sentinel);
    this.observer.observe(this.sentinel);
  }

  /** Re-reads the newest page after a (re)connect, merging what is new. */
  async resync() {
    if (!this.started) return;
    try {
      const page = await getJson(`/v1/feed?limit=${PAGE}`);
      for (const item of page.items) this.upsert(item, true);
    } catch {
      // The stream keeps the list current from here; the next reconnect retries.
    }
  }

  /** Adds or updates an item (from a page or the stream). */
  upsert(item, live) {
    const known = this.items.get(item.item_id);
    if (known) {
      const changed = known.item.likes !== item.likes || known.item.joined !== item.joined;
      known.item = { ...known.item, ...item };
      this.fill(known.el, known.item);
      if (live && changed) flash(known.el.querySelector('.counts'));
      return;
    }
    // Find its place among the shown items; an item older than the last
    // shown one belongs to a page not loaded yet, which will bring it.
    let before = null;
    for (const el of this.list.children) {
      if (newer(item, this.items.get(el.dataset.itemId).item)) {
        before = el;
        break;
      }
    }
    if (!before && !this.done && live) return;
    const el = h('li', { class: 'feed-item', 'data-item-id': item.item_id, 'data-kind': item.kind });
    this.fill(el, item);
    this.items.set(item.item_id, { item, el });
    // Keep what the reader looks at still when an item lands above it.
    const atTop = this.scroller.scrollTop <= 4;
    const heightBefore = this.scroller.scrollHeight;
    this.list.insertBefore(el, before);
    if (!atTop && before) this.scroller.scrollTop += this.scroller.scrollHeight - heightBefore;
    if (live) flash(el, 'arrived');
    this.updateCount();
  }

  remove(id) {
    const known = this.items.get(id);
    if (!known) return;
    known.el.remove();
    this.items.delete(id);
    this.updateCount();
  }

  fill(el, item) {
    const joinable = item.kind === 'game' || item.kind === 'team';
    replace(
      el,
      h(
        'div',
        { class: 'feed-head' },
        h('span', { class: `kind kind-${item.kind}` }, item.kind),
        h('span', { class: 'feed-title' }, headline(item)),
      ),
      item.kind === 'post' && item.body ? h('p', { class: 'feed-body' }, item.body) : null,
      h(
        'div',
        { class: 'feed-meta' },
        h('span', { class: 'author' }, item.author?.name ?? item.author?.id ?? ''),
        time(item.created_at),
        h(
          'span',
          { class: 'counts' },
          `${fmt(item.likes)} ${item.likes === 1 ? 'like' : 'likes'}`,
          joinable ? ` · ${fmt(item.joined)} joined` : null,
        ),
      ),
    );
  }

  updateCount() {
    setText(this.count, `${fmt(this.items.size)}${this.done ? '' : '+'} items`);
    if (this.done) {
      setText(this.status, this.items.size ? 'the beginning of the feed' : 'nothing posted yet');
    }
  }
}
