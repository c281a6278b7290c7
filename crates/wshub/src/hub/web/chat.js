// The wshub demo chat: pick a name, join a room, chat, see who is online.
//
// Plain ES module, no build step. The hub serves this page at `/`, the client
// library at `/wshub.js`, and demo tokens at `POST /demo/token`.
//
// Messages are kept sorted by their channel offset, so history loaded on join,
// live publications and publications recovered after a reconnect merge into one
// list without duplicates, whatever order they arrive in.

import { Client } from '/wshub.js';

const HISTORY_LIMIT = 50; // messages loaded on join and after an unrecoverable gap
const MAX_MESSAGES = 500; // older ones are dropped from the page
const ROOM_RE = /^[A-Za-z0-9_.@=/-]{1,64}$/;

const $ = (id) => document.getElementById(id);
const els = {
  joinView: $('join-view'),
  joinForm: $('join-form'),
  nameInput: $('name-input'),
  roomInput: $('room-input'),
  joinButton: $('join-button'),
  joinError: $('join-error'),
  chatView: $('chat-view'),
  roomTitle: $('room-title'),
  state: $('state'),
  leaveButton: $('leave-button'),
  messages: $('messages'),
  sendForm: $('send-form'),
  messageInput: $('message-input'),
  sendButton: $('send-button'),
  onlineList: $('online-list'),
  onlineCount: $('online-count'),
  meName: $('me-name'),
  meUser: $('me-user'),
};

/** The current session (one room), or null on the join screen. */
let session = null;

// ---------------------------------------------------------------------------
// Join screen
// ---------------------------------------------------------------------------

function initJoinForm() {
  const savedName = safeStorage(() => localStorage.getItem('wshub.chat.name'));
  if (savedName) els.nameInput.value = savedName;
  const hashRoom = decodeURIComponent(location.hash.replace(/^#/, ''));
  if (ROOM_RE.test(hashRoom)) els.roomInput.value = hashRoom;

  els.joinForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = els.nameInput.value.trim();
    const room = els.roomInput.value.trim();
    if (name.length < 1 || [...name].length > 32) {
      return showJoinError('Your name must be 1 to 32 characters long.');
    }
    if (!ROOM_RE.test(room)) {
      return showJoinError('A room name is 1 to 64 letters, digits or _ - . @ = /');
    }
    showJoinError('');
    els.joinButton.disabled = true;
    els.joinButton.textContent = 'Joining…';
    try {
      await join(name, room);
    } catch (e) {
      showJoinError(e.message || String(e));
      leave();
    } finally {
      els.joinButton.disabled = false;
      els.joinButton.textContent = 'Join';
    }
  });
  els.leaveButton.addEventListener('click', () => leave());
  els.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    send();
  });
}

function showJoinError(text) {
  els.joinError.textContent = text;
  els.joinError.hidden = !text;
}

/** Asks the hub for a demo token for `name`. */
async function fetchToken(name) {
  let res;
  try {
    res = await fetch('/demo/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name }),
    });
  } catch (e) {
    throw new Error(`Cannot reach the hub: ${e.message}`);
  }
  if (res.status === 404) {
    throw new Error('The demo is not enabled on this hub (set [demo] enabled = true in its config).');
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: handled below
  }
  if (!res.ok) {
    const msg = body && body.error && body.error.message ? body.error.message : `HTTP ${res.status}`;
    throw new Error(`The hub refused the name: ${msg}`);
  }
  if (!body || typeof body.token !== 'string') throw new Error('The hub sent no token.');
  return body;
}

async function join(name, room) {
  const grant = await fetchToken(name);
  safeStorage(() => localStorage.setItem('wshub.chat.name', name));
  const namespace = grant.namespace || 'chat';
  const channel = `${namespace}:${room}`;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}${grant.ws_path || '/ws'}`;

  const s = {
    name,
    room,
    channel,
    user: grant.user,
    myUsers: new Set([grant.user]), // a reconnect after the token expired gets a new demo user id
    token: grant.token,
    client: null,
    sub: null,
    wasConnected: false,
    lostNoticeShown: false,
    epoch: null,
    items: [], // <li> of messages and notices, sorted by their key
    offsets: new Set(),
    members: new Map(), // client id -> member
    presencePending: null, // join/leave events buffered while presence is loading
    closed: false,
  };
  session = s;

  const client = new Client(url, {
    token: grant.token,
    // The client library asks for a token to refresh the connection's one
    // before it expires (while connected), and to reconnect once it expired.
    // A demo token cannot be renewed for the same user id, so there is no
    // refresh (null): the hub closes the connection when the token expires
    // (4003, reconnect), and the reconnect gets a fresh token for the same
    // name — a new demo user id, same name, and recovery fills the gap.
    getToken: async () => {
      if (client.state === 'connected') return null;
      const fresh = await fetchToken(s.name);
      s.token = fresh.token;
      return fresh.token;
    },
    name: 'wshub-demo-chat',
    version: '1',
    minReconnectDelay: 500,
    maxReconnectDelay: 20000,
  });
  s.client = client;

  client.on('state', (state) => onClientState(s, state));
  client.on('connected', (ctx) => {
    if (s !== session) return;
    if (ctx && ctx.user) {
      s.user = ctx.user;
      s.myUsers.add(ctx.user);
    }
    els.meUser.textContent = s.user ? `(${s.user})` : '';
    if (s.wasConnected && s.lostNoticeShown) addNotice(s, 'Reconnected.', 'ok');
    s.wasConnected = true;
    s.lostNoticeShown = false;
  });
  client.on('disconnected', (ctx) => onDisconnected(s, ctx || {}));
  client.on('error', (err) => {
    // Refused commands and connection trouble are WshubErrors (shown where
    // they matter); anything else is a bug in this page's callbacks.
    if (err && err.name === 'WshubError') console.warn('wshub:', err.message, err.code);
    else setTimeout(() => { throw err; });
  });

  showChat(s);
  setBadge('connecting', 'connecting…');
  await client.connect();
  if (s !== session) return;

  s.sub = client.subscribe(channel, {
    onPublication: (pub) => {
      if (s !== session) return;
      if (s.epoch && pub.epoch && pub.epoch !== s.epoch) {
        // A new stream: what we show belongs to the old one.
        resetMessages(s);
        addNotice(s, 'The room’s history was reset.', 'warn', 0);
      }
      if (pub.epoch) s.epoch = pub.epoch;
      addMessage(s, pub);
    },
    onJoin: (member) => {
      if (s !== session) return;
      if (s.presencePending) s.presencePending.push(['join', member]);
      s.members.set(member.client, member);
      renderOnline(s);
    },
    onLeave: (member) => {
      if (s !== session) return;
      if (s.presencePending) s.presencePending.push(['leave', member]);
      s.members.delete(member.client);
      renderOnline(s);
    },
    onSubscribed: (ctx) => {
      if (s !== session) return;
      ctx = ctx || {};
      if (ctx.position && ctx.position.epoch && !s.epoch) s.epoch = ctx.position.epoch;
      // First subscribe: load the latest history. A resubscribe after a
      // reconnect delivers what was missed through onPublication (or calls
      // onUnrecoverable). Either way, who is here may have changed.
      if (!ctx.resubscribed) loadHistory(s, false);
      loadPresence(s);
    },
    onUnrecoverable: (ctx) => {
      if (s !== session) return;
      // Too much was missed (or the stream restarted): start over from the
      // history, with a notice where the gap is.
      const epoch = ctx && ctx.position && ctx.position.epoch ? ctx.position.epoch : null;
      const seen = s.items.filter((it) => it.offset !== undefined);
      const gapAfter = epoch && epoch === s.epoch && seen.length ? seen[seen.length - 1].offset + 0.5 : 0;
      resetMessages(s);
      s.epoch = epoch;
      addNotice(s, 'Some messages could not be recovered while you were away; the latest history was reloaded.', 'warn', gapAfter);
      loadHistory(s, true);
    },
    onUnsubscribed: (ctx) => {
      if (s !== session) return;
      const reason = ctx && ctx.reason ? `: ${ctx.reason}` : '';
      addNotice(s, `You are not in this room any more${reason}.`, 'error');
      s.members.clear();
      renderOnline(s);
    },
  });
}

function leave() {
  const s = session;
  session = null;
  if (s) {
    s.closed = true;
    try {
      if (s.sub) s.sub.unsubscribe();
    } catch {
      // the connection may already be gone
    }
    try {
      if (s.client) s.client.disconnect();
    } catch {
      // ignore
    }
  }
  els.chatView.hidden = true;
  els.joinView.hidden = false;
  els.leaveButton.hidden = true;
  els.roomTitle.hidden = true;
  els.messages.replaceChildren();
  els.onlineList.replaceChildren();
  els.onlineCount.textContent = '0';
  setBadge('idle', 'not connected');
  document.title = 'wshub chat';
  els.nameInput.focus();
}

function showChat(s) {
  els.joinView.hidden = true;
  els.chatView.hidden = false;
  els.leaveButton.hidden = false;
  els.roomTitle.hidden = false;
  els.roomTitle.textContent = `#${s.room}`;
  els.meName.textContent = s.name;
  els.meUser.textContent = s.user ? `(${s.user})` : '';
  els.messages.replaceChildren();
  document.title = `#${s.room} · wshub chat`;
  if (location.hash !== `#${s.room}`) history.replaceState(null, '', `#${encodeURIComponent(s.room)}`);
  updateEmpty(s);
  els.messageInput.focus();
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

function onClientState(s, state) {
  if (s !== session) return;
  switch (state) {
    case 'connected':
      setBadge('connected', 'connected');
      break;
    case 'connecting':
    case 'disconnected':
      if (s.wasConnected) setBadge('reconnecting', 'reconnecting…');
      else setBadge('connecting', 'connecting…');
      break;
    case 'closed':
      setBadge('disconnected', 'disconnected');
      break;
    default:
      setBadge('connecting', String(state));
  }
  els.sendButton.disabled = state !== 'connected';
}

function onDisconnected(s, ctx) {
  if (s !== session) return;
  if (ctx.reconnect === false) {
    const why = ctx.reason ? `${ctx.reason}` : 'closed';
    addNotice(s, `Disconnected by the hub (${why}${ctx.code ? `, code ${ctx.code}` : ''}). Reload the page to join again.`, 'error');
    setBadge('disconnected', 'disconnected');
  } else if (s.wasConnected && !s.lostNoticeShown && ctx.code !== 4003) {
    // (4003: the token expired; the reconnect with a fresh one is routine)
    s.lostNoticeShown = true;
    addNotice(s, 'Connection lost — reconnecting…', 'warn');
  }
}

function setBadge(kind, text) {
  els.state.dataset.state = kind;
  els.state.className = `badge badge-${kind}`;
  els.state.textContent = text;
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

async function loadHistory(s, afterReset) {
  try {
    const res = await s.client.history(s.channel, { limit: HISTORY_LIMIT });
    if (s !== session) return;
    const epoch = res && res.position ? res.position.epoch : null;
    if (epoch && s.epoch && epoch !== s.epoch) {
      // The stream changed between subscribe and history: trust history.
      resetMessages(s);
    }
    if (epoch) s.epoch = epoch;
    for (const pub of (res && res.publications) || []) addMessage(s, pub, false);
    if (!afterReset && res && res.publications && res.publications.length >= HISTORY_LIMIT) {
      addNotice(s, `Showing the last ${HISTORY_LIMIT} messages.`, 'info', 0.25);
    }
  } catch (e) {
    if (s !== session) return;
    addNotice(s, `Could not load the history: ${errorText(e)}`, 'warn');
  }
}

function resetMessages(s) {
  s.items = [];
  s.offsets.clear();
  els.messages.replaceChildren();
  updateEmpty(s);
}

/** The key of the newest item, for placing notices after it. */
function lastKey(s) {
  return s.items.length ? s.items[s.items.length - 1].key : 0;
}

/** Inserts `li` with sort key `key`, keeping the list sorted. */
function insertItem(s, li, key, extra = {}) {
  const stick = isNearBottom();
  const item = { key, li, ...extra };
  let i = s.items.length;
  while (i > 0 && s.items[i - 1].key > key) i--;
  s.items.splice(i, 0, item);
  const next = s.items[i + 1];
  els.messages.insertBefore(li, next ? next.li : null);
  while (s.items.length > MAX_MESSAGES) {
    const old = s.items.shift();
    old.li.remove();
    if (old.offset !== undefined) s.offsets.delete(old.offset);
  }
  const at = s.items.indexOf(item);
  regroup(s, at);
  regroup(s, at + 1);
  updateEmpty(s);
  if (stick) scrollToBottom();
  return item;
}

/** A message right after one of the same sender (within 5 minutes) drops its header. */
function regroup(s, i) {
  const item = s.items[i];
  if (!item || item.offset === undefined) return;
  const prev = s.items[i - 1];
  const cont =
    !!prev &&
    prev.offset !== undefined &&
    prev.group === item.group &&
    (item.ts == null || prev.ts == null || Math.abs(item.ts - prev.ts) < 5 * 60 * 1000);
  item.li.classList.toggle('msg-cont', cont);
}

/** Shows a publication; `live` ones without a `ts` get the time they arrived. */
function addMessage(s, pub, live = true) {
  const offset = Number(pub.offset);
  if (!Number.isFinite(offset) || s.offsets.has(offset)) return; // duplicate
  s.offsets.add(offset);

  const data = pub.data;
  const info = pub.info || null;
  const fromUser = info && info.user ? info.user : '';
  const isServer = !info;
  let name;
  if (data && typeof data === 'object' && typeof data.name === 'string' && data.name) name = data.name;
  else if (isServer) name = 'server';
  else name = fromUser || 'anonymous';
  let text;
  if (data && typeof data === 'object' && typeof data.text === 'string') text = data.text;
  else if (typeof data === 'string') text = data;
  else text = JSON.stringify(data);
  const own = !!fromUser && s.myUsers.has(fromUser);

  const li = document.createElement('li');
  li.className = 'msg' + (own ? ' msg-own' : '') + (isServer ? ' msg-server' : '');
  li.setAttribute('data-testid', 'message');
  li.dataset.offset = String(offset);
  if (fromUser) li.dataset.user = fromUser;

  const avatar = document.createElement('span');
  avatar.className = 'avatar';
  avatar.textContent = isServer ? '★' : initial(name);
  avatar.style.setProperty('--hue', String(hue(fromUser || name)));
  avatar.setAttribute('aria-hidden', 'true');

  const body = document.createElement('div');
  body.className = 'msg-body';
  const meta = document.createElement('div');
  meta.className = 'msg-meta';
  const nameEl = document.createElement('span');
  nameEl.className = 'msg-name';
  nameEl.setAttribute('data-testid', 'message-name');
  nameEl.textContent = name;
  nameEl.title = fromUser || 'published by a backend';
  meta.append(nameEl);
  let ts = data && typeof data === 'object' && typeof data.ts === 'number' ? new Date(data.ts) : live ? new Date() : null;
  if (ts && Number.isNaN(ts.getTime())) ts = null;
  if (ts) {
    li.title = ts.toLocaleString();
    const time = document.createElement('time');
    time.dateTime = ts.toISOString();
    time.textContent = ts.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    meta.append(time);
  }
  const textEl = document.createElement('div');
  textEl.className = 'msg-text';
  textEl.setAttribute('data-testid', 'message-text');
  textEl.textContent = text;
  body.append(meta, textEl);
  li.append(avatar, body);

  insertItem(s, li, offset, { offset, group: `${fromUser}|${isServer}|${name}`, ts: ts ? ts.getTime() : null });
}

function addNotice(s, text, kind = 'info', key) {
  const li = document.createElement('li');
  li.className = `notice notice-${kind}`;
  li.setAttribute('data-testid', 'notice');
  li.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  li.textContent = text;
  // A notice goes after the newest message (or where `key` puts it).
  insertItem(s, li, key !== undefined ? key : Math.floor(lastKey(s)) + 0.5);
}

function updateEmpty(s) {
  const hasMessages = s && s.offsets.size > 0;
  els.messages.classList.toggle('is-empty', !hasMessages);
}

function isNearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

async function send() {
  const s = session;
  if (!s) return;
  const text = els.messageInput.value.trim();
  if (!text) return;
  els.messageInput.value = '';
  try {
    await s.client.publish(s.channel, { name: s.name, text, ts: Date.now() });
  } catch (e) {
    if (s !== session) return;
    addNotice(s, `Not sent: ${errorText(e)}`, 'error');
    if (!els.messageInput.value) els.messageInput.value = text;
  }
  els.messageInput.focus();
}

// ---------------------------------------------------------------------------
// Who is online
// ---------------------------------------------------------------------------

async function loadPresence(s) {
  s.presencePending = [];
  try {
    const members = await s.client.presence(s.channel);
    if (s !== session) return;
    const map = new Map();
    for (const m of members || []) map.set(m.client, m);
    // Replay what happened while the request was in flight.
    for (const [kind, m] of s.presencePending || []) {
      if (kind === 'join') map.set(m.client, m);
      else map.delete(m.client);
    }
    s.members = map;
    renderOnline(s);
  } catch (e) {
    if (s !== session) return;
    els.onlineList.replaceChildren(textLi(`presence unavailable: ${errorText(e)}`, 'muted'));
  } finally {
    s.presencePending = null;
  }
}

function renderOnline(s) {
  // One entry per user, however many tabs they have open.
  const users = new Map();
  for (const m of s.members.values()) {
    const key = m.user || m.client;
    const name = m.info && typeof m.info.name === 'string' && m.info.name ? m.info.name : m.user || 'anonymous';
    const u = users.get(key);
    if (u) u.count++;
    else users.set(key, { user: m.user || '', name, count: 1 });
  }
  const list = [...users.values()].sort((a, b) => {
    const am = s.myUsers.has(a.user);
    const bm = s.myUsers.has(b.user);
    if (am !== bm) return am ? -1 : 1;
    return a.name.localeCompare(b.name);
  });
  const frag = document.createDocumentFragment();
  for (const u of list) {
    const li = document.createElement('li');
    li.className = 'online-item';
    li.setAttribute('data-testid', 'online-item');
    li.dataset.user = u.user;
    li.dataset.name = u.name;
    const dot = document.createElement('span');
    dot.className = 'avatar avatar-small';
    dot.textContent = initial(u.name);
    dot.style.setProperty('--hue', String(hue(u.user || u.name)));
    const name = document.createElement('span');
    name.className = 'online-name';
    name.textContent = u.name;
    li.append(dot, name);
    if (s.myUsers.has(u.user)) li.append(tag('you'));
    if (u.count > 1) li.append(tag(`${u.count} tabs`));
    li.title = u.user;
    frag.append(li);
  }
  els.onlineList.replaceChildren(frag);
  els.onlineCount.textContent = String(list.length);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function tag(text) {
  const t = document.createElement('span');
  t.className = 'tag';
  t.textContent = text;
  return t;
}

function textLi(text, cls) {
  const li = document.createElement('li');
  li.className = cls;
  li.textContent = text;
  return li;
}

function initial(name) {
  const ch = [...String(name).trim()][0];
  return ch ? ch.toUpperCase() : '?';
}

/** A stable colour (hue in degrees) for a user: FNV-1a of the id. */
function hue(str) {
  let h = 0x811c9dc5;
  for (const ch of String(str)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193) >>> 0;
  return h % 360;
}

function errorText(e) {
  if (!e) return 'unknown error';
  if (typeof e === 'string') return e;
  if (e.message) return e.code ? `${e.message} (${e.code})` : e.message;
  return String(e);
}

function safeStorage(f) {
  try {
    return f();
  } catch {
    return null; // storage blocked (privacy settings): not essential
  }
}

initJoinForm();
