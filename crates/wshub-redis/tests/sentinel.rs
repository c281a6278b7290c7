//! The Redis broker behind Redis Sentinel, against real servers the test
//! starts on free loopback ports (a master, a replica and one sentinel): the
//! brokers find the master through the sentinel, exchange publications, and
//! after a `SENTINEL FAILOVER` follow the promoted replica — publishing
//! continues with the next offset and subscriptions deliver again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, Recorder, WAIT};
use wshub::hub::broker::{Broker, BrokerEvent, PublishOptions};
use wshub_redis::{RedisBroker, RedisBrokerConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A master, its replica and a sentinel monitoring them as `mymaster`.
struct Sentinel {
    master: u16,
    replica: u16,
    sentinel: u16,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Sentinel {
    fn start() -> Sentinel {
        let dir = std::env::temp_dir().join(format!(
            "wshub-redis-sentinel-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (master, replica, sentinel) = (free_port(), free_port(), free_port());
        let mut s = Sentinel {
            master,
            replica,
            sentinel,
            children: Vec::new(),
            dir,
        };
        let server = |port: u16| {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&s.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        s.children
            .push(server(master).spawn().expect("redis-server is installed"));
        s.children.push(
            server(replica)
                .args(["--replicaof", "127.0.0.1", &master.to_string()])
                .spawn()
                .unwrap(),
        );
        let conf = s.dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds mymaster 2000\n\
                 sentinel failover-timeout mymaster 10000\n",
                s.dir.display()
            ),
        )
        .unwrap();
        s.children.push(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + WAIT;
        for port in [master, replica, sentinel] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "a redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        s
    }

    async fn connect(port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// `INFO replication` of the server on `port`, on a new connection
    /// (a promotion closes the old ones).
    async fn replication(port: u16) -> String {
        let mut con = Sentinel::connect(port).await;
        redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// The offset of hub channel `ch` stored on the server on `port`.
    async fn offset(port: u16) -> Option<u64> {
        let mut con = Sentinel::connect(port).await;
        redis::cmd("HGET")
            .arg("wshub:{ch}:meta")
            .arg("offset")
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// The master's port according to the sentinel.
    async fn master_port(&self) -> Option<u16> {
        let mut con = Sentinel::connect(self.sentinel).await;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("mymaster")
            .query_async(&mut con)
            .await
            .unwrap();
        addr.map(|(_, port)| port)
    }

    /// Waits until the replica is in sync and the sentinel knows it.
    async fn wait_ready(&self) {
        eventually("the replica is in sync", || async {
            Sentinel::replication(self.replica)
                .await
                .contains("master_link_status:up")
        })
        .await;
        let sentinel = Sentinel::connect(self.sentinel).await;
        let port = self.replica.to_string();
        eventually_long("the sentinel sees the replica", || {
            let mut con = sentinel.clone();
            let port = port.clone();
            async move {
                let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("mymaster")
                    .query_async(&mut con)
                    .await
                    .unwrap_or_default();
                replicas.iter().any(|fields| {
                    let get = |k: &str| {
                        fields
                            .chunks(2)
                            .find(|kv| kv[0] == k)
                            .map(|kv| kv[1].clone())
                            .unwrap_or_default()
                    };
                    get("port") == port
                        && get("flags") == "slave"
                        && get("master-link-status") == "ok"
                })
            }
        })
        .await;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Like `eventually`, for the sentinel's slower steps (it looks at its
/// servers about once a second): bounded at 60 s.
async fn eventually_long<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sentinel_node(s: &Sentinel) -> (Arc<RedisBroker>, Recorder) {
    let mut config = RedisBrokerConfig::sentinel([s.url()], "mymaster");
    config.command_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config.reconnect_min_delay = Duration::from_millis(20);
    config.reconnect_max_delay = Duration::from_millis(200);
    let broker = Arc::new(RedisBroker::connect(config).await.unwrap());
    let recorder = Recorder::default();
    let sink = recorder.clone();
    broker.set_sink(Arc::new(move |e: BrokerEvent| sink.push(e)));
    (broker, recorder)
}

fn history() -> PublishOptions {
    PublishOptions {
        history_size: 100,
        history_ttl: Duration::from_secs(60),
        ..PublishOptions::default()
    }
}

#[tokio::test]
async fn brokers_find_the_master_through_the_sentinel_and_follow_a_failover() {
    let s = Sentinel::start();
    s.wait_ready().await;
    assert_eq!(s.master_port().await, Some(s.master));

    let (a, _) = sentinel_node(&s).await;
    let (b, rec_b) = sentinel_node(&s).await;
    b.subscribe("ch").await.unwrap();
    for n in 1..=3 {
        let pos = a
            .publish("ch", Bytes::from(format!("{{\"n\":{n}}}")), history())
            .await
            .unwrap();
        assert_eq!(pos.offset, n);
    }
    rec_b.wait_for(3).await;
    assert_eq!(rec_b.offsets(), vec![1, 2, 3]);
    // The writes went to the master and reached the replica.
    eventually("the replica has offset 3", || async {
        Sentinel::offset(s.replica).await == Some(3)
    })
    .await;

    // Fail over to the replica.
    let mut sentinel = Sentinel::connect(s.sentinel).await;
    let () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut sentinel)
        .await
        .unwrap();
    eventually_long("the sentinel names the replica as master", || async {
        s.master_port().await == Some(s.replica)
    })
    .await;
    eventually_long("the replica is promoted", || async {
        Sentinel::replication(s.replica)
            .await
            .contains("role:master")
    })
    .await;
    // Until the sentinel demotes the old master it still takes writes (which
    // the demotion then discards): Redis failover is asynchronous, so the
    // test waits for the end of it.
    eventually_long("the old master is demoted", || async {
        Sentinel::replication(s.master).await.contains("role:slave")
    })
    .await;

    // The publisher's first attempts may fail while it finds the new
    // master; then offsets continue where they were.
    let mut position = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while position.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish succeeded after the failover"
        );
        match a
            .publish("ch", Bytes::from_static(b"{\"n\":4}"), history())
            .await
        {
            Ok(p) => position = Some(p),
            Err(e) => {
                assert!(
                    e.is_temporary() || e.to_string().contains("READONLY"),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(position.unwrap().offset, 4);
    assert_eq!(
        Sentinel::offset(s.replica).await,
        Some(4),
        "the publish went to the new master"
    );

    // The subscriber reconnected to the new master (reporting the
    // interruption) and delivers again: a publication sent after it was
    // back arrives.
    eventually_long("b resynced", || {
        let rec = rec_b.clone();
        async move { rec.events().contains(&BrokerEvent::Resynced) }
    })
    .await;
    eventually("b is healthy", || async { b.is_healthy() }).await;
    let pos = a
        .publish("ch", Bytes::from_static(b"{\"n\":5}"), history())
        .await
        .unwrap();
    assert_eq!(pos.offset, 5);
    eventually("b receives offset 5", || {
        let rec = rec_b.clone();
        async move { rec.offsets().last() == Some(&5) }
    })
    .await;
    // History lives on the new master too.
    let h = b
        .history(
            "ch",
            wshub::hub::broker::HistoryFilter {
                since: None,
                limit: Some(10),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test]
async fn sentinel_settings_are_checked() {
    let err = RedisBroker::connect(RedisBrokerConfig::sentinel(Vec::<String>::new(), "m"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least one sentinel"), "{err}");
    let err = RedisBroker::connect(RedisBrokerConfig::sentinel(["redis://127.0.0.1:1"], ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("master's name"), "{err}");
    // No sentinel answers: a clear, temporary error rather than a hang.
    let mut config =
        RedisBrokerConfig::sentinel([format!("redis://127.0.0.1:{}", free_port())], "m");
    config.connect_timeout = Duration::from_secs(1);
    let err = RedisBroker::connect(config).await.unwrap_err();
    assert!(
        err.is_temporary() || matches!(err, wshub::hub::broker::BrokerError::Internal(_)),
        "{err}"
    );
}
