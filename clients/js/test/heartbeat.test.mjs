// Heartbeat: a silent connection is detected and replaced (hub with a 2 s ping
// interval and a 1 s pong timeout).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../wshub.js';
import { startHub, startProxy, mintToken, waitFor, within, recorder, nextEvent, sleep } from './_hub.mjs';

let hub;
let proxy;
const clients = [];

before(async () => {
  hub = await startHub({ limits: 'ping_interval = "2s"\npong_timeout = "1s"' });
  proxy = await startProxy(hub.port);
});

after(async () => {
  for (const c of clients) c.disconnect();
  await proxy?.close();
  await hub?.stop();
});

function newClient(user) {
  const c = new Client(proxy.url, { token: mintToken(user), minReconnectDelay: 50, maxReconnectDelay: 400 });
  c.on('error', () => {});
  clients.push(c);
  return c;
}

test('an idle but healthy connection stays up (the client pings)', async () => {
  const c = newClient('idle');
  await c.connect();
  const id = c.clientId;
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  await sleep(5000); // 2.5 ping intervals without any traffic from the app
  assert.deepEqual(disconnects, []);
  assert.equal(c.clientId, id);
  assert.equal(c.state, 'connected');
});

test('a silent connection is detected, closed and replaced; the subscription recovers', async () => {
  const c = newClient('silent');
  await c.connect();
  const r = recorder();
  c.subscribe('chat:hb', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  await hub.publish('chat:hb', { n: 1 });
  await waitFor(() => r.pubs.length === 1, 5000, 'first publication');
  const firstId = c.clientId;

  const disconnected = nextEvent(c, 'disconnected', 10000);
  const connected = nextEvent(c, 'connected', 15000);
  const frozenAt = Date.now();
  proxy.freezeAll(); // nothing passes any more, not even the close
  await hub.publish('chat:hb', { n: 2 });
  const d = await disconnected;
  // at most ping (2 s) of silence plus pong (1 s), with a generous margin
  assert.ok(Date.now() - frozenAt < 9000);
  assert.deepEqual(d, { code: 1006, reason: 'heartbeat timeout', reconnect: true });
  const info = await connected;
  assert.notEqual(info.client, firstId);
  await waitFor(() => r.pubs.length === 2, 5000, 'recovered publication');
  assert.deepEqual(r.pubs.map((p) => p.data.n), [1, 2]);
  assert.equal(r.subscribed.at(-1).recovered, true);
  await within(c.ping(), 5000, 'ping on the new connection');
});
