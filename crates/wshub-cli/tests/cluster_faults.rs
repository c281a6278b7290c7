//! Failure tests over real processes: three `wshub serve` nodes (the real
//! binary) on one `redis-server` the test starts, `wshub.v1` clients spread
//! across the nodes, all subscribed to one recoverable channel, and backends
//! publishing through the HTTP API of every node at once. Then:
//!
//! * nothing fails: every client gets every publication once, in offset
//!   order, offsets contiguous;
//! * Redis is SIGKILLed and restarted on its port mid-stream, with its data
//!   (AOF, fsync always): publishers retry 503s with an idempotency key, and
//!   every client still ends with exactly the publications that succeeded;
//! * the same without persistence (Redis comes back empty, a new epoch):
//!   every client either has no gap and no duplicate or was told explicitly
//!   (`recovered: false` when it resubscribed with its position), never a
//!   silent gap; and all of them follow the new epoch afterwards;
//! * a node is SIGKILLed mid-stream: its clients reconnect to another node
//!   and resubscribe with `since`; no gap, no duplicate.
//!
//! Clients behave like a real client library: on an `unsub` push with
//! `resubscribe: true` they subscribe again with their last position; when
//! the connection drops they connect to the next node and do the same. Every
//! wait is bounded; the tests run one at a time (a process-wide lock) so
//! twelve nodes do not share two cores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, hub_client, node, node_logs, temp_dir, try_api, Proc, Redis};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wshub::{Message, WebSocket};

const CHANNEL: &str = "chat:faults";
/// Enough history that every gap of these tests is recoverable.
const NAMESPACE: &str = "[namespaces.chat]\npresence = false\nhistory_size = 10000\n\
                         history_ttl = \"10m\"\nrecovery_max = 10000\n";
/// The most a whole test may take; every wait below ends by then.
const TEST_TIME: Duration = Duration::from_secs(120);
/// One HTTP request's limit (the node's own Redis timeout is 5 s).
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// How long a client waits before connecting to another node.
const RECONNECT_DELAY: Duration = Duration::from_millis(300);
/// Clients per test, spread round-robin over the nodes.
const CLIENTS: usize = 6;

/// One test at a time: each starts a Redis and three nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stream position: offset and epoch.
type Pos = (u64, String);

/// Three nodes on one Redis.
struct Cluster {
    dir: PathBuf,
    redis: Redis,
    ports: Vec<u16>,
    nodes: Vec<Proc>,
}

impl Cluster {
    fn start(name: &str, persist: bool) -> Cluster {
        let dir = temp_dir(name);
        let data = dir.join("redis");
        std::fs::create_dir_all(&data).unwrap();
        let redis = Redis::start_with(persist.then_some(data));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|p| node(&dir, &redis.url(), *p, NAMESPACE))
            .collect();
        Cluster {
            dir,
            redis,
            ports,
            nodes,
        }
    }

    fn logs(&self) -> String {
        node_logs(&self.dir, &self.ports)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        self.redis.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// What a client saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// A publication (a `pub` push, or recovered in a subscribe reply).
    Pub { n: u64, offset: u64, epoch: String },
    /// A resubscribe with `since` answered `recovered: false`.
    NotRecovered,
}

#[derive(Debug, Default)]
struct Log {
    got: Vec<Got>,
    /// The position after the last thing seen.
    last: Option<Pos>,
    /// Ports of the nodes connected to, in order.
    nodes: Vec<u16>,
    /// `unsub` pushes with `resubscribe: true`.
    resubscribes: u32,
    /// Anything a correct hub never does; ends the client.
    errors: Vec<String>,
}

struct Client {
    name: String,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl Client {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `CLIENTS` clients, client `i` on node `i mod 3`, and waits until
/// each is subscribed.
async fn clients(ports: &[u16]) -> Vec<Client> {
    let deadline = Instant::now() + TEST_TIME;
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let log = Arc::new(Mutex::new(Log::default()));
            let name = format!("client{i}");
            let task = tokio::spawn(follow(
                name.clone(),
                ports.to_vec(),
                i,
                Arc::clone(&log),
                deadline,
            ));
            Client { name, log, task }
        })
        .collect();
    wait_until("every client subscribed", Duration::from_secs(30), || {
        clients.iter().all(|c| c.log().last.is_some())
    })
    .await;
    clients
}

/// A client's life: connect to `ports[at]`, subscribe (with `since` once it
/// has a position), read; resubscribe after `unsub` 111, move to the next
/// node when the connection drops.
async fn follow(
    user: String,
    ports: Vec<u16>,
    mut at: usize,
    log: Arc<Mutex<Log>>,
    deadline: Instant,
) {
    let mut id = 1u64;
    let fail = |e: String| log.lock().unwrap().errors.push(e);
    'connection: while Instant::now() < deadline {
        let port = ports[at % ports.len()];
        let mut ws = match hub_client(port, &user).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        log.lock().unwrap().nodes.push(port);
        match subscribe(&mut ws, &mut id, &log, deadline).await {
            Ok(true) => {}
            Ok(false) => {
                at += 1;
                continue 'connection;
            }
            Err(e) => return fail(e),
        }
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.recv()).await {
                Ok(Some(Message::Text(t))) => t,
                Ok(None) => {
                    // The node went away: the next one, after a pause like
                    // a client library's backoff (publishing goes on
                    // meanwhile, so there is a gap to recover).
                    at += 1;
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue 'connection;
                }
                Ok(Some(other)) => return fail(format!("unexpected frame {other:?}")),
                Err(_) => return,
            };
            let v: Value = match serde_json::from_str(msg.as_str()) {
                Ok(v) => v,
                Err(e) => return fail(format!("not JSON ({e}): {}", msg.as_str())),
            };
            match (v["push"].as_str(), v["channel"].as_str()) {
                (Some("pub"), Some(CHANNEL)) => {
                    let epoch = v["epoch"].as_str().unwrap_or_default().to_owned();
                    let offset = v["offset"].as_u64().unwrap_or(0);
                    let mut l = log.lock().unwrap();
                    l.got.push(Got::Pub {
                        n: v["data"]["n"].as_u64().unwrap_or(u64::MAX),
                        offset,
                        epoch: epoch.clone(),
                    });
                    l.last = Some((offset, epoch));
                }
                (Some("unsub"), Some(CHANNEL)) if v["code"] == 111 && v["resubscribe"] == true => {
                    log.lock().unwrap().resubscribes += 1;
                    match subscribe(&mut ws, &mut id, &log, deadline).await {
                        Ok(true) => {}
                        Ok(false) => {
                            at += 1;
                            continue 'connection;
                        }
                        Err(e) => return fail(e),
                    }
                }
                _ => return fail(format!("unexpected frame {v}")),
            }
        }
    }
}

/// Subscribes with the last position as `since` (if any) and records the
/// reply; error 100 replies (Redis unreachable from the node) are retried.
/// `Ok(false)` when the connection closed.
async fn subscribe(
    ws: &mut WebSocket,
    id: &mut u64,
    log: &Mutex<Log>,
    deadline: Instant,
) -> Result<bool, String> {
    loop {
        *id += 1;
        let since = log.lock().unwrap().last.clone();
        let mut params = json!({ "channel": CHANNEL });
        if let Some((offset, epoch)) = &since {
            params["since"] = json!({ "offset": offset, "epoch": epoch });
        }
        let cmd = json!({ "id": *id, "method": "subscribe", "params": params });
        if ws.send(cmd.to_string()).is_err() {
            return Ok(false);
        }
        // The next frame must be the reply: nothing of the channel may come
        // before it (and nothing else is subscribed).
        let reply: Value = match tokio::time::timeout_at(deadline, ws.recv()).await {
            Ok(Some(Message::Text(t))) => {
                serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?
            }
            Ok(None) => return Ok(false),
            Ok(Some(other)) => return Err(format!("unexpected frame {other:?}")),
            Err(_) => return Err(format!("no reply to {cmd} before the deadline")),
        };
        if reply["id"] != *id {
            return Err(format!("{reply} before the reply to {cmd}"));
        }
        if let Some(r) = reply.get("result") {
            let epoch = r["position"]["epoch"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let offset = r["position"]["offset"].as_u64().unwrap_or(0);
            let mut l = log.lock().unwrap();
            if since.is_some() && r["recovered"] != true {
                l.got.push(Got::NotRecovered);
            }
            for p in r["publications"].as_array().into_iter().flatten() {
                l.got.push(Got::Pub {
                    n: p["data"]["n"].as_u64().unwrap_or(u64::MAX),
                    offset: p["offset"].as_u64().unwrap_or(0),
                    epoch: epoch.clone(),
                });
            }
            l.last = Some((offset, epoch));
            return Ok(true);
        }
        if reply["error"]["code"] != 100 {
            return Err(format!("subscribe failed: {reply}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("subscribe kept failing: {reply}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------

/// A publication the hub accepted.
#[derive(Debug, Clone)]
struct Published {
    n: u64,
    offset: u64,
    epoch: String,
}

/// What the publishers did.
#[derive(Debug, Default)]
struct Publishing {
    done: Vec<Published>,
    /// Failed attempts (503, refused or reset connections), each retried.
    failed_attempts: u32,
}

/// Publisher `p`: `count` publications `{"n": p*1_000_000+i}`, one at a
/// time with `pace` between them, through node `p mod 3` (the next node
/// after a failure). A failed attempt (503, connection refused or reset) is
/// retried with the same idempotency key until it succeeds.
async fn publisher(p: u64, ports: Vec<u16>, count: u64, pace: Duration) -> Publishing {
    let deadline = Instant::now() + TEST_TIME;
    let mut out = Publishing::default();
    let mut at = p as usize;
    for i in 0..count {
        let n = p * 1_000_000 + i;
        let body = json!({
            "channel": CHANNEL,
            "data": { "n": n },
            "idempotency_key": format!("p{p}-{i}"),
        })
        .to_string();
        loop {
            let port = ports[at % ports.len()];
            match try_api(port, "POST", "/api/publish", &body, REQUEST_TIME).await {
                Ok((200, v)) => {
                    out.done.push(Published {
                        n,
                        offset: v["offset"].as_u64().expect("an offset"),
                        epoch: v["epoch"].as_str().expect("an epoch").to_owned(),
                    });
                    break;
                }
                Ok((503, _)) | Err(_) => {
                    out.failed_attempts += 1;
                    at += 1;
                    assert!(
                        Instant::now() < deadline,
                        "publisher {p}: n={n} never succeeded"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok((status, v)) => panic!("publisher {p}: unexpected {status}: {v}"),
            }
        }
        tokio::time::sleep(pace).await;
    }
    out
}

/// Runs `publishers` publishers in parallel; their results merged.
fn spawn_publishers(
    publishers: u64,
    ports: &[u16],
    count: u64,
    pace: Duration,
) -> Vec<JoinHandle<Publishing>> {
    (0..publishers)
        .map(|p| tokio::spawn(publisher(p, ports.to_vec(), count, pace)))
        .collect()
}

async fn join_publishers(tasks: Vec<JoinHandle<Publishing>>) -> Publishing {
    let mut all = Publishing::default();
    for t in tasks {
        let r = tokio::time::timeout(TEST_TIME, t)
            .await
            .expect("a publisher did not finish")
            .expect("a publisher panicked");
        all.done.extend(r.done);
        all.failed_attempts += r.failed_attempts;
    }
    all
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// One line per client on stderr (seen with `--nocapture`): what the fault
/// did to it.
fn summary(test: &str, publishing: &Publishing, clients: &[Client]) {
    eprintln!(
        "{test}: {} publications accepted, {} failed attempts retried",
        publishing.done.len(),
        publishing.failed_attempts
    );
    for c in clients {
        let l = c.log();
        let pubs = l
            .got
            .iter()
            .filter(|g| matches!(g, Got::Pub { .. }))
            .count();
        let lost = l.got.len() - pubs;
        eprintln!(
            "  {}: {pubs} publications, nodes {:?}, {} resubscribes, {lost} not recoverable",
            c.name, l.nodes, l.resubscribes
        );
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every client's position is `last` (or one failed).
async fn settle(clients: &[Client], last: &Pos, cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<String> = clients
            .iter()
            .filter(|c| {
                let l = c.log();
                l.errors.is_empty() && l.last.as_ref() != Some(last)
            })
            .map(|c| format!("{} at {:?}", c.name, c.log().last))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "clients never reached {last:?}: {behind:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's last position according to the publishers: the highest
/// offset in the epoch of the last publication (after a restart without
/// data, older epochs may have higher offsets).
fn last_position(p: &Publishing) -> Pos {
    let epoch = &p.done.last().expect("publications").epoch;
    let offset = p
        .done
        .iter()
        .filter(|x| x.epoch == *epoch)
        .map(|x| x.offset)
        .max()
        .unwrap_or(0);
    (offset, epoch.clone())
}

/// The accepted publications by offset; asserts they are exactly offsets
/// 1..=N of one epoch, each once (idempotent retries got the first offset).
fn by_offset(p: &Publishing) -> BTreeMap<u64, Published> {
    let epochs: HashSet<&str> = p.done.iter().map(|x| x.epoch.as_str()).collect();
    assert_eq!(
        epochs.len(),
        1,
        "publications in several epochs: {epochs:?}"
    );
    let map: BTreeMap<u64, Published> = p.done.iter().map(|x| (x.offset, x.clone())).collect();
    assert_eq!(map.len(), p.done.len(), "two publications got one offset");
    let offsets: Vec<u64> = map.keys().copied().collect();
    let want: Vec<u64> = (1..=p.done.len() as u64).collect();
    assert_eq!(offsets, want, "the stream's offsets are not contiguous");
    map
}

/// Every client got exactly the accepted publications, in offset order,
/// and was never told its position was lost.
fn assert_exact(clients: &[Client], published: &BTreeMap<u64, Published>) {
    for c in clients {
        let l = c.log();
        assert!(l.errors.is_empty(), "{}: {:?}", c.name, l.errors);
        let mut want = published.values();
        for (i, g) in l.got.iter().enumerate() {
            let Got::Pub { n, offset, epoch } = g else {
                panic!("{}: not recoverable at #{i}: {:?}", c.name, &l.got);
            };
            let Some(w) = want.next() else {
                panic!("{}: more than {} publications", c.name, published.len());
            };
            assert_eq!(
                (*offset, epoch, *n),
                (w.offset, &w.epoch, w.n),
                "{}: publication #{i} (gap, duplicate or reorder)",
                c.name
            );
        }
        assert_eq!(
            l.got.len(),
            published.len(),
            "{}: missing publications",
            c.name
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Six publishers, two per node, publish to one channel at once: the
/// offsets are unique and contiguous, and every client gets every
/// publication once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_every_node() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("faults-concurrent", false);
    let clients = clients(&cluster.ports).await;
    let publishing =
        join_publishers(spawn_publishers(6, &cluster.ports, 100, Duration::ZERO)).await;
    assert_eq!(publishing.done.len(), 600);
    assert_eq!(publishing.failed_attempts, 0, "nothing failed, no retries");
    let published = by_offset(&publishing);
    settle(&clients, &last_position(&publishing), &cluster).await;
    summary("concurrent", &publishing, &clients);
    assert_exact(&clients, &published);
    // Each publisher's own publications keep their order too.
    for c in &clients {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for g in &c.log().got {
            if let Got::Pub { n, .. } = g {
                let prev = last.insert(n / 1_000_000, *n);
                assert!(
                    prev.is_none_or(|p| p < *n),
                    "{}: {n} after {prev:?}",
                    c.name
                );
            }
        }
    }
}

/// Redis is SIGKILLed mid-stream and restarted on its port with its data
/// (AOF with fsync always): the failed publishes are retried, the nodes
/// reconnect and recover, and every client ends with exactly the accepted
/// publications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_data() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("faults-redis-aof", true);
    let clients = clients(&cluster.ports).await;
    let tasks = spawn_publishers(3, &cluster.ports, 150, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.redis.restart();
    let publishing = join_publishers(tasks).await;
    assert!(
        publishing.failed_attempts > 0,
        "no publish failed: the outage did not happen during publishing"
    );
    let published = by_offset(&publishing);
    assert_eq!(published.len(), 450);
    settle(&clients, &last_position(&publishing), &cluster).await;
    summary("redis-aof", &publishing, &clients);
    assert_exact(&clients, &published);
}

/// Redis is SIGKILLed mid-stream and comes back empty: the stream starts a
/// new epoch. Every client either saw no gap (and no duplicate) or was told
/// `recovered: false`; none has a silent gap; all follow the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("faults-redis-empty", false);
    let clients = clients(&cluster.ports).await;
    let tasks = spawn_publishers(3, &cluster.ports, 150, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.redis.restart();
    let publishing = join_publishers(tasks).await;
    let epochs: HashSet<&str> = publishing.done.iter().map(|x| x.epoch.as_str()).collect();
    assert_eq!(
        epochs.len(),
        2,
        "the restart should have started a new epoch mid-stream: {epochs:?}"
    );
    // Who published what at each position (a publication whose reply was
    // lost may have been accepted twice: once per epoch).
    let known: BTreeMap<(String, u64), u64> = publishing
        .done
        .iter()
        .map(|x| ((x.epoch.clone(), x.offset), x.n))
        .collect();
    settle(&clients, &last_position(&publishing), &cluster).await;
    // Afterwards everyone follows the new epoch without loss.
    let tail = join_publishers(spawn_publishers(1, &cluster.ports, 20, Duration::ZERO)).await;
    settle(&clients, &last_position(&tail), &cluster).await;
    summary("redis-empty", &publishing, &clients);

    for c in &clients {
        let l = c.log();
        assert!(l.errors.is_empty(), "{}: {:?}", c.name, l.errors);
        let mut prev: Option<(u64, &str)> = None;
        let mut signalled = false;
        for (i, g) in l.got.iter().enumerate() {
            match g {
                Got::NotRecovered => {
                    signalled = true;
                    prev = None;
                }
                Got::Pub { n, offset, epoch } => {
                    let expected = match prev {
                        Some((o, e)) => (o + 1, e),
                        // The first publication of all is offset 1; after a
                        // not-recoverable signal anything may follow.
                        None if !signalled => (1, epoch.as_str()),
                        None => (*offset, epoch.as_str()),
                    };
                    assert_eq!(
                        (*offset, epoch.as_str()),
                        expected,
                        "{}: a silent gap or a duplicate at #{i}: {:?}",
                        c.name,
                        &l.got
                    );
                    if let Some(k) = known.get(&(epoch.clone(), *offset)) {
                        assert_eq!(k, n, "{}: wrong data at {epoch}/{offset}", c.name);
                    }
                    prev = Some((*offset, epoch.as_str()));
                }
            }
        }
        for t in &tail.done {
            assert!(
                l.got.contains(&Got::Pub {
                    n: t.n,
                    offset: t.offset,
                    epoch: t.epoch.clone()
                }),
                "{}: missed {t:?} published after the outage",
                c.name
            );
        }
        assert!(
            signalled,
            "{}: its stream changed epoch, yet it was never told",
            c.name
        );
    }
}

/// A node is SIGKILLed mid-stream: its clients reconnect to the others and
/// resubscribe with their position; nobody misses or repeats anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_and_its_clients_move() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("faults-node", false);
    let clients = clients(&cluster.ports).await;
    let victim = cluster.ports[1];
    let tasks = spawn_publishers(3, &cluster.ports, 150, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[1].kill();
    let publishing = join_publishers(tasks).await;
    let published = by_offset(&publishing);
    assert_eq!(published.len(), 450);
    settle(&clients, &last_position(&publishing), &cluster).await;
    summary("node-kill", &publishing, &clients);
    assert_exact(&clients, &published);
    let moved: Vec<&Client> = clients
        .iter()
        .filter(|c| c.log().nodes.first() == Some(&victim))
        .collect();
    assert_eq!(moved.len(), CLIENTS / 3);
    for c in moved {
        let nodes = c.log().nodes.clone();
        assert!(
            nodes.len() >= 2 && nodes[1..].iter().all(|p| *p != victim),
            "{}: did not move off the killed node: {nodes:?}",
            c.name
        );
    }
}
