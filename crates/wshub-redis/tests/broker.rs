//! The Redis broker against a real `redis-server` (one per test): the same
//! behaviour the in-memory engine's tests check, plus what only a cluster
//! has — several nodes publishing at once, and Redis going away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, member, node, RedisServer};
use wshub::hub::broker::{
    recover, Audience, Broker, BrokerEvent, HistoryFilter, HistoryResult, PresenceStats,
    Publication, PublishOptions, Recovery, StreamPosition,
};

fn data(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

fn history_opts(size: usize, ttl_secs: u64) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(ttl_secs),
        ..PublishOptions::default()
    }
}

fn offsets(h: &HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

async fn publish_n(b: &dyn Broker, ch: &str, n: u64, opts: &PublishOptions) -> StreamPosition {
    let mut last = None;
    for i in 0..n {
        last = Some(b.publish(ch, data(i), opts.clone()).await.unwrap());
    }
    last.unwrap()
}

#[tokio::test]
async fn publications_reach_subscribed_nodes_in_order_only_while_subscribed() {
    let redis = RedisServer::start();
    let (a, rec_a) = node(&redis).await;
    let (b, rec_b) = node(&redis).await;
    assert!(a.is_healthy());

    a.publish("ch", data(0), PublishOptions::default())
        .await
        .unwrap();
    b.subscribe("ch").await.unwrap();
    b.subscribe("ch").await.unwrap(); // idempotent
    let tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    let audience = Audience {
        except_client: Some("c9".into()),
        filter: None,
    };
    let opts = PublishOptions {
        info: Some(member("c1", "u1")),
        tags: tags.clone(),
        audience: audience.clone(),
        ..PublishOptions::default()
    };
    let pos = a.publish("ch", data(1), opts).await.unwrap();
    assert_eq!(pos.offset, 2);
    for i in 2..=10 {
        a.publish("ch", data(i), PublishOptions::default())
            .await
            .unwrap();
    }
    a.publish("other", data(0), PublishOptions::default())
        .await
        .unwrap();
    let events = rec_b.wait_for(10).await;
    assert_eq!(
        events[0],
        BrokerEvent::Publication {
            channel: "ch".into(),
            publication: Publication {
                offset: 2,
                data: data(1),
                info: Some(member("c1", "u1")),
                tags,
                audience,
            },
            epoch: pos.epoch.clone(),
        }
    );
    assert_eq!(rec_b.offsets(), (2..=11).collect::<Vec<_>>());
    assert!(rec_a.events().is_empty(), "a never subscribed");

    b.unsubscribe("ch").await.unwrap();
    b.unsubscribe("ch").await.unwrap(); // idempotent
                                        // A marker on a channel b still listens to proves the unsubscribed
                                        // publication would have arrived by now.
    b.subscribe("marker").await.unwrap();
    a.publish("ch", data(99), PublishOptions::default())
        .await
        .unwrap();
    a.publish("marker", data(0), PublishOptions::default())
        .await
        .unwrap();
    let events = rec_b.wait_for(11).await;
    assert_eq!(events.len(), 11);
    assert_eq!(events[10].channel(), "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_get_unique_contiguous_offsets_seen_in_order_everywhere() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let (b, rec) = node(&redis).await;
        b.subscribe("room").await.unwrap();
        nodes.push((b, rec));
    }
    const PER_NODE: u64 = 50;
    let mut tasks = Vec::new();
    for (b, _) in &nodes {
        let b = Arc::clone(b);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..PER_NODE {
                mine.push(
                    b.publish("room", data(i), history_opts(1000, 60))
                        .await
                        .unwrap(),
                );
            }
            mine
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.extend(t.await.unwrap());
    }
    let total = PER_NODE * nodes.len() as u64;
    let epoch = positions[0].epoch.clone();
    assert!(positions.iter().all(|p| p.epoch == epoch));
    let mut all: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    for (_, rec) in &nodes {
        rec.wait_for(total as usize).await;
        assert_eq!(rec.offsets(), (1..=total).collect::<Vec<_>>());
    }
    let h = nodes[0]
        .0
        .history("room", HistoryFilter::default())
        .await
        .unwrap();
    assert_eq!(offsets(&h), (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_latest_since_limit_and_epochs() {
    let redis = RedisServer::start();
    let (b, _) = node(&redis).await;
    // Nothing yet: a fresh epoch at offset 0, kept for later reads.
    let empty = b.history("a", HistoryFilter::default()).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(empty.publications.is_empty());
    assert_eq!(empty.position.epoch.len(), 12);

    let last = publish_n(&*b, "a", 8, &history_opts(5, 60)).await;
    assert_eq!(last.offset, 8);
    assert_eq!(
        last.epoch, empty.position.epoch,
        "reading created the epoch"
    );

    let all = b.history("a", HistoryFilter::default()).await.unwrap();
    assert_eq!(offsets(&all), [4, 5, 6, 7, 8], "size limit");
    assert_eq!(all.position, last);
    assert_eq!(all.publications[0].data, data(3));

    let latest = |limit| HistoryFilter {
        since: None,
        limit: Some(limit),
    };
    assert_eq!(offsets(&b.history("a", latest(2)).await.unwrap()), [7, 8]);
    let none = b.history("a", latest(0)).await.unwrap();
    assert!(none.publications.is_empty());
    assert_eq!(none.position, last);

    let since = |offset, epoch: &str, limit| HistoryFilter {
        since: Some(StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        }),
        limit,
    };
    let e = last.epoch.as_str();
    assert_eq!(
        offsets(&b.history("a", since(5, e, None)).await.unwrap()),
        [6, 7, 8]
    );
    assert_eq!(
        offsets(&b.history("a", since(4, e, Some(2))).await.unwrap()),
        [5, 6]
    );
    assert_eq!(
        offsets(&b.history("a", since(1, e, Some(2))).await.unwrap()),
        [4, 5]
    );
    assert!(b
        .history("a", since(8, e, None))
        .await
        .unwrap()
        .publications
        .is_empty());
    assert!(b
        .history("a", since(u64::MAX, e, None))
        .await
        .unwrap()
        .publications
        .is_empty());
    let foreign = b.history("a", since(2, "other", None)).await.unwrap();
    assert!(foreign.publications.is_empty());
    assert_eq!(foreign.position, last);

    // Without history options the offset advances but nothing is kept.
    let p = b
        .publish("a", data(9), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(p.offset, 9);
    assert_eq!(
        offsets(&b.history("a", latest(10)).await.unwrap()),
        [4, 5, 6, 7, 8]
    );

    // remove_history keeps the position.
    b.remove_history("a").await.unwrap();
    let h = b.history("a", since(5, e, None)).await.unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.position.offset, 9);
    assert_eq!(h.position.epoch, last.epoch);
    let p = b.publish("a", data(10), history_opts(5, 60)).await.unwrap();
    assert_eq!(p.offset, 10);
    assert_eq!(
        offsets(&b.history("a", HistoryFilter::default()).await.unwrap()),
        [10]
    );
}

#[tokio::test]
async fn history_entries_expire_but_the_position_stays() {
    let redis = RedisServer::start();
    let (b, _) = node(&redis).await;
    let opts = PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_millis(300),
        ..PublishOptions::default()
    };
    let last = publish_n(&*b, "a", 3, &opts).await;
    assert_eq!(
        offsets(&b.history("a", HistoryFilter::default()).await.unwrap()),
        [1, 2, 3]
    );
    eventually("history expires", || async {
        b.history("a", HistoryFilter::default())
            .await
            .unwrap()
            .publications
            .is_empty()
    })
    .await;
    let h = b.history("a", HistoryFilter::default()).await.unwrap();
    assert_eq!(h.position, last, "the meta key outlives its history");
    assert_eq!(b.publish("a", data(4), opts).await.unwrap().offset, 4);
}

#[tokio::test]
async fn short_meta_ttl_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let mut config = common::config(&redis);
    config.history_meta_ttl = Duration::from_millis(200);
    let b = wshub_redis::RedisBroker::connect(config).await.unwrap();
    let first = b
        .publish("a", data(1), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(first.offset, 1);
    // Reads would keep the stream alive, so watch the key itself.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    eventually("the stream expires", || {
        let mut con = con.clone();
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg("wshub:{a}:meta")
                .query_async(&mut con)
                .await
                .unwrap();
            !exists
        }
    })
    .await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg("wshub:{a}:meta")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(pttl, -2);
    let next = b
        .publish("a", data(2), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(next.offset, 1);
    assert_ne!(next.epoch, first.epoch);
}

#[tokio::test]
async fn a_second_node_recovers_the_exact_gap() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let opts = history_opts(5, 60);
    let seen = publish_n(&*a, "a", 3, &opts).await;
    publish_n(&*a, "a", 4, &opts).await; // 4..=7 missed; history 3..=7
    let read = |since: &StreamPosition, limit| {
        let filter = HistoryFilter {
            since: Some(since.clone()),
            limit: Some(limit),
        };
        let b = Arc::clone(&b);
        async move { b.history("a", filter).await.unwrap() }
    };
    match recover(&seen, read(&seen, 100).await) {
        Recovery::Recovered {
            publications,
            position,
        } => {
            assert_eq!(
                publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
                [4, 5, 6, 7]
            );
            assert_eq!(publications[0].data, data(0), "first of the second batch");
            assert_eq!(position.offset, 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        recover(&seen, read(&seen, 3).await),
        Recovery::NotRecoverable { .. }
    ));
    let old = StreamPosition {
        offset: 1,
        epoch: seen.epoch.clone(),
    };
    assert!(matches!(
        recover(&old, read(&old, 100).await),
        Recovery::NotRecoverable { .. }
    ));
    let foreign = StreamPosition {
        offset: 3,
        epoch: "nope".into(),
    };
    assert!(matches!(
        recover(&foreign, read(&foreign, 100).await),
        Recovery::NotRecoverable { .. }
    ));
}

#[tokio::test]
async fn idempotency_key_returns_the_original_and_delivers_once() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, rec) = node(&redis).await;
    b.subscribe("a").await.unwrap();
    let opts = PublishOptions {
        idempotency_key: Some("k1".into()),
        idempotency_ttl: Duration::from_millis(500),
        ..history_opts(10, 60)
    };
    let first = a.publish("a", data(1), opts.clone()).await.unwrap();
    let again = b.publish("a", data(1), opts.clone()).await.unwrap();
    assert_eq!(first, again, "any node sees the key");
    assert_eq!(
        offsets(&a.history("a", HistoryFilter::default()).await.unwrap()),
        [1]
    );
    // Keys are per channel.
    assert_eq!(
        a.publish("b", data(1), opts.clone()).await.unwrap().offset,
        1
    );
    let other = PublishOptions {
        idempotency_key: Some("k2".into()),
        ..opts.clone()
    };
    assert_eq!(a.publish("a", data(2), other).await.unwrap().offset, 2);
    // After the TTL the key is forgotten.
    eventually("the key expires", || {
        let (a, opts) = (Arc::clone(&a), opts.clone());
        async move { a.publish("a", data(1), opts).await.unwrap().offset == 3 }
    })
    .await;
    rec.wait_for(3).await;
    assert_eq!(rec.offsets(), [1, 2, 3]);
}

#[tokio::test]
async fn presence_add_remove_expire_and_stats() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let long = Duration::from_secs(60);
    a.add_presence("a", member("c1", "u1"), long, false)
        .await
        .unwrap();
    b.add_presence("a", member("c2", "u1"), long, false)
        .await
        .unwrap();
    a.add_presence("a", member("c3", ""), long, false)
        .await
        .unwrap();
    b.add_presence("a", member("c4", ""), Duration::from_millis(300), false)
        .await
        .unwrap();
    let p = b.presence("a").await.unwrap();
    assert_eq!(p.len(), 4);
    assert_eq!(p.get("c2"), Some(&member("c2", "u1")));
    assert_eq!(
        a.presence_stats("a").await.unwrap(),
        PresenceStats {
            clients: 4,
            users: 2
        }
    );
    assert!(a.presence("empty").await.unwrap().is_empty());
    assert_eq!(
        a.presence_stats("empty").await.unwrap(),
        PresenceStats::default()
    );

    eventually("c4 expires", || async {
        a.presence("a").await.unwrap().len() == 3
    })
    .await;
    b.remove_presence("a", "c3", false).await.unwrap();
    b.remove_presence("a", "nobody", false).await.unwrap();
    let mut clients: Vec<String> = a.presence("a").await.unwrap().into_keys().collect();
    clients.sort();
    assert_eq!(clients, ["c1", "c2"]);
    assert_eq!(
        a.presence_stats("a").await.unwrap(),
        PresenceStats {
            clients: 2,
            users: 1
        }
    );
}

#[tokio::test]
async fn join_and_leave_travel_between_nodes() {
    let redis = RedisServer::start();
    let (a, rec_a) = node(&redis).await;
    let (b, rec_b) = node(&redis).await;
    b.subscribe("a").await.unwrap();
    let ttl = Duration::from_secs(60);
    a.add_presence("a", member("c1", "u1"), ttl, true)
        .await
        .unwrap();
    a.add_presence("a", member("c1", "u1"), ttl, true)
        .await
        .unwrap(); // refresh: no join
    a.add_presence("a", member("c2", "u2"), ttl, false)
        .await
        .unwrap(); // events off
    a.remove_presence("a", "c1", true).await.unwrap();
    a.remove_presence("a", "c1", true).await.unwrap(); // gone already: no leave
    a.remove_presence("a", "c2", false).await.unwrap();
    // An expired entry added again is a new join; expiry itself is silent.
    a.add_presence("a", member("c3", "u3"), Duration::from_millis(200), true)
        .await
        .unwrap();
    eventually("c3 expires", || async {
        a.presence("a").await.unwrap().is_empty()
    })
    .await;
    a.add_presence("a", member("c3", "u3"), ttl, true)
        .await
        .unwrap();
    // A marker publication, ordered after everything above on the channel.
    a.publish("a", data(0), PublishOptions::default())
        .await
        .unwrap();
    let events = rec_b.wait_for(5).await;
    let join = |m| BrokerEvent::Join {
        channel: "a".into(),
        member: m,
    };
    assert_eq!(events[0], join(member("c1", "u1")));
    assert_eq!(
        events[1],
        BrokerEvent::Leave {
            channel: "a".into(),
            member: member("c1", "u1"),
        }
    );
    assert_eq!(events[2], join(member("c3", "u3")));
    assert_eq!(events[3], join(member("c3", "u3")));
    assert!(matches!(events[4], BrokerEvent::Publication { .. }));
    assert_eq!(events.len(), 5);
    assert!(rec_a.events().is_empty(), "a is not subscribed");
}

#[tokio::test]
async fn a_users_first_join_and_last_leave_across_nodes_and_reaping_a_dead_node() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let (watch, rec) = node(&redis).await;
    watch.subscribe("r").await.unwrap();
    let ttl = Duration::from_secs(60);
    // u1 opens a tab on node A, then one on node B: one join.
    a.add_presence("r", member("na-1", "u1"), ttl, true)
        .await
        .unwrap();
    b.add_presence("r", member("nb-1", "u1"), ttl, true)
        .await
        .unwrap();
    // Two anonymous clients: a join each.
    a.add_presence("r", member("na-2", ""), ttl, true)
        .await
        .unwrap();
    b.add_presence("r", member("nb-2", ""), ttl, true)
        .await
        .unwrap();
    // u1 closes the tab on A: not a leave, B's tab stays.
    a.remove_presence("r", "na-1", true).await.unwrap();
    // u2 has a tab on A only; u1 one more on A again.
    a.add_presence("r", member("na-3", "u2"), ttl, true)
        .await
        .unwrap();
    a.add_presence("r", member("na-4", "u1"), ttl, true)
        .await
        .unwrap();
    // Node A dies: reaping removes its members; u2 and the anonymous client
    // leave, u1 does not (its tab on B is still there). A second reap (another
    // node doing the same) removes nothing more and sends nothing.
    assert_eq!(b.reap_node("na").await.unwrap(), 3);
    assert_eq!(watch.reap_node("na").await.unwrap(), 0);
    let mut left: Vec<String> = b.presence("r").await.unwrap().into_keys().collect();
    left.sort();
    assert_eq!(left, ["nb-1", "nb-2"]);
    assert_eq!(
        b.presence_stats("r").await.unwrap(),
        PresenceStats {
            clients: 2,
            users: 2
        }
    );
    // u1's last tab goes: now it is a leave.
    b.remove_presence("r", "nb-1", true).await.unwrap();
    b.publish("r", data(0), PublishOptions::default())
        .await
        .unwrap();

    let events = rec.wait_for(8).await;
    let kinds: Vec<(char, String)> = events
        .iter()
        .map(|e| match e {
            BrokerEvent::Join { member, .. } => ('j', member.client.clone()),
            BrokerEvent::Leave { member, .. } => ('l', member.client.clone()),
            BrokerEvent::Publication { .. } => ('p', String::new()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: Vec<(char, String)> = [('j', "na-1"), ('j', "na-2"), ('j', "nb-2"), ('j', "na-3")]
        .iter()
        .map(|(k, c)| (*k, (*c).to_owned()))
        .collect();
    assert_eq!(kinds[..4], want[..], "{kinds:?}");
    // The reap's two leaves, in the hash's order.
    let mut reaped = kinds[4..6].to_vec();
    reaped.sort();
    assert_eq!(reaped, [('l', "na-2".to_owned()), ('l', "na-3".to_owned())]);
    assert_eq!(kinds[6], ('l', "nb-1".to_owned()));
    assert_eq!(kinds[7].0, 'p');
    assert_eq!(events.len(), 8);
}

#[tokio::test]
async fn channels_announced_by_nodes_are_summed() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let ttl = Duration::from_secs(60);
    a.announce_channels("na", vec![("x".into(), 2), ("y".into(), 1)], ttl)
        .await
        .unwrap();
    b.announce_channels("nb", vec![("x".into(), 3)], ttl)
        .await
        .unwrap();
    // A re-announcement replaces the old list.
    b.announce_channels("nb", vec![("x".into(), 4)], ttl)
        .await
        .unwrap();
    let got = a
        .channels_of(&["na".to_owned(), "nb".to_owned(), "gone".to_owned()])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["x"], 6);
    assert_eq!(got["y"], 1);
    assert_eq!(a.channels_of(&["nb".to_owned()]).await.unwrap()["x"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_with_a_new_epoch() {
    let mut redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, rec) = node(&redis).await;
    b.subscribe("ch").await.unwrap();
    let before = a
        .publish("ch", data(1), history_opts(10, 60))
        .await
        .unwrap();
    rec.wait_for(1).await;

    redis.restart_empty();
    // The pub/sub connection notices, reconnects and resubscribes.
    eventually("b reconnects", || async { b.is_healthy() }).await;
    // The command connection reconnects on use; a publish may fail once.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let after = loop {
        match a.publish("ch", data(2), history_opts(10, 60)).await {
            Ok(p) => break p,
            Err(e) => assert!(e.is_temporary(), "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after.offset, 1, "Redis lost the stream");
    assert_ne!(after.epoch, before.epoch, "so the epoch changed");
    // After the reconnect the broker says events may have been lost
    // (`Resynced`), then the new publication arrives.
    let events = rec.wait_for(3).await;
    assert!(
        events.contains(&BrokerEvent::Resynced),
        "no Resynced after the reconnect: {events:?}"
    );
    let last = events
        .iter()
        .rev()
        .find(|e| matches!(e, BrokerEvent::Publication { .. }))
        .unwrap();
    match last {
        BrokerEvent::Publication {
            publication, epoch, ..
        } => {
            assert_eq!(publication.offset, 1);
            assert_eq!(epoch, &after.epoch);
        }
        other => panic!("{other:?}"),
    }
    let h = b.history("ch", HistoryFilter::default()).await.unwrap();
    assert_eq!(h.position, after);
}

#[tokio::test]
async fn reports_unhealthy_while_redis_is_down_and_connect_fails_without_it() {
    let mut redis = RedisServer::start();
    let (b, _) = node(&redis).await;
    assert!(b.is_healthy());
    redis.kill();
    eventually("b notices", || async { !b.is_healthy() }).await;
    let err = b.subscribe("x").await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    let err = b
        .publish("x", data(1), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    let err = wshub_redis::RedisBroker::connect(common::config(&redis))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
}
