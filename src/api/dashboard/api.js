// The dashboard's side of the read API: JSON reads that fail with the API's
// error code, and live streams (`/v1/stream`) that come back after a drop
// and tell their owner to resynchronize, since the server does not replay
// what a disconnected subscriber missed.

/** A non-2xx answer, with the API's `{error, reason}` body when it sent one. */
export class HttpError extends Error {
  constructor(status, body) {
    super(body?.reason ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? null;
  }
}

/**
 * GETs JSON, as the signed-in caller when given its `token`. The browser's
 * HTTP cache revalidates with the API's `ETag` (`Cache-Control: no-cache`),
 * so an unchanged view costs a 304.
 */
export async function getJson(path, { signal, token } = {}) {
  const headers = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(path, { headers, signal });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // A non-JSON answer (a proxy's error page): the status says enough.
  }
  if (!res.ok) throw new HttpError(res.status, body);
  return body;
}

/** Why a read failed, in a few words for the page. */
export function describe(err) {
  if (err instanceof HttpError) return err.code ? `${err.code}: ${err.message}` : err.message;
  return 'the server is unreachable';
}

// Every open stream's state, for the indicator in the page header.
const streams = new Map();
const watchers = new Set();

function report(stream, state) {
  if (state === null) streams.delete(stream);
  else streams.set(stream, state);
  const states = [...streams.values()];
  const overall =
    states.length === 0
      ? 'idle'
      : states.includes('reconnecting')
        ? 'reconnecting'
        : states.includes('connecting')
          ? 'connecting'
          : 'live';
  for (const w of watchers) w(overall, states.length);
}

/** Calls `fn(state, count)` whenever the streams' overall state changes. */
export function watchConnections(fn) {
  watchers.add(fn);
}

/**
 * One `EventSource` on `/v1/stream` with the given filters.
 *
 * `handlers` maps event names (`poll`, `feed`, `feed_deleted`, `cards`,
 * `upload`) to functions of the parsed data. `onOpen` runs on every
 * (re)connect and after a `lagged` event: both mean changes may have been
 * missed, and the owner must re-read what it shows.
 *
 * The browser retries a dropped connection by itself, but gives up for good
 * on an error answer (a 503 during a restart): then this reopens it after
 * a growing delay.
 */
export class Stream {
  constructor(params, handlers, onOpen = () => {}) {
    this.url = `/v1/stream?${new URLSearchParams(params)}`;
    this.handlers = handlers;
    this.onOpen = onOpen;
    this.delay = 1000;
    this.timer = null;
    this.es = null;
    this.connect();
  }

  connect() {
    const es = new EventSource(this.url);
    this.es = es;
    report(this, 'connecting');
    es.addEventListener('open', () => {
      this.delay = 1000;
      report(this, 'live');
      this.onOpen();
    });
    es.addEventListener('error', () => {
      if (this.es !== es) return;
      report(this, 'reconnecting');
      if (es.readyState === EventSource.CLOSED) {
        this.timer = setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 30000);
      }
    });
    es.addEventListener('lagged', () => this.onOpen());
    for (const [name, fn] of Object.entries(this.handlers)) {
      es.addEventListener(name, (e) => {
        let data;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        fn(data);
      });
    }
  }

  close() {
    clearTimeout(this.timer);
    this.es?.close();
    this.es = null;
    report(this, null);
  }
}

/**
 * One stream shared by several sections: the feed (`kind=all`) and the
 * session gallery (`session=`) ride on the same connection, because a
 * browser allows only six connections per host over HTTP/1.1 and every
 * shown poll needs one of its own (a stream filters one poll at most).
 * Changing a filter reopens the connection; every subscriber then gets its
 * `onOpen` and resynchronizes.
 */
export class Hub {
  constructor() {
    this.params = {};
    this.subs = new Set();
    this.stream = null;
  }

  /** Subscribes `{handlers, onOpen}`; returns a function that unsubscribes. */
  subscribe(sub) {
    this.subs.add(sub);
    // The stream's handlers are fixed when it opens: a late subscriber's
    // event names need a new one.
    if (this.stream) this.reopen();
    return () => this.subs.delete(sub);
  }

  /** Sets (or, with null, removes) one filter and reopens the stream. */
  set(name, value) {
    if ((this.params[name] ?? null) === (value ?? null)) return;
    if (value === null || value === undefined) delete this.params[name];
    else this.params[name] = value;
    this.reopen();
  }

  /** Sets (or, with null, removes) several filters, reopening once. */
  setAll(values) {
    let changed = false;
    for (const [name, value] of Object.entries(values)) {
      if ((this.params[name] ?? null) === (value ?? null)) continue;
      changed = true;
      if (value === null || value === undefined) delete this.params[name];
      else this.params[name] = value;
    }
    if (changed) this.reopen();
  }

  reopen() {
    this.stream?.close();
    this.stream = null;
    if (Object.keys(this.params).length === 0) return;
    const names = new Set();
    for (const sub of this.subs) Object.keys(sub.handlers).forEach((n) => names.add(n));
    const handlers = {};
    for (const name of names) {
      handlers[name] = (data) => {
        for (const sub of this.subs) sub.handlers[name]?.(data);
      };
    }
    this.stream = new Stream(this.params, handlers, () => {
      for (const sub of this.subs) sub.onOpen?.();
    });
  }
}
