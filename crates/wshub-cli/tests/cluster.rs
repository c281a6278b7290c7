//! The shipped nginx config for real: nginx (Debian's package) in front of
//! three `wshub serve` nodes sharing one `redis-server`. Clients connect from
//! different loopback addresses through nginx, round-robin spreads them over
//! the nodes (no sticky sessions), every client receives every publication of
//! the channel in order whichever node it is on, and each node resolves the
//! client's own address from X-Forwarded-For (nginx is a trusted proxy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{api, free_port, node, publish, recv_json, temp_dir, wait_port, Proc, Redis, SECRET};
use serde_json::{json, Value};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};

const WAIT: Duration = common::WAIT;
const CHAT: &str = "[namespaces.chat]";
const ROOM: &str = "[namespaces.room]\njoin_leave = true";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_without_sticky_sessions() {
    let dir = temp_dir("cluster");
    let redis = Redis::start();
    let ports = [free_port(), free_port(), free_port()];
    let _nodes: Vec<Proc> = ports
        .iter()
        .map(|p| node(&dir, &redis.url(), *p, CHAT))
        .collect();
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

/// A node killed with SIGKILL cannot clean up: once its lease lapses, its
/// clients vanish from presence (and the node from `/api/nodes` and its
/// channels from `/api/channels`), and the other nodes' subscribers get a
/// leave push for each of its users who has no other tab left — carol, with
/// a tab on the surviving node too, does not leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_presence() {
    let dir = temp_dir("kill");
    let redis = Redis::start();
    let (p1, p2) = (free_port(), free_port());
    let _n1 = node(&dir, &redis.url(), p1, ROOM);
    let mut n2 = node(&dir, &redis.url(), p2, ROOM);
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
        let v = api(p1, "POST", "/api/presence", &body).await.1;
        let c = api(p1, "GET", "/api/channels", "").await.1;
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

    // SIGKILL: no drain, no cleanup.
    n2.kill();
    // The next push alice gets is bob's leave (not carol's: her tab on node 1
    // remains), then the marker publication.
    let p = recv_json(&mut alice).await;
    assert_eq!(p["push"], "leave", "{p}");
    assert_eq!(p["member"]["user"], "bob", "{p}");
    let marker = json!({"channel": "room:p", "data": "marker"}).to_string();
    api(p1, "POST", "/api/publish", &marker).await;
    let p = recv_json(&mut alice).await;
    assert_eq!(p["push"], "pub", "{p}");
    assert_eq!(p["data"], "marker", "{p}");

    let v = api(p1, "POST", "/api/presence", &body).await.1;
    assert_eq!(users(&v), ["alice", "carol"], "{v}");
    let c = api(p1, "GET", "/api/channels", "").await.1;
    assert_eq!(room(&c), Some(2), "{c}");
    let nodes = api(p1, "GET", "/api/nodes", "").await.1;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    let _ = std::fs::remove_dir_all(&dir);
}
