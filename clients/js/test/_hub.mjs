// Test helpers: start the real hub binary, mint tokens, call the HTTP API, and
// a TCP proxy that can drop, refuse and freeze connections. Every wait is bounded.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const HUB_BIN =
  process.env.WSHUB_BIN || path.resolve(here, '../../../target/release/wshub');
export const SECRET = 'js-client-test-secret-0123456789abcdef';
export const API_KEY = 'js-client-test-api-key';

const BASE_CONFIG = `[server]
listen = "127.0.0.1:0"
drain_jitter = "0s"
[auth]
hmac_secret = "${SECRET}"
AUTH_EXTRA[api]
key = "${API_KEY}"
[namespaces.chat]
join_leave = true
`;

/**
 * Starts `wshub serve` with the base config plus `extra` TOML (whole sections).
 * `limits` and `auth` are optional `key = value` lines for the [limits] and [auth] sections.
 */
export async function startHub({ extra = '', limits = '', auth = '' } = {}) {
  if (!existsSync(HUB_BIN)) {
    throw new Error(
      `hub binary not found at ${HUB_BIN}: run \`cargo build --release -p wshub-cli\` in the repository root (or set WSHUB_BIN)`,
    );
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wshub-js-'));
  const config = path.join(dir, 'wshub.toml');
  let toml = BASE_CONFIG.replace('AUTH_EXTRA', auth ? `${auth}\n` : '');
  if (limits) toml += `[limits]\n${limits}\n`;
  toml += extra;
  await writeFile(config, toml);
  const child = spawn(HUB_BIN, ['serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-20000);
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`hub did not start in 15 s; stderr:\n${stderr}`)), 15000);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      out += d;
      const m = /wshub listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`hub exited (${code ?? signal}) before listening; stderr:\n${stderr}`));
    });
  });
  const hub = {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    config,
    get stderr() {
      return stderr;
    },
    async api(endpoint, body) {
      const res = await fetch(`${hub.httpUrl}/api/${endpoint}`, {
        method: 'POST',
        headers: { Authorization: `apikey ${API_KEY}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const json = await res.json();
      if (!res.ok) throw new Error(`${endpoint}: HTTP ${res.status} ${JSON.stringify(json)}`);
      return json;
    },
    publish(channel, data) {
      return hub.api('publish', { channel, data });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  return hub;
}

function b64url(x) {
  return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
}

/** An HS256 JWT for the test hub's secret. */
export function mintToken(user, { ttl = 3600, info } = {}) {
  const iat = Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat, exp: iat + ttl };
  if (info !== undefined) claims.info = info;
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  const sig = createHmac('sha256', SECRET).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/**
 * A TCP proxy to `targetPort`.
 * - `await refuse()` stops listening (new connections are refused), `await accept()`
 *   listens again on the same port;
 * - `blackhole = true` accepts new connections and never answers (a handshake
 *   that hangs);
 * - `dropAll()` destroys the current connections;
 * - `freezeAll()` stops forwarding anything (data and closes) on the current
 *   connections, like a dead network path.
 */
export async function startProxy(targetPort) {
  const conns = new Set();
  const onConnection = (down) => {
    if (proxy.blackhole) {
      // accept, then never answer
      const c = { down, up: null, frozen: true };
      c.kill = () => {
        conns.delete(c);
        down.destroy();
      };
      down.on('error', () => {});
      conns.add(c);
      return;
    }
    const up = net.connect(targetPort, '127.0.0.1');
    const c = { down, up, frozen: false };
    conns.add(c);
    const kill = () => {
      conns.delete(c);
      down.destroy();
      up.destroy();
    };
    down.on('data', (d) => {
      if (!c.frozen) up.write(d);
    });
    up.on('data', (d) => {
      if (!c.frozen) down.write(d);
    });
    for (const s of [down, up]) {
      s.on('error', () => {});
      s.on('close', () => {
        if (!c.frozen) kill();
      });
      s.on('end', () => {
        if (!c.frozen) kill();
      });
    }
    c.kill = kill;
    proxy.accepted++;
  };
  let server = null;
  const listen = (port) =>
    new Promise((resolve, reject) => {
      const s = net.createServer(onConnection);
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        server = s;
        resolve(s.address().port);
      });
    });
  const port = await listen(0);
  const proxy = {
    port,
    blackhole: false,
    accepted: 0,
    get url() {
      return `ws://127.0.0.1:${port}/ws`;
    },
    async refuse() {
      if (!server) return;
      const s = server;
      server = null;
      s.close(); // stops accepting now; existing connections go on
    },
    async accept() {
      if (server) return;
      // the port was ours a moment ago; retry briefly in case it lingers
      for (let i = 0; ; i++) {
        try {
          await listen(port);
          return;
        } catch (err) {
          if (i >= 50) throw err;
          await sleep(20);
        }
      }
    },
    dropAll() {
      for (const c of [...conns]) c.kill();
    },
    freezeAll() {
      for (const c of conns) c.frozen = true;
    },
    async close() {
      for (const c of [...conns]) c.kill();
      await proxy.refuse();
    },
  };
  return proxy;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` every 10 ms until it is truthy; throws after `ms`. */
export async function waitFor(pred, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Resolves with the next `event` of `client` (an argument), or throws after `ms`. */
export function nextEvent(client, event, ms = 5000, pred = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (arg) => {
      if (!pred(arg)) return;
      clearTimeout(timer);
      client.off(event, handler);
      resolve(arg);
    };
    const timer = setTimeout(() => {
      client.off(event, handler);
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`));
    }, ms);
    client.on(event, handler);
  });
}

/** Rejects after `ms` if `promise` has not settled. */
export function within(promise, ms, what = 'promise') {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A subscription handler set that records everything. */
export function recorder() {
  const r = {
    pubs: [],
    joins: [],
    leaves: [],
    subscribed: [],
    unrecoverable: [],
    unsubscribed: [],
    onPublication: (p) => r.pubs.push(p),
    onJoin: (m) => r.joins.push(m),
    onLeave: (m) => r.leaves.push(m),
    onSubscribed: (ctx) => r.subscribed.push(ctx),
    onUnrecoverable: (ctx) => r.unrecoverable.push(ctx),
    onUnsubscribed: (ctx) => r.unsubscribed.push(ctx),
  };
  return r;
}
