// Pipeline health from `GET /v1/pipeline`, read every 1.5 s: events/s per
// topic (the change of each topic's monotonic `consumed` counter between
// two reads) and lag over the last two minutes, the DLQ count, and the view
// generations. A server without the route (404) or a failed read shows
// "unavailable" and the page goes on; reads continue, slower, until it
// answers.

import { getJson, HttpError } from './api.js';
import { LineChart } from './charts.js';
import { h, replace, setText, fmt } from './dom.js';

const PERIOD_MS = 1500;
const UNAVAILABLE_PERIOD_MS = 5000;
const WINDOW_MS = 120000;

/** `atelier.polls.v1` → `polls.v1`: the prefix is the same for every topic. */
function short(topic) {
  return topic.startsWith('atelier.') ? topic.slice('atelier.'.length) : topic;
}

function generation(g) {
  if (g === null || g === undefined) return '–';
  if (typeof g === 'object') {
    return Object.entries(g)
      .map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`)
      .join(', ');
  }
  return String(g);
}

export class Pipeline {
  constructor(root) {
    this.root = root;
    this.state = root.querySelector('#pipeline-state');
    this.dlq = root.querySelector('#dlq-count');
    this.lag = root.querySelector('#lag-total');
    this.views = root.querySelector('#views');
    this.throughput = new LineChart(root.querySelector('#throughput-chart'), {
      label: 'events per second by topic',
      format: (v) => `${fmt(v)}/s`,
    });
    this.lagChart = new LineChart(root.querySelector('#lag-chart'), {
      label: 'consumer lag by topic',
      format: (v) => fmt(v),
      minStep: 1,
    });
    // Reads in order: {at, topics: Map(topic → {consumed, lag})}.
    this.samples = [];
  }

  start() {
    this.tick();
  }

  async tick() {
    let period = PERIOD_MS;
    try {
      this.record(await getJson('/v1/pipeline'));
      this.mark('ok', 'live');
    } catch (err) {
      period = UNAVAILABLE_PERIOD_MS;
      const why =
        err instanceof HttpError && err.status === 404
          ? 'unavailable: this server has no /v1/pipeline'
          : err instanceof HttpError
            ? `unavailable: ${err.code ?? err.status}`
            : 'unavailable: the server is unreachable';
      this.mark('unavailable', why);
    }
    setTimeout(() => this.tick(), period);
  }

  mark(state, text) {
    this.root.dataset.pipelineState = state;
    this.state.dataset.pipelineState = state;
    setText(this.state, text);
  }

  record(p) {
    const at = Number.isFinite(p.at_ms) ? p.at_ms : Date.now();
    const topics = new Map((p.topics ?? []).map((t) => [t.topic, t]));
    this.samples.push({ at, topics });
    // One spare sample before the window: the first rate in it needs it.
    while (this.samples.length > 2 && this.samples[1].at < at - WINDOW_MS) this.samples.shift();

    const names = [...new Set(this.samples.flatMap((s) => [...s.topics.keys()]))].sort();
    const rates = names.map((name) => {
      const points = [];
      for (let i = 1; i < this.samples.length; i++) {
        const a = this.samples[i - 1].topics.get(name);
        const b = this.samples[i].topics.get(name);
        const dt = (this.samples[i].at - this.samples[i - 1].at) / 1000;
        // A counter that went down is a restarted server: no rate across it.
        if (a && b && dt > 0 && b.consumed >= a.consumed) {
          points.push([this.samples[i].at, (b.consumed - a.consumed) / dt]);
        }
      }
      return { name: short(name), points };
    });
    const lags = names.map((name) => ({
      name: short(name),
      points: this.samples
        .filter((s) => s.topics.has(name))
        .map((s) => [s.at, Number(s.topics.get(name).lag) || 0]),
    }));
    const range = [at - WINDOW_MS, at];
    this.throughput.update(rates, range);
    this.lagChart.update(lags, range);

    setText(this.dlq, fmt(p.dlq));
    this.dlq.classList.toggle('alert', p.dlq > 0);
    setText(this.lag, fmt(p.lag));
    replace(
      this.views,
      (p.views ?? []).map((v) =>
        h(
          'tr',
          {},
          h('td', {}, v.view),
          h('td', {}, generation(v.active)),
          h(
            'td',
            { class: v.building === null || v.building === undefined ? 'muted' : 'building' },
            generation(v.building),
            // `building` or `swapping` while a rebuild runs; `idle` says nothing new.
            v.phase && v.phase !== 'idle' ? ` · ${v.phase}` : null,
          ),
        ),
      ),
    );
  }
}
