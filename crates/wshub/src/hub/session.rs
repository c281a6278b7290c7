//! One client session of the `wshub.v1` protocol: the task that reads a
//! connection's commands, checks them against the token and the namespace
//! rules and limits, runs them against the [`Hub`], and replies.
//!
//! Commands of one connection run one after another, in the connection's own
//! task (the library polls the handler inside the connection's driver), so a
//! session needs no locks of its own. Deadlines — `connect` within
//! `connect_timeout`, the token's expiry — and control messages from the hub
//! (an API disconnect, a dropped subscription, shutdown) are waited for next
//! to the next frame.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use wshub_proto::Message;

use super::auth::{AuthError, Claims};
use super::broker::{recover, Audience, HistoryFilter, Recovery};
use super::config::{Access, NamespaceConfig, UpstreamMode};
use super::core::{Control, Finish, Hub, OpError, PublishRequest, SessionEntry, PRESENCE_TTL};
use super::mailbox::{self, Receiver, Sender};
use super::metrics::{DisconnectReason, PublishSource};
use super::protocol::{
    self, ChannelParams, ClientInfo, CommandResult, ConnectParams, ConnectResult, ErrorCode,
    HistoryParams, Method, PresenceResult, PublishParams, PublishResult, RefreshParams,
    RefreshResult, Reply, ReplyError, SubscribeParams, SubscribeResult, SUBPROTOCOL,
};
use super::queue::UpstreamMessage;
use super::ratelimit::TokenBucket;
use crate::close_codes;
use crate::socket::Disconnect;
use crate::WebSocket;

/// Hub close codes not in the library's `close_codes`.
const CLOSE_TOKEN_EXPIRED: u16 = 4003;
const CLOSE_TOO_MANY_REQUESTS: u16 = 4004;
const CLOSE_CONNECT_TIMEOUT: u16 = 4005;
const CLOSE_FORBIDDEN: u16 = 4500;
const CLOSE_BAD_REQUEST: u16 = protocol::CLOSE_BAD_REQUEST;
const CLOSE_SUBPROTOCOL_REQUIRED: u16 = 4502;

/// Runs one connection's session to its end.
pub(crate) async fn run(hub: Hub, mut ws: WebSocket) {
    let metrics = Arc::clone(hub.metrics());
    metrics.connection_opened();
    let reason = if ws.protocol() != Some(SUBPROTOCOL) {
        tracing::info!(
            client_ip = %ws.client_ip(),
            "client did not offer the wshub.v1 subprotocol: closing with 4502"
        );
        Hub::close_with_push(&ws, CLOSE_SUBPROTOCOL_REQUIRED, "subprotocol required");
        while ws.recv().await.is_some() {}
        Some(DisconnectReason::SubprotocolRequired)
    } else {
        let (tx, rx) = mailbox::mailbox();
        let mut session = Session::new(hub.clone(), ws.clone(), tx);
        let reason = session.serve(&mut ws, rx).await;
        Box::pin(session.cleanup()).await;
        reason
    };
    let reason = match reason {
        Some(r) => r,
        None => disconnect_reason(&ws.closed().await),
    };
    metrics.disconnect(reason);
    metrics.connection_closed();
}

fn disconnect_reason(d: &Disconnect) -> DisconnectReason {
    match d {
        Disconnect::PongTimeout => DisconnectReason::PingTimeout,
        Disconnect::WriteStalled => DisconnectReason::WriteStalled,
        Disconnect::SlowConsumer => DisconnectReason::SlowConsumer,
        Disconnect::Io(_) => DisconnectReason::IoError,
        _ => match d.code().0 {
            1000 | 1005 => DisconnectReason::Normal,
            1001 => DisconnectReason::GoingAway,
            1002 => DisconnectReason::ProtocolError,
            1007 => DisconnectReason::InvalidData,
            1009 => DisconnectReason::MessageTooBig,
            _ => DisconnectReason::Other,
        },
    }
}

struct Session {
    hub: Hub,
    ws: WebSocket,
    client: Arc<str>,
    claims: Option<Claims>,
    tags: Arc<BTreeMap<String, String>>,
    subs: HashSet<String>,
    bucket: TokenBucket,
    strikes: u32,
    control: Sender<Control>,
    registered: bool,
    /// The `exp` that `expiry_at` was computed for.
    expiry_for_exp: Option<u64>,
    expiry_at: Option<tokio::time::Instant>,
    /// Client publications appended upstream so far (their ids).
    upstream_seq: u64,
}

/// What the loop does after a command.
enum Next {
    Continue,
    /// The session closed the connection for this reason.
    Stop(DisconnectReason),
}

impl Session {
    fn new(hub: Hub, ws: WebSocket, control: Sender<Control>) -> Session {
        let limits = &hub.config().limits;
        let bucket = TokenBucket::new(limits.command_rate, limits.command_burst, Instant::now());
        let client: Arc<str> = hub.client_id(ws.id()).into();
        Session {
            hub,
            ws,
            client,
            claims: None,
            tags: Arc::new(BTreeMap::new()),
            subs: HashSet::new(),
            bucket,
            strikes: 0,
            control,
            registered: false,
            expiry_for_exp: None,
            expiry_at: None,
            upstream_seq: 0,
        }
    }

    fn close(&self, code: u16, reason: &str) {
        Hub::close_with_push(&self.ws, code, reason);
    }

    async fn serve(
        &mut self,
        ws: &mut WebSocket,
        mut control: Receiver<Control>,
    ) -> Option<DisconnectReason> {
        let limits = &self.hub.config().limits;
        let connect_deadline = tokio::time::Instant::now() + limits.connect_timeout;
        let preauth_max = limits.max_preauth_message_size;
        let metrics = Arc::clone(self.hub.metrics());
        // One timer, reset when its deadline changes (not re-created per
        // frame): the connect deadline until `connect` succeeds, then the
        // token's expiry, if it has one. One `Sleep` is 112 bytes of every
        // session's state for its whole life.
        let timer = tokio::time::sleep_until(connect_deadline);
        tokio::pin!(timer);
        let mut armed = Some(connect_deadline);
        loop {
            let deadline = match self.claims {
                None => Some(connect_deadline),
                Some(_) => self.expiry_deadline(),
            };
            if deadline != armed {
                armed = deadline;
                if let Some(at) = armed {
                    timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                ctl = control.recv() => {
                    if let Next::Stop(r) = Box::pin(self.on_control(ctl)).await {
                        while ws.recv().await.is_some() {}
                        return Some(r);
                    }
                }
                msg = ws.recv() => {
                    let msg = msg?;
                    metrics.message_received(msg.len());
                    let next = match msg {
                        Message::Binary(_) => {
                            tracing::debug!(client = %self.client, "binary frame: closing with 4501");
                            self.close(CLOSE_BAD_REQUEST, "binary frames are not part of wshub.v1");
                            Next::Stop(DisconnectReason::BadRequest)
                        }
                        Message::Text(text) => {
                            if self.claims.is_none() && text.len() > preauth_max {
                                tracing::info!(client_ip = %self.ws.client_ip(), bytes = text.len(), "frame over the pre-connect size cap: closing with 1009");
                                let _ = self.ws.close(wshub_proto::CloseCode::MESSAGE_TOO_BIG, "message too big before connect");
                                Next::Stop(DisconnectReason::MessageTooBig)
                            } else {
                                Box::pin(self.on_text(text.as_str())).await
                            }
                        }
                    };
                    if let Next::Stop(r) = next {
                        while ws.recv().await.is_some() {}
                        return Some(r);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    let reason = if self.claims.is_none() {
                        tracing::info!(client_ip = %self.ws.client_ip(), "no connect in time: closing with 4005");
                        self.close(CLOSE_CONNECT_TIMEOUT, "connect timeout");
                        DisconnectReason::ConnectTimeout
                    } else {
                        tracing::info!(client = %self.client, "token expired without refresh: closing with 4003");
                        self.close(CLOSE_TOKEN_EXPIRED, "token expired");
                        DisconnectReason::TokenExpired
                    };
                    while ws.recv().await.is_some() {}
                    return Some(reason);
                }
            }
        }
    }

    /// When the connection's token expires (plus the verifier's leeway);
    /// recomputed only when the claims change.
    fn expiry_deadline(&mut self) -> Option<tokio::time::Instant> {
        if self.expiry_for_exp != self.claims.as_ref().and_then(|c| c.exp) {
            self.expiry_for_exp = self.claims.as_ref().and_then(|c| c.exp);
            self.expiry_at = self.claims.as_ref().and_then(|claims| {
                let left = claims.time_to_expiry(SystemTime::now())?;
                Some(tokio::time::Instant::now() + left + self.hub.inner.verifier.leeway())
            });
        }
        self.expiry_at
    }

    async fn on_control(&mut self, ctl: Control) -> Next {
        match ctl {
            Control::Disconnect { code, reason } => {
                if code == close_codes::SHUTDOWN.0 {
                    // One line per client would flood the log of a large drain.
                    tracing::debug!(client = %self.client, "draining: closing with 4000");
                } else {
                    tracing::info!(client = %self.client, code, %reason, "disconnected by the server");
                }
                self.close(code, &reason);
                Next::Stop(if code == close_codes::SHUTDOWN.0 {
                    DisconnectReason::Shutdown
                } else {
                    DisconnectReason::DisconnectedByApi
                })
            }
            Control::Dropped { channel } => {
                // The hub already sent the push and removed the subscriber;
                // only the presence entry is left to clean up.
                if self.subs.remove(&channel) {
                    self.leave(&channel).await;
                }
                Next::Continue
            }
            Control::Unsubscribe {
                channel,
                code,
                reason,
                resubscribe,
            } => {
                if self.subs.remove(&channel) {
                    self.leave(&channel).await;
                    let push = protocol::Push::Unsub {
                        channel,
                        code,
                        reason,
                        resubscribe,
                    };
                    let _ = self.ws.send_text(&push.to_json());
                }
                Next::Continue
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Next {
        let cmd = match protocol::parse_command(text) {
            Ok(c) => c,
            Err(e) => {
                return match e.to_reply() {
                    Some(reply) => {
                        self.send_reply(&reply);
                        Next::Continue
                    }
                    None => {
                        tracing::info!(client = %self.client, client_ip = %self.ws.client_ip(), error = %e, "unanswerable frame: closing with 4501");
                        self.close(CLOSE_BAD_REQUEST, &e.to_string());
                        Next::Stop(DisconnectReason::BadRequest)
                    }
                };
            }
        };
        let id = cmd.id;
        self.hub.metrics().command(cmd.method.kind().name());
        if !self.bucket.try_take(Instant::now()) {
            self.strikes += 1;
            if self.strikes > self.hub.config().limits.command_rate_strikes {
                tracing::info!(client = %self.client, client_ip = %self.ws.client_ip(), "command rate exceeded repeatedly: closing with 4004");
                self.close(CLOSE_TOO_MANY_REQUESTS, "too many requests");
                return Next::Stop(DisconnectReason::TooManyRequests);
            }
            self.reply_err(id, OpError::new(ErrorCode::TooManyRequests));
            return Next::Continue;
        }
        if self.claims.is_none() && !matches!(cmd.method, Method::Connect(_)) {
            self.reply_err(
                id,
                OpError::with(ErrorCode::Unauthorized, "send connect first"),
            );
            return Next::Continue;
        }
        let result = match cmd.method {
            Method::Connect(p) => return self.connect(id, p),
            Method::Refresh(p) => return self.refresh(id, p),
            Method::Subscribe(p) => return self.subscribe(id, p).await,
            Method::Unsubscribe(p) => self.unsubscribe(p).await,
            Method::Publish(p) => self.publish(p).await,
            Method::Presence(p) => self.presence(p).await,
            Method::History(p) => self.history(p).await,
            Method::Ping => Ok(CommandResult::Ping),
        };
        match result {
            Ok(r) => self.send_reply(&Reply::ok(id, r)),
            Err(e) => self.reply_err(id, e),
        }
        Next::Continue
    }

    fn send_reply(&self, reply: &Reply) {
        let json = reply.to_json();
        self.hub.metrics().message_sent(json.len());
        let _ = self.ws.send_text(&json);
    }

    fn reply_err(&self, id: u64, e: OpError) {
        self.send_reply(&Reply::error(
            id,
            ReplyError::with_message(e.code, e.message),
        ));
    }

    // -----------------------------------------------------------------------
    // connect / refresh
    // -----------------------------------------------------------------------

    fn connect(&mut self, id: u64, p: ConnectParams) -> Next {
        if self.claims.is_some() {
            self.reply_err(
                id,
                OpError::with(ErrorCode::BadRequest, "already connected"),
            );
            return Next::Continue;
        }
        let now = SystemTime::now();
        match self
            .hub
            .inner
            .verifier
            .authenticate(p.token.as_deref(), now)
        {
            Ok(claims) => {
                let ttl = claims.time_to_expiry(now).map(|d| d.as_secs());
                let limits = &self.hub.config().limits;
                let result = ConnectResult {
                    client: self.client.to_string(),
                    user: claims.sub.clone(),
                    expires: claims.exp,
                    ttl,
                    ping: limits.ping_interval.as_secs() as u32,
                    pong: limits.pong_timeout.as_secs() as u32,
                };
                tracing::debug!(
                    client = %self.client,
                    client_ip = %self.ws.client_ip(),
                    user = %claims.sub,
                    name = p.name.as_deref().unwrap_or(""),
                    version = p.version.as_deref().unwrap_or(""),
                    "connected"
                );
                self.tags = Arc::new(claims.tags.clone());
                self.hub.register_session(
                    self.ws.id(),
                    SessionEntry {
                        user: claims.sub.clone(),
                        control: self.control.clone(),
                    },
                );
                self.registered = true;
                self.claims = Some(claims);
                self.send_reply(&Reply::ok(id, CommandResult::Connect(result)));
                Next::Continue
            }
            Err(e) => self.auth_failed(id, &e),
        }
    }

    fn auth_failed(&mut self, id: u64, e: &AuthError) -> Next {
        tracing::info!(client_ip = %self.ws.client_ip(), error = %e, "authentication failed");
        if e.is_expired() {
            self.reply_err(id, OpError::new(ErrorCode::TokenExpired));
            self.close(CLOSE_TOKEN_EXPIRED, "token expired");
            Next::Stop(DisconnectReason::TokenExpired)
        } else {
            self.reply_err(
                id,
                OpError::with(ErrorCode::Unauthorized, e.client_message()),
            );
            self.close(CLOSE_FORBIDDEN, "forbidden");
            Next::Stop(DisconnectReason::Forbidden)
        }
    }

    fn refresh(&mut self, id: u64, p: RefreshParams) -> Next {
        let now = SystemTime::now();
        match self.hub.inner.verifier.verify(&p.token, now) {
            Ok(claims) => {
                let user = self.claims.as_ref().map(|c| c.sub.as_str()).unwrap_or("");
                if claims.sub != user {
                    tracing::info!(client = %self.client, "refresh with another user's token: closing with 4500");
                    self.reply_err(
                        id,
                        OpError::with(ErrorCode::Unauthorized, "token is for another user"),
                    );
                    self.close(CLOSE_FORBIDDEN, "forbidden");
                    return Next::Stop(DisconnectReason::Forbidden);
                }
                let result = RefreshResult {
                    expires: claims.exp,
                    ttl: claims.time_to_expiry(now).map(|d| d.as_secs()),
                };
                self.tags = Arc::new(claims.tags.clone());
                self.claims = Some(claims);
                self.send_reply(&Reply::ok(id, CommandResult::Refresh(result)));
                Next::Continue
            }
            // An expired replacement: the connection lives on until the
            // current token expires.
            Err(e) if e.is_expired() => {
                self.reply_err(id, OpError::new(ErrorCode::TokenExpired));
                Next::Continue
            }
            Err(e) => self.auth_failed(id, &e),
        }
    }

    // -----------------------------------------------------------------------
    // Permissions
    // -----------------------------------------------------------------------

    fn claims(&self) -> &Claims {
        // Commands other than connect only run after a successful connect.
        static ANON: std::sync::OnceLock<Claims> = std::sync::OnceLock::new();
        self.claims
            .as_ref()
            .unwrap_or_else(|| ANON.get_or_init(Claims::anonymous))
    }

    fn member(&self) -> ClientInfo {
        let c = self.claims();
        ClientInfo {
            client: self.client.to_string(),
            user: c.sub.clone(),
            info: c.info.clone(),
        }
    }

    /// Whether the connection may subscribe to (and read presence and
    /// history of) `channel`.
    fn may_subscribe(&self, channel: &str, ns: &NamespaceConfig) -> Result<(), OpError> {
        let claims = self.claims();
        if let Some((_, owner)) = channel.rsplit_once('#') {
            // A user channel: only its user, whatever the namespace says
            // (except that `none` keeps clients out entirely).
            if ns.subscribe != Access::None && !owner.is_empty() && owner == claims.sub {
                return Ok(());
            }
            return Err(OpError::with(
                ErrorCode::PermissionDenied,
                "this user channel belongs to another user",
            ));
        }
        check_access(ns.subscribe, claims, || claims.can_subscribe(channel))
    }

    fn may_publish(&self, channel: &str, ns: &NamespaceConfig) -> Result<(), OpError> {
        let claims = self.claims();
        if ns.publish == Access::None {
            return Err(OpError::with(
                ErrorCode::NotAvailable,
                "clients cannot publish in this namespace",
            ));
        }
        if let Some((_, owner)) = channel.rsplit_once('#') {
            if owner.is_empty() || owner != claims.sub {
                return Err(OpError::with(
                    ErrorCode::PermissionDenied,
                    "this user channel belongs to another user",
                ));
            }
        }
        check_access(ns.publish, claims, || claims.can_publish(channel))
    }

    // -----------------------------------------------------------------------
    // Channel commands
    // -----------------------------------------------------------------------

    async fn subscribe(&mut self, id: u64, p: SubscribeParams) -> Next {
        if let Err(e) = self.try_subscribe(id, p).await {
            self.reply_err(id, e);
        }
        Next::Continue
    }

    async fn try_subscribe(&mut self, id: u64, p: SubscribeParams) -> Result<(), OpError> {
        let hub = self.hub.clone();
        let channel = p.channel;
        let ns = hub.namespace(&channel)?;
        self.may_subscribe(&channel, ns)?;
        if self.subs.contains(&channel) {
            return Err(OpError::new(ErrorCode::AlreadySubscribed));
        }
        let max = hub.config().limits.max_channels_per_connection;
        if self.subs.len() >= max {
            return Err(OpError::with(
                ErrorCode::LimitExceeded,
                format!("at most {max} channels per connection"),
            ));
        }
        let member = ns.presence.then(|| self.member());
        let handle = hub
            .subscribe_begin(
                &channel,
                ns,
                &self.ws,
                Arc::clone(&self.client),
                Arc::clone(&self.tags),
                member.clone(),
            )
            .await?;
        self.subs.insert(channel.clone());
        let outcome = async {
            if let Some(member) = member {
                hub.broker()
                    .add_presence(&channel, member, PRESENCE_TTL, ns.join_leave)
                    .await?;
            }
            let history_on = ns.history_size > 0 && !ns.history_ttl.is_zero();
            let (position, recovered, publications) = match p.since {
                Some(since) if history_on => {
                    let filter = HistoryFilter {
                        since: Some(since.clone()),
                        limit: Some(ns.recovery_max),
                    };
                    let h = hub.broker().history(&channel, filter).await?;
                    match recover(&since, h) {
                        Recovery::Recovered {
                            publications,
                            position,
                        } => (position, true, publications),
                        Recovery::NotRecoverable { position } => (position, false, Vec::new()),
                    }
                }
                _ => {
                    let filter = HistoryFilter {
                        since: None,
                        limit: Some(0),
                    };
                    let h = hub.broker().history(&channel, filter).await?;
                    (h.position, false, Vec::new())
                }
            };
            Ok::<_, OpError>((position, recovered, publications, history_on))
        }
        .await;
        let (position, recovered, publications, recoverable) = match outcome {
            Ok(x) => x,
            Err(e) => {
                self.subs.remove(&channel);
                self.leave(&channel).await;
                return Err(e);
            }
        };
        let publications = publications
            .into_iter()
            .filter(|p| p.audience.includes(&self.client, &self.tags))
            .map(super::core::to_wire)
            .collect();
        let reply = Reply::ok(
            id,
            CommandResult::Subscribe(SubscribeResult {
                position: position.clone(),
                recoverable,
                recovered,
                publications,
            }),
        );
        let json = reply.to_json();
        let finish = hub.subscribe_finish(&handle, &position, &json);
        if finish != Finish::Gone {
            self.hub.metrics().message_sent(json.len());
        }
        match finish {
            Finish::Live => Ok(()),
            Finish::Overflowed => {
                self.subs.remove(&channel);
                self.leave(&channel).await;
                Ok(())
            }
            Finish::Gone => {
                self.subs.remove(&channel);
                self.leave(&channel).await;
                Err(OpError::with(
                    ErrorCode::Internal,
                    "the channel's stream was interrupted while subscribing; subscribe again",
                ))
            }
        }
    }

    /// Removes this connection from `channel`: the hub's subscriber list and
    /// the channel's presence.
    async fn leave(&self, channel: &str) {
        self.hub.unsubscribe(channel, self.ws.id()).await;
        if let Some(ns) = self.hub.config().namespace(channel) {
            if ns.presence {
                if let Err(e) = self
                    .hub
                    .broker()
                    .remove_presence(channel, &self.client, ns.join_leave)
                    .await
                {
                    tracing::warn!(%channel, error = %e, "presence removal failed");
                }
            }
        }
    }

    async fn unsubscribe(&mut self, p: ChannelParams) -> Result<CommandResult, OpError> {
        if self.subs.remove(&p.channel) {
            self.leave(&p.channel).await;
        }
        Ok(CommandResult::Unsubscribe)
    }

    async fn publish(&mut self, p: PublishParams) -> Result<CommandResult, OpError> {
        let ns = self.hub.namespace(&p.channel)?;
        self.may_publish(&p.channel, ns)?;
        let data = serde_json::to_vec(&p.data)
            .map_err(|e| OpError::with(ErrorCode::BadRequest, e.to_string()))?;
        let info = ClientInfo {
            client: self.client.to_string(),
            user: self.claims().sub.clone(),
            info: None,
        };
        let data = Bytes::from(data);
        let mut result = PublishResult::default();
        if ns.upstream != UpstreamMode::Off {
            super::core::check_size(ns, data.len())?;
            self.upstream_seq += 1;
            let msg = UpstreamMessage {
                id: format!("{}-{}", self.client, self.upstream_seq),
                channel: p.channel.clone(),
                data: data.clone(),
                user: info.user.clone(),
                client: info.client.clone(),
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            };
            self.hub.append_upstream(msg).await?;
            result.upstream = true;
            if ns.upstream == UpstreamMode::Only {
                return Ok(CommandResult::Publish(result));
            }
        }
        let req = PublishRequest {
            data,
            info: Some(info),
            tags: BTreeMap::new(),
            audience: Audience::default(),
            idempotency_key: None,
            source: PublishSource::Client,
        };
        let position = self.hub.publish(&p.channel, req).await?;
        result.offset = Some(position.offset);
        result.epoch = Some(position.epoch);
        Ok(CommandResult::Publish(result))
    }

    async fn presence(&mut self, p: ChannelParams) -> Result<CommandResult, OpError> {
        let ns = self.hub.namespace(&p.channel)?;
        self.may_subscribe(&p.channel, ns)?;
        let members = self.hub.presence(&p.channel).await?;
        Ok(CommandResult::Presence(PresenceResult { members }))
    }

    async fn history(&mut self, p: HistoryParams) -> Result<CommandResult, OpError> {
        let ns = self.hub.namespace(&p.channel)?;
        self.may_subscribe(&p.channel, ns)?;
        let result = self
            .hub
            .history(
                &p.channel,
                p.limit.map(|l| l as usize),
                p.since,
                Some((&self.client, &self.tags)),
            )
            .await?;
        Ok(CommandResult::History(result))
    }

    /// Leaves every channel and unregisters the session.
    async fn cleanup(&mut self) {
        let subs: Vec<String> = self.subs.drain().collect();
        for channel in subs {
            self.leave(&channel).await;
        }
        if self.registered {
            self.hub.unregister_session(self.ws.id());
        }
    }
}

/// Applies a namespace's access rule.
fn check_access(
    access: Access,
    claims: &Claims,
    granted: impl FnOnce() -> bool,
) -> Result<(), OpError> {
    match access {
        Access::All => Ok(()),
        Access::Users if !claims.is_anonymous() => Ok(()),
        Access::Users => Err(OpError::with(
            ErrorCode::PermissionDenied,
            "anonymous clients are not allowed here",
        )),
        Access::Grant if granted() => Ok(()),
        Access::Grant => Err(OpError::with(
            ErrorCode::PermissionDenied,
            "the token does not grant this channel",
        )),
        Access::None => Err(OpError::new(ErrorCode::PermissionDenied)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::hub::config::HubConfig;
    use crate::hub::memory::{MemoryBroker, MemoryBrokerConfig};
    use crate::{Config, Server};

    /// Every hub connection carries its session's future for its whole life
    /// (the server boxes it as the connection's handler): keep it small. It
    /// was 2,112 bytes with a command's state inlined in it, 1,048 with the
    /// commands boxed (they run one at a time and are short), and 936 with
    /// one timer for the connect deadline and the token's expiry instead of
    /// one each (416 of it is the `Session`, 224 of that its claims).
    #[tokio::test]
    async fn a_session_is_small() {
        let server = Server::new(Config::default());
        let registration =
            crate::server::test_registration(&server, "127.0.0.1:40000".parse().unwrap());
        let broker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
        let mut config = HubConfig::default();
        config.auth.allow_anonymous = true;
        let hub = Hub::new(config, broker, Path::new(".")).unwrap();
        let session = run(hub, registration.websocket());
        let size = std::mem::size_of_val(&session);
        eprintln!("session future: {size} bytes");
        assert!(size <= 960, "a hub session's future is {size} bytes");
    }
}
