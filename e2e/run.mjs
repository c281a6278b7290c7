#!/usr/bin/env node
// End-to-end tests of the hub's browser pages in headless Chromium.
//
//   node e2e/run.mjs            (after `cargo build --release -p wshub-cli`
//                                and `npm ci --prefix e2e`)
//
// Starts the real hub (target/release/wshub) with the demo on, a TCP proxy in
// front of it for one browser context, and drives the demo chat and the admin
// dashboard: chat both ways with presence, recovery of missed messages after
// the proxied connection drops, and the dashboard's counts and actions.
// Exit code 0 when every check passes, 1 otherwise. See e2e/README.md.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const BIN = process.env.WSHUB_BIN || path.join(ROOT, 'target/release/wshub');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.E2E_ARTIFACTS || path.join(HERE, 'artifacts');
// Serve the pages and /wshub.js from the working tree instead of the copies
// compiled into the binary (for iterating on them without rebuilding).
const FROM_TREE = process.env.E2E_FROM_TREE === '1';
const API_KEY = 'e2e-test-api-key-0123';
const RUN_DEADLINE_MS = 120_000; // the whole run, whatever hangs
const WAIT_MS = 10_000; // default bound of one wait
const OUTAGE_MS = 2_000; // how long the proxy refuses connections

const CONFIG = `[server]
listen = "127.0.0.1:0"
drain_jitter = "0s"

[auth]
hmac_secret = "e2e-test-secret-0123456789abcdef0123"

[api]
key = "${API_KEY}"

[log]
format = "text"
level = "info"

[demo]
enabled = true

[namespaces.chat]
join_leave = true
history_size = 100
history_ttl = "10m"
# a resubscribe recovers at most 5 missed publications: scenario 2b misses more
recovery_max = 5
`;

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

const started = Date.now();
let checks = 0;
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const log = (...a) => console.log(`[${elapsed()}]`, ...a);

class CheckFailed extends Error {}

function ok(cond, what, detail) {
  checks++;
  if (!cond) throw new CheckFailed(`${what}${detail !== undefined ? `\n    got: ${fmt(detail)}` : ''}`);
  log(`ok ${checks} - ${what}`);
}

function fmt(v) {
  try {
    return typeof v === 'string' ? v : JSON.stringify(v);
  } catch {
    return String(v);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until `accept(value)` holds; throws with the last value after `timeout`. */
async function waitFor(what, probe, accept = Boolean, timeout = WAIT_MS, interval = 100) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (accept(last)) return last;
    } catch (e) {
      last = `error: ${e.message}`;
    }
    if (Date.now() > end) throw new CheckFailed(`timed out after ${timeout} ms waiting for ${what}\n    last: ${fmt(last)}`);
    await sleep(interval);
  }
}

// ---------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------

class Hub {
  constructor(dir) {
    this.dir = dir;
    this.proc = null;
    this.port = 0;
    this.output = [];
    this.exited = null;
  }

  async start() {
    const cfg = path.join(this.dir, 'wshub.toml');
    fs.writeFileSync(cfg, CONFIG);
    this.logFile = fs.createWriteStream(path.join(ARTIFACTS, 'hub.log'));
    const env = { ...process.env, NO_COLOR: '1' };
    delete env.RUST_LOG;
    this.proc = spawn(BIN, ['serve', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.proc.on('exit', (code, sig) => {
      this.exited = { code, sig };
    });
    const lines = (stream) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (d) => {
        this.logFile.write(d);
        buf += d;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this.output.push(line);
          if (this.output.length > 400) this.output.shift();
          const m = /wshub listening on ws:\/\/127\.0\.0\.1:(\d+)\/ws/.exec(line);
          if (m) this.port = Number(m[1]);
        }
      });
    };
    lines(this.proc.stdout);
    lines(this.proc.stderr);
    await waitFor(
      'the hub to print its port',
      () => {
        if (this.exited) throw new CheckFailed(`the hub exited (${fmt(this.exited)}):\n${this.output.join('\n')}`);
        return this.port;
      },
      (p) => p > 0,
      15_000,
      50,
    ).catch((e) => {
      if (this.exited) throw new CheckFailed(`the hub exited at start (${fmt(this.exited)}):\n${this.output.join('\n')}`);
      throw e;
    });
    return this.port;
  }

  async api(pathname, body) {
    const res = await fetch(`http://127.0.0.1:${this.port}${pathname}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { Authorization: `apikey ${API_KEY}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${pathname}: HTTP ${res.status} ${text}`);
    return JSON.parse(text);
  }

  async stop() {
    if (!this.proc || this.exited) return;
    this.proc.kill('SIGTERM');
    const t0 = Date.now();
    while (!this.exited && Date.now() - t0 < 5000) await sleep(50);
    if (!this.exited) this.proc.kill('SIGKILL');
  }

  kill() {
    if (this.proc && !this.exited) this.proc.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------
// A TCP proxy that can cut every connection and refuse new ones
// ---------------------------------------------------------------------------

class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.refusing = false;
    this.accepted = 0;
    this.refused = 0;
    this.server = net.createServer((client) => this.onConnection(client));
  }

  listen() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        resolve(this.port);
      });
    });
  }

  onConnection(client) {
    if (this.refusing) {
      this.refused++;
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    this.accepted++;
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ]) {
      this.sockets.add(a);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        this.sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  }

  /** Resets every open connection (both sides) and refuses new ones. */
  drop() {
    this.refusing = true;
    for (const s of this.sockets) {
      if (typeof s.resetAndDestroy === 'function' && s.readyState !== 'closed') s.resetAndDestroy();
      else s.destroy();
    }
    this.sockets.clear();
  }

  accept() {
    this.refusing = false;
  }

  close() {
    this.drop();
    return new Promise((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

const pageErrors = [];

async function newPage(browser, label, viewport) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  if (FROM_TREE) await routeFromTree(context);
  const page = await context.newPage();
  page.on('pageerror', (e) => {
    pageErrors.push(`${label}: ${e.message}`);
    log(`${label} page error: ${e.message}`);
  });
  page.on('console', (m) => {
    if (process.env.E2E_VERBOSE === '1' || m.type() === 'error') log(`${label} console.${m.type()}: ${m.text()}`);
  });
  page.label = label;
  return page;
}

async function routeFromTree(context) {
  const web = path.join(ROOT, 'crates/wshub/src/hub/web');
  const files = {
    '/': [path.join(web, 'index.html'), 'text/html'],
    '/chat.js': [path.join(web, 'chat.js'), 'text/javascript'],
    '/chat.css': [path.join(web, 'chat.css'), 'text/css'],
    '/admin': [path.join(web, 'admin.html'), 'text/html'],
    '/admin.js': [path.join(web, 'admin.js'), 'text/javascript'],
    '/admin.css': [path.join(web, 'admin.css'), 'text/css'],
    '/wshub.js': [process.env.E2E_CLIENT_JS || path.join(ROOT, 'clients/js/wshub.js'), 'text/javascript'],
  };
  await context.route(
    (url) => url.pathname in files,
    (route) => {
      const [file, type] = files[new URL(route.request().url()).pathname];
      route.fulfill({ status: 200, contentType: type, body: fs.readFileSync(file) });
    },
  );
}

async function joinChat(page, base, name) {
  await page.goto(`${base}/`);
  await page.getByTestId('name-input').fill(name);
  await page.getByTestId('room-input').fill('lobby');
  await page.getByTestId('join-button').click();
  await page.locator('[data-testid="state"][data-state="connected"]').waitFor();
}

/** Message texts on a chat page, in page order, with their offsets. */
function messages(page) {
  return page.$$eval('[data-testid="message"]', (els) =>
    els.map((e) => ({
      offset: Number(e.dataset.offset),
      name: e.querySelector('[data-testid="message-name"]')?.textContent,
      text: e.querySelector('[data-testid="message-text"]')?.textContent,
    })),
  );
}

const texts = async (page) => (await messages(page)).map((m) => m.text);

function onlineNames(page) {
  return page.$$eval('[data-testid="online-item"]', (els) => els.map((e) => e.dataset.name).sort());
}

async function say(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
  // sent when it comes back from the hub
  await page.locator('[data-testid="message-text"]', { hasText: text }).first().waitFor();
}

async function waitForTexts(page, expected, what, timeout = WAIT_MS) {
  return waitFor(what, () => texts(page), (t) => expected.every((x) => t.includes(x)), timeout);
}

const stat = async (page, id) => Number(await page.getByTestId(id).getAttribute('data-value'));

async function screenshot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, timeout: WAIT_MS });
  return file;
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/** The pages are compiled into the binary: say so when they changed since. */
function warnIfStale() {
  const built = fs.statSync(BIN).mtimeMs;
  const web = path.join(ROOT, 'crates/wshub/src/hub/web');
  const sources = [...fs.readdirSync(web).map((f) => path.join(web, f)), path.join(ROOT, 'clients/js/wshub.js')];
  const newer = sources.filter((f) => fs.existsSync(f) && fs.statSync(f).mtimeMs > built);
  if (newer.length) {
    log(`warning: ${newer.map((f) => path.relative(ROOT, f)).join(', ')} changed after ${path.relative(ROOT, BIN)} was built;`);
    log('         rebuild (cargo build --release -p wshub-cli) or set E2E_FROM_TREE=1 to test the working tree');
  }
}

async function main() {
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    throw new CheckFailed('playwright-core is not installed: run `npm ci --prefix e2e` first');
  }
  if (!fs.existsSync(BIN)) throw new CheckFailed(`no hub binary at ${BIN}: run \`cargo build --release -p wshub-cli\` first`);
  if (!fs.existsSync(CHROMIUM)) throw new CheckFailed(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  if (!FROM_TREE) warnIfStale();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) if (f.endsWith('.png') || f === 'hub.log') fs.rmSync(path.join(ARTIFACTS, f));

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-e2e-'));
  const hub = new Hub(tmp);
  let proxy = null;
  let browser = null;
  const pages = {};
  const shots = [];
  const cleanup = async () => {
    if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
    if (proxy) await Promise.race([proxy.close(), sleep(2000)]);
    await hub.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    hub.kill();
    process.exit(130);
  });
  const watchdog = setTimeout(() => {
    console.error(`\nFAIL: the run took longer than ${RUN_DEADLINE_MS / 1000} s`);
    hub.kill();
    process.exit(1);
  }, RUN_DEADLINE_MS);
  watchdog.unref();

  try {
    const port = await hub.start();
    const direct = `http://127.0.0.1:${port}`;
    log(`hub on ${direct} (${BIN})${FROM_TREE ? ', pages from the working tree' : ''}`);
    proxy = new Proxy(port);
    const proxied = `http://127.0.0.1:${await proxy.listen()}`;
    log(`proxy on ${proxied}`);

    // Playwright gives every launch a fresh temporary profile (--user-data-dir).
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Pages answered by Playwright's router have no address space, so
        // Chromium would block their requests to 127.0.0.1.
        ...(FROM_TREE ? ['--disable-features=LocalNetworkAccessChecks'] : []),
      ],
      timeout: 30_000,
    });
    log(`Chromium ${browser.version()}`);

    // The dashboard is open from the start, so its charts cover the whole run.
    log('# the admin dashboard: sign in');
    const ad = (pages.admin = await newPage(browser, 'admin', { width: 1280, height: 1000 }));
    await ad.goto(`${direct}/admin`);
    await ad.getByTestId('api-key').fill('not-the-key-0000000000');
    await ad.getByTestId('login-button').click();
    const loginError = ad.getByTestId('login-error');
    await loginError.waitFor({ state: 'visible' });
    ok(/wrong api key/i.test(await loginError.textContent()), 'a wrong API key is refused with a clear message', await loginError.textContent());
    await ad.getByTestId('api-key').fill(API_KEY);
    await ad.getByTestId('login-button').click();
    await ad.getByTestId('dashboard').waitFor({ state: 'visible' });
    ok(true, 'the right API key opens the dashboard');

    // -- 1. two users chat both ways and see each other online ------------
    log('# scenario 1: chat between a direct and a proxied browser context');
    const a = (pages.chatA = await newPage(browser, 'chat A', { width: 1100, height: 700 }));
    const b = (pages.chatB = await newPage(browser, 'chat B', { width: 1100, height: 700 }));
    await joinChat(a, direct, 'Ada');
    ok(true, 'A (Ada, direct) joined chat:lobby and is connected');
    await joinChat(b, proxied, 'Grace');
    ok(true, 'B (Grace, through the proxy) joined chat:lobby and is connected');
    ok(proxy.accepted > 0, 'B’s traffic goes through the proxy', proxy.accepted);

    const both = ['Ada', 'Grace'];
    ok(fmt(await waitFor('A to see both online', () => onlineNames(a), (n) => fmt(n) === fmt(both))) === fmt(both), 'A sees Ada and Grace online');
    ok(fmt(await waitFor('B to see both online', () => onlineNames(b), (n) => fmt(n) === fmt(both))) === fmt(both), 'B sees Ada and Grace online');

    const chat1 = ['Hello Grace, Ada here', 'Hi Ada! Grace speaking'];
    await say(a, chat1[0]);
    await waitForTexts(b, [chat1[0]], 'B to receive A’s message');
    await say(b, chat1[1]);
    await waitForTexts(a, [chat1[1]], 'A to receive B’s message');
    ok(fmt(await texts(a)) === fmt(chat1), 'A shows both messages in order', await texts(a));
    ok(fmt(await texts(b)) === fmt(chat1), 'B shows both messages in order', await texts(b));
    const namesB = (await messages(b)).map((m) => m.name);
    ok(fmt(namesB) === fmt(['Ada', 'Grace']), 'messages carry the senders’ names', namesB);

    // -- 2. B's connection drops; A talks; B recovers exactly what it missed --
    log('# scenario 2: B loses its connection and recovers the missed messages');
    proxy.drop();
    const dropAt = Date.now();
    await waitFor('B to notice the drop', () => b.getByTestId('state').getAttribute('data-state'), (s) => s !== 'connected');
    ok(true, `B shows "${await b.getByTestId('state').textContent()}" after the drop`);
    await waitFor('A to see Grace leave', () => onlineNames(a), (n) => fmt(n) === fmt(['Ada']));
    ok(true, 'A sees Grace leave (leave push)');

    const missed = ['While you were away: one', 'While you were away: two', 'While you were away: three'];
    for (const m of missed) await say(a, m);
    ok(fmt(await texts(a)) === fmt([...chat1, ...missed]), 'A sent three messages during the outage', await texts(a));
    ok((await texts(b)).length === chat1.length, 'B received nothing during the outage', await texts(b));
    const wait = OUTAGE_MS - (Date.now() - dropAt);
    if (wait > 0) await sleep(wait);
    proxy.accept();
    log(`proxy accepts again after ${Date.now() - dropAt} ms (refused ${proxy.refused} connection attempts)`);

    await b.locator('[data-testid="state"][data-state="connected"]').waitFor({ timeout: 25_000 });
    const reconnectedAt = Date.now();
    ok(true, `B reconnected ${((reconnectedAt - dropAt) / 1000).toFixed(1)} s after the drop`);
    await waitForTexts(b, missed, 'B to show the missed messages');
    await sleep(300); // a duplicate would arrive right behind
    const afterB = await messages(b);
    ok(fmt(afterB.map((m) => m.text)) === fmt([...chat1, ...missed]), 'B shows exactly the missed messages, in order, no duplicates', afterB.map((m) => m.text));
    ok(afterB.every((m, i) => i === 0 || m.offset > afterB[i - 1].offset), 'B’s messages have increasing offsets', afterB.map((m) => m.offset));
    const notices = await b.$$eval('[data-testid="notice"]', (els) => els.map((e) => e.textContent));
    ok(!notices.some((n) => /could not be recovered/.test(n)), 'B recovered without reloading history', notices);
    await waitFor('both to be online again', () => onlineNames(a), (n) => fmt(n) === fmt(both));
    ok(true, 'A sees Grace online again (join push)');
    await waitFor('B’s online list', () => onlineNames(b), (n) => fmt(n) === fmt(both));
    ok(true, 'B sees Ada and Grace online after reconnecting');
    const back = 'Back again, thanks for waiting';
    await say(b, back);
    await waitForTexts(a, [back], 'A to receive B’s message after the reconnect');
    ok(fmt(await texts(a)) === fmt([...chat1, ...missed, back]), 'A receives B’s message after the reconnect', await texts(a));
    shots.push(['chat B (Grace, proxied) right after recovering the missed messages', await screenshot(b, 'chat-b-recovered')]);

    // -- 3. the admin dashboard --------------------------------------------
    log('# scenario 3: the admin dashboard');
    const conns = await waitFor('the connection count', () => stat(ad, 'stat-connections'), (n) => n >= 2);
    ok(conns >= 2, `the dashboard shows ${conns} connections`);
    ok((await stat(ad, 'stat-channels')) >= 1, 'the dashboard shows the channel', await stat(ad, 'stat-channels'));
    const nodeRows = await waitFor('the nodes table', () => ad.getByTestId('node-row').count(), (n) => n >= 1);
    ok(nodeRows >= 1, `the nodes table lists ${nodeRows} node(s)`);

    const in0 = await stat(ad, 'stat-msg-in');
    const pubs0 = await stat(ad, 'stat-publications');
    const burst = ['Counting 1', 'Counting 2', 'Counting 3', 'Counting 4', 'Counting 5'];
    for (const m of burst) await say(a, m);
    const in1 = await waitFor('messages received to grow', () => stat(ad, 'stat-msg-in'), (n) => n >= in0 + burst.length);
    ok(in1 >= in0 + burst.length, `messages received went from ${in0} to ${in1}`);
    const pubs1 = await waitFor('publications to grow', () => stat(ad, 'stat-publications'), (n) => n >= pubs0 + burst.length);
    ok(pubs1 >= pubs0 + burst.length, `publications went from ${pubs0} to ${pubs1}`);
    const rate = await waitFor('a non-zero message rate', () => stat(ad, 'stat-msg-out-rate'), (n) => n > 0, 5000);
    ok(rate > 0, `the dashboard shows a message rate (${rate.toFixed(1)}/s out)`);

    const lobby = ad.locator('[data-testid="channel-item"][data-channel="chat:lobby"] button');
    await lobby.waitFor();
    await lobby.click();
    await waitFor('the channel’s subscribers', async () => Number(await ad.getByTestId('detail-subscribers').textContent()), (n) => n === 2);
    ok(true, 'the channel browser shows chat:lobby with 2 subscribers');
    const presence = await waitFor(
      'the channel’s presence',
      () => ad.$$eval('[data-testid="presence-item"] strong', (els) => els.map((e) => e.textContent).sort()),
      (n) => fmt(n) === fmt(both),
    );
    ok(fmt(presence) === fmt(both), 'the channel browser lists Ada and Grace', presence);
    const hist = await waitFor(
      'the channel’s history',
      () => ad.$$eval('[data-testid="history-item"] code', (els) => els.map((e) => e.textContent)),
      (h) => h.length > 0 && h[0].includes('Counting 5'),
    );
    ok(hist[0].includes('Counting 5'), 'the channel browser shows the latest publication first', hist[0]);

    await ad.getByTestId('publish-channel').fill('chat:lobby');
    await ad.getByTestId('publish-data').fill('{not json');
    await ad.getByTestId('publish-button').click();
    await ad.locator('[data-testid="publish-result"][data-state="error"]').waitFor();
    ok(/json/i.test(await ad.getByTestId('publish-result').textContent()), 'invalid JSON is refused before sending', await ad.getByTestId('publish-result').textContent());
    const fromAdmin = 'Maintenance at 18:00 (from the dashboard)';
    await ad.getByTestId('publish-data').fill(JSON.stringify({ name: 'admin', text: fromAdmin }));
    await ad.getByTestId('publish-button').click();
    await ad.locator('[data-testid="publish-result"][data-state="ok"]').waitFor();
    ok(true, `the dashboard published: ${await ad.getByTestId('publish-result').textContent()}`);
    await waitForTexts(a, [fromAdmin], 'A to receive the dashboard’s publication');
    await waitForTexts(b, [fromAdmin], 'B to receive the dashboard’s publication');
    ok(true, 'both chat pages show the dashboard’s publication');

    const fullA = await texts(a);
    const fullB = await texts(b);
    ok(fmt(fullA) === fmt(fullB), 'A and B show the same conversation', { a: fullA, b: fullB });

    // -- 2b. a gap too long to recover: B reloads the history ---------------
    log('# scenario 2b: B misses more than the recovery limit and reloads the history');
    // The client library resets its reconnect backoff only after a connection
    // that lived 5 s: wait for that, so this reconnect is as quick as the first.
    const up = Date.now() - reconnectedAt;
    if (up < 5500) await sleep(5500 - up);
    proxy.drop();
    const drop2 = Date.now();
    await waitFor('B to notice the second drop', () => b.getByTestId('state').getAttribute('data-state'), (s) => s !== 'connected');
    await waitFor('A to see Grace leave', () => onlineNames(a), (n) => fmt(n) === fmt(['Ada']));
    const tooMany = Array.from({ length: 7 }, (_, i) => `Long outage ${i + 1}`);
    for (const m of tooMany) await say(a, m);
    const wait2 = OUTAGE_MS - (Date.now() - drop2);
    if (wait2 > 0) await sleep(wait2);
    proxy.accept();
    await b.locator('[data-testid="state"][data-state="connected"]').waitFor({ timeout: 25_000 });
    ok(true, `B reconnected ${((Date.now() - drop2) / 1000).toFixed(1)} s after the second drop`);
    const unrecoverable = b.locator('[data-testid="notice"]', { hasText: 'could not be recovered' });
    await unrecoverable.waitFor();
    ok(true, 'B shows a notice that messages could not be recovered');
    const expectedAll = [...fullA, ...tooMany];
    await waitForTexts(b, tooMany, 'B to reload the history');
    await sleep(300);
    ok(fmt(await texts(b)) === fmt(expectedAll), 'B’s reloaded history holds every message once, in order', await texts(b));
    await waitFor('both to be online again', () => onlineNames(a), (n) => fmt(n) === fmt(both));
    ok(fmt(await texts(a)) === fmt(expectedAll), 'A and B show the same conversation', { a: await texts(a), b: await texts(b) });
    const order = await b.$$eval('#messages > li', (els) =>
      els.map((e) => (e.dataset.testid === 'notice' ? `notice: ${e.textContent}` : e.querySelector('[data-testid="message-text"]').textContent)),
    );
    const gapAt = order.findIndex((x) => /could not be recovered/.test(x));
    ok(order[gapAt - 1] === fromAdmin && order[gapAt + 1] === tooMany[0], 'the notice marks where the gap is', order.slice(Math.max(0, gapAt - 1), gapAt + 2));

    // tall enough for the whole conversation
    await a.setViewportSize({ width: 1100, height: 1500 });
    await b.setViewportSize({ width: 1100, height: 1500 });
    await sleep(100);
    shots.push(['chat A (Ada, direct)', await screenshot(a, 'chat-a')]);
    shots.push(['chat B (Grace, proxied) after a second, unrecoverable outage and the history reload', await screenshot(b, 'chat-b')]);

    // Disconnect Grace from the dashboard: her page stops, A sees her leave.
    const graceUser = (await b.getByTestId('me-user').textContent()).replace(/[()]/g, '').trim();
    ok(/^demo-/.test(graceUser), `B’s user id is shown (${graceUser})`);
    await ad.getByTestId('disconnect-user').fill(graceUser);
    await ad.getByTestId('disconnect-reason').fill('e2e: disconnected by an admin');
    await ad.getByTestId('disconnect-button').click();
    await ad.locator('[data-testid="disconnect-result"][data-state="ok"]').waitFor();
    const disc = await ad.getByTestId('disconnect-result').textContent();
    ok(/Disconnected 1 connection/.test(disc), `the dashboard disconnected Grace: ${disc}`);
    await b.locator('[data-testid="state"][data-state="disconnected"]').waitFor();
    ok(true, 'B shows that it was disconnected (no reconnect)');
    await waitFor('A to see Grace leave', () => onlineNames(a), (n) => fmt(n) === fmt(['Ada']));
    ok(true, 'A sees Grace leave');
    await waitFor('the dashboard to count 1 connection', () => stat(ad, 'stat-connections'), (n) => n === 1);
    ok(true, 'the dashboard’s connection count drops to 1');
    await waitFor(
      'the disconnect reason',
      () => ad.$$eval('#disconnects-body tr[data-reason]', (els) => els.map((e) => e.dataset.reason)),
      (r) => r.length > 0,
    );
    ok(true, 'the dashboard lists the disconnect reasons');
    await sleep(1200); // one more poll for the charts
    shots.push(['admin dashboard', await screenshot(ad, 'admin')]);

    ok(pageErrors.length === 0, 'no uncaught errors in the pages', pageErrors);
  } catch (e) {
    for (const [name, page] of Object.entries(pages)) {
      try {
        const f = await screenshot(page, `failure-${name}`);
        console.error(`  screenshot of ${name} at failure: ${f}`);
      } catch {
        // the page may be gone
      }
    }
    if (hub.output.length) console.error(`--- last hub output ---\n${hub.output.slice(-30).join('\n')}\n---`);
    throw e;
  } finally {
    await cleanup();
    clearTimeout(watchdog);
  }
  return shots;
}

main().then(
  (shots) => {
    log(`PASS: ${checks} checks in ${elapsed()}`);
    for (const [what, file] of shots) console.log(`  screenshot: ${path.relative(process.cwd(), file) || file}  (${what})`);
    process.exit(0);
  },
  (e) => {
    console.error(`\nFAIL after ${checks} passed checks (${elapsed()}): ${e instanceof CheckFailed ? e.message : e.stack || e}`);
    process.exit(1);
  },
);
