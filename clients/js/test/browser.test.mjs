// The library unchanged in a real browser (headless Chromium) against the real
// hub: connect, subscribe, publish, history, and a reconnect with recovery.
// Skipped when no Chromium is installed (set CHROMIUM to its path to choose one).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startHub, mintToken, within } from './_hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
    } catch {
      // not this one
    }
  }
  return null;
}

const chromium = findChromium();
let hub;

before(async () => {
  if (chromium) hub = await startHub();
});

after(async () => {
  await hub?.stop();
});

const PAGE = (wsUrl, token) => `<!doctype html><meta charset="utf-8"><script type="module">
import { Client } from '/wshub.js';
const report = (body) => fetch('/result', { method: 'POST', body: JSON.stringify(body) });
const step = (name) => fetch('/' + name, { method: 'POST' });
try {
  const events = [];
  const client = new Client(${JSON.stringify(wsUrl)}, { token: ${JSON.stringify(token)}, minReconnectDelay: 50, maxReconnectDelay: 300 });
  client.on('disconnected', (d) => events.push(['disconnected', d.code, d.reconnect]));
  client.on('connected', (c) => events.push(['connected', c.user]));
  const pubs = [];
  const subscribed = [];
  let wake = null;
  const until = async (pred) => { while (!pred()) await new Promise((r) => { wake = r; setTimeout(r, 50); }); };
  client.subscribe('chat:browser', {
    onPublication: (p) => { pubs.push([p.offset, p.data.n]); wake && wake(); },
    onSubscribed: (ctx) => { subscribed.push(ctx); wake && wake(); },
  });
  await client.connect();
  await until(() => subscribed.length === 1);
  const pos = await client.publish('chat:browser', { n: 1 });
  await until(() => pubs.length === 1);
  const history = await client.history('chat:browser');
  await step('kick'); // the hub closes us with 4000 and a publication is made meanwhile
  await until(() => pubs.length === 2 && subscribed.length === 2);
  let refused = null;
  try { await client.publish('nochat:x', 1); } catch (e) { refused = [e.name, e.code]; }
  client.disconnect();
  report({ ok: true, pos, pubs, history: history.publications.map((p) => p.offset), subscribed, events, refused, state: client.state });
} catch (e) {
  report({ ok: false, error: String(e && e.stack || e) });
}
</script>`;

test('works unchanged in a browser', { skip: chromium ? false : 'no Chromium found' }, async () => {
  const lib = await readFile(path.resolve(here, '../wshub.js'), 'utf8');
  const token = mintToken('browser');
  let resolveResult;
  const result = new Promise((r) => (resolveResult = r));
  const server = http.createServer(async (req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE(hub.wsUrl, token));
    } else if (req.url === '/wshub.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(lib);
    } else if (req.url === '/kick') {
      await hub.api('disconnect', { user: 'browser', code: 4000, reason: 'moving' });
      await hub.publish('chat:browser', { n: 2 });
      res.writeHead(200).end('{}');
    } else if (req.url === '/result') {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        res.writeHead(200).end('{}');
        resolveResult(JSON.parse(body));
      });
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const profile = await mkdtemp(path.join(os.tmpdir(), 'wshub-chromium-'));
  const browser = spawn(
    chromium,
    [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      `--user-data-dir=${profile}`,
      `http://127.0.0.1:${server.address().port}/`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  browser.stderr.on('data', (d) => (stderr = (stderr + d).slice(-5000)));
  try {
    const r = await within(result, 30000, 'the browser page').catch((e) => {
      throw new Error(`${e.message}\nchromium stderr:\n${stderr}`);
    });
    assert.equal(r.ok, true, r.error);
    assert.equal(r.pos.offset, 1);
    assert.deepEqual(r.pubs, [
      [1, 1],
      [2, 2],
    ]);
    assert.deepEqual(r.history, [1]);
    assert.equal(r.subscribed[1].resubscribed, true);
    assert.deepEqual(r.events, [
      ['connected', 'browser'],
      ['disconnected', 4000, true],
      ['connected', 'browser'],
      ['disconnected', 1000, false],
    ]);
    assert.deepEqual(r.refused, ['WshubError', 102]);
    assert.equal(r.state, 'closed');
  } finally {
    browser.kill('SIGKILL');
    await new Promise((r) => (browser.exitCode !== null ? r() : browser.once('exit', r)));
    await new Promise((r) => server.close(r));
    server.closeAllConnections?.();
    await rm(profile, { recursive: true, force: true });
  }
});
