//! Helpers for the hub's integration tests: a hub on `127.0.0.1:0` over the
//! in-memory broker, a `wshub.v1` client that matches replies by id and
//! queues pushes, token minting, and a small HTTP client for the API.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wshub::client::ClientBuilder;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::hub::broker::Broker;
use wshub::hub::config::{Access, HubConfig, NamespaceConfig};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::Hub;
use wshub::{Message, WebSocket};

pub(crate) use crate::common::{bind, closed, http_request, within};

pub(crate) const SECRET: &str = "hub-test-secret-that-is-32-bytes-long!";
pub(crate) const API_KEY: &str = "test-api-key-0123456789";

/// The test configuration: HS256 auth, the API on, and namespaces for every
/// rule the tests check.
pub(crate) fn config() -> HubConfig {
    let mut c = HubConfig::default();
    c.auth.hmac_secret = Some(SECRET.into());
    c.api.key = Some(API_KEY.into());
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.drain_jitter = Duration::ZERO;
    let ns = |f: fn(&mut NamespaceConfig)| {
        let mut n = NamespaceConfig::default();
        f(&mut n);
        n
    };
    c.namespaces
        .insert("chat".into(), ns(|n| n.join_leave = true));
    c.namespaces
        .insert("news".into(), ns(|n| n.publish = Access::None));
    c.namespaces.insert(
        "vip".into(),
        ns(|n| {
            n.subscribe = Access::Grant;
            n.publish = Access::Grant;
        }),
    );
    c.namespaces.insert(
        "open".into(),
        ns(|n| {
            n.subscribe = Access::All;
            n.publish = Access::All;
        }),
    );
    c.namespaces.insert(
        "bare".into(),
        ns(|n| {
            n.history_size = 0;
            n.presence = false;
        }),
    );
    c.namespaces.insert(
        "small".into(),
        ns(|n| {
            n.history_size = 3;
            n.recovery_max = 3;
            n.max_publication_size = 64;
            n.max_subscribers = 1;
        }),
    );
    c
}

/// A running hub.
pub(crate) struct TestHub {
    pub(crate) addr: SocketAddr,
    pub(crate) hub: Hub,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl TestHub {
    pub(crate) async fn start(config: HubConfig) -> TestHub {
        TestHub::start_with_tls(config, None).await
    }

    /// Starts the hub with TLS when `tls` is given.
    pub(crate) async fn start_with_tls(
        config: HubConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestHub {
        let broker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
        TestHub::start_on(config, broker, tls).await
    }

    /// Starts the hub on `broker`.
    pub(crate) async fn start_on(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestHub {
        let (listener, addr) = bind().await;
        let hub = Hub::new(config, broker, Path::new(".")).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let h = hub.clone();
        let task = tokio::spawn(async move {
            h.serve(listener, tls, async {
                let _ = rx.await;
            })
            .await
        });
        TestHub {
            addr,
            hub,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Starts the shutdown (drain) without waiting for it.
    pub(crate) fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until the hub returned.
    pub(crate) async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            within("the hub to shut down", task).await.unwrap().unwrap();
        }
    }

    pub(crate) async fn client(&self, user: &str) -> HubClient {
        HubClient::connected(self, Some(&token(user))).await
    }

    /// POSTs `body` to `path` with the API key.
    pub(crate) async fn api(&self, path: &str, body: Value) -> (u16, Value) {
        self.api_raw(path, &body.to_string(), Some(API_KEY)).await
    }

    pub(crate) async fn api_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let auth = key
            .map(|k| format!("Authorization: apikey {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let res = http_request(self.addr, req.as_bytes()).await;
        let value = serde_json::from_str(&res.body).unwrap_or(Value::String(res.body.clone()));
        (res.status, value)
    }

    pub(crate) async fn get(&self, path: &str) -> crate::common::HttpResponse {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {API_KEY}\r\n\r\n");
        http_request(self.addr, req.as_bytes()).await
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// A token for `user` valid for an hour.
pub(crate) fn token(user: &str) -> String {
    token_with(ClaimsBuilder::new(user))
}

pub(crate) fn token_with(claims: ClaimsBuilder) -> String {
    Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .mint(&claims, SystemTime::now())
        .unwrap()
}

/// A `wshub.v1` client.
pub(crate) struct HubClient {
    pub(crate) ws: WebSocket,
    next_id: u64,
    pushes: VecDeque<Value>,
    /// The client id from the connect reply.
    pub(crate) client: String,
}

impl HubClient {
    /// Opens a WebSocket offering `wshub.v1`, without sending `connect`.
    pub(crate) async fn open(hub: &TestHub) -> HubClient {
        let ws = within(
            "the upgrade",
            ClientBuilder::new()
                .protocols(["wshub.v1"])
                .connect(&hub.url()),
        )
        .await
        .unwrap();
        HubClient {
            ws,
            next_id: 0,
            pushes: VecDeque::new(),
            client: String::new(),
        }
    }

    /// Opens and connects with `token` (anonymous for `None`); panics unless
    /// the connect succeeds.
    pub(crate) async fn connected(hub: &TestHub, token: Option<&str>) -> HubClient {
        let mut c = HubClient::open(hub).await;
        let params = match token {
            Some(t) => json!({ "token": t }),
            None => json!({}),
        };
        let reply = c.call("connect", params).await;
        let result = reply
            .get("result")
            .unwrap_or_else(|| panic!("connect failed: {reply}"));
        c.client = result["client"].as_str().unwrap().to_owned();
        c
    }

    /// Sends a raw text frame.
    pub(crate) fn send_raw(&self, text: &str) {
        self.ws.send(text.to_owned()).unwrap();
    }

    /// Sends a command and returns its reply (queueing pushes seen before it).
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut cmd = json!({ "id": id, "method": method });
        if !params.is_null() {
            cmd["params"] = params;
        }
        self.send_raw(&cmd.to_string());
        self.reply(id).await
    }

    /// Waits for the reply to command `id`.
    pub(crate) async fn reply(&mut self, id: u64) -> Value {
        loop {
            let frame = self
                .frame()
                .await
                .expect("connection ended before the reply");
            if frame.get("push").is_some() {
                self.pushes.push_back(frame);
            } else {
                assert_eq!(frame["id"], id, "a reply to another command: {frame}");
                return frame;
            }
        }
    }

    /// The result of a command that must succeed.
    pub(crate) async fn ok(&mut self, method: &str, params: Value) -> Value {
        let reply = self.call(method, params).await;
        match reply.get("result") {
            Some(r) => r.clone(),
            None => panic!("{method} failed: {reply}"),
        }
    }

    /// The error code of a command that must fail.
    pub(crate) async fn err(&mut self, method: &str, params: Value) -> u64 {
        let reply = self.call(method, params).await;
        match reply.get("error") {
            Some(e) => e["code"].as_u64().unwrap(),
            None => panic!("{method} succeeded: {reply}"),
        }
    }

    /// The next push.
    pub(crate) async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let frame = self.frame().await.expect("connection ended before a push");
        assert!(frame.get("push").is_some(), "unexpected reply {frame}");
        frame
    }

    /// Whether a push is already queued or arrives with the answer to a
    /// `ping` (which the server sends after everything queued before it).
    pub(crate) async fn pending_pushes(&mut self) -> Vec<Value> {
        self.ok("ping", Value::Null).await;
        self.pushes.drain(..).collect()
    }

    /// The next frame as JSON; `None` once the connection ended.
    pub(crate) async fn frame(&mut self) -> Option<Value> {
        match within("a frame from the hub", self.ws.recv()).await? {
            Message::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
            Message::Binary(b) => panic!("binary frame from the hub: {b:?}"),
        }
    }

    /// Reads until the connection ends; returns the pushes seen and the
    /// close code.
    pub(crate) async fn until_closed(&mut self) -> (Vec<Value>, u16) {
        let mut pushes: Vec<Value> = self.pushes.drain(..).collect();
        while let Some(f) = self.frame().await {
            pushes.push(f);
        }
        let why = closed(&self.ws).await;
        (pushes, why.code().0)
    }
}
