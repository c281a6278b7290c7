// Protocol corner cases the real hub does not produce on demand, against a
// scripted WebSocket passed as the `WebSocket` option.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../wshub.js';
import { waitFor, recorder, sleep } from './_hub.mjs';

/** A scripted server: `onCommand(socket, cmd)` answers; defaults answer connect and subscribe. */
function fakeServer() {
  const server = {
    sockets: [],
    commands: [],
    subscribeResult: () => ({ position: { offset: 0, epoch: 'e1' }, recoverable: true, recovered: false }),
    onCommand(ws, cmd) {
      if (cmd.method === 'connect') ws.reply(cmd.id, { client: `c${server.sockets.length}`, user: 'u', ping: 25, pong: 10 });
      else if (cmd.method === 'subscribe') ws.reply(cmd.id, server.subscribeResult(cmd));
      else ws.reply(cmd.id, {});
    },
    get last() {
      return server.sockets.at(-1);
    },
  };
  class FakeWebSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      server.sockets.push(this);
      setTimeout(() => {
        if (this.readyState !== 0) return;
        if (server.refuse) {
          this.readyState = 3;
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: '' });
          return;
        }
        this.readyState = 1;
        this.onopen?.({});
      }, 1);
    }
    send(data) {
      const cmd = JSON.parse(data);
      this.sent.push(cmd);
      server.commands.push(cmd);
      setTimeout(() => server.onCommand(this, cmd), 0);
    }
    close(code = 1005, reason = '') {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
    // server side
    reply(id, result) {
      this.frame({ id, result });
    }
    replyError(id, code, message) {
      this.frame({ id, error: { code, message } });
    }
    push(obj) {
      this.frame(obj);
    }
    frame(obj) {
      if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(obj) });
    }
    serverClose(code, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  server.WebSocket = FakeWebSocket;
  return server;
}

function fakeClient(server, options = {}) {
  const c = new Client('ws://fake/ws', {
    token: 't',
    WebSocket: server.WebSocket,
    minReconnectDelay: 10,
    maxReconnectDelay: 50,
    ...options,
  });
  return c;
}

const subscribes = (server) => server.commands.filter((c) => c.method === 'subscribe');

test('the subprotocol is offered and connect carries token, name and version', async () => {
  const server = fakeServer();
  const c = fakeClient(server, { name: 'app', version: '2.0' });
  await c.connect();
  assert.equal(server.last.protocol, 'wshub.v1');
  assert.deepEqual(server.commands[0], {
    id: 1,
    method: 'connect',
    params: { token: 't', name: 'app', version: '2.0' },
  });
  c.disconnect();
});

test('pub pushes at or below the last handled offset are dropped', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  await c.connect();
  const r = recorder();
  const sub = c.subscribe('chat:a', r);
  await waitFor(() => r.subscribed.length, 2000, 'subscribed');
  const ws = server.last;
  for (const offset of [1, 2, 2, 1, 3, 3, 5]) {
    ws.push({ push: 'pub', channel: 'chat:a', offset, epoch: 'e1', data: offset });
  }
  ws.push({ push: 'pub', channel: 'chat:other', offset: 9, epoch: 'e1', data: 'not ours' });
  assert.deepEqual(r.pubs.map((p) => p.offset), [1, 2, 3, 5]);
  assert.deepEqual(sub.position, { offset: 5, epoch: 'e1' });
  c.disconnect();
});

test('a pub push with a new epoch resubscribes with `since`; recovery decides', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  await c.connect();
  const r = recorder();
  c.subscribe('chat:a', r);
  await waitFor(() => r.subscribed.length, 2000, 'subscribed');
  const ws = server.last;
  ws.push({ push: 'pub', channel: 'chat:a', offset: 1, epoch: 'e1', data: 1 });
  server.subscribeResult = () => ({ position: { offset: 4, epoch: 'e2' }, recoverable: true, recovered: false });
  ws.push({ push: 'pub', channel: 'chat:a', offset: 4, epoch: 'e2', data: 'new epoch' });
  await waitFor(() => r.unrecoverable.length === 1, 2000, 'onUnrecoverable');
  const methods = server.commands.slice(-2).map((cmd) => [cmd.method, cmd.params]);
  assert.deepEqual(methods, [
    ['unsubscribe', { channel: 'chat:a' }],
    ['subscribe', { channel: 'chat:a', since: { offset: 1, epoch: 'e1' } }],
  ]);
  assert.deepEqual(r.unrecoverable[0], { position: { offset: 4, epoch: 'e2' } });
  assert.equal(r.subscribed.at(-1).resubscribed, true);
  ws.push({ push: 'pub', channel: 'chat:a', offset: 5, epoch: 'e2', data: 5 });
  assert.deepEqual(r.pubs.map((p) => p.data), [1, 5]);
  c.disconnect();
});

test('unsub with resubscribe: true resubscribes with `since`; recovered duplicates are dropped', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  await c.connect();
  const r = recorder();
  c.subscribe('chat:a', r);
  await waitFor(() => r.subscribed.length, 2000, 'subscribed');
  const ws = server.last;
  ws.push({ push: 'pub', channel: 'chat:a', offset: 1, epoch: 'e1', data: 1 });
  ws.push({ push: 'pub', channel: 'chat:a', offset: 2, epoch: 'e1', data: 2 });
  server.subscribeResult = () => ({
    position: { offset: 4, epoch: 'e1' },
    recoverable: true,
    recovered: true,
    publications: [
      { offset: 2, data: 2 },
      { offset: 3, data: 3 },
      { offset: 4, data: 4, info: { client: 'x', user: 'y' } },
    ],
  });
  ws.push({ push: 'unsub', channel: 'chat:a', code: 111, reason: 'stream interrupted', resubscribe: true });
  await waitFor(() => r.pubs.length === 4, 2000, 'recovered publications');
  assert.deepEqual(subscribes(server).at(-1).params, { channel: 'chat:a', since: { offset: 2, epoch: 'e1' } });
  assert.deepEqual(r.pubs.map((p) => p.offset), [1, 2, 3, 4]);
  assert.deepEqual(r.pubs[3], { channel: 'chat:a', offset: 4, epoch: 'e1', data: 4, info: { client: 'x', user: 'y' } });
  assert.deepEqual(r.unsubscribed, []);
  assert.equal(r.subscribed.at(-1).recovered, true);
  c.disconnect();
});

test('replies are matched by id, whatever their order', async () => {
  const server = fakeServer();
  const held = [];
  const base = server.onCommand;
  server.onCommand = (ws, cmd) => {
    if (cmd.method === 'publish') {
      held.push([ws, cmd]);
      if (held.length === 3) {
        for (const [w, c] of held.reverse()) w.reply(c.id, { offset: c.params.data, epoch: 'e' });
      }
    } else base(ws, cmd);
  };
  const c = fakeClient(server);
  await c.connect();
  const results = await Promise.all([c.publish('a', 1), c.publish('a', 2), c.publish('a', 3)]);
  assert.deepEqual(results.map((r) => r.offset), [1, 2, 3]);
  const ids = server.commands.map((cmd) => cmd.id);
  assert.equal(new Set(ids).size, ids.length, 'distinct ids');
  c.disconnect();
});

test('a disconnect push with reconnect: false wins over a lost close frame', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  await c.connect();
  const events = [];
  c.on('disconnected', (d) => events.push(d));
  server.last.push({ push: 'disconnect', code: 4503, reason: 'banned', reconnect: false });
  server.last.serverClose(1006);
  assert.deepEqual(events, [{ code: 4503, reason: 'banned', reconnect: false }]);
  assert.equal(c.state, 'closed');
  await sleep(100);
  assert.equal(server.sockets.length, 1, 'no reconnect');
});

test('a disconnect push with reconnect: true reconnects and resubscribes', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  await c.connect();
  const r = recorder();
  c.subscribe('chat:a', r);
  await waitFor(() => r.subscribed.length, 2000, 'subscribed');
  server.last.push({ push: 'pub', channel: 'chat:a', offset: 7, epoch: 'e1', data: 7 });
  server.subscribeResult = () => ({ position: { offset: 7, epoch: 'e1' }, recoverable: true, recovered: true });
  server.last.push({ push: 'disconnect', code: 4000, reason: 'shutdown', reconnect: true });
  server.last.serverClose(4000, 'shutdown');
  await waitFor(() => r.subscribed.length === 2, 2000, 'resubscribed');
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(subscribes(server).at(-1).params, { channel: 'chat:a', since: { offset: 7, epoch: 'e1' } });
  // the new connection starts its ids at 1 with connect
  assert.deepEqual(server.last.sent[0].id, 1);
  assert.equal(server.last.sent[0].method, 'connect');
  c.disconnect();
});

test('reconnect delays back off exponentially with full jitter', async () => {
  const server = fakeServer();
  server.refuse = true;
  const c = fakeClient(server, { minReconnectDelay: 20, maxReconnectDelay: 160 });
  const attempts = [];
  c.on('state', (s) => s === 'connecting' && attempts.push(performance.now()));
  const random = Math.random;
  Math.random = () => 0.999999; // the top of each jitter range
  try {
    c.connect();
    await waitFor(() => attempts.length >= 7, 5000, 'seven attempts');
  } finally {
    Math.random = random;
    c.disconnect();
  }
  const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
  const caps = [20, 40, 80, 160, 160, 160];
  gaps.forEach((gap, i) => assert.ok(gap >= caps[i] - 2, `gap ${i}: ${gap} < ${caps[i]}`));
  // and never above the cap (generous margin for a busy machine)
  assert.ok(gaps.every((gap) => gap < 160 + 400), gaps.join());
});

test('a connect refused with 107 is final; with 100 it is retried', async () => {
  const server = fakeServer();
  let refusals = 0;
  const base = server.onCommand;
  server.onCommand = (ws, cmd) => {
    if (cmd.method === 'connect' && refusals < 2) {
      refusals++;
      ws.replyError(cmd.id, 100, 'internal server error');
    } else base(ws, cmd);
  };
  const c = fakeClient(server);
  c.on('error', () => {});
  await c.connect();
  assert.equal(server.sockets.length, 3);
  c.disconnect();

  const server2 = fakeServer();
  server2.onCommand = (ws, cmd) => ws.replyError(cmd.id, 107, 'invalid field `params.name`');
  const c2 = fakeClient(server2);
  c2.on('error', () => {});
  await assert.rejects(c2.connect(), (e) => e.code === 107 && /params.name/.test(e.message));
  assert.equal(c2.state, 'closed');
  assert.equal(server2.sockets.length, 1);
});

test('exceptions in app callbacks are reported on "error" and do not break the client', async () => {
  const server = fakeServer();
  const c = fakeClient(server);
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await c.connect();
  const seen = [];
  c.subscribe('chat:a', {
    onPublication(p) {
      seen.push(p.offset);
      if (p.offset === 1) throw new Error('app bug');
    },
  });
  await waitFor(() => subscribes(server).length === 1, 2000, 'subscribe sent');
  await sleep(10);
  server.last.push({ push: 'pub', channel: 'chat:a', offset: 1, epoch: 'e1', data: 1 });
  server.last.push({ push: 'pub', channel: 'chat:a', offset: 2, epoch: 'e1', data: 2 });
  assert.deepEqual(seen, [1, 2]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].message, 'app bug');
  c.disconnect();
});

test('unsubscribe() while the subscribe reply is pending leaves the channel on the server', async () => {
  const server = fakeServer();
  let pendingSubscribe = null;
  const base = server.onCommand;
  server.onCommand = (ws, cmd) => {
    if (cmd.method === 'subscribe' && !pendingSubscribe) pendingSubscribe = [ws, cmd];
    else base(ws, cmd);
  };
  const c = fakeClient(server);
  await c.connect();
  const r = recorder();
  const sub = c.subscribe('chat:a', r);
  await waitFor(() => pendingSubscribe, 2000, 'subscribe sent');
  sub.unsubscribe();
  const r2 = recorder();
  c.subscribe('chat:a', r2); // a new subscription to the same channel
  const [ws, cmd] = pendingSubscribe;
  ws.reply(cmd.id, server.subscribeResult(cmd));
  await waitFor(() => r2.subscribed.length === 1, 2000, 'second subscription');
  assert.deepEqual(
    server.commands.slice(1).map((x) => x.method),
    ['subscribe', 'unsubscribe', 'subscribe'],
  );
  assert.deepEqual(r.subscribed, [], 'the first subscription never hears of it');
  c.disconnect();
});

test('a failing getToken counts as a failed attempt and is retried', async () => {
  const server = fakeServer();
  let calls = 0;
  const c = fakeClient(server, {
    token: null,
    getToken: async () => {
      if (++calls <= 2) throw new Error('token service down');
      return 'fresh';
    },
  });
  const errors = [];
  const disconnects = [];
  c.on('error', (e) => errors.push(e));
  c.on('disconnected', (d) => disconnects.push(d));
  await c.connect();
  assert.equal(calls, 3);
  assert.deepEqual(errors.map((e) => [e.code, e.cause.message]), [
    ['get_token', 'token service down'],
    ['get_token', 'token service down'],
  ]);
  assert.equal(disconnects.length, 2);
  assert.ok(disconnects.every((d) => d.reconnect && /getToken failed/.test(d.reason)));
  assert.equal(server.sockets.length, 1);
  assert.equal(server.commands[0].params.token, 'fresh');
  c.disconnect();
});

test('a getToken that never answers is bounded by `timeout`', async () => {
  const server = fakeServer();
  let calls = 0;
  const c = fakeClient(server, {
    token: null,
    timeout: 200,
    getToken: () => (++calls === 1 ? new Promise(() => {}) : 'late'),
  });
  c.on('error', () => {});
  await c.connect();
  assert.equal(calls, 2);
  assert.equal(server.commands[0].params.token, 'late');
  c.disconnect();
});
