//! `wshub bench` end to end: each mode runs briefly, as a real process, against
//! a server started in the test — a relay (every message to all other clients)
//! for `fanout`, an echo server for `echo` and `idle`, and a hub on the
//! in-memory broker for `hub`, and three `wshub serve` nodes on a Redis for
//! `hub` with several URLs — and its `--json` summary must show traffic and
//! no lost, duplicate or out-of-order message. A non-loopback target is refused.
//! With `--deflate`, compression must be negotiated or the run fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;
use wshub::hub::config::{Access, HubConfig, NamespaceConfig};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::Hub;
use wshub::{Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const SECRET: &str = "bench-test-secret-that-is-32-bytes-long!";
const API_KEY: &str = "bench-test-api-key";

/// A server that stops when dropped.
struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A relay server: like the `broadcast` example (or echo, when `echo`).
async fn server(echo: bool) -> Running {
    server_with(echo, false).await
}

/// [`server`], with permessage-deflate on when `deflate`.
async fn server_with(echo: bool, deflate: bool) -> Running {
    let (listener, addr) = bind().await;
    let server = Server::new(Config::builder().deflate(deflate).build());
    let clients = server.clients().clone();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let handler = move |mut ws: wshub::WebSocket| {
            let clients = clients.clone();
            async move {
                while let Some(data) = ws.recv().await {
                    if echo {
                        let _ = ws.send(data);
                    } else {
                        clients.broadcast_except(ws.id(), data);
                    }
                }
            }
        };
        let _ = server
            .serve(listener, handler, async {
                let _ = rx.await;
            })
            .await;
    });
    Running { addr, _stop: tx }
}

/// A hub with a `bench` namespace that users may publish to.
async fn hub() -> Running {
    let mut c = HubConfig::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.api.key = Some(API_KEY.into());
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.drain_jitter = Duration::ZERO;
    // The defaults: authenticated users may subscribe and publish.
    let ns = NamespaceConfig::default();
    assert_eq!(ns.publish, Access::Users);
    c.namespaces.insert("bench".into(), ns);
    let (listener, addr) = bind().await;
    let broker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
    let hub = Hub::new(c, broker, Path::new(".")).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = hub
            .serve(listener, None, async {
                let _ = rx.await;
            })
            .await;
    });
    Running { addr, _stop: tx }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `wshub bench ARGS --json FILE -q`; returns the exit status, the
/// output, and the JSON (when written).
async fn bench(name: &str, args: &[&str]) -> (bool, String, Option<Value>) {
    let json = temp(&format!("{name}.json"));
    let _ = std::fs::remove_file(&json);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .arg("bench")
            .args(args)
            .arg("--json")
            .arg(&json)
            .arg("-q")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the bench did not finish within 60 s")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let value = std::fs::read_to_string(&json)
        .ok()
        .map(|s| serde_json::from_str(&s).unwrap());
    (out.status.success(), text, value)
}

fn assert_clean(v: &Value, deliveries: &str) {
    assert!(v[deliveries].as_u64().unwrap() > 0, "no traffic: {v}");
    for k in ["lost", "duplicates", "out_of_order", "errors"] {
        assert_eq!(v[k], 0, "{k} in {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fanout_to_relay_receivers() {
    let s = server(false).await;
    let url = format!("ws://{}/", s.addr);
    let svg = temp("fanout.svg");
    let (ok, out, v) = bench(
        "fanout",
        &[
            "fanout",
            &url,
            "-r",
            "5",
            "--rate",
            "500",
            "-d",
            "1",
            "--svg",
            svg.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    assert_eq!(v["mode"], "fanout");
    assert_eq!(v["deliveries"], v["sent"].as_u64().unwrap() * 5, "{v}");
    assert!(v["generator_cpu_percent"].as_f64().is_some(), "{v}");
    assert!(v["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(out.contains("deliveries per second"), "{out}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fanout_with_a_window_and_binary() {
    let s = server(false).await;
    let url = format!("ws://{}/", s.addr);
    let (ok, out, v) = bench(
        "fanout-window",
        &[
            "fanout", &url, "-r", "3", "-w", "8", "--binary", "-s", "200", "-d", "1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert_clean(&v.unwrap(), "deliveries");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_checks_every_byte() {
    let s = server(true).await;
    let url = format!("ws://{}/", s.addr);
    let (ok, out, v) = bench("echo", &["echo", &url, "-c", "4", "-w", "4", "-d", "1"]).await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0);
    // The fields bench/echo-vs-ws.sh and bench/compare.sh read.
    for k in [
        "msg_per_sec",
        "p50_ms",
        "p99_ms",
        "server_cpu_us_per_msg",
        "generator_cpu_percent",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    // The generator's own CPU over the window: a share of the cores its
    // single-threaded runtime (plus the main thread) can use, and not zero
    // when it echoed messages for a second.
    let generator = v["generator_cpu_percent"].as_f64().unwrap();
    assert!(generator > 0.0 && generator <= 200.0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_via_the_http_api() {
    let h = hub().await;
    let url = format!("http://{}", h.addr);
    let (ok, out, v) = bench(
        "hub-api",
        &[
            "hub",
            &url,
            "--api-key",
            API_KEY,
            "--hmac-secret",
            SECRET,
            "-c",
            "6",
            "--channels",
            "3",
            "--rate",
            "300",
            "-d",
            "1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    assert_eq!(v["publish_errors"], 0);
    assert_eq!(v["offset_gaps"], 0);
    // Each publication reaches the two subscribers of its channel.
    assert_eq!(v["deliveries"], v["published"].as_u64().unwrap() * 2, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_via_clients() {
    let h = hub().await;
    let url = format!("http://{}", h.addr);
    let (ok, out, v) = bench(
        "hub-client",
        &[
            "hub",
            &url,
            "--via",
            "client",
            "--hmac-secret",
            SECRET,
            "-c",
            "4",
            "--channels",
            "2",
            "--rate",
            "100",
            "-d",
            "1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    assert_eq!(v["offset_gaps"], 0);
}

/// `--url` repeated: three nodes of a cluster on one Redis, the subscribers
/// of every channel spread over all three, publications entering through
/// each; every publication reaches every subscriber of its channel.
#[tokio::test(flavor = "multi_thread")]
async fn hub_cluster_with_several_urls() {
    let dir = common::temp_dir("bench-cluster");
    let redis = common::Redis::start();
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let _nodes: Vec<common::Proc> = ports
        .iter()
        .map(|p| common::node(&dir, &redis.url(), *p, "[namespaces.bench]"))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let args = [
        "hub",
        &urls[0],
        "--url",
        &urls[1],
        "--url",
        &urls[2],
        "--api-key",
        common::KEY,
        "--hmac-secret",
        common::SECRET,
        "-c",
        "9",
        "--channels",
        "3",
        "--publishers",
        "3",
        "--rate",
        "150",
        "-d",
        "2",
    ];
    let run = bench("hub-cluster", &args);
    // While it runs, every node has some of the nine subscribers (each
    // channel's three are spread over the three nodes).
    let watch = async {
        let mut most = std::collections::BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let (_, v) = common::api(ports[0], "GET", "/api/nodes", "").await;
            for n in v["nodes"].as_array().into_iter().flatten() {
                let c = n["connections"].as_u64().unwrap_or(0);
                let e = most
                    .entry(n["node"].as_str().unwrap_or("").to_owned())
                    .or_insert(0);
                *e = c.max(*e);
            }
            if most.len() == 3 && most.values().all(|c| *c >= 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        most
    };
    let ((ok, out, v), most) = tokio::join!(run, watch);
    assert!(ok, "{out}\n{}", common::node_logs(&dir, &ports));
    assert_eq!(most.len(), 3, "{most:?}");
    assert!(
        most.values().all(|c| *c >= 3),
        "subscribers not spread: {most:?}"
    );
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    assert_eq!(v["nodes"], 3);
    assert_eq!(v["publish_errors"], 0);
    assert_eq!(v["offset_gaps"], 0);
    assert_eq!(v["deliveries"], v["published"].as_u64().unwrap() * 3, "{v}");
    assert!(v["p99_ms"].as_f64().unwrap() > 0.0, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_from_spread_sources() {
    let s = server(true).await;
    let url = format!("ws://{}/", s.addr);
    let pid = std::process::id().to_string();
    let (ok, out, v) = bench(
        "idle",
        &[
            "idle",
            &url,
            "-c",
            "300",
            "--hold",
            "1",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_eq!(v["opened"], 300, "{v}");
    assert_eq!(v["failed"], 0);
    assert_eq!(v["dropped"], 0);
    assert_eq!(v["spread_sources"], true);
    assert!(v["server_rss_open"].as_u64().unwrap() > 0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deflate_must_be_negotiated() {
    let on = server_with(false, true).await;
    let url = format!("ws://{}/", on.addr);
    let (ok, out, v) = bench(
        "fanout-deflate",
        &["fanout", &url, "-r", "4", "-w", "4", "-d", "1", "--deflate"],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    assert_eq!(v["deflate"], true, "{v}");

    let on = server_with(true, true).await;
    let url = format!("ws://{}/", on.addr);
    let (ok, out, v) = bench(
        "echo-deflate",
        &[
            "echo",
            &url,
            "-c",
            "3",
            "-w",
            "2",
            "-s",
            "300",
            "-d",
            "1",
            "--deflate",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["deflate"], true, "{v}");

    // A server without permessage-deflate: the run fails, it does not quietly
    // measure without compression.
    let off = server(false).await;
    let url = format!("ws://{}/", off.addr);
    assert_refused(
        "fanout-no-deflate",
        &["fanout", &url, "-r", "2", "-d", "1", "--deflate"],
        "did not accept permessage-deflate",
    )
    .await;
}

/// Runs `wshub bench ARGS`, which must fail saying `why`.
async fn assert_refused(name: &str, args: &[&str], why: &str) {
    let (ok, out, _) = bench(name, args).await;
    assert!(!ok, "{out}");
    assert!(out.contains(why), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_with_deflate_echoes_one_compressed_message_each() {
    let on = server_with(true, true).await;
    let url = format!("ws://{}/", on.addr);
    let (ok, out, v) = bench(
        "idle-deflate",
        &["idle", &url, "-c", "20", "--hold", "1", "--deflate"],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_eq!(v["opened"], 20, "{v}");
    assert_eq!(v["deflate_echoed"], 20, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");

    let off = server(true).await;
    let url = format!("ws://{}/", off.addr);
    let (ok, out, _) = bench(
        "idle-no-deflate",
        &["idle", &url, "-c", "3", "--hold", "1", "--deflate"],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("did not accept permessage-deflate"), "{out}");
}

#[tokio::test]
async fn non_loopback_targets_are_refused() {
    for args in [
        vec!["echo", "ws://192.0.2.1:9/"],
        vec!["fanout", "ws://example.com/"],
        vec!["hub", "http://10.1.2.3:8080", "--api-key", "k"],
        vec![
            "hub",
            "http://127.0.0.1:9",
            "--url",
            "http://10.1.2.3:8080",
            "--api-key",
            "k",
        ],
        vec!["idle", "ws://[2001:db8::1]:80/"],
    ] {
        let (ok, out, v) = bench("refused", &args).await;
        assert!(!ok, "{args:?} was accepted: {out}");
        assert!(out.contains("only loopback targets"), "{out}");
        assert!(v.is_none());
    }
}

/// Whether `perf stat` can count syscall tracepoints here. Without it the
/// syscall test is skipped, unless `WSHUB_REQUIRE_PERF` is set (CI installs
/// linux-perf and sets it, so there the test always runs).
fn perf_can_count_syscalls() -> bool {
    let ok = std::process::Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            "syscalls:sys_enter_sendto",
            "--",
            "true",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("WSHUB_REQUIRE_PERF").is_none(),
            "WSHUB_REQUIRE_PERF is set but `perf stat` cannot count syscall tracepoints"
        );
        eprintln!(
            "skipped: `perf stat` cannot count syscall tracepoints (Debian: linux-perf, as root)"
        );
    }
    ok
}

/// `--count-syscalls` against a hub in its own process (`wshub serve`, so that
/// perf counts nothing but the server): at a low rate each delivery is one
/// send of its own and nothing is read or polled per delivery, and the CPU
/// per delivery is split into user and kernel time.
#[tokio::test(flavor = "multi_thread")]
async fn hub_syscalls_per_delivery() {
    if !perf_can_count_syscalls() {
        return;
    }
    let dir = common::temp_dir("bench-syscalls");
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmax_connections_per_ip = 0\nhandshake_rate_per_ip = 0.0\n\
             [auth]\nallow_anonymous = true\n[api]\nkey = \"{API_KEY}\"\n\
             [log]\nlevel = \"warn\"\n[namespaces.bench]\nsubscribe = \"all\"\npresence = false\n"
        ),
    )
    .unwrap();
    let port = common::free_port();
    // On one CPU, as in bench/compare.sh: the runtime has one worker, so no
    // worker wakes another (an eventfd write, which would count as a send).
    let child = std::process::Command::new("taskset")
        .args(["-c", "0", BIN, "serve"])
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = common::Proc(child);
    common::wait_port(port);
    let pid = server.0.id().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let (ok, out, v) = bench(
        "hub-syscalls",
        &[
            "hub",
            &url,
            "--api-key",
            API_KEY,
            "-c",
            "20",
            "--channels",
            "1",
            "--rate",
            "20",
            "-d",
            "2",
            "--server-pid",
            &pid,
            "--count-syscalls",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v = v.unwrap();
    assert_clean(&v, "deliveries");
    let per = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    // 20 subscribers: a publication is 20 deliveries, 20 sends (one each;
    // 20 messages/s are too far apart to share one), plus the HTTP request's
    // read and answer: 1.05 sends and 0.05 reads per delivery. Waking up is
    // a few epoll_waits per publication, not one per delivery.
    let send = per("server_send_calls_per_msg");
    assert!(
        (0.95..=1.15).contains(&send),
        "{send} sends per delivery: {v}"
    );
    assert!(per("server_recv_calls_per_msg") <= 0.2, "{v}");
    assert!(per("server_poll_calls_per_msg") <= 0.5, "{v}");
    let kernel = per("server_kernel_percent");
    assert!((0.0..=100.0).contains(&kernel), "{v}");
    assert!(per("server_cpu_us_per_delivery") > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn count_syscalls_needs_a_server_pid() {
    let s = server(true).await;
    let url = format!("ws://{}/", s.addr);
    assert_refused(
        "no-pid",
        &["echo", &url, "-c", "1", "-d", "1", "--count-syscalls"],
        "--count-syscalls needs --server-pid",
    )
    .await;
}
