//! The Lua scripts that make each broker operation one atomic step in Redis.
//!
//! Every script reads the clock with `TIME` (allowed since Redis 5, where
//! scripts replicate their effects rather than themselves), so expiry is
//! judged by the Redis server's clock, not by the nodes' clocks, which may
//! disagree. Numbers are formatted with `%d` before they become stream ids or
//! arguments because Lua 5.1 prints large numbers in exponent form otherwise.
//!
//! Key layout (all of a channel's keys share the `{channel}` hash tag, so a
//! Redis Cluster keeps them in one slot and the scripts stay single-slot):
//!
//! * `{prefix}:{channel}:meta` — hash `epoch`, `offset`; expires after the
//!   configured idle time (never before the history it describes).
//! * `{prefix}:{channel}:stream` — a Redis Stream of the history, entry id
//!   `{offset}-0`, fields `x` (expiry, ms since the Unix epoch, Redis clock)
//!   then `b` (the encoded publication body).
//! * `{prefix}:{channel}:idem:{key}` — `"{offset}:{epoch}"` of the first
//!   publication with that idempotency key.
//! * `{prefix}:{channel}:presence` — hash client id → `ClientInfo` JSON,
//!   `{prefix}:{channel}:presence:exp` — sorted set client id → expiry ms, and
//!   `{prefix}:{channel}:presence:users` — hash user id → how many of its
//!   clients are present (anonymous clients are not counted: each is its
//!   own), which makes "first join / last leave of a user" one lookup.
//! * `{prefix}:nodes` — the node registry: hash node id → `"{expiry ms}\n"`
//!   followed by the `NodeInfo` JSON; lapsed entries are removed when the
//!   registry is read. One key, so it works the same on a Redis Cluster
//!   (where a `SCAN` would only see one shard).
//! * `{prefix}:nodechannels:{id}` — a node's channel list (JSON), with the
//!   node lease as TTL.
//!
//! In cluster mode every `PUBLISH` of the scripts becomes `SPUBLISH` (see
//! [`Scripts::new`]): the events of a channel then travel on sharded pub/sub
//! within the channel's slot, and only to the nodes subscribed there.

use redis::Script;

/// Shared Lua prelude: the Redis clock in milliseconds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Shared Lua prelude for streams: the channel's epoch, created (with the
/// caller's candidate epoch in `new_epoch`, offset 0 and no history) when the
/// meta key is missing — first use, idle expiry, or a Redis that lost its data.
const EPOCH: &str = r"
local function current_epoch(meta, stream, new_epoch)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = new_epoch
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('DEL', stream)
  end
  return epoch
end
local function keep_alive(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, string.format('%d', ms))
  end
end
";

/// Publish.
///
/// KEYS: meta, stream, idempotency key (ignored when ARGV[7] is 0).
/// ARGV: pub/sub channel, body, candidate epoch, meta TTL ms, history size
/// (0: none), history TTL ms (0: none), idempotency TTL ms (0: no key).
/// Returns `{epoch, offset}` as strings.
const PUBLISH: &str = r"
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, sep + 1), string.sub(seen, 1, sep - 1)}
  end
end
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[3])
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
local keep = tonumber(ARGV[4])
local size = tonumber(ARGV[5])
local hist_ttl = tonumber(ARGV[6])
if size > 0 and hist_ttl > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0',
    'x', string.format('%d', now + hist_ttl), 'b', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], string.format('%d', hist_ttl))
  -- Drop expired entries from the front (amortised: a few per publish).
  local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 32)
  for _, e in ipairs(old) do
    if tonumber(e[2][2]) > now then break end
    redis.call('XDEL', KEYS[2], e[1])
  end
  if hist_ttl > keep then keep = hist_ttl end
end
keep_alive(KEYS[1], keep)
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', string.format('%d', idem_ttl))
end
redis.call('PUBLISH', ARGV[1], 'p\n' .. offset .. '\n' .. epoch .. '\n' .. ARGV[2])
return {epoch, offset}
";

/// History read.
///
/// KEYS: meta, stream. ARGV: candidate epoch, meta TTL ms, since stream id
/// (`{since+1}-0`, or empty for the latest entries), since epoch, limit (-1:
/// none). Returns `{epoch, offset, id1, body1, id2, body2, ...}` with live
/// entries in any order (the caller sorts by offset).
///
/// An entry is live when its own expiry and that of every later entry read
/// with it are in the future, so the result is a contiguous run.
const HISTORY: &str = r"
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[1])
keep_alive(KEYS[1], tonumber(ARGV[2]))
local offset = redis.call('HGET', KEYS[1], 'offset') or '0'
local out = {epoch, offset}
local limit = tonumber(ARGV[5])
if limit == 0 then return out end
local entries
if ARGV[3] == '' then
  if limit < 0 then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-')
  else
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
  end
  for _, e in ipairs(entries) do
    if tonumber(e[2][2]) <= now then break end
    table.insert(out, e[1])
    table.insert(out, e[2][4])
  end
  return out
end
if ARGV[4] ~= epoch then return out end
if limit < 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+')
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', limit)
end
local first = 1
for i = #entries, 1, -1 do
  if tonumber(entries[i][2][2]) <= now then
    first = i + 1
    break
  end
end
for i = first, #entries do
  table.insert(out, entries[i][1])
  table.insert(out, entries[i][2][4])
end
return out
";

/// Shared Lua prelude for presence, over KEYS[1] (members hash), KEYS[2]
/// (expiry set) and KEYS[3] (user counts): dropping one member, and pruning
/// the expired ones.
const PRUNE: &str = r"
-- Removes client `id` (whose stored JSON is `info`) and returns whether it
-- was its user's last client (always true for anonymous clients).
local function drop_member(id, info)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  local ok, m = pcall(cjson.decode, info)
  local user = ok and type(m) == 'table' and m.user or ''
  if type(user) ~= 'string' or user == '' then return true end
  local n = redis.call('HINCRBY', KEYS[3], user, -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[3], user)
    return true
  end
  return false
end
local function prune()
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))
  for _, id in ipairs(dead) do
    local info = redis.call('HGET', KEYS[1], id)
    if info then drop_member(id, info) else redis.call('ZREM', KEYS[2], id) end
  end
end
prune()
";

/// Add or refresh a presence member.
///
/// KEYS: presence hash, expiry set, user counts. ARGV: client id,
/// `ClientInfo` JSON, TTL ms, user id, pub/sub channel for the join event
/// (empty: no event). Returns 1 when the client was not present before, 2
/// when it was also its user's first client (a join).
const ADD_PRESENCE: &str = r"
local existed = redis.call('ZSCORE', KEYS[2], ARGV[1])
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now + ttl), ARGV[1])
local first = true
if not existed and ARGV[4] ~= '' then
  first = redis.call('HINCRBY', KEYS[3], ARGV[4], 1) == 1
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local keep = string.format('%d', math.max(tonumber(last[2]) - now, 1))
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], keep) end
if existed then return 0 end
if not first then return 1 end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], 'j\n' .. ARGV[2])
end
return 2
";

/// Remove a presence member.
///
/// KEYS: presence hash, expiry set, user counts. ARGV: client id, pub/sub
/// channel for the leave event (empty: no event). Returns 1 when the client
/// was present, 2 when it was also its user's last client (a leave).
const REMOVE_PRESENCE: &str = r"
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info then return 0 end
if not drop_member(ARGV[1], info) then return 1 end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], 'l\n' .. info)
end
return 2
";

/// Remove every member of a node that died.
///
/// KEYS: presence hash, expiry set, user counts. ARGV: client id prefix
/// (`{node}-`), pub/sub channel for leave events. Returns how many members
/// were removed.
const REAP_PRESENCE: &str = r"
local removed = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(id, 1, #ARGV[1]) == ARGV[1] then
    local info = redis.call('HGET', KEYS[1], id)
    removed = removed + 1
    if drop_member(id, info) then
      redis.call('PUBLISH', ARGV[2], 'l\n' .. info)
    end
  end
end
return removed
";

/// Read presence. KEYS: presence hash, expiry set. Returns the live members
/// as `HGETALL` does.
const PRESENCE: &str = r"
return redis.call('HGETALL', KEYS[1])
";

/// Announce a node.
///
/// KEYS: registry hash. ARGV: node id, `NodeInfo` JSON, TTL ms.
const ANNOUNCE_NODE: &str = r"
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + ttl) .. '\n' .. ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
end
return 1
";

/// List the live nodes, removing lapsed ones.
///
/// KEYS: registry hash. Returns the `NodeInfo` JSON of every live node.
const NODES: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, '\n', 1, true)
  local expiry = sep and tonumber(string.sub(v, 1, sep - 1))
  if expiry and expiry > now then
    table.insert(out, string.sub(v, sep + 1))
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

/// The compiled scripts ([`Script`] keeps the SHA1 and falls back from
/// `EVALSHA` to loading the script on `NOSCRIPT`, e.g. after a Redis restart).
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) history: Script,
    pub(crate) add_presence: Script,
    pub(crate) remove_presence: Script,
    pub(crate) reap_presence: Script,
    pub(crate) presence: Script,
    pub(crate) announce_node: Script,
    pub(crate) nodes: Script,
}

impl Scripts {
    /// The scripts; with `sharded` (cluster mode) their events use sharded
    /// pub/sub. The substitution is done here, once, rather than by an
    /// argument, so the scripts read the same in both modes.
    pub(crate) fn new(sharded: bool) -> Scripts {
        let script = |text: String| {
            Script::new(&if sharded {
                text.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
            } else {
                text
            })
        };
        let stream = |body: &str| script(format!("{NOW}{EPOCH}{body}"));
        let presence = |body: &str| script(format!("{NOW}{PRUNE}{body}"));
        let plain = |body: &str| script(format!("{NOW}{body}"));
        Scripts {
            publish: stream(PUBLISH),
            history: stream(HISTORY),
            add_presence: presence(ADD_PRESENCE),
            remove_presence: presence(REMOVE_PRESENCE),
            reap_presence: presence(REAP_PRESENCE),
            presence: presence(PRESENCE),
            announce_node: plain(ANNOUNCE_NODE),
            nodes: plain(NODES),
        }
    }
}
