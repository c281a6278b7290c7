// Reconnect, recovery and close codes against a real hub, through a TCP proxy
// that can drop and refuse connections.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../wshub.js';
import { startHub, startProxy, mintToken, waitFor, within, recorder, nextEvent, sleep } from './_hub.mjs';

let hub;
const cleanups = [];

before(async () => {
  hub = await startHub({
    // few missed publications are recoverable in "small"
    extra: '[namespaces.small]\nrecovery_max = 3\n',
  });
});

after(async () => {
  for (const f of cleanups.reverse()) await f();
  await hub?.stop();
});

async function setup(user, options = {}) {
  const proxy = await startProxy(hub.port);
  const client = new Client(proxy.url, {
    token: mintToken(user),
    minReconnectDelay: 50,
    maxReconnectDelay: 400,
    ...options,
  });
  const errors = [];
  client.on('error', (e) => errors.push(e));
  cleanups.push(async () => {
    client.disconnect();
    await proxy.close();
  });
  return { proxy, client, errors };
}

// Drops the connection, keeps the client out while `during` runs, then lets it back in.
async function outage(proxy, client, during) {
  const disconnected = nextEvent(client, 'disconnected', 5000);
  await proxy.refuse();
  proxy.dropAll();
  const d = await disconnected;
  assert.equal(d.reconnect, true);
  assert.notEqual(client.state, 'connected');
  await during();
  // let a few refused attempts happen
  await sleep(150);
  const connected = nextEvent(client, 'connected', 5000);
  await proxy.accept();
  return connected;
}

test('reconnect recovers exactly the missed publications, in order, without duplicates', async () => {
  const { proxy, client, errors } = await setup('rec');
  await within(client.connect(), 5000, 'connect');
  const firstId = client.clientId;
  const r = recorder();
  const sub = client.subscribe('chat:recover', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  for (let i = 1; i <= 3; i++) await hub.publish('chat:recover', { n: i });
  await waitFor(() => r.pubs.length === 3, 5000, 'three publications');
  const states = [];
  client.on('state', (s) => states.push(s));

  await outage(proxy, client, async () => {
    for (let i = 4; i <= 8; i++) await hub.publish('chat:recover', { n: i });
  });
  await waitFor(() => r.pubs.length === 8, 5000, 'recovered publications');
  assert.notEqual(client.clientId, firstId);
  assert.equal(client.state, 'connected');
  assert.ok(states.includes('disconnected') && states.includes('connecting'), states.join());
  assert.equal(states.at(-1), 'connected');

  await hub.publish('chat:recover', { n: 9 });
  await waitFor(() => r.pubs.length === 9, 5000, 'live publication after recovery');
  await client.ping(); // anything duplicated would have arrived by now
  assert.deepEqual(
    r.pubs.map((p) => p.offset),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
  assert.deepEqual(
    r.pubs.map((p) => p.data.n),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
  assert.equal(r.subscribed.length, 2);
  assert.equal(r.subscribed[1].resubscribed, true);
  assert.equal(r.subscribed[1].recovered, true);
  assert.equal(r.subscribed[1].position.offset, 8);
  assert.deepEqual(r.unrecoverable, []);
  assert.equal(sub.position.offset, 9);
  assert.deepEqual(errors, []);

  // a second outage, with nothing missed
  await outage(proxy, client, async () => {});
  await waitFor(() => r.subscribed.length === 3, 5000, 'third subscribe');
  assert.equal(r.subscribed[2].recovered, true);
  await hub.publish('chat:recover', { n: 10 });
  await waitFor(() => r.pubs.length === 10, 5000, 'publication 10');
  assert.deepEqual(r.pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

test('a command in flight when the connection drops rejects; queued ones go out after the reconnect', async () => {
  const { proxy, client } = await setup('inflight');
  await client.connect();
  const r = recorder();
  client.subscribe('chat:inflight', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  proxy.freezeAll(); // the next command never reaches the hub
  const inflight = client.publish('chat:inflight', { n: 'lost' });
  await sleep(50);
  const disconnected = nextEvent(client, 'disconnected', 5000);
  await proxy.refuse();
  proxy.dropAll();
  await assert.rejects(within(inflight, 5000, 'in-flight rejection'), (e) => e.code === 'connection_lost');
  await disconnected;
  const queued = client.publish('chat:inflight', { n: 'queued' });
  await sleep(150);
  await proxy.accept();
  const pos = await within(queued, 5000, 'queued publish');
  assert.equal(pos.offset, 1, 'the lost publish never reached the hub');
  await waitFor(() => r.pubs.length === 1, 5000, 'own publication');
  assert.deepEqual(r.pubs.map((p) => p.data.n), ['queued']);
});

test('unrecoverable: a bogus epoch in `since`', async () => {
  const { client } = await setup('bogus');
  await client.connect();
  await hub.publish('chat:bogus', { n: 1 });
  const r = recorder();
  const sub = client.subscribe('chat:bogus', { ...r, since: { offset: 1, epoch: 'bogus' } });
  assert.deepEqual(sub.position, { offset: 1, epoch: 'bogus' });
  await waitFor(() => r.unrecoverable.length === 1, 5000, 'onUnrecoverable');
  assert.equal(r.subscribed.length, 1);
  assert.equal(r.subscribed[0].recovered, false);
  assert.equal(r.subscribed[0].resubscribed, false);
  const { position } = r.unrecoverable[0];
  assert.equal(position.offset, 1);
  assert.notEqual(position.epoch, 'bogus');
  assert.deepEqual(sub.position, position);
  await hub.publish('chat:bogus', { n: 2 });
  await waitFor(() => r.pubs.length === 1, 5000, 'next publication');
  assert.equal(r.pubs[0].offset, 2);
  assert.equal(r.pubs[0].epoch, position.epoch);
});

test('a correct `since` recovers on the first subscribe', async () => {
  const { client } = await setup('since');
  await client.connect();
  const first = await hub.publish('chat:since', { n: 1 });
  await hub.publish('chat:since', { n: 2 });
  await hub.publish('chat:since', { n: 3 });
  const r = recorder();
  client.subscribe('chat:since', { ...r, since: first });
  await waitFor(() => r.pubs.length === 2, 5000, 'recovered publications');
  assert.deepEqual(r.pubs.map((p) => p.data.n), [2, 3]);
  assert.equal(r.subscribed[0].recovered, true);
  assert.deepEqual(r.unrecoverable, []);
});

test('unrecoverable after a reconnect: more missed than recovery_max', async () => {
  const { proxy, client } = await setup('toomany');
  await client.connect();
  const r = recorder();
  client.subscribe('small:room', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  await hub.publish('small:room', { n: 1 });
  await waitFor(() => r.pubs.length === 1, 5000, 'first publication');
  await outage(proxy, client, async () => {
    for (let i = 2; i <= 6; i++) await hub.publish('small:room', { n: i });
  });
  await waitFor(() => r.unrecoverable.length === 1, 5000, 'onUnrecoverable');
  assert.equal(r.unrecoverable[0].position.offset, 6);
  assert.equal(r.subscribed.length, 2);
  assert.equal(r.subscribed[1].recovered, false);
  assert.equal(r.subscribed[1].resubscribed, true);
  assert.equal(r.pubs.length, 1, 'no publication of the gap is delivered');
  await hub.publish('small:room', { n: 7 });
  await waitFor(() => r.pubs.length === 2, 5000, 'live publication');
  assert.equal(r.pubs[1].offset, 7);
});

test('a 4503 close (backend disconnect) does not reconnect', async () => {
  const { proxy, client } = await setup('banned');
  await client.connect();
  const states = [];
  client.on('state', (s) => states.push(s));
  const disconnected = nextEvent(client, 'disconnected', 5000);
  const res = await hub.api('disconnect', { user: 'banned', reason: 'banned' });
  assert.equal(res.disconnected, 1);
  const d = await disconnected;
  assert.deepEqual(d, { code: 4503, reason: 'banned', reconnect: false });
  assert.equal(client.state, 'closed');
  assert.deepEqual(states, ['closed']);
  const accepted = proxy.accepted;
  await sleep(600); // longer than maxReconnectDelay
  assert.equal(proxy.accepted, accepted, 'no reconnect attempt');
  assert.equal(client.state, 'closed');
  await assert.rejects(client.publish('chat:x', 1), (e) => e.code === 'closed');
  // connect() starts again after a terminal close
  await within(client.connect(), 5000, 'connect again');
  assert.equal(client.state, 'connected');
});

test('a 4000-range close from the backend reconnects', async () => {
  const { client } = await setup('kicked');
  await client.connect();
  const r = recorder();
  client.subscribe('chat:kicked', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  const firstId = client.clientId;
  const disconnected = nextEvent(client, 'disconnected', 5000);
  const connected = nextEvent(client, 'connected', 5000);
  await hub.api('disconnect', { user: 'kicked', code: 4000, reason: 'go elsewhere' });
  assert.deepEqual(await disconnected, { code: 4000, reason: 'go elsewhere', reconnect: true });
  await connected;
  assert.notEqual(client.clientId, firstId);
  await waitFor(() => r.subscribed.length === 2, 5000, 'resubscribed');
  assert.equal(r.subscribed[1].resubscribed, true);
});

test('an unsub push from the backend ends the subscription', async () => {
  const { client } = await setup('revoked');
  await client.connect();
  const r = recorder();
  const sub = client.subscribe('chat:revoked', r);
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  await hub.api('unsubscribe', { user: 'revoked', channel: 'chat:revoked' });
  await waitFor(() => r.unsubscribed.length === 1, 5000, 'onUnsubscribed');
  assert.equal(r.unsubscribed[0].code, 103);
  assert.equal(typeof r.unsubscribed[0].reason, 'string');
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(client.getSubscription('chat:revoked'), null);
  // the channel can be subscribed again
  const r2 = recorder();
  client.subscribe('chat:revoked', r2);
  await waitFor(() => r2.subscribed.length === 1, 5000, 'subscribed again');
});

test('a handshake that never completes is abandoned after `timeout` and retried', async () => {
  const { proxy, client } = await setup('blackhole', { timeout: 700 });
  proxy.blackhole = true;
  const disconnects = [];
  client.on('disconnected', (d) => disconnects.push(d));
  const connecting = client.connect();
  await waitFor(() => disconnects.length >= 1, 5000, 'a connect timeout');
  assert.equal(disconnects[0].reason, 'connect timeout');
  assert.equal(disconnects[0].reconnect, true);
  proxy.blackhole = false;
  await within(connecting, 5000, 'connect after the hanging attempts');
  assert.equal(client.state, 'connected');
});
