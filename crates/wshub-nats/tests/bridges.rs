//! Both bridges against a real `nats-server -js` per test, with in-process
//! hubs and real WebSocket clients.
//!
//! Ingest: each message reaches a subscriber once (idempotency key from
//! `Nats-Msg-Id`), nothing is acked before the hub published it (a broker
//! switched off makes the publish fail for now), an entry whose publish
//! happened but whose answer was lost is redelivered and not delivered
//! twice, a publish that hangs is given up after `claim_idle`, an entry held by a consumer that died goes to another hub after
//! `claim_idle`, entries that fail `max_deliveries` times or can never be
//! published go to the dead-letter stream with the reason, and the consumer
//! survives a server restart. Upstream: client publications are in the
//! stream with their headers, `only` is not fanned out, and a stopped server
//! makes the publish fail with 108.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wshub::hub::config::{HubConfig, QueueEngine};
use wshub::hub::queue::IngestMessage;
use wshub_nats::async_nats::jetstream;
use wshub_nats::{IngestConsumer, NatsUpstream};

fn ingest_config(server: &NatsServer) -> HubConfig {
    let mut c = config(server);
    c.ingest.engine = QueueEngine::Nats;
    c
}

/// A hub with a subscriber `bob` on `news:a` and a running consumer.
async fn ingest_hub(
    server: &NatsServer,
    config: &HubConfig,
) -> (TestHub, HubClient, IngestConsumer) {
    let hub = TestHub::start(config.clone()).await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let consumer = IngestConsumer::start(hub.hub.clone(), server.client().await, &config.ingest)
        .await
        .unwrap();
    (hub, bob, consumer)
}

#[tokio::test]
async fn ingest_publishes_each_message_once() {
    let server = NatsServer::start();
    let config = ingest_config(&server);
    let (hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    let js = jetstream::new(server.client().await);
    let subject = &config.ingest.subject;

    // An earlier publish with key "order-7": the message carrying that
    // Nats-Msg-Id is a duplicate of it.
    let mut earlier = IngestMessage::new("news:a", "0");
    earlier.idempotency_key = Some("order-7".into());
    hub.hub.ingest(earlier).await.unwrap();
    js_publish(
        &js,
        subject,
        Some("order-7"),
        r#"{"channel":"news:a","data":1}"#,
    )
    .await;
    js_publish(&js, subject, None, r#"{"channel":"news:a","data":{"n":2}}"#).await;
    let last = js_publish(
        &js,
        subject,
        Some("other"),
        r#"{"channel":"news:a","data":3,"tags":{"k":"v"}}"#,
    )
    .await;
    assert_eq!(last, 3);

    assert_eq!(bob.data().await, 0);
    assert_eq!(bob.data().await, json!({"n": 2}));
    let p = bob.push().await;
    assert_eq!((&p["data"], &p["offset"]), (&json!(3), &json!(3)), "{p}");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 3).await;
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());
    // The consumer is the one configured.
    let info = consumer_info(&js, &config.ingest.stream, &config.ingest.group).await;
    assert_eq!(info.config.ack_wait, Duration::from_secs(2));
    assert_eq!(info.config.max_deliver, 3);
    consumer.stop().await;
}

#[tokio::test]
async fn nothing_is_acked_before_the_publish_succeeded() {
    let server = NatsServer::start();
    let config = ingest_config(&server);
    let (hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    let js = jetstream::new(server.client().await);
    hub.broker.set_mode(Mode::Fail);

    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":"x"}"#,
    )
    .await;
    hub.broker.wait_attempts(1).await;
    let info = consumer_info(&js, &config.ingest.stream, &config.ingest.group).await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "acked although the publish failed"
    );
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());

    hub.broker.set_mode(Mode::Pass);
    assert_eq!(bob.data().await, "x");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 1).await;
    assert_eq!(
        hub.broker.attempts(),
        2,
        "one failed publish, one that worked"
    );
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());
    consumer.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_reaches_clients_once() {
    let server = NatsServer::start();
    let config = ingest_config(&server);
    let (hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    let js = jetstream::new(server.client().await);
    // The first publish happens but its answer is lost: the consumer naks
    // and the entry is delivered again.
    hub.broker.set_mode(Mode::LoseAnswer);

    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":"once"}"#,
    )
    .await;
    hub.broker.wait_attempts(1).await;
    hub.broker.set_mode(Mode::Pass);
    assert_eq!(bob.data().await, "once");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 1).await;
    assert_eq!(hub.broker.attempts(), 2, "delivered twice to the hub");
    let info = consumer_info(&js, &config.ingest.stream, &config.ingest.group).await;
    assert_eq!(info.delivered.stream_sequence, 1);
    assert_eq!(
        bob.pending_pushes().await,
        Vec::<Value>::new(),
        "a second push"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_publish_that_hangs_is_retried_after_claim_idle() {
    let server = NatsServer::start();
    let config = ingest_config(&server);
    let (hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    let js = jetstream::new(server.client().await);
    hub.broker.set_mode(Mode::Hang);

    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":"late"}"#,
    )
    .await;
    hub.broker.wait_attempts(1).await;
    hub.broker.set_mode(Mode::Pass);
    // The consumer gives up on the hung publish and the entry comes back.
    assert_eq!(bob.data().await, "late");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 1).await;
    assert_eq!(hub.broker.attempts(), 2);
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());
    consumer.stop().await;
}

#[tokio::test]
async fn an_entry_held_by_a_dead_consumer_goes_to_another_hub() {
    let server = NatsServer::start();
    let config = ingest_config(&server);
    let js = jetstream::new(server.client().await);

    // Hub A takes the entry and never answers; then its consumer dies.
    let (a, mut a_client, a_consumer) = ingest_hub(&server, &config).await;
    a.broker.set_mode(Mode::Hang);
    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":"moved"}"#,
    )
    .await;
    a.broker.wait_attempts(1).await;
    drop(a_consumer);

    let (b, mut b_client, b_consumer) = ingest_hub(&server, &config).await;
    assert_eq!(b_client.data().await, "moved");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 1).await;
    assert_eq!(b.broker.attempts(), 1);
    assert_eq!(a.broker.attempts(), 1);
    assert_eq!(b_client.pending_pushes().await, Vec::<Value>::new());
    assert_eq!(a_client.pending_pushes().await, Vec::<Value>::new());
    b_consumer.stop().await;
}

#[tokio::test]
async fn failing_and_malformed_entries_are_dead_lettered() {
    let server = NatsServer::start();
    let mut config = ingest_config(&server);
    config.ingest.max_deliveries = 2;
    let (hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    let js = jetstream::new(server.client().await);
    hub.broker.set_mode(Mode::Fail);
    let subject = &config.ingest.subject;

    let failing = r#"{"channel":"news:a","data":1}"#;
    let malformed = "{not json";
    let unknown = r#"{"channel":"nosuchns:x","data":1}"#;
    js_publish(&js, subject, None, failing).await;
    js_publish(&js, subject, Some("m-2"), malformed).await;
    js_publish(&js, subject, None, unknown).await;

    let dead = format!("{}-dead", config.ingest.stream);
    eventually("three dead letters", || async {
        js.get_stream(&dead)
            .await
            .map(|s| s.cached_info().state.messages >= 3)
            .unwrap_or(false)
    })
    .await;
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 3).await;
    let mut letters = stream_messages(&js, &dead).await;
    assert_eq!(letters.len(), 3);
    letters.sort_by_key(|m| header(m, "Wshub-Sequence").unwrap());
    let expect = [
        (failing, "1", "2", "still failing on delivery 2"),
        (malformed, "2", "1", "not a publication"),
        (unknown, "3", "1", "102"),
    ];
    for (m, (body, seq, deliveries, reason)) in letters.iter().zip(expect) {
        assert_eq!(m.subject.as_str(), config.ingest.dead_letter);
        assert_eq!(&m.payload[..], body.as_bytes());
        assert_eq!(header(m, "Wshub-Sequence").as_deref(), Some(seq));
        assert_eq!(
            header(m, "Wshub-Deliveries").as_deref(),
            Some(deliveries),
            "{seq}"
        );
        assert_eq!(
            header(m, "Wshub-Stream").as_deref(),
            Some(config.ingest.stream.as_str())
        );
        let error = header(m, "Wshub-Error").unwrap();
        assert!(error.contains(reason), "{error:?} lacks {reason:?}");
    }
    assert_eq!(header(&letters[1], "Wshub-Msg-Id").as_deref(), Some("m-2"));
    // Only the failing entry reached the broker, twice; nothing was delivered.
    assert_eq!(hub.broker.attempts(), 2);
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());
    consumer.stop().await;
}

#[tokio::test]
async fn the_consumer_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let config = ingest_config(&server);
    let (_hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    {
        let js = jetstream::new(server.client().await);
        js_publish(
            &js,
            &config.ingest.subject,
            None,
            r#"{"channel":"news:a","data":1}"#,
        )
        .await;
        assert_eq!(bob.data().await, 1);
    }
    server.start_again();
    let js = jetstream::new(server.client().await);
    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":2}"#,
    )
    .await;
    assert_eq!(bob.data().await, 2);
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 2).await;
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());
    consumer.stop().await;
}

#[tokio::test]
async fn the_consumer_recreates_what_a_server_lost() {
    let mut server = NatsServer::start();
    let config = ingest_config(&server);
    let (_hub, mut bob, consumer) = ingest_hub(&server, &config).await;
    server.start_empty();
    let js = jetstream::new(server.client().await);
    // The stream comes back once the consumer noticed; until then a publish
    // has no stream to go to.
    eventually("the ingest stream to be created again", || async {
        js.get_stream(&config.ingest.stream).await.is_ok()
    })
    .await;
    js_publish(
        &js,
        &config.ingest.subject,
        None,
        r#"{"channel":"news:a","data":"again"}"#,
    )
    .await;
    assert_eq!(bob.data().await, "again");
    wait_settled(&js, &config.ingest.stream, &config.ingest.group, 1).await;
    assert!(js
        .get_stream(format!("{}-dead", config.ingest.stream))
        .await
        .is_ok());
    consumer.stop().await;
}

#[tokio::test]
async fn a_dead_letter_subject_inside_the_ingest_stream_is_refused() {
    let server = NatsServer::start();
    let mut config = ingest_config(&server);
    config.ingest.subject = "in.>".into();
    config.ingest.dead_letter = "in.dead".into();
    let hub = TestHub::start(config.clone()).await;
    let e = IngestConsumer::start(hub.hub.clone(), server.client().await, &config.ingest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dead_letter") && e.contains("ingested again"),
        "{e}"
    );
}

async fn upstream_hub(server: &NatsServer) -> (TestHub, HubConfig) {
    let config = config(server);
    let hub = TestHub::start(config.clone()).await;
    let upstream = NatsUpstream::start(server.client().await, &config.upstream)
        .await
        .unwrap();
    hub.hub.set_upstream(std::sync::Arc::new(upstream));
    (hub, config)
}

#[tokio::test]
async fn upstream_publications_are_in_the_stream_with_their_headers() {
    let server = NatsServer::start();
    let (hub, config) = upstream_hub(&server).await;
    let js = jetstream::new(server.client().await);
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "game:1"})).await;
    bob.ok("subscribe", json!({"channel": "orders:1"})).await;

    let r = alice
        .ok(
            "publish",
            json!({"channel": "game:1", "data": {"move": "e4"}}),
        )
        .await;
    assert_eq!(r["upstream"], true, "{r}");
    assert_eq!(bob.data().await, json!({"move": "e4"}));
    let r = alice
        .ok("publish", json!({"channel": "orders:1", "data": [1, 2]}))
        .await;
    assert_eq!(r, json!({"upstream": true}));
    // `only`: not fanned out.
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());

    let stored = stream_messages(&js, &config.upstream.stream).await;
    assert_eq!(stored.len(), 2);
    for (m, (channel, body)) in stored
        .iter()
        .zip([("game:1", r#"{"move":"e4"}"#), ("orders:1", "[1,2]")])
    {
        assert_eq!(m.subject.as_str(), config.upstream.subject);
        assert_eq!(&m.payload[..], body.as_bytes());
        assert_eq!(header(m, "Wshub-Channel").as_deref(), Some(channel));
        assert_eq!(header(m, "Wshub-User").as_deref(), Some("alice"));
        assert_eq!(
            header(m, "Wshub-Client").as_deref(),
            Some(alice.client.as_str())
        );
        let id = header(m, "Nats-Msg-Id").unwrap();
        assert!(id.starts_with(&alice.client), "{id}");
        let time: u64 = header(m, "Wshub-Time").unwrap().parse().unwrap();
        assert!(time > 1_700_000_000_000, "{time}");
    }
    assert_ne!(
        header(&stored[0], "Nats-Msg-Id"),
        header(&stored[1], "Nats-Msg-Id")
    );
    // The stream was created with the configured limit.
    let info = js.get_stream(&config.upstream.stream).await.unwrap();
    assert_eq!(info.cached_info().config.max_messages, 1_000_000);
}

#[tokio::test]
async fn upstream_with_the_server_stopped_is_108() {
    let mut server = NatsServer::start();
    let (hub, config) = upstream_hub(&server).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "game:1"})).await;

    server.stop();
    let code = within(
        "the publish to fail",
        alice.err("publish", json!({"channel": "game:1", "data": 1})),
    )
    .await;
    assert_eq!(code, 108);
    assert_eq!(bob.pending_pushes().await, Vec::<Value>::new());

    // Back up (same store): appends work again once the client reconnected.
    server.start_again();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = alice
            .call("publish", json!({"channel": "game:1", "data": 2}))
            .await;
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(r["error"]["code"], 108, "{r}");
        assert!(attempts < 20, "appends still fail after the restart: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(bob.data().await, 2);
    let js = jetstream::new(server.client().await);
    // The acknowledged publish is stored. (One answered 108 may be stored
    // too: the client sends what it buffered once it reconnects.)
    let stored = stream_messages(&js, &config.upstream.stream).await;
    let bodies: Vec<&[u8]> = stored.iter().map(|m| &m.payload[..]).collect();
    assert!(bodies.contains(&&b"2"[..]), "{bodies:?}");
    assert!(
        bodies.iter().all(|b| *b == b"1" || *b == b"2"),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn an_existing_stream_is_kept_and_the_consumer_follows_the_config() {
    let server = NatsServer::start();
    let mut config = ingest_config(&server);
    let js = jetstream::new(server.client().await);
    // The operator's stream: two subjects and a limit of its own.
    js.create_stream(jetstream::stream::Config {
        name: config.ingest.stream.clone(),
        subjects: vec![config.ingest.subject.clone(), "elsewhere".into()],
        max_messages: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let hub = TestHub::start(config.clone()).await;
    let first = IngestConsumer::start(hub.hub.clone(), server.client().await, &config.ingest)
        .await
        .unwrap();
    first.stop().await;

    // A node started later with other settings updates the consumer.
    config.ingest.claim_idle = Duration::from_secs(3);
    config.ingest.max_deliveries = 4;
    let second = IngestConsumer::start(hub.hub.clone(), server.client().await, &config.ingest)
        .await
        .unwrap();
    let info = consumer_info(&js, &config.ingest.stream, &config.ingest.group).await;
    assert_eq!(info.config.ack_wait, Duration::from_secs(3));
    assert_eq!(info.config.max_deliver, 4);
    let stream = js.get_stream(&config.ingest.stream).await.unwrap();
    assert_eq!(stream.cached_info().config.max_messages, 10);
    assert_eq!(stream.cached_info().config.subjects.len(), 2);
    second.stop().await;

    // A stream that does not capture the subject is refused.
    config.ingest.subject = "not.captured".into();
    let e = IngestConsumer::start(hub.hub.clone(), server.client().await, &config.ingest)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not.captured"), "{e}");
}

#[tokio::test]
async fn upstream_recreates_a_lost_stream() {
    let mut server = NatsServer::start();
    let (hub, config) = upstream_hub(&server).await;
    let mut alice = hub.client("alice").await;
    server.start_empty();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = alice
            .call("publish", json!({"channel": "orders:1", "data": "kept"}))
            .await;
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(r["error"]["code"], 108, "{r}");
        assert!(attempts < 20, "appends still fail: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let js = jetstream::new(server.client().await);
    let stored = stream_messages(&js, &config.upstream.stream).await;
    let bodies: Vec<&[u8]> = stored.iter().map(|m| &m.payload[..]).collect();
    assert!(bodies.contains(&&b"\"kept\""[..]), "{bodies:?}");
}
