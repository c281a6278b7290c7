//! The Redis broker on a real three-master Redis Cluster the test starts
//! (three `redis-server --cluster-enabled yes` on free loopback ports, joined
//! with `redis-cli --cluster create`): publications on channels of every
//! shard reach the other node with contiguous offsets over sharded pub/sub,
//! nodes subscribe at the shard only to channels with local subscribers,
//! history, presence and join/leave work per channel slot, control commands
//! reach every node, and the node registry lists both nodes; a node that
//! loses a master's connection, or whose channel's slot moves to another
//! master, resubscribes where the channel now lives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, member, Recorder, WAIT};
use wshub::hub::broker::{
    Broker, BrokerEvent, ControlCommand, HistoryFilter, NodeInfo, PublishOptions,
};
use wshub_redis::{RedisBroker, RedisBrokerConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three cluster-enabled `redis-server`s holding all slots, killed (and
/// their directory removed) when dropped.
struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "wshub-redis-cluster-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            // The bus port is set explicitly: the default (port + 10000)
            // may be taken or out of range.
            let (port, bus) = (free_port(), free_port());
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        let deadline = Instant::now() + WAIT;
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster
    }

    fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    async fn connect(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits (bounded) until every node reports `cluster_state:ok`.
    async fn wait_ok(&self) {
        for port in &self.ports {
            let mut con = self.connect(*port).await;
            eventually("cluster_state:ok", || {
                let mut con = con.clone();
                async move {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
            let _: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        }
    }

    /// The port of the master that owns `key`'s slot.
    async fn owner(&self, key: &str) -> u16 {
        let mut con = self.connect(self.ports[0]).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        let slots: Vec<(i64, i64, (String, i64))> = {
            let raw: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut con)
                .await
                .unwrap();
            raw.into_iter()
                .map(|r| {
                    let start: i64 = redis::from_redis_value(&r[0]).unwrap();
                    let end: i64 = redis::from_redis_value(&r[1]).unwrap();
                    let master: Vec<redis::Value> = redis::from_redis_value(&r[2]).unwrap();
                    let host: String = redis::from_redis_value(&master[0]).unwrap();
                    let port: i64 = redis::from_redis_value(&master[1]).unwrap();
                    (start, end, (host, port))
                })
                .collect()
        };
        let (_, _, (_, port)) = slots
            .into_iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .unwrap();
        u16::try_from(port).unwrap()
    }

    /// The sharded channels a master has subscribers for.
    async fn shard_channels(&self, port: u16) -> BTreeSet<String> {
        let mut con = self.connect(port).await;
        let names: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut con)
            .await
            .unwrap();
        names.into_iter().collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn cluster_node(cluster: &RedisCluster) -> (Arc<RedisBroker>, Recorder) {
    let mut config = RedisBrokerConfig::cluster(cluster.seeds());
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

/// Offsets of the publications recorded, per channel, in delivery order.
fn offsets_by_channel(events: &[BrokerEvent]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        if let BrokerEvent::Publication {
            channel,
            publication,
            ..
        } = e
        {
            out.entry(channel.clone())
                .or_default()
                .push(publication.offset);
        }
    }
    out
}

#[tokio::test]
async fn two_nodes_share_channels_history_presence_and_registry_across_shards() {
    let cluster = RedisCluster::start();
    cluster.wait_ok().await;

    // Two channels owned by each of the three masters.
    let mut by_shard: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let channel = format!("room:{i}");
        let owner = cluster.owner(&format!("wshub:{{{channel}}}:ch")).await;
        let list = by_shard.entry(owner).or_default();
        if list.len() < 2 {
            list.push(channel);
        }
        if by_shard.len() == 3 && by_shard.values().all(|l| l.len() == 2) {
            break;
        }
    }
    assert_eq!(by_shard.len(), 3, "channels on every shard: {by_shard:?}");
    let channels: Vec<String> = by_shard.values().flatten().cloned().collect();

    let (a, rec_a) = cluster_node(&cluster).await;
    let (b, rec_b) = cluster_node(&cluster).await;
    assert!(a.is_healthy() && b.is_healthy());

    // b listens to all six channels, a to the first of each shard.
    for c in &channels {
        b.subscribe(c).await.unwrap();
    }
    let firsts: Vec<&String> = by_shard.values().map(|l| &l[0]).collect();
    for c in &firsts {
        a.subscribe(c).await.unwrap();
    }
    // Each master holds exactly the sharded channels of its slots that some
    // node listens to; an unused channel is subscribed nowhere.
    for (port, list) in &by_shard {
        let expected: BTreeSet<String> = list.iter().map(|c| format!("wshub:{{{c}}}:ch")).collect();
        assert_eq!(cluster.shard_channels(*port).await, expected);
    }

    // Five publications per channel from a: b sees every channel's offsets
    // 1..=5 in order; a sees its own channels' too.
    for round in 0..5 {
        for c in &channels {
            let pos = a
                .publish(c, Bytes::from(format!("{{\"n\":{round}}}")), history())
                .await
                .unwrap();
            assert_eq!(pos.offset, round + 1);
        }
    }
    rec_b.wait_for(30).await;
    let seen = offsets_by_channel(&rec_b.events());
    assert_eq!(seen.len(), 6);
    for c in &channels {
        assert_eq!(seen[c], vec![1, 2, 3, 4, 5], "channel {c}");
    }
    rec_a.wait_for(15).await;
    let seen = offsets_by_channel(&rec_a.events());
    assert_eq!(
        seen.keys().collect::<BTreeSet<_>>(),
        firsts.iter().copied().collect::<BTreeSet<_>>()
    );
    assert!(seen.values().all(|o| o == &[1, 2, 3, 4, 5]));

    // b publishes too: offsets continue across nodes.
    for c in &firsts {
        assert_eq!(
            b.publish(c, Bytes::from_static(b"{}"), history())
                .await
                .unwrap()
                .offset,
            6
        );
    }
    rec_a.wait_for(18).await;
    assert!(offsets_by_channel(&rec_a.events())
        .values()
        .all(|o| o == &[1, 2, 3, 4, 5, 6]));

    // History, from the other node.
    for c in &channels {
        let h = b
            .history(
                c,
                HistoryFilter {
                    since: None,
                    limit: Some(10),
                },
            )
            .await
            .unwrap();
        let expected: Vec<u64> = if firsts.contains(&c) {
            (1..=6).collect()
        } else {
            (1..=5).collect()
        };
        assert_eq!(
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(h.position.offset, *expected.last().unwrap());
    }

    // Presence with join/leave: events travel on the channel's shard.
    rec_b.take();
    let c = &channels[5];
    a.add_presence(c, member("c1", "u1"), Duration::from_secs(60), true)
        .await
        .unwrap();
    let presence = b.presence(c).await.unwrap();
    assert_eq!(presence.keys().collect::<Vec<_>>(), vec!["c1"]);
    a.remove_presence(c, "c1", true).await.unwrap();
    let events = rec_b.wait_for(2).await;
    assert_eq!(
        events,
        vec![
            BrokerEvent::Join {
                channel: c.clone(),
                member: member("c1", "u1")
            },
            BrokerEvent::Leave {
                channel: c.clone(),
                member: member("c1", "u1")
            },
        ]
    );
    assert!(b.presence(c).await.unwrap().is_empty());

    // A dead node's members, on channels of every shard, are reaped from any
    // node (a SCAN on each master), with their leave events.
    rec_b.take();
    for ch in &channels {
        a.add_presence(ch, member("dead-1", "u7"), Duration::from_secs(60), false)
            .await
            .unwrap();
    }
    assert_eq!(b.reap_node("dead").await.unwrap(), channels.len());
    for ch in &channels {
        assert!(b.presence(ch).await.unwrap().is_empty(), "{ch}");
    }
    let leaves = rec_b.wait_for(channels.len()).await;
    assert!(leaves
        .iter()
        .all(|e| matches!(e, BrokerEvent::Leave { member, .. } if member.client == "dead-1")));
    // Channel lists announced by the nodes are summed (keys on any shard).
    a.announce_channels(
        "node-a",
        vec![(channels[0].clone(), 2)],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    b.announce_channels(
        "node-b",
        vec![(channels[0].clone(), 3)],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let sums = a
        .channels_of(&["node-a".to_owned(), "node-b".to_owned()])
        .await
        .unwrap();
    assert_eq!(sums.get(&channels[0]), Some(&5));

    // Control commands reach every node.
    rec_a.take();
    rec_b.take();
    let command = ControlCommand::Disconnect {
        user: "u9".into(),
        code: 4000,
        reason: "bye".into(),
    };
    b.control(command.clone()).await.unwrap();
    for rec in [&rec_a, &rec_b] {
        assert_eq!(
            rec.wait_for(1).await,
            vec![BrokerEvent::Control(command.clone())]
        );
    }

    // The node registry lists both nodes from either node.
    let info = |node: &str| NodeInfo {
        node: node.into(),
        connections: 1,
        channels: 2,
        subscriptions: 3,
        uptime_seconds: 4,
    };
    a.announce_node(info("node-a"), Duration::from_secs(30))
        .await
        .unwrap();
    b.announce_node(info("node-b"), Duration::from_secs(30))
        .await
        .unwrap();
    for n in [&a, &b] {
        assert_eq!(
            n.nodes().await.unwrap(),
            vec![info("node-a"), info("node-b")]
        );
    }

    // Unsubscribing leaves the shard when no node listens any more.
    let last = &by_shard.values().next().unwrap()[1];
    b.unsubscribe(last).await.unwrap();
    let port = *by_shard.keys().next().unwrap();
    assert!(!cluster
        .shard_channels(port)
        .await
        .contains(&format!("wshub:{{{last}}}:ch")));
}

#[tokio::test]
async fn many_concurrent_subscriptions_on_a_cluster() {
    let cluster = RedisCluster::start();
    cluster.wait_ok().await;
    let (a, _) = cluster_node(&cluster).await;
    let (b, rec_b) = cluster_node(&cluster).await;
    let channels: Vec<String> = (0..300).map(|i| format!("many:{i}")).collect();
    let results = futures_util::future::join_all(channels.iter().map(|c| b.subscribe(c))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut all = BTreeSet::new();
    for port in &cluster.ports {
        all.extend(cluster.shard_channels(*port).await);
    }
    assert_eq!(
        all,
        channels
            .iter()
            .map(|c| format!("wshub:{{{c}}}:ch"))
            .collect::<BTreeSet<_>>()
    );
    for c in &channels {
        a.publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let events = rec_b.wait_for(channels.len()).await;
    let seen = offsets_by_channel(&events);
    assert_eq!(seen.len(), channels.len());
    assert!(seen.values().all(|o| o == &[1]));

    // Losing the connection to one master: b reconnects to every shard,
    // resubscribes, reports the interruption, and delivers again.
    let mut con = cluster.connect(cluster.ports[1]).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut killed = 0;
    for line in list.lines() {
        if line
            .split(' ')
            .any(|f| f.starts_with("ssub=") && f != "ssub=0")
        {
            let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut con)
                .await
                .unwrap();
            killed += 1;
        }
    }
    assert_eq!(killed, 1, "b's connection to this master");
    eventually("b resynced", || {
        let rec = rec_b.clone();
        async move { rec.events().contains(&BrokerEvent::Resynced) }
    })
    .await;
    assert!(b.is_healthy());
    rec_b.take();
    for c in &channels {
        a.publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let seen = offsets_by_channel(&rec_b.wait_for(channels.len()).await);
    assert_eq!(seen.len(), channels.len());
    assert!(seen.values().all(|o| o == &[2]));
}

#[tokio::test]
async fn cluster_settings_are_checked() {
    let err = RedisBroker::connect(RedisBrokerConfig::cluster(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least one seed"), "{err}");
    let err = RedisBroker::connect(RedisBrokerConfig::cluster(["http://x"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid redis cluster seed url"),
        "{err}"
    );
}

/// Moves hash slot `slot` (and its keys) from the master on `from` to the
/// master on `to`, the way `redis-cli --cluster reshard` does.
async fn move_slot(cluster: &RedisCluster, slot: i64, from: u16, to: u16) {
    let mut src = cluster.connect(from).await;
    let mut dst = cluster.connect(to).await;
    let id = |con: &mut redis::aio::MultiplexedConnection| {
        let mut con = con.clone();
        async move {
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut con)
                .await
                .unwrap();
            id
        }
    };
    let (src_id, dst_id) = (id(&mut src).await, id(&mut dst).await);
    let setslot = |con: &mut redis::aio::MultiplexedConnection, state: &str, node: &str| {
        let mut con = con.clone();
        let (state, node) = (state.to_owned(), node.to_owned());
        async move {
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    };
    setslot(&mut dst, "IMPORTING", &src_id).await;
    setslot(&mut src, "MIGRATING", &dst_id).await;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut src)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .unwrap();
    }
    for port in &cluster.ports {
        let mut con = cluster.connect(*port).await;
        setslot(&mut con, "NODE", &dst_id).await;
    }
}

#[tokio::test]
async fn a_moved_slot_is_followed_by_publisher_and_subscriber() {
    let cluster = RedisCluster::start();
    cluster.wait_ok().await;
    let (a, _) = cluster_node(&cluster).await;
    let (b, rec_b) = cluster_node(&cluster).await;
    let channel = "moving";
    let name = format!("wshub:{{{channel}}}:ch");
    b.subscribe(channel).await.unwrap();
    b.subscribe("staying").await.unwrap();
    for _ in 0..3 {
        a.publish(channel, Bytes::from_static(b"{}"), history())
            .await
            .unwrap();
    }
    rec_b.wait_for(3).await;

    let from = cluster.owner(&name).await;
    let to = *cluster.ports.iter().find(|p| **p != from).unwrap();
    let mut con = cluster.connect(from).await;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&name)
        .query_async(&mut con)
        .await
        .unwrap();
    move_slot(&cluster, slot, from, to).await;
    assert_eq!(cluster.owner(&name).await, to);

    // The old owner dropped b's sharded subscription; b re-read the slot map
    // and subscribed at the new owner.
    eventually("b resynced", || {
        let rec = rec_b.clone();
        async move { rec.events().contains(&BrokerEvent::Resynced) }
    })
    .await;
    eventually("b subscribed at the new owner", || async {
        cluster.shard_channels(to).await.contains(&name)
    })
    .await;
    assert!(!cluster.shard_channels(from).await.contains(&name));
    // The publisher follows MOVED; offsets continue with the moved keys.
    let pos = a
        .publish(channel, Bytes::from_static(b"{}"), history())
        .await
        .unwrap();
    assert_eq!(pos.offset, 4);
    eventually("b receives offset 4", || {
        let rec = rec_b.clone();
        async move { rec.offsets().last() == Some(&4) }
    })
    .await;
    assert_eq!(rec_b.offsets(), vec![1, 2, 3, 4]);
}
