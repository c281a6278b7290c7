//! The Redis Streams bridges against a real `redis-server` and real hubs
//! serving real WebSocket clients.
//!
//! Ingest: an entry (either form) reaches a subscribed client once; an entry
//! whose publish fails for now (the hub's broker Redis is down) stays pending
//! and unacknowledged until the broker is back, then is published once; an
//! entry left pending by a dead consumer is taken over after `claim_idle`;
//! one delivered `max_deliveries` times and malformed ones go to the
//! dead-letter stream with the reason; a redelivered entry (the same id) is
//! not delivered twice; two hubs share a group without publishing an entry
//! twice; consumers of stopped nodes are removed.
//!
//! Upstream: client publications in `also` and `only` namespaces appear in
//! the stream with their fields, `only` is not fanned out, and a Redis that
//! is down fails the publish with 108.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{eventually, RedisServer, WAIT};
use redis::aio::MultiplexedConnection;
use redis::Value as RValue;
use serde_json::{json, Value};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::hub::broker::Broker;
use wshub::hub::config::{Access, HubConfig, NamespaceConfig, QueueEngine, UpstreamMode};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::Hub;
use wshub::{Message, WebSocket};
use wshub_redis::{
    IngestStats, RedisBroker, RedisBrokerConfig, RedisIngest, RedisIngestConfig, RedisUpstream,
    RedisUpstreamConfig,
};

const SECRET: &str = "queue-test-secret-32-bytes-long!!!!";
const STREAM: &str = "in";
const GROUP: &str = "wshub";
const DEAD: &str = "in-dead";

fn config() -> HubConfig {
    let mut c = HubConfig::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.server.drain_jitter = Duration::ZERO;
    c.limits.command_rate = 0.0;
    c.namespaces
        .insert("news".into(), NamespaceConfig::default());
    for (name, mode) in [("orders", UpstreamMode::Only), ("game", UpstreamMode::Also)] {
        let ns = NamespaceConfig {
            upstream: mode,
            subscribe: Access::Users,
            publish: Access::Users,
            ..NamespaceConfig::default()
        };
        c.namespaces.insert(name.into(), ns);
    }
    c.upstream.engine = QueueEngine::Redis;
    c.upstream.timeout = Duration::from_secs(2);
    c
}

/// A hub serving on a free port until dropped.
struct Node {
    hub: Hub,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(broker: Arc<dyn Broker>) -> Node {
    let hub = Hub::new(config(), broker, Path::new(".")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = hub.clone();
    tokio::spawn(async move {
        let _ = h
            .serve(listener, None, async {
                let _ = rx.await;
            })
            .await;
    });
    Node {
        hub,
        addr,
        _stop: tx,
    }
}

async fn memory_node() -> Node {
    serve(Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()))).await
}

async fn redis_node(broker: &RedisServer) -> Node {
    let mut rc = RedisBrokerConfig::new(broker.url());
    rc.command_timeout = Duration::from_secs(1);
    rc.connect_timeout = Duration::from_secs(1);
    rc.reconnect_min_delay = Duration::from_millis(20);
    rc.reconnect_max_delay = Duration::from_millis(200);
    serve(Arc::new(RedisBroker::connect(rc).await.unwrap())).await
}

/// Ingest settings with short timings: reclaim after `claim_idle`.
fn ingest_config(queue: &RedisServer, claim_idle: Duration) -> RedisIngestConfig {
    let mut c = RedisIngestConfig::new(queue.url(), &Default::default());
    c.stream = STREAM.into();
    c.group = GROUP.into();
    c.dead_letter = DEAD.into();
    c.claim_idle = claim_idle;
    c.batch = 8;
    c.retry_min_delay = Duration::from_millis(20);
    c.retry_max_delay = Duration::from_millis(200);
    c.command_timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(2);
    c
}

async fn redis(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xadd(conn: &mut MultiplexedConnection, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(conn).await.unwrap()
}

/// The group's pending entries: `(id, consumer, deliveries)`.
async fn pending(conn: &mut MultiplexedConnection) -> Vec<(String, String, u64)> {
    let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(conn)
        .await
        .unwrap();
    reply
        .into_iter()
        .map(|(id, consumer, _, n)| (id, consumer, n))
        .collect()
}

/// Every entry of `stream`: `(id, fields)`.
async fn entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Vec<(String, HashMap<String, String>)> {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .into_iter()
        .map(|(id, kv)| (id, kv.into_iter().collect()))
        .collect()
}

/// Makes `id` pending with a consumer that will never acknowledge it, with
/// `deliveries` deliveries.
async fn pending_with_dead_consumer(conn: &mut MultiplexedConnection, id: &str, deliveries: u64) {
    let _: RValue = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap_or(RValue::Nil);
    let _: RValue = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("dead-node")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    let _: RValue = redis::cmd("XCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg("dead-node")
        .arg(0)
        .arg(id)
        .arg("RETRYCOUNT")
        .arg(deliveries)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(
        pending(conn).await,
        [(id.to_owned(), "dead-node".to_owned(), deliveries)]
    );
}

/// Waits (bounded) until the consumer's statistics satisfy `check`.
async fn stats_until(ingest: &RedisIngest, what: &str, check: impl Fn(&IngestStats) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = ingest.stats();
        if check(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn history(hub: &Hub, channel: &str) -> Vec<Value> {
    hub.history(channel, None, None, None)
        .await
        .unwrap()
        .publications
        .into_iter()
        .map(|p| p.data)
        .collect()
}

fn token(user: &str) -> String {
    Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&ClaimsBuilder::new(user), SystemTime::now())
        .unwrap()
}

struct Client {
    ws: WebSocket,
    next: u64,
    pushes: VecDeque<Value>,
}

impl Client {
    async fn connect(node: &Node, user: &str) -> Client {
        let ws = ClientBuilder::new()
            .protocols(["wshub.v1"])
            .connect(&format!("ws://{}/ws", node.addr))
            .await
            .unwrap();
        let mut c = Client {
            ws,
            next: 0,
            pushes: VecDeque::new(),
        };
        c.ok("connect", json!({"token": token(user)})).await;
        c
    }

    async fn frame(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.ws.recv())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
        {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(_) => panic!("binary frame"),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut cmd = json!({"id": id, "method": method});
        if !params.is_null() {
            cmd["params"] = params;
        }
        self.ws.send(cmd.to_string()).unwrap();
        loop {
            let f = self.frame().await;
            if f.get("push").is_some() {
                self.pushes.push_back(f);
            } else {
                assert_eq!(f["id"], id, "{f}");
                return f;
            }
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} failed: {r}"))
    }

    async fn push(&mut self) -> Value {
        match self.pushes.pop_front() {
            Some(p) => p,
            None => self.frame().await,
        }
    }

    /// The data of every publication received until (and without) the one
    /// whose data is `marker`.
    async fn data_until(&mut self, marker: &Value) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let p = self.push().await;
            assert_eq!(p["push"], "pub", "{p}");
            if &p["data"] == marker {
                return got;
            }
            got.push(p["data"].clone());
        }
    }
}

#[tokio::test]
async fn an_entry_reaches_a_subscribed_client_once_in_either_form() {
    let queue = RedisServer::start();
    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(ingest.consumer(), node.hub.node_id());

    let mut q = redis(&queue).await;
    xadd(&mut q, &[("channel", "news:a"), ("data", r#"{"n":1}"#)]).await;
    let payload = json!({"channel": "news:a", "data": {"n": 2}, "tags": {"k": "v"}}).to_string();
    xadd(&mut q, &[("payload", &payload)]).await;
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""end""#)]).await;

    assert_eq!(
        bob.data_until(&json!("end")).await,
        [json!({"n": 1}), json!({"n": 2})]
    );
    eventually("all three acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    stats_until(&ingest, "3 published", |s| s.published == 3).await;
    let stats = ingest.stats();
    assert_eq!(
        (stats.dead_lettered, stats.retried, stats.reclaimed),
        (0, 0, 0)
    );
    assert_eq!(
        history(&node.hub, "news:a").await,
        [json!({"n": 1}), json!({"n": 2}), json!("end")]
    );

    // Once stopped, the node reads nothing more.
    ingest.stop().await;
    xadd(&mut q, &[("channel", "news:a"), ("data", "4")]).await;
    let groups: Vec<HashMap<String, RValue>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(&mut q)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].get("lag"), Some(&RValue::Int(1)), "{groups:?}");
}

#[tokio::test]
async fn an_entry_is_acknowledged_only_after_its_publish_succeeded() {
    let queue = RedisServer::start();
    let mut broker = RedisServer::start();
    let node = redis_node(&broker).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let mut q = redis(&queue).await;

    // The hub's broker is down: publishing fails for now.
    broker.kill();
    let id = xadd(
        &mut q,
        &[("channel", "news:a"), ("data", r#""while down""#)],
    )
    .await;
    stats_until(&ingest, "a failed publish attempt", |s| s.retried >= 1).await;
    // A healthy node joins the group: it must not take the entry over while
    // its owner is alive and retrying (the owner refreshes its claim).
    let other = memory_node().await;
    let other_ingest = RedisIngest::start(
        other.hub.clone(),
        ingest_config(&queue, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    // Idle time is what a takeover waits for, so let four `claim_idle`
    // periods pass (the other node checks every half period meanwhile).
    tokio::time::sleep(4 * Duration::from_millis(300)).await;
    stats_until(&ingest, "more failed publish attempts", |s| s.retried >= 3).await;
    // The entry is still pending with this node, retries are not
    // deliveries, and nothing went to the dead-letter stream.
    assert_eq!(
        pending(&mut q).await,
        [(id.clone(), ingest.consumer().to_owned(), 1)]
    );
    assert!(entries(&mut q, DEAD).await.is_empty());
    assert_eq!(ingest.stats().published, 0);
    assert_eq!(other_ingest.stats(), IngestStats::default());
    other_ingest.stop().await;

    // The broker is back (empty): the entry is published, then acknowledged.
    broker.restart_empty();
    eventually("the entry acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    assert_eq!(history(&node.hub, "news:a").await, [json!("while down")]);
    stats_until(&ingest, "1 published", |s| s.published == 1).await;
    assert_eq!(ingest.stats().dead_lettered, 0);
}

#[tokio::test]
async fn an_entry_of_a_dead_consumer_is_taken_over_and_published_once() {
    let queue = RedisServer::start();
    let mut q = redis(&queue).await;
    let id = xadd(&mut q, &[("channel", "news:a"), ("data", r#""orphan""#)]).await;
    pending_with_dead_consumer(&mut q, &id, 1).await;

    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    eventually("the orphan acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""end""#)]).await;
    assert_eq!(bob.data_until(&json!("end")).await, [json!("orphan")]);
    stats_until(&ingest, "2 published", |s| s.published == 2).await;
    let stats = ingest.stats();
    assert_eq!((stats.reclaimed, stats.dead_lettered), (1, 0));
}

#[tokio::test]
async fn an_entry_delivered_max_deliveries_times_is_dead_lettered() {
    let queue = RedisServer::start();
    let mut q = redis(&queue).await;
    let id = xadd(&mut q, &[("channel", "news:a"), ("data", r#""poison""#)]).await;
    pending_with_dead_consumer(&mut q, &id, 3).await;

    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let mut config = ingest_config(&queue, Duration::from_millis(200));
    config.max_deliveries = 3;
    let ingest = RedisIngest::start(node.hub.clone(), config).await.unwrap();
    eventually("the entry dead-lettered", || {
        let mut q = q.clone();
        async move { !entries(&mut q, DEAD).await.is_empty() }
    })
    .await;
    let dead = entries(&mut q, DEAD).await;
    assert_eq!(dead.len(), 1);
    let f = &dead[0].1;
    let want: HashMap<String, String> = [
        ("channel", "news:a"),
        ("data", r#""poison""#),
        ("error", "delivered 3 times without being acknowledged"),
        ("stream", STREAM),
        ("id", id.as_str()),
        ("deliveries", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(f, &want);
    eventually("the entry acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    // It was never published.
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""end""#)]).await;
    assert!(bob.data_until(&json!("end")).await.is_empty());
    stats_until(&ingest, "1 dead, 1 published", |s| {
        (s.dead_lettered, s.published) == (1, 1)
    })
    .await;
}

#[tokio::test]
async fn malformed_entries_are_dead_lettered_at_once_with_the_reason() {
    let queue = RedisServer::start();
    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let mut q = redis(&queue).await;
    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[("channel", "news:a"), ("data", "{not json")],
            "`data` is not JSON",
        ),
        (&[("channel", "nosuch:a"), ("data", "1")], "(102)"),
        (&[("data", "1")], "missing field `channel`"),
        (&[("channel", "a b"), ("data", "1")], "invalid channel"),
        (
            &[("channel", "news:a"), ("data", "1"), ("chanel", "x")],
            "unknown field `chanel`",
        ),
        (
            &[("payload", r#"{"channel":"news:a"}"#)],
            "missing field `data`",
        ),
        (
            &[("channel", "news:a"), ("data", "1"), ("tags", r#"{"k":1}"#)],
            "`tags`",
        ),
    ];
    let mut ids = Vec::new();
    for (fields, _) in cases {
        ids.push(xadd(&mut q, fields).await);
    }
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""end""#)]).await;
    assert!(bob.data_until(&json!("end")).await.is_empty());
    eventually("every bad entry dead-lettered", || {
        let mut q = q.clone();
        async move { entries(&mut q, DEAD).await.len() == 7 }
    })
    .await;
    let dead = entries(&mut q, DEAD).await;
    for (((fields, want), id), (_, got)) in cases.iter().zip(&ids).zip(&dead) {
        assert_eq!(&got["id"], id);
        assert_eq!(got["stream"], STREAM);
        assert_eq!(got["deliveries"], "1");
        assert!(
            got["error"].contains(want),
            "{fields:?}: {} lacks {want}",
            got["error"]
        );
        for (k, v) in *fields {
            assert_eq!(got.get(*k).map(String::as_str), Some(*v), "{fields:?}");
        }
    }
    eventually("everything acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    stats_until(&ingest, "7 dead, 1 published", |s| {
        (s.dead_lettered, s.published) == (7, 1)
    })
    .await;
    let metrics = node.hub.metrics().render();
    for line in [
        "wshub_ingest_entries_total{outcome=\"published\"} 1\n",
        "wshub_ingest_entries_total{outcome=\"dead_lettered\"} 7\n",
        "wshub_ingest_entries_total{outcome=\"retried\"} 0\n",
        "wshub_publications_total{source=\"ingest\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn a_redelivered_entry_is_not_delivered_twice() {
    let queue = RedisServer::start();
    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let mut q = redis(&queue).await;
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""once""#)]).await;
    assert_eq!(bob.push().await["data"], "once");
    eventually("published and acknowledged", || {
        let n = ingest.stats().published;
        async move { n == 1 }
    })
    .await;

    // Rewind the group: the same entry (same id) is delivered again.
    let _: RValue = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .query_async(&mut q)
        .await
        .unwrap();
    eventually("the entry handled a second time", || {
        let n = ingest.stats().published;
        async move { n == 2 }
    })
    .await;
    xadd(&mut q, &[("channel", "news:a"), ("data", r#""end""#)]).await;
    assert!(bob.data_until(&json!("end")).await.is_empty());
    assert_eq!(
        history(&node.hub, "news:a").await,
        [json!("once"), json!("end")]
    );
}

#[tokio::test]
async fn two_hubs_share_the_group_and_publish_each_entry_once() {
    const ENTRIES: usize = 100;
    const CHANNELS: [&str; 4] = ["news:a", "news:b", "news:c", "news:d"];
    let redis_server = RedisServer::start();
    let a = redis_node(&redis_server).await;
    let b = redis_node(&redis_server).await;
    let mut bob = Client::connect(&a, "bob").await;
    for ch in CHANNELS {
        bob.ok("subscribe", json!({"channel": ch})).await;
    }
    let config = ingest_config(&redis_server, Duration::from_secs(30));
    let ia = RedisIngest::start(a.hub.clone(), config.clone())
        .await
        .unwrap();
    let ib = RedisIngest::start(b.hub.clone(), config).await.unwrap();
    let mut q = redis(&redis_server).await;
    eventually("both consumers in the group", || {
        let mut q = q.clone();
        async move {
            let consumers: Vec<RValue> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(STREAM)
                .arg(GROUP)
                .query_async(&mut q)
                .await
                .unwrap();
            consumers.len() == 2
        }
    })
    .await;

    for i in 0..ENTRIES {
        let data = i.to_string();
        xadd(&mut q, &[("channel", CHANNELS[i % 4]), ("data", &data)]).await;
    }
    let mut got = BTreeSet::new();
    while got.len() < ENTRIES {
        let p = bob.push().await;
        assert_eq!(p["push"], "pub", "{p}");
        let n = p["data"].as_u64().unwrap();
        assert!(got.insert(n), "entry {n} delivered twice");
    }
    eventually("everything acknowledged", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
    // Each channel's history has each of its entries exactly once.
    for (c, ch) in CHANNELS.iter().enumerate() {
        let mut data: Vec<u64> = history(&a.hub, ch)
            .await
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        data.sort_unstable();
        let want: Vec<u64> = (0..ENTRIES as u64).filter(|i| *i % 4 == c as u64).collect();
        assert_eq!(data, want, "{ch}");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while ia.stats().published + ib.stats().published < ENTRIES as u64 {
        assert!(tokio::time::Instant::now() < deadline, "counters lag");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (sa, sb) = (ia.stats(), ib.stats());
    assert_eq!(sa.published + sb.published, ENTRIES as u64, "{sa:?} {sb:?}");
    assert!(sa.published > 0 && sb.published > 0, "{sa:?} {sb:?}");
    assert!(bob.pushes.is_empty());
}

#[tokio::test]
async fn the_consumer_survives_a_restart_of_the_queue_redis() {
    let mut queue = RedisServer::start();
    let node = memory_node().await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let ingest = RedisIngest::start(
        node.hub.clone(),
        ingest_config(&queue, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let mut q = redis(&queue).await;
    xadd(&mut q, &[("channel", "news:a"), ("data", "1")]).await;
    assert_eq!(bob.push().await["data"], 1);

    // Redis comes back empty: the stream and the group are gone. The
    // consumer reconnects, creates the group again and goes on.
    queue.restart_empty();
    let mut q = redis(&queue).await;
    xadd(&mut q, &[("channel", "news:a"), ("data", "2")]).await;
    assert_eq!(bob.push().await["data"], 2);
    stats_until(&ingest, "2 published", |s| s.published == 2).await;
    assert!(ingest.stats().redis_errors >= 1, "{:?}", ingest.stats());
    eventually("acknowledged in the new group", || {
        let mut q = q.clone();
        async move { pending(&mut q).await.is_empty() }
    })
    .await;
}

#[tokio::test]
async fn consumers_of_stopped_nodes_are_removed() {
    let queue = RedisServer::start();
    let mut q = redis(&queue).await;
    let _: RValue = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut q)
        .await
        .unwrap();
    let _: RValue = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(STREAM)
        .arg(GROUP)
        .arg("stopped-node")
        .query_async(&mut q)
        .await
        .unwrap();
    let node = memory_node().await;
    let mut config = ingest_config(&queue, Duration::from_millis(100));
    config.consumer_expiry = Duration::from_millis(300);
    let ingest = RedisIngest::start(node.hub.clone(), config).await.unwrap();
    let me = ingest.consumer().to_owned();
    eventually("only this node's consumer left", || {
        let mut q = q.clone();
        let me = me.clone();
        async move {
            let consumers: Vec<HashMap<String, RValue>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(STREAM)
                .arg(GROUP)
                .query_async(&mut q)
                .await
                .unwrap();
            let names: Vec<RValue> = consumers
                .iter()
                .filter_map(|c| c.get("name").cloned())
                .collect();
            names == [RValue::BulkString(me.into_bytes())]
        }
    })
    .await;
}

async fn upstream_node(redis: &RedisServer, max_len: u64) -> Node {
    let node = memory_node().await;
    let mut c = RedisUpstreamConfig::new(redis.url(), &node.hub.config().upstream);
    c.stream = "up".into();
    c.max_len = max_len;
    c.connect_timeout = Duration::from_secs(1);
    node.hub
        .set_upstream(Arc::new(RedisUpstream::connect(c).await.unwrap()));
    node
}

#[tokio::test]
async fn upstream_publications_are_appended_with_their_fields() {
    let server = RedisServer::start();
    let node = upstream_node(&server, 0).await;
    let mut alice = Client::connect(&node, "alice").await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "game:1"})).await;
    bob.ok("subscribe", json!({"channel": "orders:1"})).await;

    // `also`: appended and fanned out.
    let r = alice
        .ok(
            "publish",
            json!({"channel": "game:1", "data": {"move": "e4"}}),
        )
        .await;
    assert_eq!(r["upstream"], true, "{r}");
    assert_eq!(bob.push().await["data"], json!({"move": "e4"}));
    // `only`: appended, not fanned out.
    for i in 0..3 {
        let r = alice
            .ok("publish", json!({"channel": "orders:1", "data": i}))
            .await;
        assert_eq!(r, json!({"upstream": true}));
    }
    node.hub
        .ingest(wshub::hub::queue::IngestMessage::new(
            "orders:1",
            r#""backend""#,
        ))
        .await
        .unwrap();
    let p = bob.push().await;
    assert_eq!(
        (&p["channel"], &p["data"]),
        (&json!("orders:1"), &json!("backend"))
    );

    let mut q = redis(&server).await;
    let up = entries(&mut q, "up").await;
    let got: Vec<(&str, &str)> = up
        .iter()
        .map(|(_, f)| (f["channel"].as_str(), f["data"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("game:1", r#"{"move":"e4"}"#),
            ("orders:1", "0"),
            ("orders:1", "1"),
            ("orders:1", "2")
        ]
    );
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut ids = BTreeSet::new();
    for (_, f) in &up {
        let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["channel", "client", "data", "id", "time", "user"]);
        assert_eq!(f["user"], "alice");
        assert!(f["id"].starts_with(&f["client"]), "{f:?}");
        assert!(ids.insert(f["id"].clone()), "ids are unique: {f:?}");
        let t: u64 = f["time"].parse().unwrap();
        assert!(t > now_ms - 600_000 && t <= now_ms, "{t} vs {now_ms}");
    }
    assert_eq!(
        up.iter()
            .map(|(_, f)| &f["client"])
            .collect::<BTreeSet<_>>()
            .len(),
        1
    );
}

#[tokio::test]
async fn upstream_trims_with_max_len() {
    let server = RedisServer::start();
    let node = upstream_node(&server, 10).await;
    let mut alice = Client::connect(&node, "alice").await;
    for i in 0..1000 {
        alice
            .ok("publish", json!({"channel": "orders:1", "data": i}))
            .await;
    }
    let mut q = redis(&server).await;
    let len: u64 = redis::cmd("XLEN")
        .arg("up")
        .query_async(&mut q)
        .await
        .unwrap();
    // `MAXLEN ~` trims whole macro nodes (100 entries by default): the
    // stream keeps at least 10 and far fewer than 1000.
    assert!((10..=200).contains(&len), "{len}");
}

#[tokio::test]
async fn upstream_redis_down_fails_the_publish_with_108() {
    let mut server = RedisServer::start();
    let node = upstream_node(&server, 0).await;
    let mut alice = Client::connect(&node, "alice").await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.ok("subscribe", json!({"channel": "game:1"})).await;
    alice
        .ok("publish", json!({"channel": "game:1", "data": 1}))
        .await;
    assert_eq!(bob.push().await["data"], 1);

    server.kill();
    for _ in 0..2 {
        let r = alice
            .call("publish", json!({"channel": "game:1", "data": 2}))
            .await;
        assert_eq!(r["error"]["code"], 108, "{r}");
    }
    // Nothing was fanned out; the connection still works.
    node.hub
        .ingest(wshub::hub::queue::IngestMessage::new("game:1", "3"))
        .await
        .unwrap();
    assert_eq!(bob.push().await["data"], 3);
    alice.ok("ping", Value::Null).await;

    // Redis is back: publishing works again.
    server.restart_empty();
    let mut ok = false;
    for _ in 0..50 {
        let r = alice
            .call("publish", json!({"channel": "game:1", "data": 4}))
            .await;
        if r.get("result").is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "publishing never worked again after Redis came back");
    assert_eq!(bob.push().await["data"], 4);
    let mut q = redis(&server).await;
    let up = entries(&mut q, "up").await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1["data"], "4");
}
