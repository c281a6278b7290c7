//! The shipped nginx config for real: nginx (Debian's package) in front of
//! three `wshub serve` nodes sharing one `redis-server`. Clients connect from
//! different loopback addresses through nginx, round-robin spreads them over
//! the nodes (no sticky sessions), every client receives every publication of
//! the channel in order whichever node it is on, and each node resolves the
//! client's own address from X-Forwarded-For (nginx is a trusted proxy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
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
const SECRET: &str = "cluster-cli-secret-32-bytes-long!!!";
const KEY: &str = "cluster-cli-api-key-0123";

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

fn redis(port: u16) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    wait_port(port);
    Proc(child)
}

fn node(dir: &Path, redis_port: u16, port: u16) -> Proc {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1/32"]
[auth]
hmac_secret = "{SECRET}"
[api]
key = "{KEY}"
[log]
level = "wshub::hub::session=debug,warn"
[broker]
engine = "redis"
url = "redis://127.0.0.1:{redis_port}"
[namespaces.chat]
[namespaces.room]
join_leave = true
"#
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("node-{port}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("WSHUB_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_port(port);
    Proc(child)
}

/// nginx with the repository's `deploy/nginx/wshub.conf`, only the ports
/// changed.
fn nginx(dir: &Path, listen: u16, nodes: &[u16]) -> Proc {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/wshub.conf");
    let mut site = std::fs::read_to_string(shipped).unwrap();
    for (i, port) in nodes.iter().enumerate() {
        site = site.replace(
            &format!("127.0.0.1:808{}", i + 1),
            &format!("127.0.0.1:{port}"),
        );
    }
    site = site.replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"));
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed (apt-get install nginx)");
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_port(listen);
    Proc(child)
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

async fn publish(port: u16, body: &Value) -> u16 {
    let body = body.to_string();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_without_sticky_sessions() {
    let dir = temp_dir("cluster");
    let redis_port = free_port();
    let _redis = redis(redis_port);
    let ports = [free_port(), free_port(), free_port()];
    let _nodes: Vec<Proc> = ports.iter().map(|p| node(&dir, redis_port, *p)).collect();
    let front = free_port();
    let _nginx = nginx(&dir, front, &ports);

    let minter = Minter::hs256(SECRET.as_bytes()).unwrap();
    let url = format!("ws://127.0.0.1:{front}/ws");
    let mut clients = Vec::new();
    let mut nodes_seen = std::collections::BTreeSet::new();
    for i in 0..6u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20 + i));
        let mut ws = ClientBuilder::new()
            .protocols(["wshub.v1"])
            .local_ip(ip)
            .connect(&url)
            .await
            .unwrap();
        let token = minter
            .mint(&ClaimsBuilder::new(format!("user{i}")), SystemTime::now())
            .unwrap();
        ws.send(json!({"id": 1, "method": "connect", "params": {"token": token}}).to_string())
            .unwrap();
        let reply = recv_json(&mut ws).await;
        let client = reply["result"]["client"].as_str().unwrap().to_owned();
        nodes_seen.insert(client.split('-').next().unwrap().to_owned());
        ws.send(
            json!({"id": 2, "method": "subscribe", "params": {"channel": "chat:all"}}).to_string(),
        )
        .unwrap();
        let reply = recv_json(&mut ws).await;
        assert!(reply.get("result").is_some(), "{reply}");
        clients.push((ip, ws));
    }
    assert!(
        nodes_seen.len() >= 2,
        "round-robin put every client on one node: {nodes_seen:?}"
    );

    for n in 1..=20 {
        let status = publish(front, &json!({"channel": "chat:all", "data": {"n": n}})).await;
        assert_eq!(status, 200);
    }
    for (ip, ws) in &mut clients {
        for offset in 1..=20u64 {
            let p = recv_json(ws).await;
            assert_eq!(p["push"], "pub", "{ip}: {p}");
            assert_eq!(p["offset"], offset, "{ip}: {p}");
            assert_eq!(p["data"]["n"], offset);
        }
    }

    // Each node logged the client's own address, not nginx's.
    let logs: String = ports
        .iter()
        .map(|p| std::fs::read_to_string(dir.join(format!("node-{p}.log"))).unwrap_or_default())
        .collect();
    for (ip, _) in &clients {
        assert!(
            logs.contains(&format!("client_ip={ip}")),
            "no node resolved {ip}:\n{logs}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn api_get_json(port: u16, method: &str, path: &str, body: &str) -> Value {
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
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A node killed with SIGKILL cannot clean up: once its lease lapses, its
/// clients vanish from presence (and the node from `/api/nodes` and its
/// channels from `/api/channels`), and the other nodes' subscribers get a
/// leave push for each of its users who has no other tab left — carol, with
/// a tab on the surviving node too, does not leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_presence() {
    let dir = temp_dir("kill");
    let redis_port = free_port();
    let _redis = redis(redis_port);
    let (p1, p2) = (free_port(), free_port());
    let _n1 = node(&dir, redis_port, p1);
    let mut n2 = node(&dir, redis_port, p2);
    let minter = Minter::hs256(SECRET.as_bytes()).unwrap();
    let join = |port: u16, user: &'static str| {
        let token = minter
            .mint(&ClaimsBuilder::new(user), SystemTime::now())
            .unwrap();
        async move {
            let mut ws = ClientBuilder::new()
                .protocols(["wshub.v1"])
                .connect(&format!("ws://127.0.0.1:{port}/ws"))
                .await
                .unwrap();
            ws.send(json!({"id": 1, "method": "connect", "params": {"token": token}}).to_string())
                .unwrap();
            recv_json(&mut ws).await;
            let sub = json!({"id": 2, "method": "subscribe", "params": {"channel": "room:p"}});
            ws.send(sub.to_string()).unwrap();
            let reply = recv_json(&mut ws).await;
            assert!(reply.get("result").is_some(), "{reply}");
            ws
        }
    };
    let mut alice = join(p1, "alice").await;
    let _bob = join(p2, "bob").await;
    let _carol_on_2 = join(p2, "carol").await;
    let _carol_on_1 = join(p1, "carol").await;
    // alice sees bob and carol join, carol once for her two tabs.
    let mut joined: Vec<String> = Vec::new();
    for _ in 0..2 {
        let p = recv_json(&mut alice).await;
        assert_eq!(p["push"], "join", "{p}");
        joined.push(p["member"]["user"].as_str().unwrap().to_owned());
    }
    joined.sort();
    assert_eq!(joined, ["bob", "carol"]);

    let users = |v: &Value| -> Vec<String> {
        let mut u: Vec<String> = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["user"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        u.sort();
        u
    };
    let room = |v: &Value| -> Option<u64> {
        v["channels"]
            .as_array()?
            .iter()
            .find(|c| c["channel"] == "room:p")?["subscribers"]
            .as_u64()
    };
    let body = json!({"channel": "room:p"}).to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let v = api_get_json(p1, "POST", "/api/presence", &body).await;
        let c = api_get_json(p1, "GET", "/api/channels", "").await;
        // Node 1 counts its own two subscribers and node 2's announced two.
        if users(&v) == ["alice", "bob", "carol", "carol"] && room(&c) == Some(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2's members never showed up: {v} {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    n2.0.kill().unwrap(); // SIGKILL: no drain, no cleanup
    let _ = n2.0.wait();
    // The next push alice gets is bob's leave (not carol's: her tab on node 1
    // remains), then the marker publication.
    let p = recv_json(&mut alice).await;
    assert_eq!(p["push"], "leave", "{p}");
    assert_eq!(p["member"]["user"], "bob", "{p}");
    let marker = json!({"channel": "room:p", "data": "marker"}).to_string();
    api_get_json(p1, "POST", "/api/publish", &marker).await;
    let p = recv_json(&mut alice).await;
    assert_eq!(p["push"], "pub", "{p}");
    assert_eq!(p["data"], "marker", "{p}");

    let v = api_get_json(p1, "POST", "/api/presence", &body).await;
    assert_eq!(users(&v), ["alice", "carol"], "{v}");
    let c = api_get_json(p1, "GET", "/api/channels", "").await;
    assert_eq!(room(&c), Some(2), "{c}");
    let nodes = api_get_json(p1, "GET", "/api/nodes", "").await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    let _ = std::fs::remove_dir_all(&dir);
}
