//! Publications still on their way to a node while a client subscribes
//! there: a cluster engine writes history first and delivers the event to
//! the node later (Redis pub/sub), so a subscribe can read a position that
//! is ahead of what the node has delivered. [`HeldBroker`] makes that window
//! as wide as a test needs: it holds back publication events until released
//! (or drops them, like a lost pub/sub connection).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wshub::hub::broker::{
    BoxFuture, Broker, BrokerError, BrokerEvent, ControlCommand, EventSink, HistoryFilter,
    HistoryResult, NodeInfo, PresenceStats, PublishOptions, StreamPosition,
};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::protocol::ClientInfo;

use crate::support::*;

#[derive(Default)]
struct Held {
    sink: Option<Arc<dyn EventSink>>,
    holding: bool,
    queue: Vec<BrokerEvent>,
}

/// The in-memory broker whose publication events can be held back.
pub(crate) struct HeldBroker {
    inner: MemoryBroker,
    state: Arc<Mutex<Held>>,
}

impl HeldBroker {
    pub(crate) fn new() -> Arc<HeldBroker> {
        let inner = MemoryBroker::new(MemoryBrokerConfig::default());
        let state = Arc::new(Mutex::new(Held::default()));
        let s = Arc::clone(&state);
        inner.set_sink(Arc::new(move |event: BrokerEvent| {
            let mut held = s.lock().unwrap();
            if held.holding && matches!(event, BrokerEvent::Publication { .. }) {
                held.queue.push(event);
                return;
            }
            let sink = held.sink.clone();
            drop(held);
            if let Some(sink) = sink {
                sink.deliver(event);
            }
        }));
        Arc::new(HeldBroker { inner, state })
    }

    /// Publication events wait from now on.
    pub(crate) fn hold(&self) {
        self.state.lock().unwrap().holding = true;
    }

    /// Delivers the waiting events in order (or drops them, `deliver ==
    /// false`) and stops holding.
    pub(crate) fn release(&self, deliver: bool) {
        let (queue, sink) = {
            let mut held = self.state.lock().unwrap();
            held.holding = false;
            (std::mem::take(&mut held.queue), held.sink.clone())
        };
        if let (true, Some(sink)) = (deliver, sink) {
            for event in queue {
                sink.deliver(event);
            }
        }
    }
}

impl Broker for HeldBroker {
    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        self.state.lock().unwrap().sink = Some(sink);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: bytes::Bytes,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        self.inner.publish(channel, data, opts)
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
    ) -> BoxFuture<'a, Result<std::collections::HashMap<String, ClientInfo>, BrokerError>> {
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
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.announce_node(node, ttl)
    }

    fn nodes<'a>(&'a self) -> BoxFuture<'a, Result<Vec<NodeInfo>, BrokerError>> {
        self.inner.nodes()
    }
}

/// Offsets of the `pub` pushes in `pushes`.
fn offsets(pushes: &[serde_json::Value]) -> Vec<u64> {
    pushes
        .iter()
        .filter(|p| p["push"] == "pub")
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

/// Bob subscribes while publication 2 is in history but not yet delivered
/// to the node: his reply starts after 2, and Alice, already subscribed,
/// still gets 2 when it arrives (it is not "already delivered" just because
/// Bob's position is past it), then 3. Found by the CLI's node-kill test: a
/// client moving to a node dropped an in-flight publication for every
/// client already there.
#[tokio::test]
async fn a_subscribe_ahead_of_the_node_does_not_swallow_an_in_flight_publication() {
    let broker = HeldBroker::new();
    let hub = TestHub::start_on(config(), broker.clone(), None).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    let mut carol = hub.client("carol").await;
    alice.ok("subscribe", json!({"channel": "open:f"})).await;
    carol
        .ok("publish", json!({"channel": "open:f", "data": 1}))
        .await;
    assert_eq!(alice.push().await["offset"], 1);

    broker.hold();
    carol
        .ok("publish", json!({"channel": "open:f", "data": 2}))
        .await;
    let r = bob.ok("subscribe", json!({"channel": "open:f"})).await;
    assert_eq!(r["position"]["offset"], 2);
    broker.release(true);
    carol
        .ok("publish", json!({"channel": "open:f", "data": 3}))
        .await;

    let mut a = vec![alice.push().await, alice.push().await];
    a.extend(alice.pending_pushes().await);
    assert_eq!(offsets(&a), [2, 3], "{a:?}");
    let mut b = vec![bob.push().await];
    b.extend(bob.pending_pushes().await);
    assert_eq!(offsets(&b), [3], "{b:?}");
}

/// The same window, but publication 2 never arrives (a lost pub/sub
/// connection): when 3 comes, Alice, who has only 1, is told to resubscribe
/// (111) instead of getting 3 after 1 silently.
#[tokio::test]
async fn a_lost_in_flight_publication_is_a_gap_for_who_missed_it() {
    let broker = HeldBroker::new();
    let hub = TestHub::start_on(config(), broker.clone(), None).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    let mut carol = hub.client("carol").await;
    alice.ok("subscribe", json!({"channel": "open:g"})).await;
    carol
        .ok("publish", json!({"channel": "open:g", "data": 1}))
        .await;
    assert_eq!(alice.push().await["offset"], 1);

    broker.hold();
    carol
        .ok("publish", json!({"channel": "open:g", "data": 2}))
        .await;
    bob.ok("subscribe", json!({"channel": "open:g"})).await;
    broker.release(false);
    carol
        .ok("publish", json!({"channel": "open:g", "data": 3}))
        .await;

    let p = alice.push().await;
    assert_eq!(p["push"], "unsub", "{p}");
    assert_eq!(p["code"], 111);
    assert_eq!(p["resubscribe"], true);
    assert!(alice.pending_pushes().await.is_empty());
}
