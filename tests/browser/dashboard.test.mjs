// The dashboard at `/`, in headless Chromium, against a running
// `atelier up` with inference (scripts/browser-test starts it and passes
// DASHBOARD_URL and two users' tokens). Writes go through the HTTP API;
// every assertion is about what the page shows, and the page is never
// reloaded after its first load: what changes must arrive live.
//
// Exits non-zero on the first failed check, after saving a screenshot of
// the page as it was (DASHBOARD_SCREENSHOT).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set; run scripts/browser-test`);
    process.exit(2);
  }
  return v;
}

const BASE = env('DASHBOARD_URL');
const DEV = env('DASHBOARD_TOKEN');
const BOB = env('DASHBOARD_TOKEN_OTHER');
const SHOT = process.env.DASHBOARD_SCREENSHOT ?? 'artifacts/dashboard.png';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Changes that travel log → projector → stream → page. */
const LIVE_MS = 30_000;
/** A stylization on a small CPU, with the model's first run. */
const INFER_MS = 120_000;
const nonce = Math.random().toString(36).slice(2, 8);
/** Feed items made before the page loads: more than its first page (20). */
const SEEDED = 25;

// A hung browser or server must fail the run, not stall CI.
setTimeout(() => {
  console.error('dashboard test: no result within 8 minutes');
  process.exit(1);
}, 8 * 60_000).unref();

// --- the API, as a client -------------------------------------------------

async function api(method, path, { token, json, form } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const res = await fetch(BASE + path, { method, headers, body });
  const text = await res.text();
  let data = text;
  try {
    data = JSON.parse(text);
  } catch {
    // Plain text (healthz).
  }
  return { status: res.status, data };
}

/** A write the API must accept (202). */
async function write(method, path, opts) {
  const r = await api(method, path, opts);
  assert.equal(r.status, 202, `${method} ${path} answered ${r.status} ${JSON.stringify(r.data)}`);
  return r.data;
}

/** Polls `check` until it returns a truthy value. */
async function eventually(what, ms, check) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) assert.fail(`${what}: not within ${ms / 1000} s (last: ${last})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Waits in the page until `fn(arg)` is truthy; a timeout fails with `what`,
 * which says what the page never showed.
 */
async function until(page, what, fn, arg = null, ms = LIVE_MS) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms });
  } catch (err) {
    assert.fail(`${what} (not within ${ms / 1000} s: ${err.message.split('\n')[0]})`);
  }
}

// --- a PNG, encoded here (no image library needed) -------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), body.length + 4);
  return out;
}

/** An 8-bit RGB PNG of `pixel(x, y) → [r, g, b]`, rows unfiltered. */
function png(width, height, pixel) {
  const stride = width * 3 + 1;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) raw.set(pixel(x, y), y * stride + 1 + x * 3);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per channel
  header[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A gradient with a disc: something a style visibly changes. */
const picture = png(128, 96, (x, y) => {
  const inDisc = (x - 64) ** 2 + (y - 48) ** 2 < 30 ** 2;
  return inDisc ? [240, 200, 40] : [x * 2, y * 2, 160];
});

// --- the checks --------------------------------------------------------------

async function feed(page) {
  // The first page was read at load; scrolling its end into view reads on.
  await until(page, 'the feed shows its first page', () => document.querySelectorAll('#feed-list li').length >= 20);
  // Scrolled to its end (again, as each page lands), it loads the rest.
  await until(page, 'scrolled to its end, the feed loads every page', () => {
    const el = document.querySelector('#feed-scroll');
    el.scrollTo(0, el.scrollHeight);
    return document.querySelector('#feed-status')?.textContent === 'the beginning of the feed';
  });
  const items = await page
    .locator('#feed-list li')
    .evaluateAll((els) => els.map((e) => [e.dataset.itemId, e.querySelector('.feed-title').textContent]));
  const seeded = items.filter(([, title]) => title.startsWith('Seed ') && title.endsWith(nonce));
  assert.equal(seeded.length, SEEDED, `the feed shows ${seeded.length} of the ${SEEDED} seeded items`);
  assert.equal(new Set(items.map(([id]) => id)).size, items.length, 'the feed shows an item twice');

  // A new post lands on top, from the stream.
  const title = `Live post ${nonce}`;
  await write('POST', '/v1/feed', { token: BOB, json: { kind: 'post', title, body: 'from the browser test' } });
  await until(
    page,
    `a new post ("${title}") arrives on top of the feed`,
    (t) => document.querySelector('#feed-list li .feed-title')?.textContent === t,
    title,
  );
  console.log(`ok - feed: ${items.length} items over several pages, a new post arrived live`);
}

/** The bar of one question of one poll: its vote count and drawn width. */
function bar(page, pollId, question) {
  return page.evaluate(
    ([p, q]) => {
      const rect = document.querySelector(`[data-poll-id="${p}"] .bar-row[data-key="${q}"] rect.bar`);
      return rect ? { value: Number(rect.dataset.value), width: Number(rect.getAttribute('width')) } : null;
    },
    [pollId, question],
  );
}

/**
 * Waits until a question's bar shows `votes` and is drawn at `share` of its
 * track (its animation finished), then reads it.
 */
async function barReaches(page, pollId, question, votes, share) {
  const shown = () => bar(page, pollId, question).then(JSON.stringify);
  await until(
    page,
    `question ${question} of poll ${pollId} shows ${votes} votes at ${share * 100}% (it shows ${await shown()} before)`,
    ([p, q, v, s]) => {
      const row = document.querySelector(`[data-poll-id="${p}"] .bar-row[data-key="${q}"]`);
      const rect = row?.querySelector('rect.bar');
      const track = row?.querySelector('rect.bar-track');
      if (!rect || rect.dataset.value !== String(v)) return false;
      return Math.abs(Number(rect.getAttribute('width')) - s * Number(track.getAttribute('width'))) <= 0.5;
    },
    [pollId, question, votes, share],
  );
  return bar(page, pollId, question);
}

async function polls(page) {
  // Created after the page loaded: the owner's list must pick it up.
  const created = await write('POST', '/v1/polls', {
    token: DEV,
    json: { head: `Browser poll ${nonce}`, questions: ['Red', 'Green', 'Blue'] },
  });
  const id = created.poll_id;
  await until(
    page,
    `the owner's new poll ${id} appears with its chart`,
    (p) => document.querySelector(`[data-poll-id="${p}"] .bar-row[data-key="2"]`),
    id,
  );
  const before = await barReaches(page, id, 1, 0, 0);
  assert.equal(before.width, 0, 'a question with no votes has an empty bar');

  await write('POST', `/v1/polls/${id}/votes`, { token: DEV, json: { question_ids: [1] } });
  const one = await barReaches(page, id, 1, 1, 1);
  assert.ok(one.width > before.width, `the bar did not grow: ${before.width} → ${one.width}`);

  // Bob's ballot for another question halves Green's share.
  await write('POST', `/v1/polls/${id}/votes`, { token: BOB, json: { question_ids: [2] } });
  await barReaches(page, id, 2, 1, 0.5);
  const half = await barReaches(page, id, 1, 1, 0.5);
  assert.ok(half.width < one.width, `the bar did not shrink: ${one.width} → ${half.width}`);
  const voters = await page.locator(`[data-poll-id="${id}"] .voters`).getAttribute('data-voters');
  assert.equal(voters, '2');
  console.log(`ok - polls: poll ${id} appeared, its bars moved with each vote`);
}

async function gallery(page) {
  const styles = await eventually('a style with a published model', LIVE_MS, async () => {
    const r = await api('GET', '/v1/styles');
    return r.status === 200 && r.data.styles.length > 0 && r.data.styles.map((s) => s.style);
  });
  const style = styles.includes('sketch') ? 'sketch' : styles[0];
  // Sessions are their owners': one minted for DEV, opened through its
  // share link. Its bare key shows nothing.
  const minted = await api('POST', '/v1/sessions', { token: DEV });
  assert.equal(minted.status, 200, JSON.stringify(minted.data));
  const session = minted.data.session_key;
  await page.fill('#session', session);
  await page.press('#session', 'Enter');
  await until(
    page,
    'a bare session key (no share link) is refused with a reason',
    () => document.querySelector('#session-status')?.textContent.includes('not shared with you'),
  );
  await page.fill('#session', BASE + minted.data.dashboard_url);
  await page.press('#session', 'Enter');
  await until(page, `the gallery opens session ${session}`, (k) => {
    const el = document.querySelector('#cards');
    return el && !el.hidden && el.dataset.session === k;
  }, session);

  const form = new FormData();
  form.append('image', new Blob([picture], { type: 'image/png' }), 'picture.png');
  form.append('session_key', session);
  form.append('slot', '1');
  form.append('style', style);
  const { upload_id } = await write('POST', '/v1/uploads', { token: DEV, form });

  const card = `.card[data-slot="1"][data-upload-id="${upload_id}"]`;
  await until(page, `slot 1 shows upload ${upload_id}`, (sel) => document.querySelector(sel), card);
  // Completed or failed, whichever comes: a failure fails with its reason.
  await until(
    page,
    `upload ${upload_id} completes or fails`,
    (sel) => ['completed', 'failed'].includes(document.querySelector(sel)?.dataset.status),
    card,
    INFER_MS,
  );
  const status = await page.locator(card).getAttribute('data-status');
  assert.equal(status, 'completed', `the job failed: ${await page.locator(`${card} .card-error`).textContent()}`);
  await until(
    page,
    'the stylized output image loads',
    (sel) => {
      const img = document.querySelector(`${sel} img.output`);
      return img && !img.hidden && img.complete && img.naturalWidth > 0;
    },
    card,
  );
  const sizes = await page.locator(card).evaluate((el) => ({
    input: el.querySelector('img.input').naturalWidth,
    output: el.querySelector('img.output').naturalWidth,
  }));
  assert.equal(sizes.input, 128, 'the input image is the uploaded one');
  assert.ok(sizes.output > 0);
  console.log(`ok - gallery: upload ${upload_id} stylized (${style}) and shown beside its input`);

  // Signed in, DEV sees a list of their sessions; a click opens one. First
  // the gallery moves to another, empty session of DEV's.
  const empty = await api('POST', '/v1/sessions', { token: DEV });
  await page.fill('#session', BASE + empty.data.dashboard_url);
  await page.press('#session', 'Enter');
  await until(
    page,
    'the gallery opens an empty session',
    (k) => document.querySelector('#cards')?.dataset.session === k,
    empty.data.session_key,
  );
  await page.fill('#signin-token', DEV);
  await page.press('#signin-token', 'Enter');
  await until(page, 'signed in as dev', () => document.querySelector('#signed-in')?.dataset.user === 'dev');
  const item = `#my-sessions li[data-session="${session}"] button`;
  await until(page, `dev's sessions list ${session}`, (sel) => document.querySelector(sel), item);
  const listed = await page.locator('#my-sessions li').evaluateAll((els) => els.map((e) => e.dataset.session));
  assert.ok(!listed.includes(empty.data.session_key), 'a session without an upload is not listed');
  await page.click(item);
  await until(
    page,
    `a click on the list opens session ${session} with its upload`,
    ([k, sel]) => document.querySelector('#cards')?.dataset.session === k && document.querySelector(sel),
    [session, card],
  );
  // Bob, signed in, lists none of DEV's sessions.
  await page.click('#signout');
  await page.fill('#signin-token', BOB);
  await page.press('#signin-token', 'Enter');
  await until(page, 'signed in as bob', () => document.querySelector('#signed-in')?.dataset.user === 'bob');
  await until(page, "bob's list is read", () =>
    document.querySelector('#my-sessions-status')?.textContent.startsWith('no sessions'),
  );
  assert.equal(await page.locator(item).count(), 0, "bob's list shows dev's session");
  console.log(`ok - gallery: signed in, a user lists their own sessions only and opens one from the list`);
}

async function pipeline(page) {
  // The server under test has /v1/pipeline: the section must show live
  // figures. "unavailable" (or stuck loading) fails, with the page's reason.
  await until(page, 'pipeline health leaves "loading"', () =>
    ['ok', 'unavailable'].includes(document.querySelector('#pipeline')?.dataset.pipelineState),
  );
  const state = await page.locator('#pipeline').getAttribute('data-pipeline-state');
  assert.equal(state, 'ok', `pipeline health shows "${await page.locator('#pipeline-state').textContent()}"`);
  // Two reads make a rate: a line per topic.
  await until(page, 'throughput has a line per topic', () => document.querySelector('#throughput-chart path.series[d^="M"]'));
  const dlq = await page.locator('#dlq-count').textContent();
  assert.match(dlq, /^\d[\d,]*$/, `the DLQ count reads ${dlq}`);
  console.log(`ok - pipeline: ${state}`);
}

// --- the run -----------------------------------------------------------------

await eventually('the server answers /healthz', LIVE_MS, async () => (await api('GET', '/healthz')).status === 200);

// More than a page of feed items, visible before the page loads.
let last;
for (let i = 0; i < SEEDED; i++) {
  last = await write('POST', '/v1/feed', { token: DEV, json: { kind: 'post', title: `Seed ${i} ${nonce}` } });
}
await eventually('the seeded feed is readable', LIVE_MS, async () => {
  return (await api('GET', `/v1/feed?limit=1&after=${last.token}`)).status === 200;
});

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const problems = [];
page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
page.on('console', (m) => {
  // A failed request is logged by the browser itself (the 404 of a server
  // without /v1/pipeline is expected); anything else is the page's.
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(m.text());
});

let failed = false;
try {
  await page.goto(`${BASE}/?owner=dev`);
  await page.waitForSelector('html[data-ready]');
  // A reload would lose this: every change below must arrive live.
  await page.evaluate(() => {
    window.__sameDocument = true;
    // Every time the pipeline section says "unavailable", with its reason:
    // on a healthy server it never should.
    window.__pipelineUnavailable = [];
    const root = document.querySelector('#pipeline');
    const seen = () => {
      if (root.dataset.pipelineState === 'unavailable') {
        window.__pipelineUnavailable.push(document.querySelector('#pipeline-state')?.textContent);
      }
    };
    seen();
    new MutationObserver(seen).observe(root, { attributes: true, attributeFilter: ['data-pipeline-state'] });
  });
  await feed(page);
  await polls(page);
  await gallery(page);
  await pipeline(page);
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page reloaded');
  assert.deepEqual(await page.evaluate(() => window.__pipelineUnavailable), [], 'pipeline health was unavailable');
  assert.deepEqual(problems, [], 'the page logged errors');
  await page.locator('#feed-scroll').evaluate((el) => el.scrollTo(0, 0));
} catch (err) {
  failed = true;
  console.error(`not ok - ${err.stack ?? err}`);
  if (problems.length) console.error(`page errors:\n  ${problems.join('\n  ')}`);
} finally {
  try {
    mkdirSync(dirname(SHOT), { recursive: true });
    await page.screenshot({ path: SHOT, fullPage: true });
    console.log(`screenshot: ${SHOT}`);
  } catch (err) {
    console.error(`no screenshot: ${err.message}`);
  }
  await browser.close();
}
process.exit(failed ? 1 : 0);
