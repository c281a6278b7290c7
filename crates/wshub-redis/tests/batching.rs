//! Batched pub/sub subscriptions against a real `redis-server`: many
//! concurrent (un)subscriptions and the resubscription after a reconnect
//! travel as a few multi-channel commands (counted by Redis itself in
//! `INFO commandstats`), every subscribed channel delivers, and quick
//! subscribe/unsubscribe sequences of one channel end in the right state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{eventually, node, RedisServer};
use futures_util::future::join_all;
use std::collections::BTreeSet;
use std::future::Future;
use wshub::hub::broker::{Broker, BrokerEvent, PublishOptions};

/// A plain connection for inspecting the server.
async fn admin(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// How many times Redis ran `command` since the last `CONFIG RESETSTAT`.
async fn calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().parse::<u64>().unwrap()
        })
}

async fn reset_stats(con: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(con)
        .await
        .unwrap();
}

/// The broker's channels that Redis has subscribers for.
async fn redis_channels(con: &mut redis::aio::MultiplexedConnection) -> BTreeSet<String> {
    let names: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("wshub:ch:*")
        .query_async(con)
        .await
        .unwrap();
    names
        .into_iter()
        .map(|n| n.strip_prefix("wshub:ch:").unwrap().to_owned())
        .collect()
}

/// Subscribes `b` to `marker` and waits for a publication on it: it travels
/// on the same connection after everything published before, so once it
/// has arrived, so has anything else that was going to.
async fn marker(publisher: &dyn Broker, b: &wshub_redis::RedisBroker, rec: &common::Recorder) {
    b.subscribe("marker").await.unwrap();
    publisher
        .publish(
            "marker",
            Bytes::from_static(b"{}"),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    eventually("the marker arrives", || {
        let rec = rec.clone();
        async move { published_channels(&rec.events()).contains(&"marker".to_owned()) }
    })
    .await;
}

/// Kills every connection with subscriptions (the brokers' pub/sub
/// connections); returns how many.
async fn kill_subscribers(con: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f.starts_with("sub=") && f != "sub=0"))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect();
    for id in &ids {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(con)
            .await
            .unwrap();
    }
    ids.len()
}

/// The channels of the publications recorded, in delivery order.
fn published_channels(events: &[BrokerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            BrokerEvent::Publication { channel, .. } => Some(channel.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_concurrent_subscribes_take_a_few_commands_and_all_deliver() {
    let redis = RedisServer::start();
    let mut con = admin(&redis).await;
    let (publisher, _) = node(&redis).await;
    let (b, rec) = node(&redis).await;
    reset_stats(&mut con).await;

    let channels: Vec<String> = (0..1000).map(|i| format!("room:{i}")).collect();
    let results = join_all(channels.iter().map(|c| b.subscribe(c))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let subscribes = calls(&mut con, "subscribe").await;
    eprintln!("1000 concurrent subscribes: {subscribes} SUBSCRIBE commands");
    // One command per batch of up to 256 channels, plus at most one for
    // the first caller, who finds the queue nearly empty.
    assert!(
        (4..=8).contains(&subscribes),
        "1000 channels took {subscribes} SUBSCRIBE commands"
    );
    assert_eq!(
        redis_channels(&mut con).await,
        channels.iter().cloned().collect::<BTreeSet<_>>()
    );

    // Every channel really is subscribed: each delivers its publication.
    for c in &channels {
        publisher
            .publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let events = rec.wait_for(channels.len()).await;
    let got: BTreeSet<String> = published_channels(&events).into_iter().collect();
    assert_eq!(got.len(), channels.len());
    assert_eq!(got, channels.iter().cloned().collect::<BTreeSet<_>>());

    // And a thousand concurrent unsubscribes: few commands, nothing left
    // at Redis, nothing delivered afterwards.
    reset_stats(&mut con).await;
    let results = join_all(channels.iter().map(|c| b.unsubscribe(c))).await;
    assert!(results.iter().all(Result::is_ok));
    let unsubscribes = calls(&mut con, "unsubscribe").await;
    eprintln!("1000 concurrent unsubscribes: {unsubscribes} UNSUBSCRIBE commands");
    assert!(
        (4..=8).contains(&unsubscribes),
        "1000 channels took {unsubscribes} UNSUBSCRIBE commands"
    );
    assert!(redis_channels(&mut con).await.is_empty());
    rec.take();
    for c in channels.iter().take(50) {
        publisher
            .publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    marker(&*publisher, &b, &rec).await;
    assert_eq!(published_channels(&rec.events()), vec!["marker".to_owned()]);
}

/// One step of a channel's script.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Sub,
    Unsub,
}

#[tokio::test]
async fn quick_subscribe_unsubscribe_sequences_end_in_the_last_state() {
    let redis = RedisServer::start();
    let mut con = admin(&redis).await;
    let (publisher, _) = node(&redis).await;
    let (b, rec) = node(&redis).await;

    // 300 channels, each with its own sequence of 1 to 5 operations; the
    // sequences are interleaved across channels and issued in three waves
    // without waiting in between, so a channel's operations land in the
    // same batch or in consecutive ones.
    let mut rng = fastrand::Rng::with_seed(7);
    let scripts: Vec<(String, Vec<Op>)> = (0..300)
        .map(|i| {
            let len = rng.usize(1..=5);
            let first = if rng.bool() { Op::Sub } else { Op::Unsub };
            let ops = (0..len)
                .map(|k| match (first, k % 2) {
                    (Op::Sub, 0) | (Op::Unsub, 1) => Op::Sub,
                    _ => Op::Unsub,
                })
                .collect();
            (format!("q:{i}"), ops)
        })
        .collect();
    // Half of the channels start out subscribed.
    for (c, _) in scripts.iter().step_by(2) {
        b.subscribe(c).await.unwrap();
    }
    let mut calls_in_order = Vec::new();
    for step in 0..5 {
        for (c, ops) in &scripts {
            if let Some(op) = ops.get(step) {
                calls_in_order.push((c.as_str(), *op));
            }
        }
    }
    let waves: Vec<&[(&str, Op)]> = calls_in_order
        .chunks(calls_in_order.len() / 3 + 1)
        .collect();
    let mut handles = Vec::new();
    for wave in waves {
        // join_all polls the futures in order, and each (un)subscription
        // joins the queue on its first poll: the queue keeps call order.
        let b = b.clone();
        let wave: Vec<(String, Op)> = wave.iter().map(|(c, op)| ((*c).to_owned(), *op)).collect();
        let futures = async move {
            join_all(wave.iter().map(|(c, op)| async {
                match op {
                    Op::Sub => b.subscribe(c).await,
                    Op::Unsub => b.unsubscribe(c).await,
                }
            }))
            .await
        };
        // Start the wave (first poll) before the next one.
        let mut handle = Box::pin(futures);
        std::future::poll_fn(|cx| {
            assert!(handle.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        handles.push(handle);
        // Let the flusher take this wave before the next one is queued.
        tokio::task::yield_now().await;
    }
    for results in join_all(handles).await {
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    let expected: BTreeSet<String> = scripts
        .iter()
        .filter(|(_, ops)| ops.last() == Some(&Op::Sub))
        .map(|(c, _)| c.clone())
        .collect();
    assert!(!expected.is_empty() && expected.len() < scripts.len());
    assert_eq!(redis_channels(&mut con).await, expected);

    rec.take();
    for (c, _) in &scripts {
        publisher
            .publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    marker(&*publisher, &b, &rec).await;
    let mut got: Vec<String> = published_channels(&rec.events());
    assert_eq!(got.pop().as_deref(), Some("marker"));
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "a channel delivered twice");
    assert_eq!(got_set, expected);
}

#[tokio::test]
async fn one_channel_subscribe_unsubscribe_subscribe_ends_subscribed() {
    let redis = RedisServer::start();
    let mut con = admin(&redis).await;
    let (publisher, _) = node(&redis).await;
    let (b, rec) = node(&redis).await;

    for round in 0..20 {
        let c = format!("flip:{round}");
        let (s1, u, s2) = tokio::join!(b.subscribe(&c), b.unsubscribe(&c), b.subscribe(&c));
        assert!(s1.is_ok() && u.is_ok() && s2.is_ok(), "{s1:?} {u:?} {s2:?}");
        let (s, u) = tokio::join!(b.subscribe(&c), b.unsubscribe(&c));
        assert!(s.is_ok() && u.is_ok(), "{s:?} {u:?}");
        let gone = format!("gone:{round}");
        let (s, u) = tokio::join!(b.subscribe(&gone), b.unsubscribe(&gone));
        assert!(s.is_ok() && u.is_ok(), "{s:?} {u:?}");
        b.unsubscribe(&c).await.unwrap();
        b.subscribe(&c).await.unwrap();
    }
    let expected: BTreeSet<String> = (0..20).map(|r| format!("flip:{r}")).collect();
    assert_eq!(redis_channels(&mut con).await, expected);
    rec.take();
    for round in 0..20 {
        for c in [format!("gone:{round}"), format!("flip:{round}")] {
            publisher
                .publish(&c, Bytes::from_static(b"{}"), PublishOptions::default())
                .await
                .unwrap();
        }
    }
    marker(&*publisher, &b, &rec).await;
    let mut got = published_channels(&rec.events());
    assert_eq!(got.pop().as_deref(), Some("marker"));
    assert_eq!(got.len(), 20, "{got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn resubscription_after_a_lost_connection_is_batched() {
    let redis = RedisServer::start();
    let mut con = admin(&redis).await;
    let (publisher, rec_publisher) = node(&redis).await;
    let (b, rec) = node(&redis).await;
    let channels: Vec<String> = (0..600).map(|i| format!("re:{i}")).collect();
    join_all(channels.iter().map(|c| b.subscribe(c)))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .unwrap();
    reset_stats(&mut con).await;

    // Kill the pub/sub connections (the command connections stay).
    assert_eq!(
        kill_subscribers(&mut con).await,
        2,
        "one pub/sub connection per broker"
    );
    for rec in [&rec, &rec_publisher] {
        eventually("both nodes resynced", || {
            let rec = rec.clone();
            async move { rec.events().contains(&BrokerEvent::Resynced) }
        })
        .await;
    }
    assert!(b.is_healthy());
    // The control channel, then 600 channels in batches of 256: 1 + 3
    // commands for b, 1 for the publisher (no channels).
    assert_eq!(calls(&mut con, "subscribe").await, 5);
    assert_eq!(
        redis_channels(&mut con).await,
        channels.iter().cloned().collect::<BTreeSet<_>>()
    );
    rec.take();
    for c in &channels {
        publisher
            .publish(c, Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let events = rec.wait_for(channels.len()).await;
    let got: BTreeSet<String> = published_channels(&events).into_iter().collect();
    assert_eq!(got.len(), channels.len());
}
