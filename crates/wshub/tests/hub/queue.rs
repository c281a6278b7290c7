//! The hub's side of the message-queue bridges over real sockets: client
//! publications on upstream namespaces (`also`, `only`, a failing or silent
//! stream, none installed) and [`Hub::ingest`](wshub::hub::Hub::ingest)
//! (published once per idempotency key, bad entries rejected as permanent,
//! broker failures as temporary). The stream here is an in-process recorder;
//! the Redis and NATS streams are tested in their crates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use wshub::hub::broker::BoxFuture;
use wshub::hub::config::{Access, NamespaceConfig, QueueEngine, UpstreamMode};
use wshub::hub::queue::{IngestError, IngestMessage, Upstream, UpstreamError, UpstreamMessage};

use crate::support::*;

/// What the recorder does with an append.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Accept,
    Fail,
    Hang,
}

struct Recorder {
    behaviour: Behaviour,
    got: Mutex<Vec<UpstreamMessage>>,
}

impl Upstream for Recorder {
    fn append<'a>(&'a self, msg: &'a UpstreamMessage) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            match self.behaviour {
                Behaviour::Accept => {
                    self.got.lock().unwrap().push(msg.clone());
                    Ok(())
                }
                Behaviour::Fail => Err(UpstreamError::Unavailable("connection refused".into())),
                Behaviour::Hang => std::future::pending().await,
            }
        })
    }
}

fn upstream_config() -> wshub::hub::config::HubConfig {
    let mut c = config();
    c.upstream.engine = QueueEngine::Redis;
    c.upstream.timeout = Duration::from_millis(300);
    for (name, mode) in [("orders", UpstreamMode::Only), ("game", UpstreamMode::Also)] {
        let ns = NamespaceConfig {
            upstream: mode,
            subscribe: Access::Users,
            publish: Access::Users,
            ..NamespaceConfig::default()
        };
        c.namespaces.insert(name.into(), ns);
    }
    c
}

async fn hub_with(behaviour: Behaviour) -> (TestHub, Arc<Recorder>) {
    let hub = TestHub::start(upstream_config()).await;
    let rec = Arc::new(Recorder {
        behaviour,
        got: Mutex::new(Vec::new()),
    });
    hub.hub.set_upstream(rec.clone());
    (hub, rec)
}

#[tokio::test]
async fn upstream_also_appends_then_fans_out() {
    let (hub, rec) = hub_with(Behaviour::Accept).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "game:1"})).await;
    let r = alice
        .ok(
            "publish",
            json!({"channel": "game:1", "data": {"move": "e4"}}),
        )
        .await;
    assert_eq!(r["upstream"], true, "{r}");
    assert_eq!(r["offset"], 1, "{r}");
    let p = bob.push().await;
    assert_eq!(p["push"], "pub", "{p}");
    assert_eq!(p["data"], json!({"move": "e4"}));

    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].channel, "game:1");
    assert_eq!(&got[0].data[..], br#"{"move":"e4"}"#);
    assert_eq!(got[0].user, "alice");
    assert!(got[0].id.starts_with(&got[0].client), "{:?}", got[0]);
    assert!(got[0].time_ms > 0);
}

#[tokio::test]
async fn upstream_only_appends_without_fan_out() {
    let (hub, rec) = hub_with(Behaviour::Accept).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "orders:1"})).await;
    for i in 0..3 {
        let r = alice
            .ok("publish", json!({"channel": "orders:1", "data": i}))
            .await;
        assert_eq!(r, json!({"upstream": true}));
    }
    // A backend's publish is the first thing bob receives.
    let (s, _) = hub
        .api(
            "/api/publish",
            json!({"channel": "orders:1", "data": "from backend"}),
        )
        .await;
    assert_eq!(s, 200);
    let p = bob.push().await;
    assert_eq!(p["data"], "from backend", "{p}");

    let got = rec.got.lock().unwrap().clone();
    let data: Vec<&[u8]> = got.iter().map(|m| &m.data[..]).collect();
    assert_eq!(data, [&b"0"[..], b"1", b"2"]);
    // Ids are unique per publish.
    assert_ne!(got[0].id, got[1].id);
}

#[tokio::test]
async fn upstream_failure_or_silence_is_108_and_nothing_is_fanned_out() {
    for behaviour in [Behaviour::Fail, Behaviour::Hang] {
        let (hub, _) = hub_with(behaviour).await;
        let mut alice = hub.client("alice").await;
        let mut bob = hub.client("bob").await;
        bob.ok("subscribe", json!({"channel": "game:1"})).await;
        assert_eq!(
            alice
                .err("publish", json!({"channel": "game:1", "data": 1}))
                .await,
            108
        );
        let (s, _) = hub
            .api("/api/publish", json!({"channel": "game:1", "data": 2}))
            .await;
        assert_eq!(s, 200);
        assert_eq!(bob.push().await["data"], 2);
        // The connection stays usable.
        alice.ok("ping", Value::Null).await;
    }
}

#[tokio::test]
async fn upstream_namespace_without_a_stream_is_108() {
    let hub = TestHub::start(upstream_config()).await;
    let mut alice = hub.client("alice").await;
    assert_eq!(
        alice
            .err("publish", json!({"channel": "orders:1", "data": 1}))
            .await,
        108
    );
}

#[test]
fn upstream_namespace_needs_an_upstream_engine() {
    let mut c = upstream_config();
    c.upstream.engine = QueueEngine::Off;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("upstream") && e.contains("upstream.engine"),
        "{e}"
    );
}

#[tokio::test]
async fn ingest_publishes_once_per_idempotency_key() {
    let hub = TestHub::start(config()).await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "news:a"})).await;
    let msg = IngestMessage::from_json(
        br#"{"channel":"news:a","data":{"n":1},"idempotency_key":"stream-1-0"}"#,
    )
    .unwrap();
    let first = hub.hub.ingest(msg.clone()).await.unwrap();
    // A redelivery of the same entry: the same position, nothing delivered.
    let again = hub.hub.ingest(msg).await.unwrap();
    assert_eq!(first, again);
    let second = hub
        .hub
        .ingest(IngestMessage::new("news:a", "2"))
        .await
        .unwrap();
    assert_eq!(second.offset, first.offset + 1);
    assert_eq!(bob.push().await["data"], json!({"n": 1}));
    assert_eq!(bob.push().await["data"], 2);
    assert!(bob.pending_pushes().await.is_empty());
}

#[tokio::test]
async fn ingest_rejects_what_can_never_be_published() {
    let hub = TestHub::start(config()).await;
    let cases: [(IngestMessage, &str); 5] = [
        (IngestMessage::new("a b", "1"), "invalid channel"),
        (IngestMessage::new("nosuchns:x", "1"), "102"),
        (IngestMessage::new("news:a", "{not json"), "not JSON"),
        (
            IngestMessage::new("news:a", format!("\"{}\"", "x".repeat(20_000))),
            "112",
        ),
        (
            IngestMessage {
                idempotency_key: Some(String::new()),
                ..IngestMessage::new("news:a", "1")
            },
            "idempotency_key",
        ),
    ];
    for (msg, want) in cases {
        let e = hub.hub.ingest(msg).await.unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains(want), "{e} lacks {want}");
        assert!(matches!(e, IngestError::Reject(_)));
    }
}
