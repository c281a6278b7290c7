//! Test support: a private `redis-server` per test and an event recorder.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wshub::hub::broker::{Broker, BrokerEvent};
use wshub::hub::protocol::ClientInfo;
use wshub_redis::{RedisBroker, RedisBrokerConfig};

/// The longest any test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` on a free port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (all data is lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Records the events a broker delivers.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<BrokerEvent>>>);

impl Recorder {
    pub fn events(&self) -> Vec<BrokerEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn push(&self, event: BrokerEvent) {
        self.0.lock().unwrap().push(event);
    }

    pub fn take(&self) -> Vec<BrokerEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Publication offsets, in delivery order.
    pub fn offsets(&self) -> Vec<u64> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                BrokerEvent::Publication { publication, .. } => Some(publication.offset),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until at least `n` events were recorded.
    pub async fn wait_for(&self, n: usize) -> Vec<BrokerEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {n} events, have {}: {events:?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn config(server: &RedisServer) -> RedisBrokerConfig {
    let mut config = RedisBrokerConfig::new(server.url());
    config.command_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config.reconnect_min_delay = Duration::from_millis(20);
    config.reconnect_max_delay = Duration::from_millis(200);
    config
}

/// A connected broker with a recording sink.
pub async fn node(server: &RedisServer) -> (Arc<RedisBroker>, Recorder) {
    let broker = Arc::new(RedisBroker::connect(config(server)).await.unwrap());
    let recorder = Recorder::default();
    let r = recorder.clone();
    broker.set_sink(Arc::new(move |e: BrokerEvent| r.0.lock().unwrap().push(e)));
    (broker, recorder)
}

pub fn member(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
        info: None,
    }
}

/// Polls `check` until it returns true (bounded).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
