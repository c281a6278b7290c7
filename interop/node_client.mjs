// Interop battery: Node's `ws` 8 as the client of an ECHO server.
//
//   node node_client.mjs URL [--subprotocol NAME] [--server-deflate yes|no]
//                            [--timeout SECS]
//
// Prints one line per check and exits 1 at the first failure (2 on bad usage).
// Every network step is bounded (--timeout per step, 4x that for 1 MiB
// messages) and the whole battery by a global deadline.
//
// --server-deflate yes (default): when the client offers permessage-deflate,
// the server must accept it; `no`: the server must decline it.

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const NAME = 'node';
const MIB = 1024 * 1024;

let opts;
try {
  opts = parseArgs({
    allowPositionals: true,
    options: {
      subprotocol: { type: 'string' },
      'server-deflate': { type: 'string', default: 'yes' },
      timeout: { type: 'string', default: '10' },
    },
  });
} catch (e) {
  console.error(`node_client: ${e.message}`);
  process.exit(2);
}
const url = opts.positionals[0];
const serverDeflate = opts.values['server-deflate'];
const STEP = 1000 * Number(opts.values.timeout);
if (!url || !/^wss?:\/\//.test(url) || !['yes', 'no'].includes(serverDeflate) || !(STEP > 0)) {
  console.error('usage: node node_client.mjs ws://HOST:PORT [--subprotocol NAME] [--server-deflate yes|no] [--timeout SECS]');
  process.exit(2);
}

let passed = 0;
let current = 'connect'; // the check under way, named in a failure

class CheckFailed extends Error {}

function begin(label) {
  current = label;
}
function ok(label, detail = '') {
  passed += 1;
  console.log(`ok    ${NAME} ${label}${detail ? ` (${detail})` : ''}`);
}
function skip(label, why) {
  console.log(`skip  ${NAME} ${label}: ${why}`);
}
function expect(cond, why) {
  if (!cond) throw new CheckFailed(why);
}

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`${what}: no answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// A connection with a queue of received messages and a close promise.
function open({ deflate, protocols } = {}) {
  const ws = new WebSocket(url, protocols, {
    perMessageDeflate: deflate,
    maxPayload: 64 * MIB,
    handshakeTimeout: STEP,
  });
  const conn = { ws, headers: null, queue: [], waiters: [], pongs: [], pongWaiters: [] };
  conn.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      resolve({ code, reason: reason.toString() });
      for (const w of conn.waiters.splice(0)) w.reject(new CheckFailed(`connection closed (${code} ${reason})`));
    });
  });
  ws.on('upgrade', (res) => {
    conn.headers = res.headers;
  });
  ws.on('message', (data, isBinary) => {
    const msg = { data, isBinary };
    const w = conn.waiters.shift();
    if (w) w.resolve(msg);
    else conn.queue.push(msg);
  });
  ws.on('pong', (data) => {
    conn.pongs.push(Buffer.from(data));
    for (const w of conn.pongWaiters.splice(0)) w(data);
  });
  ws.on('error', () => {}); // surfaced through `opened` or `closed`
  const opened = new Promise((resolve, reject) => {
    ws.once('open', () => resolve(conn));
    ws.once('error', (e) => reject(e));
    ws.once('unexpected-response', (_req, res) => reject(new CheckFailed(`handshake answered ${res.statusCode}`)));
  });
  return withTimeout(opened, 2 * STEP, `opening ${url}`);
}

function recv(conn, ms) {
  if (conn.queue.length) return Promise.resolve(conn.queue.shift());
  const p = new Promise((resolve, reject) => conn.waiters.push({ resolve, reject }));
  return withTimeout(p, ms, 'waiting for the echo');
}

function describe(data, isBinary) {
  return `${isBinary ? 'binary' : 'text'} ${data.length} bytes`;
}

async function roundtrip(conn, payload, isBinary, ms = STEP) {
  const buf = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  await withTimeout(
    new Promise((resolve, reject) => conn.ws.send(isBinary ? buf : payload, { binary: isBinary }, (e) => (e ? reject(e) : resolve()))),
    ms,
    'sending',
  );
  const got = await recv(conn, ms);
  expect(got.isBinary === isBinary, `sent ${describe(buf, isBinary)}, got back ${describe(got.data, got.isBinary)}`);
  expect(Buffer.compare(got.data, buf) === 0, `sent ${describe(buf, isBinary)}, got back different content (${describe(got.data, got.isBinary)})`);
}

async function close(conn, code, reason) {
  conn.ws.close(code, reason);
  return withTimeout(conn.closed, 2 * STEP, 'closing handshake');
}

// A text of exactly n UTF-8 bytes mixing 1- to 4-byte characters.
function textOfBytes(n, seed) {
  const alphabet = ['a', 'Z', '0', ' ', 'é', 'ß', 'Ж', '€', '日', '本', '🎉', '𝄞'];
  let x = seed >>> 0;
  const parts = [];
  let size = 0;
  while (size < n - 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const ch = alphabet[x % alphabet.length];
    parts.push(ch);
    size += Buffer.byteLength(ch);
  }
  parts.push('x'.repeat(n - size));
  const s = parts.join('');
  if (Buffer.byteLength(s) !== n) throw new Error('textOfBytes');
  return s;
}

async function messages(mode, deflate) {
  const label = `[deflate ${mode}]`;
  begin(`${label} handshake`);
  const conn = await open({ deflate });
  const ext = conn.headers['sec-websocket-extensions'];
  if (deflate && serverDeflate === 'yes') {
    expect(ext && ext.includes('permessage-deflate') && conn.ws.extensions.includes('permessage-deflate'),
      `offered permessage-deflate, response Sec-WebSocket-Extensions: ${ext}`);
  } else {
    expect(!ext || !ext.includes('permessage-deflate'), `expected no permessage-deflate, response Sec-WebSocket-Extensions: ${ext}`);
  }
  ok(`${label} handshake`, `Sec-WebSocket-Extensions: ${ext || '(none)'}`);

  const checks = [
    ['text round trip', 'héllo wörld — Ωμέγα, Жизнь, 日本語, emoji 🎉, clef 𝄞', false, STEP, 'multi-byte UTF-8, 1 to 4 bytes a character'],
    ['empty text round trip', '', false, STEP, ''],
    ['binary round trip', Buffer.from(Array.from({ length: 256 }, (_, i) => i)), true, STEP, 'all 256 byte values'],
    ['1 MiB binary round trip', randomBytes(MIB), true, 4 * STEP, ''],
    ['1 MiB text round trip', textOfBytes(MIB, 2), false, 4 * STEP, 'multi-byte UTF-8'],
    ['300 kB compressible text round trip', 'abc'.repeat(100000), false, 4 * STEP, ''],
  ];
  for (const [name, payload, isBinary, ms, detail] of checks) {
    begin(`${label} ${name}`);
    await roundtrip(conn, payload, isBinary, ms);
    ok(`${label} ${name}`, detail);
  }
  begin(`${label} 20 messages in sequence`);
  for (let i = 0; i < 20; i++) await roundtrip(conn, `message ${i} ${'ä'.repeat(i)}`, false);
  ok(`${label} 20 messages in sequence`);
  await close(conn, 1000);
}

async function ping() {
  begin('ping -> pong with the same payload');
  const conn = await open({ deflate: false });
  const payload = Buffer.from('wshub-ping-\x00\xff-123', 'latin1');
  const pong = new Promise((resolve) => conn.pongWaiters.push(resolve));
  conn.ws.ping(payload);
  const got = await withTimeout(pong, STEP, 'waiting for the pong');
  expect(Buffer.compare(Buffer.from(got), payload) === 0, `pong payload ${Buffer.from(got).toString('hex')} != ${payload.toString('hex')}`);
  ok('ping -> pong with the same payload', payload.toString('hex'));
  await close(conn, 1000);
}

async function closeWith(code, reason) {
  begin(`client close ${code} ${JSON.stringify(reason)}`);
  const conn = await open({ deflate: false });
  const got = await close(conn, code, reason);
  expect(got.code === code, `closed with ${code} ${JSON.stringify(reason)}: server replied ${got.code} ${JSON.stringify(got.reason)}` +
    (got.code === 1006 ? ' (1006: no close frame, the TCP connection just ended)' : ''));
  ok(`client close ${code}${reason ? ` ${JSON.stringify(reason)}` : ''} -> server echoes the code`, `server sent ${got.code} ${JSON.stringify(got.reason)}`);
}

function maskedFrame(first, payload) {
  const key = randomBytes(4);
  const body = Buffer.from(payload).map((b, i) => b ^ key[i % 4]);
  return Buffer.concat([Buffer.from([first, 0x80 | body.length]), key, body]);
}

async function rawInvalid(label, frame) {
  begin(`invalid frame (${label})`);
  const conn = await open({ deflate: false });
  conn.ws._socket.write(frame); // ws exposes its socket: bypass its framing
  const got = await withTimeout(conn.closed, 2 * STEP, `${label}: waiting for the server to close`);
  expect(got.code !== 1006, `${label}: the server dropped the TCP connection without a close frame`);
  expect(got.code === 1002, `${label}: the server closed with ${got.code} ${JSON.stringify(got.reason)}, not 1002`);
  ok(`invalid frame (${label}) -> close 1002`, `reason ${JSON.stringify(got.reason)}`);
}

async function subprotocol(name) {
  begin(`subprotocol ${JSON.stringify(name)}`);
  const conn = await open({ deflate: false, protocols: [name] });
  const header = conn.headers['sec-websocket-protocol'];
  expect(conn.ws.protocol === name && header === name, `offered subprotocol ${JSON.stringify(name)}, server chose ${JSON.stringify(header)}`);
  await roundtrip(conn, 'with subprotocol', false);
  ok(`subprotocol ${JSON.stringify(name)} negotiated`, `Sec-WebSocket-Protocol: ${header}`);
  await close(conn, 1000);
}

async function battery() {
  await messages('on', true);
  await messages('off', false);
  await ping();
  await closeWith(1000, '');
  await closeWith(4000, 'reason');
  await rawInvalid('reserved opcode 0x3', maskedFrame(0x83, 'hi'));
  await rawInvalid('unmasked client frame', Buffer.concat([Buffer.from([0x81, 0x02]), Buffer.from('hi')]));
  await rawInvalid('RSV2 set', maskedFrame(0x81 | 0x20, 'hi'));
  if (opts.values.subprotocol) await subprotocol(opts.values.subprotocol);
  else skip('subprotocol', 'no --subprotocol NAME given');
}

const started = Date.now();
const TOTAL = 60 * STEP; // the whole battery
try {
  await withTimeout(battery(), TOTAL, 'the whole battery');
  console.log(`${NAME} client: all ${passed} checks passed in ${((Date.now() - started) / 1000).toFixed(1)}s against ${url}`);
  process.exit(0);
} catch (e) {
  const msg = e instanceof CheckFailed ? e.message : `${e.name}: ${e.message}`;
  console.log(`FAIL  ${NAME} ${current}: ${msg}`);
  process.exit(1);
}
