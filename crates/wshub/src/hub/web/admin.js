// The wshub admin dashboard: live counts, charts, nodes, a channel browser,
// publish and disconnect. Plain ES module, no build step; talks to the hub's
// HTTP API on the same origin with the API key the user enters.

const POLL_MS = 1000;
const WINDOW = 60; // samples kept for the charts (one per poll)
const HISTORY_LIMIT = 20;
const KEY_STORAGE = 'wshub.admin.apikey';

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let apiKey = null;

/** Calls the hub's API: GET without a body, POST with one. */
async function api(path, body) {
  const init = { headers: { Authorization: `apikey ${apiKey}` }, cache: 'no-store' };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 0, `cannot reach the hub (${e.message})`);
  }
  let json = null;
  const text = await res.text();
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const err = json && json.error ? json.error : null;
    throw new ApiError(res.status, err ? err.code : 0, err ? err.message : text.trim() || `HTTP ${res.status}`);
  }
  return json;
}

function explain(e, what) {
  if (!(e instanceof ApiError)) return `${what}: ${e.message || e}`;
  switch (e.status) {
    case 0:
      return `Cannot reach the hub: ${e.message}.`;
    case 401:
      return 'Wrong API key: the hub refused it.';
    case 403:
      return 'The hub’s HTTP API is off: set api.key in its config.';
    default:
      return `${what}: ${e.message} (HTTP ${e.status}${e.code ? `, code ${e.code}` : ''})`;
  }
}

// ---------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------

function storage(f) {
  try {
    return f(sessionStorage);
  } catch {
    return null;
  }
}

function showLogin(message) {
  stopPolling();
  $('dashboard').hidden = true;
  $('node-info').hidden = true;
  $('login-view').hidden = false;
  const err = $('login-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('api-key').focus();
}

async function login(key) {
  apiKey = key;
  const btn = $('login-button');
  btn.disabled = true;
  try {
    await api('/api/admin/stats'); // checks the key
    storage((s) => s.setItem(KEY_STORAGE, key));
    $('login-view').hidden = true;
    $('dashboard').hidden = false;
    $('node-info').hidden = false;
    resetSamples();
    startPolling();
  } catch (e) {
    apiKey = null;
    storage((s) => s.removeItem(KEY_STORAGE));
    if (e instanceof ApiError && e.status === 404) {
      showLogin('This hub has no admin endpoint (/api/admin/stats): is it an older version?');
    } else {
      showLogin(explain(e, 'Cannot open the dashboard'));
    }
  } finally {
    btn.disabled = false;
  }
}

function logout(message) {
  apiKey = null;
  storage((s) => s.removeItem(KEY_STORAGE));
  $('api-key').value = '';
  showLogin(message);
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

let pollTimer = null;
let polling = false;
let pollGeneration = 0;

/** Polls every POLL_MS (never two polls at once); the first poll right away. */
function startPolling() {
  stopPolling();
  polling = true;
  const gen = ++pollGeneration;
  const tick = async () => {
    if (!polling || gen !== pollGeneration) return;
    const started = performance.now();
    await pollOnce(gen);
    if (!polling || gen !== pollGeneration) return;
    pollTimer = setTimeout(tick, Math.max(100, POLL_MS - (performance.now() - started)));
  };
  tick();
}

function stopPolling() {
  polling = false;
  pollGeneration++;
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

async function pollOnce(gen) {
  const [stats, nodes, channels] = await Promise.allSettled([
    api('/api/admin/stats'),
    api('/api/nodes'),
    api('/api/channels'),
  ]);
  if (gen !== pollGeneration) return;
  const failures = [stats, nodes, channels].filter((r) => r.status === 'rejected').map((r) => r.reason);
  if (failures.some((e) => e instanceof ApiError && e.status === 401)) {
    logout('The hub no longer accepts this API key.');
    return;
  }
  if (stats.status === 'fulfilled') onStats(stats.value);
  if (nodes.status === 'fulfilled') renderNodes(nodes.value);
  if (channels.status === 'fulfilled') renderChannels(channels.value);
  if (selected) refreshDetail(selected, gen);

  const banner = $('poll-error');
  const status = $('poll-status');
  if (failures.length) {
    banner.textContent = explain(failures[0], 'Update failed');
    banner.hidden = false;
    status.textContent = 'update failed';
    status.dataset.state = 'error';
    status.className = 'badge badge-error';
  } else {
    banner.hidden = true;
    status.textContent = `live · ${new Date().toLocaleTimeString()}`;
    status.dataset.state = 'live';
    status.className = 'badge badge-ok';
  }
}

// ---------------------------------------------------------------------------
// Stats and charts
// ---------------------------------------------------------------------------

let prev = null; // {t, stats}
const series = {
  connections: [],
  msgIn: [],
  msgOut: [],
  bytesIn: [],
  bytesOut: [],
};

function resetSamples() {
  prev = null;
  for (const k of Object.keys(series)) series[k] = [];
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > WINDOW) arr.shift();
}

function onStats(s) {
  const t = performance.now();
  setStat('stat-connections', s.connections, fmtInt(s.connections));
  $('stat-sessions').textContent = s.sessions !== undefined ? `${fmtInt(s.sessions)} sessions` : '';
  setStat('stat-channels', s.channels, fmtInt(s.channels));
  setStat('stat-subscriptions', s.subscriptions, fmtInt(s.subscriptions));
  setStat('stat-queue-drops', s.queue_drops, fmtInt(s.queue_drops));
  setStat('stat-slow-consumers', s.slow_consumers, fmtInt(s.slow_consumers));
  const pubs = s.publications || {};
  const pubTotal = Object.values(pubs).reduce((a, b) => a + (Number(b) || 0), 0);
  setStat('stat-publications', pubTotal, fmtInt(pubTotal));
  $('stat-publications-split').textContent = Object.entries(pubs).map(([k, v]) => `${fmtInt(v)} ${k}`).join(' · ');
  setStat('stat-msg-in', s.messages_received, `${fmtInt(s.messages_received)} total`);
  setStat('stat-msg-out', s.messages_sent, `${fmtInt(s.messages_sent)} total`);
  setStat('stat-bytes-in', s.bytes_received, `${fmtBytes(s.bytes_received)} total`);
  setStat('stat-bytes-out', s.bytes_sent, `${fmtBytes(s.bytes_sent)} total`);

  $('node-name').textContent = s.node || '–';
  $('node-uptime').textContent = fmtDuration(s.uptime_seconds);
  $('draining').hidden = !s.draining;

  renderCounts('disconnects-body', s.disconnects, 'warn');
  renderCounts('rejects-body', s.rejects, 'error');

  push(series.connections, Number(s.connections) || 0);
  if (prev) {
    const dt = Math.max(0.001, (t - prev.t) / 1000);
    // A counter that went down means the hub restarted: count from zero.
    const rate = (a, b) => Math.max(0, (Number(a) || 0) - (b > a ? 0 : Number(b) || 0)) / dt;
    const p = prev.stats;
    const r = {
      msgIn: rate(s.messages_received, p.messages_received),
      msgOut: rate(s.messages_sent, p.messages_sent),
      bytesIn: rate(s.bytes_received, p.bytes_received),
      bytesOut: rate(s.bytes_sent, p.bytes_sent),
    };
    push(series.msgIn, r.msgIn);
    push(series.msgOut, r.msgOut);
    push(series.bytesIn, r.bytesIn);
    push(series.bytesOut, r.bytesOut);
    setStat('stat-msg-in-rate', r.msgIn, fmtRate(r.msgIn));
    setStat('stat-msg-out-rate', r.msgOut, fmtRate(r.msgOut));
    setStat('stat-bytes-in-rate', r.bytesIn, fmtBytes(r.bytesIn));
    setStat('stat-bytes-out-rate', r.bytesOut, fmtBytes(r.bytesOut));
  }
  prev = { t, stats: s };
  drawCharts();
}

function setStat(id, raw, text) {
  const el = $(id);
  el.textContent = text;
  el.dataset.value = raw === undefined || raw === null ? '' : String(raw);
}

/** The reasons counted so far, largest first; the zero ones in one line. */
function renderCounts(tbodyId, counts, kind) {
  const tbody = $(tbodyId);
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const rows = entries
    .filter(([, n]) => n > 0)
    .map(([reason, n]) => {
      const tr = document.createElement('tr');
      tr.dataset.reason = reason;
      tr.className = `nonzero nonzero-${kind}`;
      tr.append(td(reason.replace(/_/g, ' ')), td(fmtInt(n), 'num'));
      return tr;
    });
  const zero = entries.filter(([, n]) => !(n > 0)).map(([reason]) => reason.replace(/_/g, ' '));
  if (zero.length) {
    const tr = emptyRow(2, rows.length ? `0: ${zero.join(', ')}` : `none yet (${zero.join(', ')})`);
    tr.className = 'zero-reasons';
    rows.push(tr);
  } else if (!rows.length) {
    rows.push(emptyRow(2, 'none'));
  }
  tbody.replaceChildren(...rows);
}

function drawCharts() {
  const css = getComputedStyle(document.documentElement);
  const colIn = css.getPropertyValue('--in').trim() || '#3b5bdb';
  const colOut = css.getPropertyValue('--out').trim() || '#e8590c';
  drawChart($('chart-connections'), [{ values: series.connections, color: colIn, fill: true }], fmtInt, 1);
  drawChart($('chart-messages'), [{ values: series.msgIn, color: colIn }, { values: series.msgOut, color: colOut }], fmtRate, 1);
  drawChart($('chart-bytes'), [{ values: series.bytesIn, color: colIn }, { values: series.bytesOut, color: colOut }], fmtBytes, 100);
}

/** Draws line series (newest sample at the right edge) with a light grid
 * of three steps, each a round number at least `minStep`. */
function drawChart(canvas, lines, fmt, minStep) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);

  const css = getComputedStyle(document.documentElement);
  const grid = css.getPropertyValue('--grid').trim() || '#e5e7eb';
  const muted = css.getPropertyValue('--muted').trim() || '#6b7280';

  const padL = 4;
  const padR = 56; // room for the scale labels
  const padT = 8;
  const padB = 6;
  const plotW = w - padL - padR;
  const plotH = h - padT - padB;

  let max = 0;
  for (const l of lines) for (const v of l.values) max = Math.max(max, v);
  const stepV = niceStep(max / 3, minStep);
  max = stepV * 3;

  ctx.font = '11px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const y = Math.round(padT + (plotH * i) / 3) + 0.5;
    ctx.strokeStyle = grid;
    ctx.beginPath();
    ctx.moveTo(padL, y);
    ctx.lineTo(padL + plotW, y);
    ctx.stroke();
    ctx.fillStyle = muted;
    ctx.fillText(fmt((max * (3 - i)) / 3), padL + plotW + 6, y);
  }

  const step = plotW / (WINDOW - 1);
  for (const l of lines) {
    const vals = l.values;
    if (!vals.length) continue;
    const x0 = padL + plotW - (vals.length - 1) * step;
    const yOf = (v) => padT + plotH - (max > 0 ? (v / max) * plotH : 0);
    ctx.beginPath();
    vals.forEach((v, i) => {
      const x = x0 + i * step;
      if (i === 0) ctx.moveTo(x, yOf(v));
      else ctx.lineTo(x, yOf(v));
    });
    ctx.strokeStyle = l.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    ctx.stroke();
    if (l.fill && vals.length > 1) {
      ctx.lineTo(x0 + (vals.length - 1) * step, padT + plotH);
      ctx.lineTo(x0, padT + plotH);
      ctx.closePath();
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = l.color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    // the newest value as a dot
    const last = vals[vals.length - 1];
    ctx.beginPath();
    ctx.arc(x0 + (vals.length - 1) * step, yOf(last), 3, 0, Math.PI * 2);
    ctx.fillStyle = l.color;
    ctx.fill();
  }
}

/** The smallest of 1, 2, 5, 10, 20, 50, … (times 10^k) that is ≥ v and ≥ min. */
function niceStep(v, min) {
  v = Math.max(v, min);
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * exp * (1 + 1e-9)) return m * exp;
  return 10 * exp;
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

function renderNodes(body) {
  const nodes = (body && body.nodes) || [];
  const maxConn = Math.max(1, ...nodes.map((n) => n.connections || 0));
  const rows = nodes.map((n) => {
    const tr = document.createElement('tr');
    tr.dataset.node = n.node;
    tr.setAttribute('data-testid', 'node-row');
    const name = td('', 'mono');
    name.textContent = n.node;
    if (n.self) {
      const t = document.createElement('span');
      t.className = 'tag';
      t.textContent = 'this node';
      name.append(' ', t);
    }
    const conn = td('', 'num');
    const bar = document.createElement('span');
    bar.className = 'load';
    bar.style.setProperty('--load', String((n.connections || 0) / maxConn));
    conn.append(bar, document.createTextNode(fmtInt(n.connections)));
    tr.append(name, conn, td(fmtInt(n.channels), 'num'), td(fmtDuration(n.uptime_seconds), 'num'));
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(4, 'no nodes reported'));
  $('nodes-body').replaceChildren(...rows);
}

// ---------------------------------------------------------------------------
// Channel browser
// ---------------------------------------------------------------------------

let channels = [];
let selected = null;
let detailSeq = 0;
let lastDetail = { presence: '', history: '' };

function renderChannels(body) {
  channels = (body && body.channels) || [];
  const filter = $('channel-filter').value.trim().toLowerCase();
  const shown = channels.filter((c) => !filter || c.channel.toLowerCase().includes(filter));
  const items = shown.map((c) => {
    const li = document.createElement('li');
    li.setAttribute('data-testid', 'channel-item');
    li.dataset.channel = c.channel;
    li.className = c.channel === selected ? 'selected' : '';
    const btn = document.createElement('button');
    btn.type = 'button';
    const name = document.createElement('span');
    name.className = 'mono';
    name.textContent = c.channel;
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = fmtInt(c.subscribers);
    btn.append(name, count);
    btn.addEventListener('click', () => selectChannel(c.channel));
    li.append(btn);
    return li;
  });
  if (!items.length) {
    const li = document.createElement('li');
    li.className = 'muted empty';
    li.textContent = channels.length ? 'no channel matches' : 'no channels with subscribers';
    items.push(li);
  }
  $('channel-list').replaceChildren(...items);
  if (selected) {
    const c = channels.find((x) => x.channel === selected);
    $('detail-subscribers').textContent = fmtInt(c ? c.subscribers : 0);
  }
}

function selectChannel(channel) {
  selected = channel;
  lastDetail = { presence: '', history: '' };
  $('channel-placeholder').hidden = true;
  $('channel-info').hidden = false;
  $('detail-name').textContent = channel;
  $('detail-presence').replaceChildren(mutedLi('loading…'));
  $('detail-history').replaceChildren(mutedLi('loading…'));
  for (const li of $('channel-list').children) li.classList.toggle('selected', li.dataset.channel === channel);
  const c = channels.find((x) => x.channel === channel);
  $('detail-subscribers').textContent = fmtInt(c ? c.subscribers : 0);
  if (!$('publish-channel').value) $('publish-channel').value = channel;
  refreshDetail(channel, pollGeneration);
}

async function refreshDetail(channel, gen) {
  const seq = ++detailSeq;
  const [presence, history] = await Promise.allSettled([
    api('/api/presence', { channel }),
    api('/api/history', { channel, limit: HISTORY_LIMIT }),
  ]);
  // Only the newest request for the selected channel may draw.
  if (seq !== detailSeq || channel !== selected || gen !== pollGeneration) return;
  renderPresence(presence);
  renderHistory(history);
}

function renderPresence(r) {
  const key = r.status === 'fulfilled' ? JSON.stringify(r.value) : `error:${r.reason && r.reason.message}`;
  if (key === lastDetail.presence) return;
  lastDetail.presence = key;
  const ul = $('detail-presence');
  if (r.status === 'rejected') {
    ul.replaceChildren(mutedLi(unavailable(r.reason, 'presence')));
    return;
  }
  const members = (r.value && r.value.members) || [];
  members.sort((a, b) => memberName(a).localeCompare(memberName(b)) || a.client.localeCompare(b.client));
  const items = members.map((m) => {
    const li = document.createElement('li');
    li.setAttribute('data-testid', 'presence-item');
    li.dataset.user = m.user || '';
    li.dataset.client = m.client;
    const who = document.createElement('div');
    const name = document.createElement('strong');
    name.textContent = memberName(m);
    const ids = document.createElement('span');
    ids.className = 'mono muted small';
    ids.textContent = ` ${m.user || '(anonymous)'} · ${m.client}`;
    who.append(name, ids);
    li.append(who);
    if (m.user) {
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'btn btn-ghost btn-small';
      btn.textContent = 'disconnect…';
      btn.title = 'Fill in the disconnect form for this user';
      btn.addEventListener('click', () => {
        $('disconnect-user').value = m.user;
        $('disconnect-form').scrollIntoView({ behavior: 'smooth', block: 'center' });
        $('disconnect-reason').focus();
      });
      li.append(btn);
    }
    return li;
  });
  if (!items.length) items.push(mutedLi('nobody'));
  ul.replaceChildren(...items);
}

function renderHistory(r) {
  const key = r.status === 'fulfilled' ? JSON.stringify(r.value) : `error:${r.reason && r.reason.message}`;
  if (key === lastDetail.history) return;
  lastDetail.history = key;
  const ol = $('detail-history');
  const pos = $('detail-position');
  if (r.status === 'rejected') {
    pos.textContent = '';
    ol.replaceChildren(mutedLi(unavailable(r.reason, 'history')));
    return;
  }
  const { position, publications } = r.value || {};
  pos.textContent = position ? `offset ${position.offset} · epoch ${position.epoch}` : '';
  const items = (publications || [])
    .slice()
    .reverse()
    .map((p) => {
      const li = document.createElement('li');
      li.setAttribute('data-testid', 'history-item');
      li.dataset.offset = String(p.offset);
      const meta = document.createElement('div');
      meta.className = 'muted small';
      meta.textContent = `#${p.offset} · ${p.info && p.info.user ? p.info.user : 'backend'}`;
      const data = document.createElement('code');
      data.textContent = JSON.stringify(p.data);
      li.append(meta, data);
      return li;
    });
  if (!items.length) items.push(mutedLi('no publications kept'));
  ol.replaceChildren(...items);
}

function unavailable(e, what) {
  if (e instanceof ApiError && e.code === 108) return `${what} is off in this namespace`;
  if (e instanceof ApiError && e.code === 102) return 'unknown namespace';
  return `${what} unavailable: ${e && e.message}`;
}

function memberName(m) {
  return m.info && typeof m.info.name === 'string' && m.info.name ? m.info.name : m.user || '(anonymous)';
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

function showResult(id, ok, text) {
  const el = $(id);
  el.textContent = text;
  el.className = `result ${ok ? 'result-ok' : 'result-error'}`;
  el.dataset.state = ok ? 'ok' : 'error';
}

async function onPublish(ev) {
  ev.preventDefault();
  const channel = $('publish-channel').value.trim();
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch (e) {
    showResult('publish-result', false, `Not valid JSON: ${e.message}`);
    return;
  }
  const btn = $('publish-button');
  btn.disabled = true;
  try {
    const r = await api('/api/publish', { channel, data });
    showResult('publish-result', true, `Published at offset ${r.offset} (epoch ${r.epoch}).`);
    if (channel === selected) refreshDetail(channel, pollGeneration);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return logout('The hub no longer accepts this API key.');
    showResult('publish-result', false, explain(e, 'Not published'));
  } finally {
    btn.disabled = false;
  }
}

async function onDisconnect(ev) {
  ev.preventDefault();
  const user = $('disconnect-user').value.trim();
  const reason = $('disconnect-reason').value.trim();
  const code = Number($('disconnect-code').value);
  const btn = $('disconnect-button');
  btn.disabled = true;
  try {
    const body = { user, code };
    if (reason) body.reason = reason;
    const r = await api('/api/disconnect', body);
    const n = r.disconnected;
    showResult('disconnect-result', true, `Disconnected ${n} connection${n === 1 ? '' : 's'} of ${user}.`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return logout('The hub no longer accepts this API key.');
    showResult('disconnect-result', false, explain(e, 'Not disconnected'));
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Formatting and DOM helpers
// ---------------------------------------------------------------------------

function fmtInt(n) {
  return n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US');
}

function fmtRate(n) {
  if (!Number.isFinite(n)) return '–';
  if (n >= 1000) return fmtSi(n);
  return n >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
}

function fmtSi(n) {
  const units = ['', 'k', 'M', 'G', 'T'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n >= 100 ? Math.round(n) : n.toFixed(1)}${units[i]}`;
}

function fmtBytes(n) {
  if (n === undefined || n === null || !Number.isFinite(Number(n))) return '–';
  n = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? Math.round(n) : n >= 100 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function fmtDuration(sec) {
  if (sec === undefined || sec === null) return '–';
  sec = Math.floor(sec);
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const s = sec % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function td(text, cls) {
  const el = document.createElement('td');
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function emptyRow(cols, text) {
  const tr = document.createElement('tr');
  const cell = td(text, 'muted');
  cell.colSpan = cols;
  tr.append(cell);
  return tr;
}

function mutedLi(text) {
  const li = document.createElement('li');
  li.className = 'muted empty';
  li.textContent = text;
  return li;
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const key = $('api-key').value.trim();
  if (key) login(key);
});
$('logout-button').addEventListener('click', () => logout(''));
$('publish-form').addEventListener('submit', onPublish);
$('disconnect-form').addEventListener('submit', onDisconnect);
$('channel-filter').addEventListener('input', () => renderChannels({ channels }));
$('detail-publish').addEventListener('click', () => {
  if (!selected) return;
  $('publish-channel').value = selected;
  $('publish-form').scrollIntoView({ behavior: 'smooth', block: 'center' });
  $('publish-data').focus();
});
window.addEventListener('resize', () => drawCharts());

const saved = storage((s) => s.getItem(KEY_STORAGE));
if (saved) login(saved);
else showLogin('');
