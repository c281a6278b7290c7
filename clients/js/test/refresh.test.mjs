// Token refresh and token expiry against a real hub.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../wshub.js';
import { startHub, mintToken, waitFor, within, nextEvent, sleep } from './_hub.mjs';

let hub;
const clients = [];

before(async () => {
  // no clock-skew allowance: tokens expire on the second
  hub = await startHub({ auth: 'leeway = "0s"' });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await hub?.stop();
});

function newClient(options) {
  const c = new Client(hub.wsUrl, { minReconnectDelay: 50, maxReconnectDelay: 400, ...options });
  clients.push(c);
  return c;
}

test('getToken refreshes a short-lived token before it expires: no reconnect', async () => {
  let calls = 0;
  const c = newClient({
    token: mintToken('fresh', { ttl: 3 }),
    getToken: async () => {
      calls++;
      return mintToken('fresh', { ttl: 3 });
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  const connected = nextEvent(c, 'connected');
  await c.connect();
  const info = await connected;
  assert.ok(info.ttl >= 1 && info.ttl <= 3, `ttl ${info.ttl}`);
  const id = c.clientId;
  await sleep(7000); // more than two lifetimes of the token
  assert.deepEqual(disconnects, []);
  assert.deepEqual(errors, []);
  assert.equal(c.clientId, id);
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  await within(c.ping(), 5000, 'ping');
});

test('without getToken an expired token ends the client (4003, then 109 on the reconnect)', async () => {
  const c = newClient({ token: mintToken('expiring', { ttl: 2 }) });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  await c.connect();
  await waitFor(() => c.state === 'closed', 8000, 'the client to give up');
  assert.equal(disconnects[0].code, 4003);
  assert.equal(disconnects[0].reconnect, true);
  assert.equal(disconnects.at(-1).reconnect, false);
  assert.ok(errors.some((e) => e.code === 109), errors.map((e) => e.code).join());
});

test('after a failed refresh the server closes with 4003 and the reconnect gets a fresh token', async () => {
  let calls = 0;
  const c = newClient({
    token: mintToken('late', { ttl: 2 }),
    getToken: async () => {
      calls++;
      if (calls === 1) throw new Error('token service down');
      return mintToken('late', { ttl: 3600 });
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await c.connect();
  const firstId = c.clientId;
  const d = await nextEvent(c, 'disconnected', 8000);
  assert.equal(d.code, 4003);
  assert.equal(d.reconnect, true);
  await nextEvent(c, 'connected', 5000);
  assert.notEqual(c.clientId, firstId);
  assert.equal(c.user, 'late');
  assert.ok(calls >= 2);
  assert.equal(errors[0].code, 'get_token');
  assert.equal(errors[0].cause.message, 'token service down');
});

test('getToken supplies the first token when none is given', async () => {
  const c = newClient({ getToken: async () => mintToken('lazy') });
  c.on('error', () => {});
  await within(c.connect(), 5000, 'connect');
  assert.equal(c.user, 'lazy');
});
