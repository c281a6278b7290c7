//! `wshub serve` with both NATS JetStream bridges, end to end: a private
//! `nats-server -js`, the real binary with `[ingest] engine = "nats"` and
//! `[upstream] engine = "nats"`, a WebSocket client. A message a backend
//! publishes to the ingest subject reaches the subscribed client once; a
//! malformed one lands in the dead-letter stream; the client's publish in
//! an `upstream = "only"` namespace lands in the upstream stream; SIGTERM
//! stops the consumer and the process exits cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::{Message, WebSocket};
use wshub_nats::async_nats::{self, jetstream};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "nats-cli-test-secret-32-bytes-long!!";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn nats_server(dir: &Path, port: u16) -> Child {
    let bin = if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server is installed (apt-get install nats-server)");
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
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

/// Sends a command and returns its reply, skipping nothing: the tests only
/// call while no push can arrive, or read pushes with [`recv_json`].
async fn call(ws: &mut WebSocket, id: u64, method: &str, params: Value) -> Value {
    ws.send(json!({"id": id, "method": method, "params": params}).to_string())
        .unwrap();
    let reply = recv_json(ws).await;
    assert_eq!(reply["id"], id, "{reply}");
    reply
}

async fn js_publish(js: &jetstream::Context, subject: &str, body: &'static str) -> u64 {
    let ack = js
        .publish(subject.to_owned(), Bytes::from_static(body.as_bytes()))
        .await
        .unwrap();
    ack.await.unwrap().sequence
}

async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(s) => s.cached_info().state.messages,
        Err(_) => 0,
    }
}

async fn wait_stream_len(js: &jetstream::Context, stream: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while stream_len(js, stream).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {stream} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_with_nats_ingest_and_upstream() {
    let dir = temp_dir("nats-e2e");
    let nats_port = free_port();
    let _nats = nats_server(&dir, nats_port);
    let config = dir.join("wshub.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain_jitter = "0s"
[auth]
hmac_secret = "{SECRET}"
[ingest]
engine = "nats"
url = "nats://127.0.0.1:{nats_port}"
claim_idle = "1s"
[upstream]
engine = "nats"
url = "nats://127.0.0.1:{nats_port}"
[namespaces.news]
publish = "none"
[namespaces.orders]
upstream = "only"
"#
        ),
    )
    .unwrap();
    let mut server = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("WSHUB_CONFIG")
        .env("WSHUB_LOG_LEVEL", "warn")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("serve exited");
            if line.contains("wshub listening on") {
                return line;
            }
        }
    })
    .await
    .expect("wshub serve did not start");
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();

    let mut ws = ClientBuilder::new()
        .protocols(["wshub.v1"])
        .connect(&url)
        .await
        .unwrap();
    let token = Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&ClaimsBuilder::new("carol"), SystemTime::now())
        .unwrap();
    let r = call(&mut ws, 1, "connect", json!({ "token": token })).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = call(&mut ws, 2, "subscribe", json!({"channel": "news:a"})).await;
    assert!(r.get("result").is_some(), "{r}");

    let nats = async_nats::connect(format!("127.0.0.1:{nats_port}"))
        .await
        .unwrap();
    let js = jetstream::new(nats);
    // The defaults: stream wshub-ingest on wshub.ingest, dead letters on
    // wshub-ingest-dead (a stream the hub created).
    js_publish(
        &js,
        "wshub.ingest",
        r#"{"channel":"news:a","data":{"hello":"nats"}}"#,
    )
    .await;
    js_publish(&js, "wshub.ingest", "not a publication").await;
    js_publish(&js, "wshub.ingest", r#"{"channel":"news:a","data":2}"#).await;
    let p = recv_json(&mut ws).await;
    assert_eq!(
        (&p["push"], &p["data"]),
        (&json!("pub"), &json!({"hello": "nats"})),
        "{p}"
    );
    let p = recv_json(&mut ws).await;
    assert_eq!(p["data"], 2, "{p}");
    wait_stream_len(&js, "wshub-ingest-dead", 1).await;
    let dead = js
        .get_stream("wshub-ingest-dead")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(&dead.payload[..], b"not a publication");
    assert_eq!(
        dead.headers.get("Wshub-Sequence").map(|v| v.as_str()),
        Some("2")
    );

    // Upstream `only`: acknowledged, in the stream, not fanned out.
    let r = call(&mut ws, 3, "subscribe", json!({"channel": "orders:1"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = call(
        &mut ws,
        4,
        "publish",
        json!({"channel": "orders:1", "data": {"qty": 3}}),
    )
    .await;
    assert_eq!(r["result"], json!({"upstream": true}), "{r}");
    let r = call(&mut ws, 5, "ping", Value::Null).await;
    assert!(r.get("result").is_some(), "a push arrived instead: {r}");
    assert_eq!(stream_len(&js, "wshub-upstream").await, 1);
    let up = js
        .get_stream("wshub-upstream")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(&up.payload[..], br#"{"qty":3}"#);
    assert_eq!(
        up.headers.get("Wshub-Channel").map(|v| v.as_str()),
        Some("orders:1")
    );

    // SIGTERM: the consumer stops with the hub and the process exits 0.
    let pid = server.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .expect("wshub serve did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
