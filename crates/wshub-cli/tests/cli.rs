//! The `wshub` binary's tools driven as a user would: `wshub token` mints a
//! token the hub's verifier accepts, and `wshub connect` sends stdin lines to a
//! real server, prints what comes back and reports close codes with reconnect
//! advice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wshub::hub::auth::{AuthConfig, Verifier};
use wshub::{CloseCode, Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const SECRET: &str = "cli-test-secret-that-is-32-bytes-long";

#[test]
fn token_is_accepted_by_the_verifier() {
    let out = std::process::Command::new(BIN)
        .args([
            "token",
            "--user",
            "alice",
            "--ttl",
            "600",
            "--channel",
            "news:*",
        ])
        .args(["--info", r#"{"name":"Alice"}"#])
        .env("WSHUB_AUTH_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let config = AuthConfig {
        hmac_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    let claims = Verifier::new(&config)
        .unwrap()
        .verify(token.trim(), SystemTime::now())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert!(claims.can_subscribe("news:today"));
    assert!(!claims.can_subscribe("chat:x"));
    assert_eq!(claims.info, Some(serde_json::json!({"name": "Alice"})));
}

#[test]
fn token_without_a_key_is_a_clear_error() {
    let out = std::process::Command::new(BIN)
        .args(["token", "--user", "alice"])
        .env_remove("WSHUB_AUTH_HMAC_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give a signing key"), "{err}");
}

/// Starts a server whose handler is `handler`; returns its ws:// URL.
async fn server<H, F>(handler: H) -> String
where
    H: Fn(wshub::WebSocket) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = Server::new(Config::default());
    tokio::spawn(async move {
        server
            .serve(listener, handler, std::future::pending())
            .await
            .unwrap();
    });
    url
}

#[tokio::test]
async fn connect_sends_lines_and_prints_messages() {
    let url = server(|mut ws| async move {
        ws.send("welcome").ok();
        while let Some(m) = ws.recv().await {
            ws.send(m).ok();
        }
    })
    .await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["connect", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\nsecond line\n").await.unwrap();
    // Read until both echoes are printed, then end stdin: EOF makes the client
    // close with 1000, and a close sent earlier could overtake the echoes (a
    // server answers a close at once, RFC 6455 §5.5.1).
    let mut stdout_lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let wanted = ["< welcome", "< hello", "< second line"];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !wanted.iter().all(|w| stdout.contains(w)) {
            let Some(line) = stdout_lines.next_line().await.unwrap() else {
                break;
            };
            stdout.push_str(&line);
            stdout.push('\n');
        }
    })
    .await
    .expect("echoes not printed in time");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wshub connect did not exit")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("< welcome"), "{stdout}");
    assert!(stdout.contains("< hello"), "{stdout}");
    assert!(stdout.contains("< second line"), "{stdout}");
    assert!(stderr.contains("close code 1000"), "{stderr}");
}

#[tokio::test]
async fn connect_reports_a_refusing_close_code() {
    let url = server(|ws| async move {
        ws.close(CloseCode(4500), "bad token").ok();
        ws.closed().await;
    })
    .await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["connect", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep stdin open: its EOF would make the client close first (with 1000).
    let _stdin = child.stdin.take().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wshub connect did not exit")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("4500"), "{stderr}");
    assert!(stderr.contains("bad token"), "{stderr}");
    assert!(stderr.contains("should not reconnect"), "{stderr}");
}

#[tokio::test]
async fn connect_to_nothing_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = tokio::process::Command::new(BIN)
        .args(["connect", &format!("ws://{addr}/")])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
