//! The hub as a newcomer runs it: `wshub serve` with a config file, two
//! `wshub connect --chat` terminals chatting, `wshub publish` (the HTTP API)
//! reaching both, `wshub config check` on good and bad files, and SIGTERM
//! draining the clients with close code 4000.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const WAIT: Duration = Duration::from_secs(30);

/// The repository root (for the shipped config files).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A config file in a fresh temporary directory.
fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wshub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
drain_jitter = "0s"

[auth]
hmac_secret = "cli-hub-test-secret-32-bytes-long!!"

[api]
key = "cli-hub-test-api-key"

[namespaces.chat]
join_leave = true
"#;

/// Reads lines until one contains `needle`; returns it.
async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("output ended before {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?}"))
}

fn wshub(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("WSHUB_CONFIG")
        .env_remove("WSHUB_API_KEY")
        .env_remove("WSHUB_AUTH_HMAC_SECRET")
        .env("WSHUB_LOG_LEVEL", "warn")
        .current_dir(config.parent().unwrap());
    c
}

async fn token(config: &Path, user: &str) -> String {
    let out = wshub(config)
        .args(["token", "--user", user, "--config"])
        .arg(config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn chat(config: &Path, url: &str, token: &str) -> Child {
    wshub(config)
        .args(["connect", url, "--token", token, "--chat", "chat:lobby"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn two_terminals_chat_and_a_backend_publishes() {
    let config = temp_config("chat", CONFIG);
    let mut server = wshub(&config)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut server_out = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = line_with(&mut server_out, "wshub listening on").await;
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();
    let http = url.replace("ws://", "http://").replace("/ws", "");

    let mut alice = chat(&config, &url, &token(&config, "alice").await);
    let mut alice_out = BufReader::new(alice.stdout.take().unwrap()).lines();
    let mut alice_in = alice.stdin.take().unwrap();
    let mut bob = chat(&config, &url, &token(&config, "bob").await);
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap()).lines();
    let mut bob_in = bob.stdin.take().unwrap();
    line_with(&mut alice_out, "* bob joined").await;

    alice_in.write_all(b"hello bob\n").await.unwrap();
    line_with(&mut bob_out, "alice: hello bob").await;
    bob_in.write_all(b"hi alice\n").await.unwrap();
    line_with(&mut alice_out, "bob: hi alice").await;

    let out = wshub(&config)
        .args([
            "publish",
            "chat:lobby",
            r#"{"text":"from the backend"}"#,
            "--url",
            &http,
            "--config",
        ])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"offset\":3"));
    line_with(&mut alice_out, "(server): from the backend").await;
    line_with(&mut bob_out, "(server): from the backend").await;

    // A wrong key is refused with the API's message.
    let out = wshub(&config)
        .args([
            "publish",
            "chat:lobby",
            "1",
            "--url",
            &http,
            "--api-key",
            "wrong",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));

    // SIGTERM: both clients are told to reconnect (4000) and exit.
    let pid = server.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for child in [alice, bob] {
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("client did not exit after the drain")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("close code 4000"), "{stderr}");
        assert!(stderr.contains("may reconnect"), "{stderr}");
    }
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    assert!(status.success());
    drop(alice_in);
    drop(bob_in);
}

#[test]
fn config_check_accepts_the_shipped_files() {
    for file in ["wshub.example.toml", "wshub.toml"] {
        let out = std::process::Command::new(BIN)
            .args(["config", "check"])
            .arg(repo().join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    }
}

#[test]
fn config_check_names_the_bad_key() {
    let bad = temp_config("bad", "[limits]\nmax_message_size = \"big\"\n");
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_message_size"), "{err}");
    let typo = temp_config("typo", "[limtis]\n");
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&typo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limtis"));
}

#[test]
fn serve_without_any_key_is_a_clear_error() {
    let config = temp_config("nokey", "[server]\nlisten = \"127.0.0.1:0\"\n");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("WSHUB_AUTH_HMAC_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start the hub"), "{err}");
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
fn cert() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

async fn wss_connects(url: &str, ca_pem: &str) -> bool {
    let tls =
        wshub::tls::client_config_from_ca_pem(ca_pem.as_bytes(), wshub::tls::PemSource::Memory)
            .unwrap();
    let builder = wshub::client::ClientBuilder::new()
        .protocols(["wshub.v1"])
        .tls_config(tls);
    matches!(
        tokio::time::timeout(WAIT, builder.connect(url)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn tls_certificate_reloads_on_sighup() {
    let (cert_a, key_a) = cert();
    let config = temp_config(
        "tls",
        &format!(
            "{CONFIG}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nreload_interval = \"0s\"\n"
        ),
    );
    let dir = config.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("cert.pem"), &cert_a).unwrap();
    std::fs::write(dir.join("key.pem"), &key_a).unwrap();
    let mut server = wshub(&config)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = line_with(&mut out, "wshub listening on").await;
    let port = ready
        .split_whitespace()
        .find(|w| w.starts_with("wss://"))
        .and_then(|u| u.trim_start_matches("wss://127.0.0.1:").split('/').next())
        .unwrap()
        .to_owned();
    let url = format!("wss://localhost:{port}/ws");
    assert!(wss_connects(&url, &cert_a).await);

    // New files, then SIGHUP: new handshakes present the new certificate.
    let (cert_b, key_b) = cert();
    std::fs::write(dir.join("cert.pem"), &cert_b).unwrap();
    std::fs::write(dir.join("key.pem"), &key_b).unwrap();
    let pid = server.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut switched = false;
    for _ in 0..400 {
        if wss_connects(&url, &cert_b).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(switched, "the new certificate was never served");
    assert!(!wss_connects(&url, &cert_a).await);

    // The HTTP API is served over the same TLS port.
    std::fs::write(dir.join("ca.pem"), &cert_b).unwrap();
    let published = wshub(&config)
        .args(["publish", "chat:x", "1", "--url"])
        .arg(format!("https://localhost:{port}"))
        .args(["--ca", "ca.pem", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
