//! `wshub serve` on the Redis topologies of `broker.mode`: two nodes on a
//! real three-master Redis Cluster (started here on free loopback ports)
//! exchange publications on channels of every shard — a client on one node
//! receives what the API of the other published, in offset order — and
//! `/api/nodes` lists both; two nodes find their master through a real
//! sentinel and do the same; and wrong `[broker]` mode settings stop `serve`
//! with an error naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "topology-cli-secret-32-bytes-long!!";
const KEY: &str = "topology-cli-api-key-0123";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three cluster-enabled `redis-server`s holding every slot; returns them
/// and their ports.
fn redis_cluster(dir: &Path) -> (Vec<Proc>, Vec<u16>) {
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        // An explicit bus port: the default (port + 10000) may be taken or
        // out of range.
        let (port, bus) = (free_port(), free_port());
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        procs.push(Proc(child));
        ports.push(port);
    }
    for port in &ports {
        wait_port(*port);
    }
    let status = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli is installed");
    assert!(status.success(), "redis-cli --cluster create failed");
    // Every node agrees the cluster is up.
    for port in &ports {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster_state never ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (procs, ports)
}

/// The cluster port owning the slot of `key`.
fn owner(ports: &[u16], key: &str) -> u16 {
    let run = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &ports[0].to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let slot: u16 = run(&["cluster", "keyslot", key]).trim().parse().unwrap();
    // `CLUSTER SHARDS` would be neater; `CLUSTER NODES` is in every Redis 7.
    for line in run(&["cluster", "nodes"]).lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        for range in &fields[8..] {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>()) {
                if (start..=end).contains(&slot) {
                    return port;
                }
            }
        }
    }
    panic!("no owner of slot {slot}");
}

fn serve(dir: &Path, port: u16, broker: &str) -> (Proc, PathBuf) {
    let config = dir.join(format!("node-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[auth]
hmac_secret = "{SECRET}"
[api]
key = "{KEY}"
[broker]
engine = "redis"
{broker}
[namespaces.chat]
"#
        ),
    )
    .unwrap();
    let log_path = dir.join(format!("node-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("WSHUB_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Proc(child), log_path)
}

async fn recv_json(ws: &mut WebSocket) -> Value {
    match tokio::time::timeout(WAIT, ws.recv())
        .await
        .expect("a frame")
    {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn api(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
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
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster() {
    let dir = temp_dir("redis-cluster-cli");
    let (_cluster, cluster_ports) = redis_cluster(&dir);
    let nodes = cluster_ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let broker = format!("mode = \"cluster\"\nnodes = [{nodes}]");
    let (p1, p2) = (free_port(), free_port());
    let (_n1, _) = serve(&dir, p1, &broker);
    let (_n2, _) = serve(&dir, p2, &broker);
    wait_port(p1);
    wait_port(p2);

    // One channel per shard.
    let mut channels: Vec<(u16, String)> = Vec::new();
    for i in 0..200 {
        let channel = format!("chat:c{i}");
        let at = owner(&cluster_ports, &format!("wshub:{{{channel}}}:ch"));
        if channels.iter().all(|(p, _)| *p != at) {
            channels.push((at, channel));
        }
        if channels.len() == 3 {
            break;
        }
    }
    assert_eq!(channels.len(), 3);

    // A client on node 2 subscribes to all three; node 1's API publishes.
    let names: Vec<&str> = channels.iter().map(|(_, c)| c.as_str()).collect();
    let mut ws = subscriber(p2, "alice", &names).await;
    for n in 1..=5 {
        for (_, channel) in &channels {
            let body = json!({"channel": channel, "data": {"n": n}}).to_string();
            let (status, reply) = api(p1, "POST", "/api/publish", &body).await;
            assert_eq!(status, 200, "{reply}");
        }
    }
    let mut seen: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for _ in 0..15 {
        let p = recv_json(&mut ws).await;
        assert_eq!(p["push"], "pub", "{p}");
        let channel = p["channel"].as_str().unwrap().to_owned();
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(p["data"]["n"], offset);
        seen.entry(channel).or_default().push(offset);
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|o| o == &[1, 2, 3, 4, 5]), "{seen:?}");

    // Both nodes are in the registry, whichever node is asked.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, v) = api(p1, "GET", "/api/nodes", "").await;
        if v["nodes"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both nodes never listed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client of `port` connected as `user` and subscribed to `channels`.
async fn subscriber(port: u16, user: &str, channels: &[&str]) -> WebSocket {
    let token = Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&ClaimsBuilder::new(user), SystemTime::now())
        .unwrap();
    let mut ws = ClientBuilder::new()
        .protocols(["wshub.v1"])
        .connect(&format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    ws.send(json!({"id": 1, "method": "connect", "params": {"token": token}}).to_string())
        .unwrap();
    assert!(recv_json(&mut ws).await.get("result").is_some());
    for (i, channel) in channels.iter().enumerate() {
        let sub = json!({"id": 2 + i, "method": "subscribe", "params": {"channel": channel}});
        ws.send(sub.to_string()).unwrap();
        let reply = recv_json(&mut ws).await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_through_a_sentinel() {
    let dir = temp_dir("redis-sentinel-cli");
    let (master, sentinel) = (free_port(), free_port());
    let _master = Proc(
        Command::new("redis-server")
            .args(["--port", &master.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed"),
    );
    wait_port(master);
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {master} 1\n",
            dir.display()
        ),
    )
    .unwrap();
    let _sentinel = Proc(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(sentinel);

    let broker = format!(
        "url = \"redis://127.0.0.1:1/0\"\nmode = \"sentinel\"\n\
         nodes = [\"redis://127.0.0.1:{sentinel}\"]\nsentinel_master = \"mymaster\""
    );
    let (p1, p2) = (free_port(), free_port());
    let (_n1, _) = serve(&dir, p1, &broker);
    let (_n2, _) = serve(&dir, p2, &broker);
    wait_port(p1);
    wait_port(p2);
    let mut ws = subscriber(p2, "alice", &["chat:s"]).await;
    for n in 1..=3 {
        let body = json!({"channel": "chat:s", "data": {"n": n}}).to_string();
        let (status, reply) = api(p1, "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{reply}");
    }
    for offset in 1..=3u64 {
        let p = recv_json(&mut ws).await;
        assert_eq!(p["push"], "pub", "{p}");
        assert_eq!(p["offset"], offset, "{p}");
        assert_eq!(p["data"]["n"], offset);
    }
    // The data is on the master the sentinel named (broker.url's host and
    // port are not used).
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &master.to_string(),
            "hget",
            "wshub:{chat:s}:meta",
            "offset",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_mode_settings_stop_serve_naming_the_key() {
    let dir = temp_dir("redis-mode-errors");
    for (broker, key, reason) in [
        (
            "mode = \"cluster\"",
            "broker.nodes",
            "needs at least one cluster seed URL",
        ),
        (
            "mode = \"sentinel\"\nnodes = [\"redis://127.0.0.1:1\"]",
            "broker.sentinel_master",
            "needs the name",
        ),
        (
            "nodes = [\"redis://127.0.0.1:1\"]",
            "broker.nodes",
            "used only with mode",
        ),
        ("mode = \"ring\"", "broker.mode", "ring"),
    ] {
        let port = free_port();
        let (mut node, log) = serve(&dir, port, broker);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = node.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "serve kept running with {broker:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success());
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(
            err.contains(key) && err.contains(reason),
            "{broker:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
