// The dashboard's two charts, drawn as SVG at the container's pixel width
// (so text never stretches): horizontal bars for poll tallies, and time
// series lines for the pipeline's throughput and lag.

import { h, s, setText, fmt } from './dom.js';

/** Watches a container's width; calls `fn` when it changes. */
function onResize(el, fn) {
  let last = el.clientWidth;
  new ResizeObserver(() => {
    if (el.clientWidth !== last) {
      last = el.clientWidth;
      fn();
    }
  }).observe(el);
}

/** A round step near `x`: 1, 2 or 5 times a power of ten. */
function niceStep(x) {
  const e = 10 ** Math.floor(Math.log10(x));
  const f = x / e;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
}

/**
 * Shortens an SVG text until it fits `width` pixels, keeping the full text
 * in its tooltip. Measures in the browser (fonts differ), so the element
 * must be in the document.
 */
function fitText(el, text, width) {
  setText(el, text);
  if (width <= 0 || el.getComputedTextLength() <= width) return;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    el.textContent = `${text.slice(0, mid)}…`;
    if (el.getComputedTextLength() <= width) lo = mid;
    else hi = mid - 1;
  }
  el.textContent = `${text.slice(0, lo)}…`;
}

const ROW = 38;
const COUNT_WIDTH = 96;
const ANIMATE_MS = 450;

/**
 * Horizontal bars, one per item, each as wide as its share of `total`.
 * Rows are kept across updates (keyed), and a bar's width moves from its
 * old value to the new one, so a live tally visibly grows. Each bar carries
 * `data-key` and `data-value` for whoever reads the page.
 */
export class BarChart {
  constructor(container, label) {
    this.el = container;
    this.svg = s('svg', { class: 'bars', role: 'img', 'aria-label': label });
    this.el.append(this.svg);
    this.rows = new Map();
    this.items = [];
    this.total = 0;
    onResize(this.el, () => this.layout(false));
  }

  /** `items`: `[{key, label, value}]` in display order; `total`: what 100% is. */
  update(items, total) {
    this.items = items;
    this.total = total;
    this.layout(true);
  }

  layout(animate) {
    const width = Math.max(160, this.el.clientWidth);
    const track = width;
    this.svg.setAttribute('width', width);
    this.svg.setAttribute('height', this.items.length * ROW);
    this.svg.setAttribute('viewBox', `0 0 ${width} ${this.items.length * ROW}`);
    const max = Math.max(0, ...this.items.map((i) => i.value));
    const seen = new Set();
    this.items.forEach((item, i) => {
      seen.add(item.key);
      let row = this.rows.get(item.key);
      if (!row) {
        row = {
          g: s('g', { class: 'bar-row', 'data-key': item.key }),
          label: s('text', { class: 'bar-label', x: 0, y: 13 }),
          tip: s('title'),
          count: s('text', { class: 'bar-count', x: width, y: 13, 'text-anchor': 'end' }),
          track: s('rect', { class: 'bar-track', x: 0, y: 19, height: 12, rx: 6 }),
          bar: s('rect', { class: 'bar', x: 0, y: 19, height: 12, rx: 6, width: 0 }),
          shown: 0,
          frame: 0,
        };
        row.g.append(row.tip, row.label, row.count, row.track, row.bar);
        this.svg.append(row.g);
        this.rows.set(item.key, row);
      }
      row.g.setAttribute('transform', `translate(0 ${i * ROW})`);
      // Keep document order = display order (reordered questions, new rows).
      if (this.svg.children[i] !== row.g) this.svg.insertBefore(row.g, this.svg.children[i] ?? null);
      setText(row.tip, item.label);
      fitText(row.label, item.label, width - COUNT_WIDTH - 8);
      const share = this.total > 0 ? item.value / this.total : 0;
      setText(row.count, `${fmt(item.value)} · ${Math.round(share * 100)}%`);
      row.count.setAttribute('x', width);
      row.track.setAttribute('width', track);
      row.bar.dataset.value = String(item.value);
      row.bar.classList.toggle('lead', item.value > 0 && item.value === max);
      this.move(row, Math.min(track, share * track), animate);
    });
    for (const [key, row] of this.rows) {
      if (!seen.has(key)) {
        cancelAnimationFrame(row.frame);
        row.g.remove();
        this.rows.delete(key);
      }
    }
  }

  /** Eases a bar's width from what is shown to `target`. */
  move(row, target, animate) {
    cancelAnimationFrame(row.frame);
    const from = row.shown;
    if (!animate || from === target || document.hidden) {
      row.shown = target;
      row.bar.setAttribute('width', target.toFixed(1));
      return;
    }
    const start = performance.now();
    const step = (now) => {
      // A frame's time can precede `start` (it is the frame's, not the call's).
      const t = Math.min(1, Math.max(0, (now - start) / ANIMATE_MS));
      const eased = 1 - (1 - t) ** 3;
      row.shown = from + (target - from) * eased;
      row.bar.setAttribute('width', row.shown.toFixed(1));
      if (t < 1) row.frame = requestAnimationFrame(step);
    };
    row.frame = requestAnimationFrame(step);
  }
}

const HEIGHT = 170;
const M = { left: 48, right: 12, top: 10, bottom: 22 };
const PALETTE = 8;

/**
 * Lines over a sliding time window, with a legend that shows each series'
 * latest value, or its value under the pointer while hovering. A point more
 * than `gapMs` after the previous one starts a new segment, so an outage
 * shows as a gap rather than a straight line across it.
 */
export class LineChart {
  constructor(container, { label, format = fmt, gapMs = 5000, minStep = 0 }) {
    this.el = container;
    this.format = format;
    this.gapMs = gapMs;
    // Counts (lag) have no fractions: their scale never shows 0.5.
    this.minStep = minStep;
    this.svg = s('svg', { class: 'lines', role: 'img', 'aria-label': label });
    this.legend = h('ul', { class: 'legend' });
    this.el.append(this.svg, this.legend);
    this.series = [];
    this.range = [0, 1];
    this.hoverT = null;
    this.svg.addEventListener('pointermove', (e) => {
      const box = this.svg.getBoundingClientRect();
      const [t0, t1] = this.range;
      const frac = (e.clientX - box.left - M.left) / Math.max(1, box.width - M.left - M.right);
      this.hoverT = frac < 0 || frac > 1 ? null : t0 + frac * (t1 - t0);
      this.draw();
    });
    this.svg.addEventListener('pointerleave', () => {
      this.hoverT = null;
      this.draw();
    });
    onResize(this.el, () => this.draw());
    this.draw();
  }

  /** `series`: `[{name, points: [[t_ms, value], ...]}]`; `range`: `[t0, t1]` in ms. */
  update(series, range) {
    this.series = series;
    this.range = range;
    this.draw();
  }

  draw() {
    const width = Math.max(200, this.el.clientWidth);
    const [t0, t1] = this.range;
    const span = Math.max(1, t1 - t0);
    const plotW = width - M.left - M.right;
    const plotH = HEIGHT - M.top - M.bottom;
    const values = this.series.flatMap((se) => se.points.map((p) => p[1]));
    const step = Math.max(this.minStep, niceStep(Math.max(...values, 1) / 4));
    const top = Math.max(step, Math.ceil(Math.max(...values, 0) / step) * step);
    const x = (t) => M.left + ((t - t0) / span) * plotW;
    const y = (v) => M.top + plotH - (v / top) * plotH;
    const decimals = Math.max(0, -Math.floor(Math.log10(step)));

    const grid = [];
    // Without data, only the baseline: a scale would claim values there are not.
    for (let v = 0; v <= (values.length ? top + step / 2 : 0); v += step) {
      grid.push(
        s('line', { class: 'grid', x1: M.left, x2: width - M.right, y1: y(v), y2: y(v) }),
        s(
          'text',
          { class: 'axis', x: M.left - 6, y: y(v) + 4, 'text-anchor': 'end' },
          v.toFixed(decimals),
        ),
      );
    }
    // Time labels every 30 s, counted back from the newest sample.
    for (let back = 0; back <= span; back += 30000) {
      grid.push(
        s(
          'text',
          { class: 'axis', x: x(t1 - back), y: HEIGHT - 6, 'text-anchor': back === 0 ? 'end' : 'middle' },
          back === 0 ? 'now' : `−${back / 1000} s`,
        ),
      );
    }

    const lines = this.series.map((se, i) => {
      let d = '';
      let prev = null;
      for (const [t, v] of se.points) {
        d += `${prev === null || t - prev > this.gapMs ? 'M' : 'L'}${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
        prev = t;
      }
      return s('path', { class: `series series-${i % PALETTE}`, d, 'data-series': se.name });
    });

    // The value each series shows in the legend: under the pointer, or the latest.
    const at = (se) => {
      if (se.points.length === 0) return null;
      if (this.hoverT === null) return se.points[se.points.length - 1];
      let best = se.points[0];
      for (const p of se.points) if (Math.abs(p[0] - this.hoverT) < Math.abs(best[0] - this.hoverT)) best = p;
      // Nothing near the pointer (before the first read, in a gap): no value.
      return Math.abs(best[0] - this.hoverT) <= this.gapMs ? best : null;
    };
    const marks = [];
    if (this.hoverT !== null) {
      marks.push(s('line', { class: 'cursor', x1: x(this.hoverT), x2: x(this.hoverT), y1: M.top, y2: M.top + plotH }));
      this.series.forEach((se, i) => {
        const p = at(se);
        if (p) marks.push(s('circle', { class: `dot series-${i % PALETTE}`, cx: x(p[0]), cy: y(p[1]), r: 3.5 }));
      });
    }

    this.svg.replaceChildren(...grid, ...lines, ...marks);
    this.svg.setAttribute('width', width);
    this.svg.setAttribute('height', HEIGHT);
    this.svg.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);

    this.legend.replaceChildren(
      ...this.series.map((se, i) => {
        const p = at(se);
        return h(
          'li',
          {},
          h('span', { class: `swatch series-${i % PALETTE}` }),
          h('span', { class: 'name' }, se.name),
          h('span', { class: 'value' }, p ? this.format(p[1]) : '–'),
        );
      }),
    );
    if (this.series.length === 0) this.legend.append(h('li', { class: 'muted' }, 'no data yet'));
  }
}
