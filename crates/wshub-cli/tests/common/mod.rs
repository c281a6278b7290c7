//! Process helpers shared by the CLI's cluster tests: free loopback ports, a
//! `redis-server` the test owns (it can be SIGKILLed and started again on the
//! same port, with or without its data), `wshub serve` nodes as child
//! processes of the real binary, the HTTP API, and `wshub.v1` clients.
//!
//! Every wait here is bounded by [`WAIT`] and ends in a panic that says what
//! did not happen.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::{Message, WebSocket};

/// The `wshub` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_wshub");
/// The longest any single wait lasts.
pub const WAIT: Duration = Duration::from_secs(30);
/// The nodes' HS256 secret.
pub const SECRET: &str = "cluster-cli-secret-32-bytes-long!!!";
/// The nodes' API key.
pub const KEY: &str = "cluster-cli-api-key-0123";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, SIGKILLed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL (no drain, no cleanup) and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An empty directory under the system temp dir, unique to this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `redis-server` on a fixed loopback port, which the test may SIGKILL and
/// start again on that port.
pub struct Redis {
    /// Its port.
    pub port: u16,
    /// With `Some(dir)` the data is kept there (AOF, fsync on every write),
    /// so it survives a SIGKILL; with `None` nothing is saved.
    persist: Option<PathBuf>,
    child: Option<Proc>,
}

impl Redis {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// Starts a server on a free port, persisting to `persist` if given.
    pub fn start_with(persist: Option<PathBuf>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            persist,
            child: None,
        };
        r.spawn();
        r
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.persist {
            Some(dir) => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                    .arg(dir);
            }
            None => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(Proc(child));
        wait_port(self.port);
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.child.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port (after [`Redis::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// Writes a node's config (`extra` is appended: namespaces and so on) and
/// starts `wshub serve` on `127.0.0.1:port`; stderr goes to
/// `dir/node-PORT.log`.
pub fn node(dir: &Path, redis_url: &str, port: u16, extra: &str) -> Proc {
    let config = dir.join(format!("node-{port}.toml"));
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
level = "wshub::hub::session=debug,wshub=info,wshub_redis=info,warn"
[broker]
engine = "redis"
url = "{redis_url}"
{extra}
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

/// The logs of the nodes on `ports`, for failure messages.
pub fn node_logs(dir: &Path, ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| {
            let log =
                std::fs::read_to_string(dir.join(format!("node-{p}.log"))).unwrap_or_default();
            format!("--- node {p} ---\n{log}")
        })
        .collect()
}

/// Waits (bounded) for the next text frame and parses it.
pub async fn recv_json(ws: &mut WebSocket) -> Value {
    match tokio::time::timeout(WAIT, ws.recv())
        .await
        .expect("a frame")
    {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

/// One HTTP/1.1 request with the API key on a fresh connection; the status
/// and the JSON body (`Null` when it is not JSON). Errors (refused, reset,
/// no answer within `timeout`) are returned, not panics: nodes may be down.
pub async fn try_api(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = String::new();
        tcp.read_to_string(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(out)
    };
    let out = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// [`try_api`] that must succeed at the HTTP level.
pub async fn api(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    try_api(port, method, path, body, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {port}: {e}"))
}

/// `POST /api/publish`; the status.
pub async fn publish(port: u16, body: &Value) -> u16 {
    api(port, "POST", "/api/publish", &body.to_string()).await.0
}

/// A token for `user`, signed with [`SECRET`].
pub fn token(user: &str) -> String {
    Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&ClaimsBuilder::new(user), SystemTime::now())
        .unwrap()
}

/// Opens a `wshub.v1` connection to the node on `port` and sends `connect`
/// with `user`'s token; the connection and the connect result.
pub async fn hub_client(port: u16, user: &str) -> Result<(WebSocket, Value), String> {
    let mut ws = ClientBuilder::new()
        .protocols(["wshub.v1"])
        .connect_timeout(Duration::from_secs(5))
        .connect(&format!("ws://127.0.0.1:{port}/ws"))
        .await
        .map_err(|e| format!("connect to {port}: {e}"))?;
    ws.send(json!({"id": 1, "method": "connect", "params": {"token": token(user)}}).to_string())
        .map_err(|e| format!("send: {e}"))?;
    let reply = tokio::time::timeout(WAIT, ws.recv())
        .await
        .map_err(|_| format!("no connect reply from {port}"))?;
    let reply: Value = match reply {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?,
        other => return Err(format!("connect reply from {port}: {other:?}")),
    };
    match reply.get("result") {
        Some(r) => Ok((ws, r.clone())),
        None => Err(format!("connect failed on {port}: {reply}")),
    }
}
