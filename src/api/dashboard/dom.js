// Small DOM helpers shared by the dashboard's sections. Everything the API
// returns is user text (poll heads, post bodies, names), so nodes are built
// with createElement and textContent, never by parsing HTML strings.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An HTML element: `h('li', {class: 'x', 'data-id': id}, 'text', child)`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as `h`. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets a text only when it changed, so that unchanged nodes are not re-laid out. */
export function setText(el, text) {
  const t = String(text);
  if (el.textContent !== t) el.textContent = t;
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** A count or rate for people: 1,234 or 12.5. */
export function fmt(n) {
  return Number.isFinite(n) ? number.format(n) : '–';
}

/** "3 s ago", "5 min ago", "2 h ago", else a date. */
export function ago(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '';
  const sec = Math.max(0, Math.round((now - t) / 1000));
  if (sec < 60) return `${sec} s ago`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

/**
 * A time element that keeps its relative label current (see `tickTimes`).
 * The exact time is in the tooltip.
 */
export function time(iso) {
  const el = h('time', { datetime: iso, title: new Date(iso).toLocaleString() }, ago(iso));
  el.classList.add('ago');
  return el;
}

/** Refreshes every relative time label on the page. */
export function tickTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll('time.ago')) setText(el, ago(el.dateTime, now));
}

/**
 * Adds a class for one run of its CSS animation, so that a changed value
 * draws the eye once; re-adding restarts it.
 */
export function flash(el, cls = 'flash') {
  el.classList.remove(cls);
  // Reading layout between remove and add is what restarts the animation.
  void el.offsetWidth;
  el.classList.add(cls);
}

/** Text ids of the API (user ids, session keys): 1 to 64 of A-Z a-z 0-9 _ . : @ - */
export function isTextId(s) {
  return /^[A-Za-z0-9_.:@-]{1,64}$/.test(s);
}
