//! Several hub nodes sharing one Redis, each a real `Hub` serving real
//! sockets: a publication on any node reaches subscribers on every node with
//! the same offsets; a client that leaves one node recovers exactly what it
//! missed on another; presence and join/leave span the nodes; and when Redis
//! loses its data, subscribers are told to resubscribe (111) and learn that
//! the gap is not recoverable; `/readyz` goes 503 while Redis is down; and
//! the API's disconnect and unsubscribe reach users on every node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{RedisServer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::hub::config::{HubConfig, NamespaceConfig};
use wshub::hub::Hub;
use wshub::{Message, WebSocket};
use wshub_redis::{RedisBroker, RedisBrokerConfig};

const SECRET: &str = "cluster-test-secret-32-bytes-long!!";
const KEY: &str = "cluster-test-api-key";

fn config() -> HubConfig {
    let mut c = HubConfig::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.api.key = Some(KEY.into());
    c.server.drain_jitter = Duration::ZERO;
    let chat = NamespaceConfig {
        join_leave: true,
        ..NamespaceConfig::default()
    };
    c.namespaces.insert("chat".into(), chat);
    c
}

struct Node {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn node(redis: &RedisServer) -> Node {
    let broker = RedisBroker::connect(RedisBrokerConfig::new(redis.url()))
        .await
        .unwrap();
    let hub = Hub::new(config(), Arc::new(broker), Path::new(".")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = hub
            .serve(listener, None, async {
                let _ = rx.await;
            })
            .await;
    });
    Node { addr, _stop: tx }
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
    pushes: std::collections::VecDeque<Value>,
}

impl Client {
    async fn connect(node: &Node, user: &str) -> Client {
        let url = format!("ws://{}/ws", node.addr);
        let ws = ClientBuilder::new()
            .protocols(["wshub.v1"])
            .connect(&url)
            .await
            .unwrap();
        let mut c = Client {
            ws,
            next: 0,
            pushes: Default::default(),
        };
        c.ok("connect", json!({"token": token(user)})).await;
        c
    }

    async fn frame(&mut self) -> Option<Value> {
        match tokio::time::timeout(WAIT, self.ws.recv())
            .await
            .expect("a frame in time")?
        {
            Message::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
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
            let f = self.frame().await.expect("connection ended");
            if f.get("push").is_some() {
                self.pushes.push_back(f);
            } else {
                assert_eq!(f["id"], id);
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
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let f = self.frame().await.expect("connection ended");
        assert!(f.get("push").is_some(), "unexpected {f}");
        f
    }

    /// The next `pub` push (skipping join/leave).
    async fn next_pub(&mut self) -> Value {
        loop {
            let p = self.push().await;
            if p["push"] == "pub" {
                return p;
            }
        }
    }
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_node_in_offset_order() {
    let redis = RedisServer::start();
    let nodes = [node(&redis).await, node(&redis).await, node(&redis).await];
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = Client::connect(n, &format!("u{i}")).await;
        c.ok("subscribe", json!({"channel": "chat:all"})).await;
        subs.push(c);
    }
    // Every node publishes, interleaved: clients and the HTTP API.
    let mut publisher = Client::connect(&nodes[0], "pub").await;
    for i in 0..10 {
        publisher
            .ok("publish", json!({"channel": "chat:all", "data": {"i": i}}))
            .await;
        let body = json!({"channel": "chat:all", "data": {"api": i}}).to_string();
        let (s, _) = http(nodes[(i % 2) + 1].addr, "POST", "/api/publish", &body).await;
        assert_eq!(s, 200);
    }
    for c in &mut subs {
        let mut epoch = None;
        for offset in 1..=20u64 {
            let p = c.next_pub().await;
            assert_eq!(p["offset"], offset, "{p}");
            let e = p["epoch"].as_str().unwrap().to_owned();
            assert_eq!(*epoch.get_or_insert(e.clone()), e);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_node() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis).await, node(&redis).await, node(&redis).await);
    let mut alice = Client::connect(&a, "alice").await;
    let sub = alice.ok("subscribe", json!({"channel": "chat:r"})).await;
    let epoch = sub["position"]["epoch"].as_str().unwrap().to_owned();
    let mut bob = Client::connect(&b, "bob").await;
    bob.ok("publish", json!({"channel": "chat:r", "data": 1}))
        .await;
    assert_eq!(alice.next_pub().await["offset"], 1);
    drop(alice); // node A goes away for alice
    for i in 2..=4 {
        bob.ok("publish", json!({"channel": "chat:r", "data": i}))
            .await;
    }
    let mut alice = Client::connect(&c, "alice").await;
    let r = alice
        .ok(
            "subscribe",
            json!({"channel": "chat:r", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    bob.ok("publish", json!({"channel": "chat:r", "data": 5}))
        .await;
    assert_eq!(alice.next_pub().await["offset"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_span_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut alice = Client::connect(&a, "alice").await;
    alice.ok("subscribe", json!({"channel": "chat:p"})).await;
    let mut bob = Client::connect(&b, "bob").await;
    bob.ok("subscribe", json!({"channel": "chat:p"})).await;
    let join = alice.push().await;
    assert_eq!(join["push"], "join");
    assert_eq!(join["member"]["user"], "bob");
    let p = alice.ok("presence", json!({"channel": "chat:p"})).await;
    let mut users: Vec<&str> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    drop(bob);
    let leave = alice.push().await;
    assert_eq!(leave["push"], "leave");
    assert_eq!(leave["member"]["user"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_redis_data_means_resubscribe_and_not_recoverable() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut alice = Client::connect(&a, "alice").await;
    let sub = alice.ok("subscribe", json!({"channel": "chat:x"})).await;
    let old_epoch = sub["position"]["epoch"].as_str().unwrap().to_owned();
    let body = json!({"channel": "chat:x", "data": "before"}).to_string();
    assert_eq!(http(b.addr, "POST", "/api/publish", &body).await.0, 200);
    assert_eq!(alice.next_pub().await["offset"], 1);

    redis.restart_empty();
    // While the nodes reconnect, readiness may be 503; publishing succeeds
    // again once they are back (bounded retries).
    let mut published = false;
    for _ in 0..200 {
        let body = json!({"channel": "chat:x", "data": "after"}).to_string();
        if http(b.addr, "POST", "/api/publish", &body).await.0 == 200 {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        published,
        "publishing never recovered after the Redis restart"
    );
    // The new epoch shows up as a gap: alice is told to resubscribe…
    let p = alice.push().await;
    assert_eq!(p["push"], "unsub", "{p}");
    assert_eq!(p["code"], 111);
    assert_eq!(p["resubscribe"], true);
    // …and her old position is not recoverable.
    let r = alice
        .ok(
            "subscribe",
            json!({"channel": "chat:x", "since": {"offset": 1, "epoch": old_epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_ne!(r["position"]["epoch"], old_epoch);
    assert_eq!(http(a.addr, "GET", "/readyz", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_redis_connection() {
    let mut redis = RedisServer::start();
    let a = node(&redis).await;
    assert_eq!(http(a.addr, "GET", "/readyz", "").await.0, 200);
    redis.kill();
    let mut status = 200;
    for _ in 0..400 {
        status = http(a.addr, "GET", "/readyz", "").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 503, "/readyz stayed ready with Redis down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_unsubscribe_reach_users_on_every_node() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis).await, node(&redis).await, node(&redis).await);
    let mut mallory_a = Client::connect(&a, "mallory").await;
    let mut mallory_b = Client::connect(&b, "mallory").await;
    let mut bob = Client::connect(&a, "bob").await;
    bob.ok("subscribe", json!({"channel": "chat:z"})).await;

    // The API on node C reaches bob's session on node A…
    let body = json!({"user": "bob", "channel": "chat:z"}).to_string();
    assert_eq!(http(c.addr, "POST", "/api/unsubscribe", &body).await.0, 200);
    let p = bob.push().await;
    assert_eq!(p["push"], "unsub", "{p}");
    assert_eq!(p["code"], 103);

    // …and mallory's sessions on nodes A and B.
    let body = json!({"user": "mallory", "reason": "banned"}).to_string();
    assert_eq!(http(c.addr, "POST", "/api/disconnect", &body).await.0, 200);
    for m in [&mut mallory_a, &mut mallory_b] {
        let p = m.push().await;
        assert_eq!(p["push"], "disconnect", "{p}");
        assert_eq!(p["code"], 4503);
        assert_eq!(p["reason"], "banned");
        assert!(m.frame().await.is_none(), "the connection should end");
    }
    // Bob is untouched.
    bob.ok("ping", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_live_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let _alice = Client::connect(&b, "alice").await;
    // Nodes announce at start and every few seconds; poll (bounded).
    let mut listed = Vec::new();
    for _ in 0..200 {
        let (status, body) = http(a.addr, "GET", "/api/nodes", "").await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        listed = v["nodes"].as_array().unwrap().clone();
        if listed.len() == 2 && listed.iter().any(|n| n["connections"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.iter().filter(|n| n["self"] == true).count(), 1);
    assert!(listed.iter().any(|n| n["connections"] == 1), "{listed:?}");
}
