// Commands, subscriptions and errors against a real hub.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, WshubError } from '../wshub.js';
import { startHub, mintToken, waitFor, within, recorder, nextEvent } from './_hub.mjs';

let hub;
const clients = [];

function newClient(user, options = {}) {
  const c = new Client(hub.wsUrl, {
    token: user == null ? null : mintToken(user),
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    ...options,
  });
  c.on('error', () => {}); // expected refusals are asserted where they matter
  clients.push(c);
  return c;
}

before(async () => {
  hub = await startHub();
});

after(async () => {
  for (const c of clients) c.disconnect();
  await hub?.stop();
});

test('connect, subscribe, publish: a round trip', async () => {
  const alice = newClient('alice', { name: 'test-app', version: '9.9' });
  const states = [];
  alice.on('state', (s) => states.push(s));
  const connected = nextEvent(alice, 'connected');
  await within(alice.connect(), 5000, 'connect');
  const info = await connected;
  assert.equal(alice.state, 'connected');
  assert.equal(info.user, 'alice');
  assert.equal(typeof info.client, 'string');
  assert.equal(info.client, alice.clientId);
  assert.equal(alice.user, 'alice');
  assert.ok(info.ttl > 3500 && info.ttl <= 3600, `ttl ${info.ttl}`);
  assert.deepEqual(states, ['connecting', 'connected']);

  const r = recorder();
  const sub = alice.subscribe('chat:round', r);
  assert.equal(sub.channel, 'chat:round');
  assert.equal(sub.state, 'subscribing');
  await waitFor(() => r.subscribed.length === 1, 5000, 'subscribed');
  assert.equal(sub.state, 'subscribed');
  assert.deepEqual(r.subscribed[0], {
    position: { offset: 0, epoch: r.subscribed[0].position.epoch },
    recoverable: true,
    recovered: false,
    resubscribed: false,
  });
  const epoch = r.subscribed[0].position.epoch;
  assert.deepEqual(sub.position, { offset: 0, epoch });

  const pos = await within(alice.publish('chat:round', { text: 'hi' }), 5000, 'publish');
  assert.deepEqual(pos, { offset: 1, epoch });
  await hub.publish('chat:round', { text: 'from the backend' });
  await waitFor(() => r.pubs.length === 2, 5000, 'two publications');
  assert.deepEqual(r.pubs[0], {
    channel: 'chat:round',
    offset: 1,
    epoch,
    data: { text: 'hi' },
    info: { client: alice.clientId, user: 'alice' },
  });
  assert.deepEqual(r.pubs[1], { channel: 'chat:round', offset: 2, epoch, data: { text: 'from the backend' } });
  assert.deepEqual(sub.position, { offset: 2, epoch });
  assert.equal(alice.getSubscription('chat:round'), sub);

  // null and scalar data are fine too
  await alice.publish('chat:round', null);
  await alice.publish('chat:round', 42);
  await waitFor(() => r.pubs.length === 4, 5000, 'four publications');
  assert.equal(r.pubs[2].data, null);
  assert.equal(r.pubs[3].data, 42);

  sub.unsubscribe();
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(alice.getSubscription('chat:round'), null);
  await waitFor(async () => (await hub.api('presence', { channel: 'chat:round' })).members.length === 0, 5000, 'server-side unsubscribe');
  await hub.publish('chat:round', { text: 'after unsubscribe' });
  await alice.ping();
  assert.equal(r.pubs.length, 4);

  alice.disconnect();
  assert.equal(alice.state, 'closed');
  assert.equal(alice.clientId, null);
});

test('presence and history', async () => {
  const alice = newClient('alice');
  const bob = newClient('bob');
  await Promise.all([alice.connect(), bob.connect()]);
  const ra = recorder();
  const rb = recorder();
  alice.subscribe('chat:ph', ra);
  bob.subscribe('chat:ph', rb);
  await waitFor(() => ra.subscribed.length && rb.subscribed.length, 5000, 'both subscribed');

  const members = await alice.presence('chat:ph');
  assert.deepEqual(
    members.map((m) => `${m.user}/${m.client}`).sort(),
    [`alice/${alice.clientId}`, `bob/${bob.clientId}`].sort(),
  );

  for (let i = 1; i <= 5; i++) await alice.publish('chat:ph', { n: i });
  const h = await bob.history('chat:ph', { limit: 2 });
  assert.equal(h.position.offset, 5);
  assert.deepEqual(
    h.publications.map((p) => [p.channel, p.offset, p.data.n, p.epoch]),
    [
      ['chat:ph', 4, 4, h.position.epoch],
      ['chat:ph', 5, 5, h.position.epoch],
    ],
  );
  const all = await bob.history('chat:ph');
  assert.deepEqual(all.publications.map((p) => p.offset), [1, 2, 3, 4, 5]);
  const since = await bob.history('chat:ph', { since: { offset: 2, epoch: h.position.epoch }, limit: 2 });
  assert.deepEqual(since.publications.map((p) => p.offset), [3, 4]);
  const none = await bob.history('chat:ph', { limit: 0 });
  assert.deepEqual(none.publications, []);
  assert.deepEqual(none.position, h.position);
});

test('command errors reject with the protocol code', async () => {
  const alice = newClient('alice');
  await alice.connect();
  const rejects = (p, code) =>
    assert.rejects(within(p, 5000, `error ${code}`), (err) => {
      assert.ok(err instanceof WshubError);
      assert.ok(err instanceof Error);
      assert.equal(err.code, code);
      assert.equal(typeof err.message, 'string');
      return true;
    });
  await rejects(alice.publish('nochat:x', 1), 102);
  await rejects(alice.presence('nochat:x'), 102);
  await rejects(alice.history('nochat:x'), 102);
  await rejects(alice.publish('bad channel', 1), 107);
  await rejects(alice.history('chat:err', { since: { offset: 5, epoch: 'bogus' } }), 111);
  await rejects(alice.publish('chat:err', 'x'.repeat(20000)), 112);
  // user channels belong to their user
  await rejects(alice.publish('chat:#bob', 1), 103);
  await alice.publish('chat:#alice', 1);

  // a refused subscription: onUnsubscribed + an 'error' event; the client stays connected
  const errors = [];
  alice.on('error', (e) => errors.push(e));
  const r = recorder();
  const sub = alice.subscribe('nochat:x', r);
  await waitFor(() => r.unsubscribed.length === 1, 5000, 'refused subscription');
  assert.equal(r.unsubscribed[0].code, 102);
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(alice.getSubscription('nochat:x'), null);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 102);
  assert.equal(errors[0].channel, 'nochat:x');
  assert.equal(alice.state, 'connected');

  // a second subscription to the same channel is a programming error
  alice.subscribe('chat:dup', {});
  assert.throws(() => alice.subscribe('chat:dup', {}), (e) => e.code === 105);
});

test('join and leave', async () => {
  const alice = newClient('alice');
  const bob = newClient('bob', { token: mintToken('bob', { info: { name: 'Bob' } }) });
  await Promise.all([alice.connect(), bob.connect()]);
  const ra = recorder();
  alice.subscribe('chat:jl', ra);
  await waitFor(() => ra.subscribed.length, 5000, 'alice subscribed');
  const rb = recorder();
  const bsub = bob.subscribe('chat:jl', rb);
  await waitFor(() => ra.joins.length === 1, 5000, 'join');
  assert.deepEqual(ra.joins[0], { client: bob.clientId, user: 'bob', info: { name: 'Bob' } });
  bsub.unsubscribe();
  await waitFor(() => ra.leaves.length === 1, 5000, 'leave');
  assert.equal(ra.leaves[0].client, bob.clientId);
  assert.equal(ra.leaves[0].user, 'bob');
  // a disconnect is a leave too
  bob.subscribe('chat:jl', rb);
  await waitFor(() => ra.joins.length === 2, 5000, 'second join');
  const bobId = bob.clientId;
  bob.disconnect();
  await waitFor(() => ra.leaves.length === 2, 5000, 'leave on disconnect');
  assert.equal(ra.leaves[1].client, bobId);
});

test('commands and subscriptions issued before connect() wait for the connection', async () => {
  const alice = newClient('alice');
  const r = recorder();
  alice.subscribe('chat:early', r);
  const published = alice.publish('chat:early', { early: true });
  const presence = alice.presence('chat:early');
  assert.equal(alice.state, 'disconnected');
  await alice.connect();
  const pos = await within(published, 5000, 'queued publish');
  assert.equal(pos.offset, 1);
  await within(presence, 5000, 'queued presence');
  await waitFor(() => r.pubs.length === 1, 5000, 'own publication');
  assert.deepEqual(r.pubs[0].data, { early: true });
});

test('queued commands time out; nothing is accepted after disconnect()', async () => {
  // nothing listens on port 9 of 127.0.0.1: every attempt fails
  const c = new Client('ws://127.0.0.1:9/ws', { timeout: 300, minReconnectDelay: 20, maxReconnectDelay: 100 });
  const disconnects = [];
  c.on('disconnected', (d) => disconnects.push(d));
  c.connect();
  await assert.rejects(within(c.publish('chat:x', 1), 3000, 'timeout'), (e) => e.code === 'timeout');
  await waitFor(() => disconnects.length >= 2, 5000, 'repeated attempts');
  assert.ok(disconnects.every((d) => d.reconnect === true));
  const queued = c.presence('chat:x');
  const connecting = c.connect();
  c.disconnect();
  await assert.rejects(queued, (e) => e.code === 'closed');
  await assert.rejects(connecting, (e) => e.code === 'closed');
  await assert.rejects(c.publish('chat:x', 1), (e) => e.code === 'closed');
  assert.equal(c.state, 'closed');
  assert.deepEqual(disconnects.at(-1), { code: 1000, reason: 'client disconnect', reconnect: false });
});

test('an anonymous connect is refused by this hub: connect() rejects with 101, no reconnect', async () => {
  const c = newClient(null);
  const states = [];
  c.on('state', (s) => states.push(s));
  await assert.rejects(within(c.connect(), 5000, 'refusal'), (e) => e.code === 101);
  assert.equal(c.state, 'closed');
  assert.deepEqual(states, ['connecting', 'closed']);
});

async function runChild(script) {
  const child = spawn(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const code = await within(
    new Promise((resolve) => child.on('exit', resolve)),
    5000,
    'the child process to exit',
  ).catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });
  return { code, out };
}

const libPath = JSON.stringify(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../wshub.js'));

test('Node exits after disconnect() while reconnecting: no timers left', async () => {
  const { code, out } = await runChild(`
    import { Client } from ${libPath};
    const c = new Client('ws://127.0.0.1:9/ws', { minReconnectDelay: 10, maxReconnectDelay: 50 });
    let n = 0;
    c.on('disconnected', () => { if (++n === 3) { c.publish('chat:x', 1).catch(() => {}); c.disconnect(); console.log('done'); } });
    c.connect().catch(() => {});
  `);
  assert.equal(code, 0, out);
  assert.match(out, /done/);
});

test('Node exits after disconnect() while getToken is pending', async () => {
  const { code, out } = await runChild(`
    import { Client } from ${libPath};
    const c = new Client(${JSON.stringify(hub.wsUrl)}, { getToken: () => new Promise(() => {}) });
    c.connect().catch(() => {});
    setTimeout(() => { c.disconnect(); console.log('done'); }, 50);
  `);
  assert.equal(code, 0, out);
  assert.match(out, /done/);
});

test('Node exits after disconnect(): no timers left', async () => {
  const script = `
    import { Client } from ${libPath};
    const c = new Client(${JSON.stringify(hub.wsUrl)}, { token: ${JSON.stringify(mintToken('exit', { ttl: 3600 }))}, getToken: async () => 'unused' });
    await c.connect();
    c.subscribe('chat:exit', {});
    await c.publish('chat:exit', 1);
    await c.history('chat:exit');
    c.disconnect();
    console.log('done');
  `;
  const { code, out } = await runChild(script);
  assert.equal(code, 0, out);
  assert.match(out, /done/);
});
