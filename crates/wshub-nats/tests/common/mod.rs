//! Test support: a private `nats-server` with JetStream per test (a free
//! loopback port, its own store directory; it can be stopped and started
//! again on the same port and data), a hub on `127.0.0.1:0` whose broker is
//! the in-memory engine behind a switch that makes publishes fail, a small
//! `wshub.v1` client, and bounded waits.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::hub::broker::BoxFuture;
use wshub::hub::broker::{
    Broker, BrokerError, ControlCommand, EventSink, HistoryFilter, HistoryResult, NodeInfo,
    PresenceStats, PublishOptions, StreamPosition,
};
use wshub::hub::config::{Access, HubConfig, NamespaceConfig, QueueEngine, UpstreamMode};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::protocol::ClientInfo;
use wshub::hub::Hub;
use wshub::{Message, WebSocket};
use wshub_nats::async_nats;
use wshub_nats::async_nats::jetstream;

/// The longest any single wait lasts: a guard against hangs, not a
/// measurement.
pub const WAIT: Duration = Duration::from_secs(20);

pub const SECRET: &str = "nats-test-secret-that-is-32-bytes!!";

/// Awaits `fut`, failing the test with `what` after [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `check` until it returns true (bounded by [`WAIT`]).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn nats_server_binary() -> &'static str {
    if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

/// A `nats-server -js` on a free loopback port with its own store, killed
/// (and its store removed) when dropped.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("wshub-nats-test-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer {
            port,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server; its store stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again on the same port with an empty store (a server that
    /// lost its data: no streams, no consumers).
    pub fn start_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.spawn();
    }

    /// A client of its own (the test's, not the hub's).
    pub async fn client(&self) -> async_nats::Client {
        wshub_nats::connect(&self.url(), "test").await.unwrap()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What [`FlakyBroker::publish`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Publishes through the memory broker.
    Pass = 0,
    /// Fails with `Unavailable` without publishing.
    Fail = 1,
    /// Publishes, then reports a timeout (the publish happened, its answer
    /// was lost).
    LoseAnswer = 2,
    /// Never answers.
    Hang = 3,
}

/// The memory broker, with a switch for publishes and a count of them.
pub struct FlakyBroker {
    inner: MemoryBroker,
    mode: AtomicU8,
    attempts: AtomicU32,
}

impl FlakyBroker {
    pub fn new() -> Arc<FlakyBroker> {
        Arc::new(FlakyBroker {
            inner: MemoryBroker::new(MemoryBrokerConfig::default()),
            mode: AtomicU8::new(Mode::Pass as u8),
            attempts: AtomicU32::new(0),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Pass,
            1 => Mode::Fail,
            2 => Mode::LoseAnswer,
            _ => Mode::Hang,
        }
    }

    /// Publishes attempted so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    pub async fn wait_attempts(&self, n: u32) {
        eventually(&format!("{n} publish attempts"), || async {
            self.attempts() >= n
        })
        .await;
    }
}

impl Broker for FlakyBroker {
    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        self.inner.set_sink(sink)
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            match self.mode() {
                Mode::Pass => self.inner.publish(channel, data, opts).await,
                Mode::Fail => Err(BrokerError::Unavailable("switched off by the test".into())),
                Mode::LoseAnswer => {
                    self.inner.publish(channel, data, opts).await?;
                    Err(BrokerError::Timeout)
                }
                Mode::Hang => std::future::pending().await,
            }
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.subscribe(channel)
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.unsubscribe(channel)
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        filter: HistoryFilter,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>> {
        self.inner.history(channel, filter)
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.remove_history(channel)
    }

    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        member: ClientInfo,
        ttl: Duration,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.add_presence(channel, member, ttl, join_leave)
    }

    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.remove_presence(channel, client, join_leave)
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        self.inner.presence(channel)
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        self.inner.presence_stats(channel)
    }

    fn control<'a>(&'a self, command: ControlCommand) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.control(command)
    }

    fn announce_node<'a>(
        &'a self,
        info: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.announce_node(info, ttl)
    }

    fn nodes<'a>(&'a self) -> BoxFuture<'a, Result<Vec<NodeInfo>, BrokerError>> {
        self.inner.nodes()
    }
}

/// The test configuration: HS256 auth; `news` (clients subscribe, only
/// backends publish), `game` (upstream `also`) and `orders` (upstream
/// `only`); ingest and upstream on `server` with short timings (the engines
/// are set by the tests that use them).
pub fn config(server: &NatsServer) -> HubConfig {
    let mut c = HubConfig::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.drain_jitter = Duration::ZERO;
    let ns = |publish: Access, upstream: UpstreamMode| NamespaceConfig {
        subscribe: Access::Users,
        publish,
        upstream,
        ..NamespaceConfig::default()
    };
    c.namespaces
        .insert("news".into(), ns(Access::None, UpstreamMode::Off));
    c.namespaces
        .insert("game".into(), ns(Access::Users, UpstreamMode::Also));
    c.namespaces
        .insert("orders".into(), ns(Access::Users, UpstreamMode::Only));
    c.ingest.url = server.url();
    // Short, to keep redelivery tests quick, but well above how long
    // handling a message takes even on a loaded machine.
    c.ingest.claim_idle = Duration::from_secs(2);
    c.ingest.max_deliveries = 3;
    c.upstream.url = server.url();
    c.upstream.timeout = Duration::from_secs(1);
    // The namespaces with `upstream` need an engine to validate.
    c.upstream.engine = QueueEngine::Nats;
    c
}

/// A running hub over a [`FlakyBroker`].
pub struct TestHub {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub broker: Arc<FlakyBroker>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestHub {
    pub async fn start(config: HubConfig) -> TestHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = FlakyBroker::new();
        let hub = Hub::new(config, broker.clone(), Path::new(".")).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let h = hub.clone();
        tokio::spawn(async move {
            h.serve(listener, None, async {
                let _ = rx.await;
            })
            .await
        });
        TestHub {
            addr,
            hub,
            broker,
            stop: Some(tx),
        }
    }

    pub async fn client(&self, user: &str) -> HubClient {
        HubClient::connect(self.addr, user).await
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A `wshub.v1` client that matches replies by id and queues pushes.
pub struct HubClient {
    ws: WebSocket,
    next_id: u64,
    pushes: VecDeque<Value>,
    /// The client id from the connect reply.
    pub client: String,
}

impl HubClient {
    pub async fn connect(addr: SocketAddr, user: &str) -> HubClient {
        let ws = within(
            "the upgrade",
            ClientBuilder::new()
                .protocols(["wshub.v1"])
                .connect(&format!("ws://{addr}/ws")),
        )
        .await
        .unwrap();
        let mut c = HubClient {
            ws,
            next_id: 0,
            pushes: VecDeque::new(),
            client: String::new(),
        };
        let token = Minter::hs256(SECRET.as_bytes())
            .unwrap()
            .mint(&ClaimsBuilder::new(user), SystemTime::now())
            .unwrap();
        let r = c.ok("connect", json!({ "token": token })).await;
        c.client = r["client"].as_str().unwrap().to_owned();
        c
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut cmd = json!({ "id": id, "method": method });
        if !params.is_null() {
            cmd["params"] = params;
        }
        self.ws.send(cmd.to_string()).unwrap();
        loop {
            let frame = self.frame().await;
            if frame.get("push").is_some() {
                self.pushes.push_back(frame);
            } else {
                assert_eq!(frame["id"], id, "a reply to another command: {frame}");
                return frame;
            }
        }
    }

    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let reply = self.call(method, params).await;
        match reply.get("result") {
            Some(r) => r.clone(),
            None => panic!("{method} failed: {reply}"),
        }
    }

    pub async fn err(&mut self, method: &str, params: Value) -> u64 {
        let reply = self.call(method, params).await;
        match reply.get("error") {
            Some(e) => e["code"].as_u64().unwrap(),
            None => panic!("{method} succeeded: {reply}"),
        }
    }

    /// The next push.
    pub async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let frame = self.frame().await;
        assert!(frame.get("push").is_some(), "unexpected reply {frame}");
        frame
    }

    /// The data of the next publication push.
    pub async fn data(&mut self) -> Value {
        let p = self.push().await;
        assert_eq!(p["push"], "pub", "{p}");
        p["data"].clone()
    }

    /// The pushes queued so far, including any sent before the answer to a
    /// `ping` (the hub answers after everything queued before it).
    pub async fn pending_pushes(&mut self) -> Vec<Value> {
        self.ok("ping", Value::Null).await;
        self.pushes.drain(..).collect()
    }

    async fn frame(&mut self) -> Value {
        match within("a frame from the hub", self.ws.recv()).await {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Publishes `body` to `subject` through JetStream (with a `Nats-Msg-Id`
/// when given) and returns its stream sequence.
pub async fn js_publish(
    js: &jetstream::Context,
    subject: &str,
    msg_id: Option<&str>,
    body: &str,
) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    let ack = js
        .publish_with_headers(
            subject.to_owned(),
            headers,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
        .unwrap();
    ack.await.unwrap().sequence
}

/// The durable consumer's state.
pub async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> jetstream::consumer::Info {
    js.get_stream(stream)
        .await
        .unwrap()
        .consumer_info(consumer)
        .await
        .unwrap()
}

/// Waits until the consumer acknowledged everything up to `sequence` and
/// holds nothing unacknowledged.
pub async fn wait_settled(js: &jetstream::Context, stream: &str, consumer: &str, sequence: u64) {
    eventually(&format!("the consumer to settle at {sequence}"), || async {
        let info = consumer_info(js, stream, consumer).await;
        info.ack_floor.stream_sequence >= sequence && info.num_ack_pending == 0
    })
    .await;
}

/// The messages of `stream`, oldest first.
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// A header of a stored message, as text.
pub fn header(m: &jetstream::message::StreamMessage, name: &str) -> Option<String> {
    // Parsed, so standard names (`Nats-Msg-Id`) match the stored ones.
    let name: async_nats::header::HeaderName = name.parse().unwrap();
    m.headers.get(name).map(|v| v.as_str().to_owned())
}
