//! The node's one pub/sub connection: which channels it listens to, the task
//! that reads it and delivers events, and reconnection.
//!
//! # How it works
//!
//! * [`Subscriber`] holds the set of channels the hub asked for. The reader
//!   task delivers a message only if its channel is in the set, checked under
//!   the set's lock, so once [`Subscriber::unsubscribe`] has removed a channel
//!   nothing of it is delivered any more, even messages already in flight.
//! * `SUBSCRIBE`/`UNSUBSCRIBE` go through the current connection's command
//!   half, one at a time under an async lock (the reply to a multi-channel
//!   `SUBSCRIBE` is several frames, which the client library does not match
//!   up, and serialising keeps a quick subscribe/unsubscribe of one channel
//!   in order). The lock is also what the reconnect path takes while it
//!   resubscribes, so a subscribe either lands on the new connection or is
//!   part of the resubscription.
//! * The reader task owns the message half. When it ends (the server closed
//!   the connection) or a periodic `PING` goes unanswered, the node is marked
//!   unhealthy, the command half is dropped, and the task reconnects with
//!   exponential backoff and jitter, then resubscribes every channel in the
//!   set before marking the node healthy again. Publications sent while
//!   disconnected are not replayed here: the hub sees the offset gap and
//!   recovers from history.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink};
use redis::Client;
use tokio::task::JoinHandle;
use wshub::hub::broker::{BrokerError, BrokerEvent, EventSink};

use crate::codec;
use crate::config::{broker_error, RedisBrokerConfig};

/// Shared between the broker's methods and the reader task.
pub(crate) struct Subscriber {
    /// The pub/sub channel prefix, `{prefix}:ch:`.
    channel_prefix: String,
    /// The cross-node control channel, `{prefix}:control`; always
    /// subscribed.
    pub(crate) control_channel: String,
    /// Channels (hub names) this node wants events of.
    wanted: Mutex<HashSet<String>>,
    /// The command half of the current connection; `None` while disconnected.
    commands: tokio::sync::Mutex<Option<PubSubSink>>,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    healthy: AtomicBool,
    command_timeout: Duration,
}

impl Subscriber {
    pub(crate) fn new(config: &RedisBrokerConfig) -> Subscriber {
        Subscriber {
            channel_prefix: format!("{}:ch:", config.prefix),
            control_channel: format!("{}:control", config.prefix),
            wanted: Mutex::new(HashSet::new()),
            commands: tokio::sync::Mutex::new(None),
            sink: RwLock::new(None),
            healthy: AtomicBool::new(false),
            command_timeout: config.command_timeout,
        }
    }

    /// The Redis pub/sub channel of hub channel `channel`.
    pub(crate) fn redis_channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.channel_prefix)
    }

    pub(crate) fn set_sink(&self, sink: Arc<dyn EventSink>) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn wanted(&self) -> MutexGuard<'_, HashSet<String>> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes the node to `channel`; events flow once this returns `Ok`.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut commands = self.commands.lock().await;
        let Some(sink) = commands.as_mut() else {
            return Err(BrokerError::Unavailable(
                "redis pub/sub connection is down".to_owned(),
            ));
        };
        self.wanted().insert(channel.to_owned());
        let name = self.redis_channel(channel);
        match tokio::time::timeout(self.command_timeout, sink.subscribe(&name)).await {
            Ok(Ok(())) => Ok(()),
            failed => {
                // Not subscribed after all; the reconnect will not add it.
                self.wanted().remove(channel);
                Err(match failed {
                    Ok(Err(e)) => broker_error(e),
                    _ => BrokerError::Timeout,
                })
            }
        }
    }

    /// Unsubscribes the node from `channel`. Delivery stops at once; the
    /// Redis `UNSUBSCRIBE` is best effort (a dead connection has no
    /// subscriptions, and the reconnect only restores wanted channels).
    pub(crate) async fn unsubscribe(&self, channel: &str) {
        let mut commands = self.commands.lock().await;
        if !self.wanted().remove(channel) {
            return;
        }
        if let Some(sink) = commands.as_mut() {
            let name = self.redis_channel(channel);
            match tokio::time::timeout(self.command_timeout, sink.unsubscribe(&name)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(channel, error = %e, "redis unsubscribe failed"),
                Err(_) => tracing::debug!(channel, "redis unsubscribe timed out"),
            }
        }
    }

    /// Delivers one pub/sub message if its channel is wanted (control
    /// commands always).
    fn handle(&self, redis_channel: &str, payload: &[u8]) {
        if redis_channel == self.control_channel {
            match serde_json::from_slice(payload) {
                Ok(command) => self.deliver(BrokerEvent::Control(command)),
                Err(e) => tracing::warn!(error = %e, "undecodable control command"),
            }
            return;
        }
        let Some(channel) = redis_channel.strip_prefix(&self.channel_prefix) else {
            return;
        };
        // Hold the set's lock while delivering: an unsubscribe waits for an
        // in-progress delivery, and none starts after it.
        let wanted = self.wanted();
        if !wanted.contains(channel) {
            return;
        }
        match codec::decode_message(channel, payload) {
            Ok(event) => {
                let sink = self.sink.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(sink) = sink.as_ref() {
                    sink.deliver(event);
                }
            }
            Err(e) => tracing::warn!(channel, error = %e, "undecodable redis pub/sub message"),
        }
    }

    /// Makes `conn` the current connection and subscribes it to every
    /// wanted channel. Returns the message half when all went well.
    async fn install(&self, conn: PubSub) -> Result<redis::aio::PubSubStream, BrokerError> {
        let (mut sink, stream) = conn.split();
        let mut commands = self.commands.lock().await;
        let channels: Vec<String> = self.wanted().iter().cloned().collect();
        tokio::time::timeout(self.command_timeout, sink.subscribe(&self.control_channel))
            .await
            .map_err(|_| BrokerError::Timeout)?
            .map_err(broker_error)?;
        for channel in &channels {
            let name = self.redis_channel(channel);
            tokio::time::timeout(self.command_timeout, sink.subscribe(&name))
                .await
                .map_err(|_| BrokerError::Timeout)?
                .map_err(broker_error)?;
        }
        *commands = Some(sink);
        self.healthy.store(true, Ordering::Release);
        if !channels.is_empty() {
            tracing::info!(channels = channels.len(), "redis pub/sub resubscribed");
        }
        Ok(stream)
    }

    /// Hands an event of the engine itself (not of a channel) to the sink.
    fn deliver(&self, event: BrokerEvent) {
        let sink = self.sink.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(sink) = sink.as_ref() {
            sink.deliver(event);
        }
    }

    async fn lost(&self) {
        self.healthy.store(false, Ordering::Release);
        *self.commands.lock().await = None;
    }
}

/// Opens a pub/sub connection within `timeout`.
pub(crate) async fn connect(client: &Client, timeout: Duration) -> Result<PubSub, BrokerError> {
    tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| BrokerError::Timeout)?
        .map_err(broker_error)
}

/// Starts the reader task with an already open connection.
pub(crate) async fn start(
    subscriber: Arc<Subscriber>,
    client: Client,
    first: PubSub,
    config: &RedisBrokerConfig,
) -> Result<JoinHandle<()>, BrokerError> {
    let stream = subscriber.install(first).await?;
    let reader = Reader {
        subscriber,
        client,
        connect_timeout: config.connect_timeout,
        min_delay: config.reconnect_min_delay,
        max_delay: config.reconnect_max_delay.max(config.reconnect_min_delay),
        ping_interval: config.ping_interval,
    };
    Ok(tokio::spawn(reader.run(stream)))
}

struct Reader {
    subscriber: Arc<Subscriber>,
    client: Client,
    connect_timeout: Duration,
    min_delay: Duration,
    max_delay: Duration,
    ping_interval: Duration,
}

impl Reader {
    async fn run(self, mut stream: redis::aio::PubSubStream) {
        loop {
            self.read(&mut stream).await;
            self.subscriber.lost().await;
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            stream = self.reconnect().await;
            tracing::info!("redis pub/sub connection restored");
            // Events published while the connection was down are lost: the
            // hub checks its channels' positions and recovers.
            self.subscriber.deliver(BrokerEvent::Resynced);
        }
    }

    /// Reads and delivers messages until the connection is gone.
    async fn read(&self, stream: &mut redis::aio::PubSubStream) {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self
                        .subscriber
                        .handle(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => return,
                },
                _ = ping.tick() => {
                    if !self.ping().await {
                        return;
                    }
                }
            }
        }
    }

    /// Whether the connection answers a `PING` in time. Messages keep
    /// queueing in the client meanwhile; none are lost.
    async fn ping(&self) -> bool {
        let sink = self.subscriber.commands.lock().await.clone();
        let Some(mut sink) = sink else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.subscriber.command_timeout, sink.ping::<redis::Value>())
                .await,
            Ok(Ok(_))
        )
    }

    /// Retries until a connection is open and resubscribed.
    async fn reconnect(&self) -> redis::aio::PubSubStream {
        let mut delay = self.min_delay;
        loop {
            tokio::time::sleep(jitter(delay)).await;
            match connect(&self.client, self.connect_timeout).await {
                Ok(conn) => match self.subscriber.install(conn).await {
                    Ok(stream) => return stream,
                    Err(e) => tracing::warn!(error = %e, "redis resubscribe failed"),
                },
                Err(e) => tracing::debug!(error = %e, "redis pub/sub reconnect failed"),
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1.5).
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half() {
        let base = Duration::from_millis(100);
        for _ in 0..1000 {
            let d = jitter(base);
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }
}
