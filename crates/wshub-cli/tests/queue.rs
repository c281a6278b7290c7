//! The Redis Streams bridges through the real binary: `wshub serve` with
//! `[ingest] engine = "redis"` and `[upstream] engine = "redis"` (both
//! without a `url`, so on `broker.url`) next to a `redis-server` the test
//! starts. An entry added with `redis-cli XADD` reaches a connected client,
//! a client publication on an `upstream = "only"` namespace lands in the
//! upstream stream, a malformed entry lands in the dead-letter stream, and
//! SIGTERM stops the consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "queue-cli-secret-32-bytes-long!!!!!";

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

/// `redis-cli -p PORT ARGS…`, its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed (apt-get install redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

async fn recv_json(ws: &mut WebSocket) -> Value {
    match tokio::time::timeout(WAIT, ws.recv())
        .await
        .expect("a frame in time")
    {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn call(ws: &mut WebSocket, id: u64, method: &str, params: Value) -> Value {
    ws.send(json!({"id": id, "method": method, "params": params}).to_string())
        .unwrap();
    let reply = recv_json(ws).await;
    assert_eq!(reply["id"], id, "{reply}");
    reply
}

/// Polls `check` (bounded) until it returns true.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_consumes_and_appends_redis_streams() {
    let dir = std::env::temp_dir().join(format!("wshub-queue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let redis_port = free_port();
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    let _redis = Proc(redis);
    wait_port(redis_port);

    let config = dir.join("wshub.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[auth]
hmac_secret = "{SECRET}"
[broker]
engine = "redis"
url = "redis://127.0.0.1:{redis_port}"
[ingest]
engine = "redis"
[upstream]
engine = "redis"
[namespaces.news]
[namespaces.orders]
upstream = "only"
"#
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("wshub.log")).unwrap();
    let hub = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("WSHUB_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut hub = Proc(hub);
    wait_port(port);

    let mut ws = ClientBuilder::new()
        .protocols(["wshub.v1"])
        .connect(&format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    let token = Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&ClaimsBuilder::new("alice"), SystemTime::now())
        .unwrap();
    let r = call(&mut ws, 1, "connect", json!({"token": token})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = call(&mut ws, 2, "subscribe", json!({"channel": "news:a"})).await;
    assert!(r.get("result").is_some(), "{r}");

    // Ingest: a backend adds an entry with redis-cli; the client gets it.
    let id = redis_cli(
        redis_port,
        &[
            "XADD",
            "wshub-ingest",
            "*",
            "channel",
            "news:a",
            "data",
            r#"{"n":1}"#,
        ],
    );
    let p = recv_json(&mut ws).await;
    assert_eq!(p["push"], "pub", "{p}");
    assert_eq!(p["channel"], "news:a");
    assert_eq!(p["data"], json!({"n": 1}));
    assert_eq!(p["offset"], 1);
    eventually("the entry acknowledged", || {
        redis_cli(redis_port, &["XPENDING", "wshub-ingest", "wshub"]).starts_with("0\n")
    });

    // A malformed entry goes to the dead-letter stream with the reason.
    redis_cli(
        redis_port,
        &[
            "XADD",
            "wshub-ingest",
            "*",
            "channel",
            "nosuch:x",
            "data",
            "1",
        ],
    );
    eventually("the bad entry dead-lettered", || {
        redis_cli(redis_port, &["XRANGE", "wshub-ingest-dead", "-", "+"]).contains("error")
    });
    let dead = redis_cli(redis_port, &["XRANGE", "wshub-ingest-dead", "-", "+"]);
    assert!(
        dead.contains("nosuch:x") && dead.contains("(102)"),
        "{dead}"
    );
    assert!(
        !dead.contains(id.trim()),
        "the good entry is not dead: {dead}"
    );

    // Upstream: a publication on an `only` namespace is appended, with its
    // fields, and answered once Redis has it.
    let r = call(
        &mut ws,
        3,
        "publish",
        json!({"channel": "orders:7", "data": {"qty": 2}}),
    )
    .await;
    assert_eq!(r["result"], json!({"upstream": true}), "{r}");
    let up = redis_cli(redis_port, &["XRANGE", "wshub-upstream", "-", "+"]);
    let lines: Vec<&str> = up.lines().collect();
    for (field, value) in [
        ("channel", "orders:7"),
        ("data", r#"{"qty":2}"#),
        ("user", "alice"),
    ] {
        let i = lines.iter().position(|l| *l == field).expect(field);
        assert_eq!(lines[i + 1], value, "{up}");
    }
    for field in ["id", "client", "time"] {
        assert!(lines.contains(&field), "{field} missing: {up}");
    }

    // SIGTERM: the hub drains, the consumer stops, the process exits.
    drop(ws);
    let pid = hub.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    eventually("wshub serve exited after SIGTERM", || {
        hub.0.try_wait().unwrap().is_some()
    });
    let log = std::fs::read_to_string(dir.join("wshub.log")).unwrap();
    for line in [
        "ingest: consuming the redis stream",
        "ingest: entry moved to the dead-letter stream",
        "ingest: consumer stopped",
    ] {
        assert!(log.contains(line), "{line:?} not logged:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
