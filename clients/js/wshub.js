// wshub.js — client for the wshub.v1 protocol (docs/protocol.md).
//
// One ES module, no dependencies, no build step: it runs unchanged in browsers
// (the hub serves it at /wshub.js) and in Node >= 20 with a global WebSocket
// (Node 22+, or Node 20 with --experimental-websocket), or any WHATWG-compatible
// WebSocket implementation passed as the `WebSocket` option.
//
// See README.md for the API and the reconnect / recovery semantics.

export const VERSION = '0.1.0';
export const PROTOCOL = 'wshub.v1';

/** Connection states. */
const DISCONNECTED = 'disconnected';
const CONNECTING = 'connecting';
const CONNECTED = 'connected';
const CLOSED = 'closed';

/** A connection that stayed up this long resets the reconnect backoff. */
const STABLE_CONNECTION_MS = 5000;
/** Reuse the current token on reconnect only while it has at least this much life left. */
const TOKEN_REUSE_MARGIN_MS = 10000;
/** Refresh the token when this fraction of its ttl has elapsed. */
const REFRESH_AT = 0.85;

const now = () =>
  typeof performance !== 'undefined' && typeof performance.now === 'function'
    ? performance.now()
    : Date.now();

/**
 * The error of a failed command, a refused subscription or a refused connect.
 * `code` is the protocol's error code (a number, see docs/protocol.md), or for
 * failures detected by the client itself one of the strings
 * 'timeout' | 'connection_lost' | 'closed', or for a connection refused by a
 * close code the close code (a number from 1000–4999).
 */
export class WshubError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'WshubError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

const noop = () => {};

function deferred() {
  const d = {};
  d.promise = new Promise((resolve, reject) => {
    d.resolve = resolve;
    d.reject = reject;
  });
  d.settled = false;
  // connect() may be called without awaiting it: never an unhandled rejection.
  d.promise.catch(noop);
  return d;
}

function copyPosition(p) {
  return p ? { offset: p.offset, epoch: p.epoch } : null;
}

/** One channel subscription, created by `client.subscribe()`. */
export class Subscription {
  constructor(client, channel, options) {
    this._client = client;
    this._channel = channel;
    this._handlers = options;
    this._position = options.since ? copyPosition(options.since) : null;
    this._state = 'subscribing';
    this._subscribedOnce = false;
    this._needResubscribe = false;
  }

  /** The channel name. */
  get channel() {
    return this._channel;
  }

  /** 'subscribing' (waiting for the server), 'subscribed' or 'unsubscribed'. */
  get state() {
    return this._state;
  }

  /** Position of the last handled publication ({offset, epoch}), or null before the first subscribe reply. */
  get position() {
    return copyPosition(this._position);
  }

  /** Leaves the channel. No more callbacks are called for this subscription. */
  unsubscribe() {
    this._client._removeSubscription(this);
  }

  _call(name, arg) {
    const fn = this._handlers[name];
    if (typeof fn !== 'function') return;
    try {
      fn.call(this._handlers, arg, this);
    } catch (err) {
      this._client._handlerError(err);
    }
  }
}

export class Client {
  /**
   * @param {string|URL} url  the hub's WebSocket endpoint, e.g. ws://127.0.0.1:8080/ws
   * @param {object} [options] see README.md / wshub.d.ts
   */
  constructor(url, options = {}) {
    this._url = String(url);
    const o = options || {};
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError(
        'wshub: no WebSocket implementation (pass options.WebSocket, or run Node 20 with --experimental-websocket)',
      );
    }
    this._opts = {
      name: o.name ?? 'wshub-js',
      version: o.version ?? VERSION,
      minReconnectDelay: Math.max(0, o.minReconnectDelay ?? 500),
      maxReconnectDelay: Math.max(0, o.maxReconnectDelay ?? 20000),
      timeout: o.timeout ?? 10000,
    };
    if (this._opts.maxReconnectDelay < this._opts.minReconnectDelay) {
      this._opts.maxReconnectDelay = this._opts.minReconnectDelay;
    }
    this._token = o.token ?? null;
    this._getToken = typeof o.getToken === 'function' ? o.getToken : null;
    this._tokenDeadline = null; // now()-based time the current token expires, when known
    this._tokenStale = false; // the server said the current token expired

    this._listeners = new Map();
    this._state = DISCONNECTED;
    this._clientId = null;
    this._user = null;
    this._subs = new Map(); // channel -> Subscription the app wants
    this._queue = []; // public commands waiting for a connection
    this._t = null; // the current transport (one WebSocket)
    this._running = false; // between connect() and disconnect() / a terminal close
    this._gen = 0; // bumped by every connection attempt and by disconnect()
    this._attempt = 0; // reconnect attempts since the last stable connection
    this._reconnectTimer = null;
    this._tokenTimers = new Set();
    this._connectD = null;
  }

  // ---------------------------------------------------------------- public API

  /** 'disconnected' | 'connecting' | 'connected' | 'closed' */
  get state() {
    return this._state;
  }

  /** The connection's client id while connected, else null. */
  get clientId() {
    return this._clientId;
  }

  /** The user id of the current (or last) connection: '' for anonymous, null before the first connect. */
  get user() {
    return this._user;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  /** All active subscriptions. */
  get subscriptions() {
    return [...this._subs.values()];
  }

  on(event, handler) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(handler);
    return this;
  }

  off(event, handler) {
    const set = this._listeners.get(event);
    if (set) set.delete(handler);
    return this;
  }

  /**
   * Starts connecting (and reconnecting). Resolves at the first successful
   * connect; rejects with a WshubError when the client gives up (a refused
   * connect, a close code of 4500–4999, or disconnect()).
   */
  connect() {
    if (!this._running) {
      this._running = true;
      this._attempt = 0;
      if (!this._connectD || this._connectD.settled) this._connectD = deferred();
      this._open();
    }
    return this._connectD.promise;
  }

  /** Closes the connection for good: state 'closed', no reconnect, no timers left. */
  disconnect() {
    const wasRunning = this._running;
    this._running = false;
    this._gen++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    for (const timer of this._tokenTimers) clearTimeout(timer);
    this._tokenTimers.clear();
    const t = this._t;
    if (t) {
      this._t = null;
      this._teardown(t, 1000, 'client disconnect');
    }
    this._afterConnectionLoss();
    this._rejectQueue(new WshubError('closed', 'client disconnected'));
    this._settleConnect(new WshubError('closed', 'client disconnected'));
    if (this._state !== CLOSED) {
      this._setState(CLOSED);
      if (wasRunning) {
        this._emit('disconnected', { code: 1000, reason: 'client disconnect', reconnect: false });
      }
    }
  }

  /**
   * Subscribes to `channel` (now, or as soon as connected) and keeps the
   * subscription across reconnects. Throws if the channel already has one.
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== 'string' || channel === '') {
      throw new TypeError('wshub: channel must be a non-empty string');
    }
    if (this._subs.has(channel)) {
      throw new WshubError(105, `already subscribed to ${channel}`, { channel });
    }
    const sub = new Subscription(this, channel, options || {});
    this._subs.set(channel, sub);
    this._sync(channel);
    return sub;
  }

  /** Publishes `data` to `channel`; resolves to the publication's {offset, epoch}. */
  publish(channel, data) {
    return this._call('publish', { channel, data: data === undefined ? null : data });
  }

  /** Resolves to the channel's members: [{client, user, info}]. */
  presence(channel) {
    return this._call('presence', { channel }).then((r) => r.members || []);
  }

  /** Resolves to {position, publications}; publications are {channel, offset, epoch, data, info}. */
  history(channel, options = {}) {
    const params = { channel };
    if (options && options.limit != null) params.limit = options.limit;
    if (options && options.since != null) params.since = copyPosition(options.since);
    return this._call('history', params).then((r) => ({
      position: r.position,
      publications: (r.publications || []).map((p) => toPublication(channel, r.position.epoch, p)),
    }));
  }

  /** Round trip to the server; resolves to {}. */
  ping() {
    return this._call('ping', undefined);
  }

  // ---------------------------------------------------------------- events

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        if (event === 'error') rethrow(err);
        else this._handlerError(err);
      }
    }
  }

  _emitError(err) {
    this._emit('error', err);
  }

  // An application callback threw: report it on 'error', or as an uncaught
  // exception when nobody listens (like an exception in a DOM event handler).
  _handlerError(err) {
    const set = this._listeners.get('error');
    if (set && set.size) this._emit('error', err);
    else rethrow(err);
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', state);
  }

  _settleConnect(err) {
    const d = this._connectD;
    if (!d || d.settled) return;
    d.settled = true;
    if (err) d.reject(err);
    else d.resolve();
  }

  // ---------------------------------------------------------------- connection

  // getToken(), bounded by `timeout`.
  _callGetToken() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._tokenTimers.delete(timer);
        reject(new Error(`no token within ${this._opts.timeout} ms`));
      }, this._opts.timeout);
      this._tokenTimers.add(timer); // disconnect() clears them
      const done = () => {
        clearTimeout(timer);
        this._tokenTimers.delete(timer);
      };
      Promise.resolve()
        .then(() => this._getToken())
        .then(
          (token) => {
            done();
            resolve(token);
          },
          (err) => {
            done();
            reject(err);
          },
        );
    });
  }

  _needFreshToken() {
    if (!this._getToken) return false;
    if (this._token == null || this._token === '' || this._tokenStale) return true;
    if (this._tokenDeadline != null && this._tokenDeadline - now() < TOKEN_REUSE_MARGIN_MS) return true;
    return false;
  }

  async _open() {
    this._reconnectTimer = null;
    const gen = ++this._gen;
    this._setState(CONNECTING);
    if (gen !== this._gen) return;
    let token = this._token;
    if (this._needFreshToken()) {
      try {
        token = await this._callGetToken();
      } catch (err) {
        if (gen !== this._gen || !this._running) return;
        const e = tokenError(err);
        this._emitError(e);
        if (gen !== this._gen || !this._running) return;
        this._setState(DISCONNECTED);
        this._emit('disconnected', { code: 1006, reason: e.message, reconnect: true });
        if (gen !== this._gen || !this._running || this._reconnectTimer) return;
        this._scheduleReconnect();
        return;
      }
      if (gen !== this._gen || !this._running) return;
      this._token = token ?? null;
      this._tokenStale = false;
      this._tokenDeadline = null;
    }

    let ws;
    try {
      ws = new this._WebSocket(this._url, PROTOCOL);
    } catch (err) {
      // An invalid URL: retrying cannot help.
      this._emitError(new WshubError('closed', `cannot open WebSocket: ${err && err.message}`, { cause: err }));
      if (gen !== this._gen) return;
      this._giveUp(new WshubError('closed', `cannot open WebSocket: ${err && err.message}`), {
        code: 1006,
        reason: 'cannot open WebSocket',
      });
      return;
    }
    const t = {
      ws,
      nextId: 1,
      pending: new Map(), // id -> callback(err, result)
      subs: new Map(), // channel -> {sub, state: 'subscribing'|'subscribed'|'unsubscribing'}
      timers: new Set(),
      connected: false,
      connectedAt: 0,
      lastRecv: now(),
      ping: 0,
      pong: 0,
      connectTimer: null,
      hbTimer: null,
      pongTimer: null,
      refreshTimer: null,
      errorTimer: null,
      connectError: null,
      disconnectPush: null,
    };
    this._t = t;
    ws.onopen = () => this._onOpen(t);
    ws.onmessage = (ev) => this._onMessage(t, ev);
    ws.onclose = (ev) => this._lost(t, ev.code, ev.reason);
    // A close event should follow an error, but some implementations (Node 20's
    // undici) never send it for a failed handshake: do not wait for it then.
    ws.onerror = () => {
      if (t !== this._t) return;
      if (ws.readyState === 0 || ws.readyState === 3) this._lost(t, 1006, 'connection failed');
      else this._timer(t, 1000, () => this._abort(t, 1006, 'connection error'), 'errorTimer');
    };
    this._timer(t, this._opts.timeout, () => this._abort(t, 1006, 'connect timeout'), 'connectTimer');
  }

  _onOpen(t) {
    if (t !== this._t) return;
    const params = {};
    if (this._token != null && this._token !== '') params.token = this._token;
    if (this._opts.name) params.name = this._opts.name;
    if (this._opts.version) params.version = this._opts.version;
    this._send(t, 'connect', params, (err, res) => {
      if (t !== this._t) return;
      if (err) {
        t.connectError = err;
        this._emitError(err);
        if (t !== this._t) return;
        // After 101 and 109 the server closes (4500 / 4003) by itself; the
        // connect timer still guards that. Otherwise close now.
        if (err.code !== 101 && err.code !== 109) this._abort(t, 1000, `connect refused: ${err.message}`);
        return;
      }
      this._onConnected(t, res);
    });
  }

  _onConnected(t, res) {
    this._clearTimer(t, 'connectTimer');
    t.connected = true;
    t.connectedAt = now();
    t.ping = Number(res.ping) || 0;
    t.pong = Number(res.pong) || 0;
    this._clientId = res.client ?? null;
    this._user = res.user ?? '';
    this._setTokenTtl(res.ttl);
    this._armHeartbeat(t);
    this._armRefresh(t, res.ttl);
    this._setState(CONNECTED);
    if (t !== this._t) return;
    const info = { client: this._clientId, user: this._user };
    if (res.ttl != null) info.ttl = res.ttl;
    this._emit('connected', info);
    if (t !== this._t) return;
    this._settleConnect(null);
    for (const channel of [...this._subs.keys()]) this._sync(channel);
    const queue = this._queue;
    this._queue = [];
    for (const cmd of queue) this._sendCommand(t, cmd);
  }

  _setTokenTtl(ttl) {
    this._tokenDeadline = ttl == null ? null : now() + Number(ttl) * 1000;
  }

  // Close the WebSocket ourselves (dead, timed out, refused) and go on as if it closed.
  _abort(t, code, reason) {
    if (t !== this._t) return;
    this._lost(t, code, reason);
  }

  // Stop everything of one transport: timers, handlers, pending callbacks.
  _teardown(t, code, reason) {
    for (const timer of t.timers) clearTimeout(timer);
    t.timers.clear();
    const ws = t.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = noop;
    try {
      if (ws.readyState === 0 || ws.readyState === 1) {
        if (code === 1000) ws.close(1000, reason);
        else ws.close();
      }
    } catch {
      // already closing
    }
    const pending = t.pending;
    t.pending = new Map();
    const err = new WshubError('connection_lost', `connection lost (${reason || code})`);
    for (const cb of pending.values()) cb(err);
  }

  // After a transport is gone: subscriptions wait for the next connection.
  _afterConnectionLoss() {
    this._clientId = null;
    for (const sub of this._subs.values()) {
      if (sub._state === 'subscribed') sub._state = 'subscribing';
    }
  }

  _lost(t, code, reason) {
    if (t !== this._t) return;
    this._t = null;
    this._teardown(t, code, reason);
    this._afterConnectionLoss();

    code = code ?? 1006;
    reason = reason ?? '';
    let reconnect = !(code >= 4500 && code <= 4999);
    if (t.disconnectPush) {
      // The push survives proxies that lose close frames; it names the real code.
      code = t.disconnectPush.code ?? code;
      reason = t.disconnectPush.reason ?? reason;
      reconnect = t.disconnectPush.reconnect !== false && !(code >= 4500 && code <= 4999);
    }
    let refusal = null;
    if (t.connectError) {
      const c = t.connectError.code;
      if (c === 109) {
        if (this._getToken) this._tokenStale = true;
        else reconnect = false; // nothing can give us a new token
      } else if (c === 101 || c === 104 || c === 107) {
        reconnect = false;
      }
      if (!reconnect) refusal = t.connectError;
    }
    if (code === 4003 && this._getToken) this._tokenStale = true;
    if (t.connected && now() - t.connectedAt >= STABLE_CONNECTION_MS) this._attempt = 0;
    if (code === 4004) this._attempt = Math.max(this._attempt, 4); // wait longer

    if (!this._running) return;
    const info = { code, reason, reconnect };
    if (!reconnect) {
      this._giveUp(refusal || new WshubError(code, reason || `connection closed (${code})`), info);
      return;
    }
    this._setState(DISCONNECTED);
    this._emit('disconnected', info);
    if (!this._running || this._t || this._reconnectTimer) return; // a handler changed things
    this._scheduleReconnect();
  }

  _giveUp(err, info) {
    this._running = false;
    this._gen++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._rejectQueue(new WshubError('closed', `client closed: ${err.message}`));
    this._settleConnect(err);
    this._setState(CLOSED);
    this._emit('disconnected', { code: info.code, reason: info.reason, reconnect: false });
  }

  _scheduleReconnect() {
    const { minReconnectDelay: min, maxReconnectDelay: max } = this._opts;
    const cap = Math.min(max, min * 2 ** Math.min(this._attempt, 30));
    const delay = Math.random() * cap; // full jitter
    this._attempt++;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._running) this._open();
    }, delay);
  }

  // A timer that dies with its transport.
  _timer(t, ms, fn, slot) {
    if (slot && t[slot]) {
      clearTimeout(t[slot]);
      t.timers.delete(t[slot]);
    }
    const id = setTimeout(() => {
      t.timers.delete(id);
      if (slot && t[slot] === id) t[slot] = null;
      if (t === this._t) fn();
    }, Math.max(0, ms));
    t.timers.add(id);
    if (slot) t[slot] = id;
    return id;
  }

  _clearTimer(t, slot) {
    if (t[slot]) {
      clearTimeout(t[slot]);
      t.timers.delete(t[slot]);
      t[slot] = null;
    }
  }

  // ---------------------------------------------------------------- heartbeat & refresh

  _armHeartbeat(t) {
    if (!t.ping) return;
    const due = t.lastRecv + t.ping * 1000 - now();
    this._timer(t, due, () => this._heartbeat(t), 'hbTimer');
  }

  _heartbeat(t) {
    if (now() - t.lastRecv < t.ping * 1000 - 5) {
      this._armHeartbeat(t);
      return;
    }
    this._send(t, 'ping', undefined, noop);
    const pong = (t.pong || t.ping) * 1000;
    this._timer(t, pong, () => this._abort(t, 1006, 'heartbeat timeout'), 'pongTimer');
  }

  _armRefresh(t, ttl) {
    this._clearTimer(t, 'refreshTimer');
    if (!this._getToken || ttl == null) return;
    this._timer(t, Number(ttl) * 1000 * REFRESH_AT, () => this._refresh(t), 'refreshTimer');
  }

  _retryRefresh(t) {
    const left = this._tokenDeadline == null ? 0 : this._tokenDeadline - now();
    // Not worth it when the token is about to expire: the server then closes
    // with 4003 and the reconnect gets a fresh token.
    if (left > 1000) this._timer(t, Math.min(5000, left / 2), () => this._refresh(t), 'refreshTimer');
  }

  async _refresh(t) {
    let token;
    try {
      token = await this._callGetToken();
    } catch (err) {
      if (t !== this._t) return;
      this._emitError(tokenError(err));
      if (t === this._t) this._retryRefresh(t);
      return;
    }
    if (t !== this._t) return;
    if (token == null || token === '') return;
    this._send(t, 'refresh', { token }, (err, res) => {
      if (t !== this._t) return;
      if (err) {
        this._emitError(err);
        // 101: the server closes with 4500. Others: try again while there is time.
        if (t === this._t && err.code !== 101) this._retryRefresh(t);
        return;
      }
      this._token = token;
      this._tokenStale = false;
      this._setTokenTtl(res.ttl);
      this._armRefresh(t, res.ttl);
    });
  }

  // ---------------------------------------------------------------- frames

  _send(t, method, params, cb) {
    const id = t.nextId++;
    t.pending.set(id, cb);
    const frame = params === undefined ? { id, method } : { id, method, params };
    if (t.ws.readyState === 1) {
      try {
        t.ws.send(JSON.stringify(frame));
      } catch (err) {
        t.pending.delete(id);
        cb(new WshubError('connection_lost', `cannot send ${method}: ${err && err.message}`, { cause: err }));
      }
    }
    // Not open: the close event that follows rejects it.
    return id;
  }

  _onMessage(t, ev) {
    if (t !== this._t) return;
    t.lastRecv = now();
    if (t.pongTimer) {
      this._clearTimer(t, 'pongTimer');
      this._armHeartbeat(t);
    }
    if (typeof ev.data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      this._emitError(new WshubError(107, 'unparsable frame from the server'));
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.push) {
      this._onPush(t, msg);
      return;
    }
    const cb = t.pending.get(msg.id);
    if (!cb) return;
    t.pending.delete(msg.id);
    if (msg.error) {
      cb(new WshubError(msg.error.code, msg.error.message || `error ${msg.error.code}`));
    } else {
      cb(null, msg.result || {});
    }
  }

  _onPush(t, msg) {
    switch (msg.push) {
      case 'pub':
      case 'join':
      case 'leave': {
        const s = t.subs.get(msg.channel);
        if (!s || s.state !== 'subscribed' || this._subs.get(msg.channel) !== s.sub) return;
        const sub = s.sub;
        if (msg.push === 'join') sub._call('onJoin', msg.member);
        else if (msg.push === 'leave') sub._call('onLeave', msg.member);
        else if (sub._position && msg.epoch !== sub._position.epoch) {
          // The stream restarted: resubscribe with our position; recovery
          // reports whether the gap can be filled.
          sub._needResubscribe = true;
          sub._state = 'subscribing';
          this._sync(msg.channel);
        } else {
          this._deliver(sub, toPublication(msg.channel, msg.epoch, msg));
        }
        return;
      }
      case 'unsub': {
        const s = t.subs.get(msg.channel);
        if (!s) return;
        t.subs.delete(msg.channel);
        const sub = s.sub;
        if (this._subs.get(msg.channel) !== sub) {
          this._sync(msg.channel);
          return;
        }
        if (msg.resubscribe) {
          sub._state = 'subscribing';
          this._sync(msg.channel);
        } else {
          this._subs.delete(msg.channel);
          sub._state = 'unsubscribed';
          sub._call('onUnsubscribed', { code: msg.code, reason: msg.reason ?? '' });
        }
        return;
      }
      case 'disconnect':
        t.disconnectPush = { code: msg.code, reason: msg.reason, reconnect: msg.reconnect };
        return;
      default:
      // unknown pushes are ignored (forward compatibility)
    }
  }

  _deliver(sub, pub) {
    if (this._subs.get(sub._channel) !== sub) return;
    const pos = sub._position;
    if (pos && pub.epoch === pos.epoch && pub.offset <= pos.offset) return; // duplicate
    sub._position = { offset: pub.offset, epoch: pub.epoch };
    sub._call('onPublication', pub);
  }

  // ---------------------------------------------------------------- subscriptions

  _removeSubscription(sub) {
    if (this._subs.get(sub._channel) !== sub) return;
    this._subs.delete(sub._channel);
    sub._state = 'unsubscribed';
    this._sync(sub._channel);
  }

  // Bring the server's view of one channel in line with what the app wants, one
  // command at a time per channel (replies may come out of order across channels).
  _sync(channel) {
    const t = this._t;
    if (!t || !t.connected) return;
    const s = t.subs.get(channel);
    if (s && s.state !== 'subscribed') return; // a command is in flight; it resyncs
    const want = this._subs.get(channel);
    if (s) {
      if (want === s.sub && !(want && want._needResubscribe)) return;
      s.state = 'unsubscribing';
      this._send(t, 'unsubscribe', { channel }, (err) => {
        if (t !== this._t) return;
        if (err && (err.code === 100 || err.code === 110)) {
          s.state = 'subscribed';
          this._timer(t, this._retryDelay(), () => this._sync(channel));
          return;
        }
        if (t.subs.get(channel) === s) t.subs.delete(channel);
        this._sync(channel);
      });
      return;
    }
    if (!want) return;
    const since = copyPosition(want._position);
    const params = since ? { channel, since } : { channel };
    const entry = { sub: want, state: 'subscribing' };
    t.subs.set(channel, entry);
    want._needResubscribe = false;
    this._send(t, 'subscribe', params, (err, res) => {
      if (t !== this._t) return;
      if (err) {
        if (t.subs.get(channel) === entry) t.subs.delete(channel);
        if (this._subs.get(channel) !== want) {
          this._sync(channel);
        } else if (err.code === 100 || err.code === 110) {
          this._timer(t, this._retryDelay(), () => this._sync(channel));
        } else if (err.code === 105) {
          // The server still has it: unsubscribe, then subscribe again.
          t.subs.set(channel, { sub: null, state: 'subscribed' });
          this._sync(channel);
        } else {
          this._subs.delete(channel);
          want._state = 'unsubscribed';
          err.channel = channel;
          this._emitError(err);
          want._call('onUnsubscribed', { code: err.code, reason: err.message });
        }
        return;
      }
      entry.state = 'subscribed';
      if (this._subs.get(channel) !== want) {
        this._sync(channel);
        return;
      }
      this._onSubscribed(want, since, res);
      if (t === this._t) this._sync(channel);
    });
  }

  _retryDelay() {
    const { minReconnectDelay: min, maxReconnectDelay: max } = this._opts;
    return Math.max(100, Math.random() * Math.min(max, Math.max(min, 1000) * 2));
  }

  _onSubscribed(sub, since, res) {
    const position = copyPosition(res.position);
    const first = !sub._subscribedOnce;
    sub._subscribedOnce = true;
    sub._state = 'subscribed';
    const recovered = !!res.recovered;
    sub._call('onSubscribed', {
      position: copyPosition(position),
      recoverable: !!res.recoverable,
      recovered,
      resubscribed: !first,
    });
    if (this._subs.get(sub._channel) !== sub) return;
    if (since && recovered) {
      for (const p of res.publications || []) {
        this._deliver(sub, toPublication(sub._channel, position.epoch, p));
        if (this._subs.get(sub._channel) !== sub) return;
      }
      sub._position = position;
    } else {
      sub._position = position;
      if (since) sub._call('onUnrecoverable', { position: copyPosition(position) });
    }
  }

  // ---------------------------------------------------------------- public commands

  _call(method, params) {
    return new Promise((resolve, reject) => {
      if (this._state === CLOSED) {
        reject(new WshubError('closed', 'client is closed'));
        return;
      }
      const cmd = { method, params, resolve, reject, t: null, id: 0, timer: null };
      cmd.timer = setTimeout(() => {
        if (cmd.t) cmd.t.pending.delete(cmd.id);
        else this._queue = this._queue.filter((c) => c !== cmd);
        reject(new WshubError('timeout', `${method} timed out`));
      }, this._opts.timeout);
      const t = this._t;
      if (t && t.connected) this._sendCommand(t, cmd);
      else this._queue.push(cmd);
    });
  }

  _sendCommand(t, cmd) {
    cmd.t = t;
    cmd.id = this._send(t, cmd.method, cmd.params, (err, res) => {
      clearTimeout(cmd.timer);
      if (err) cmd.reject(err);
      else cmd.resolve(res);
    });
  }

  _rejectQueue(err) {
    const queue = this._queue;
    this._queue = [];
    for (const cmd of queue) {
      clearTimeout(cmd.timer);
      cmd.reject(err);
    }
  }
}

function toPublication(channel, epoch, p) {
  const pub = { channel, offset: p.offset, epoch, data: p.data };
  if (p.info !== undefined) pub.info = p.info;
  return pub;
}

function tokenError(err) {
  const msg = err && err.message ? err.message : String(err);
  return new WshubError('get_token', `getToken failed: ${msg}`, { cause: err });
}

function rethrow(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}
