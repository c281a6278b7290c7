//! The hub's HTTP side, on the same port as its WebSocket endpoint: the
//! backend API (`/api/...`, JSON in and out, an API key in a header), the
//! WebSocket upgrade route with the per-IP and Origin checks, and the
//! operational endpoints `/healthz`, `/readyz` and `/metrics`.
//!
//! `docs/http-api.md` documents every endpoint with examples; the
//! integration tests in `crates/wshub/tests/hub_api.rs` exercise them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::broker::Audience;
use super::core::{Hub, OpError, PublishRequest};
use super::metrics::{PublishSource, RejectReason};
use super::protocol::{self, ErrorCode, Position};
use super::queue::{check_publication_options, PublishBody};
use super::ratelimit::IpLimiter;
use crate::client_ip::{resolve_client_ip, TrustedProxies};
use crate::upgrade::WebSocketUpgrade;
use crate::{Rejection, Server};

/// The most channels one `broadcast` request may name.
pub(crate) const MAX_BROADCAST_CHANNELS: usize = 1000;
/// The largest API request body.
pub(crate) const MAX_API_BODY: usize = 1 << 20;

/// What the routes share.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) hub: Hub,
    pub(crate) server: Server,
    pub(crate) limiter: Arc<IpLimiter>,
    pub(crate) trusted: TrustedProxies,
}

/// Builds the router: the WebSocket route at the configured path, the API,
/// and the health and metrics endpoints.
pub(crate) fn router(app: App) -> Router {
    let ws_path = app.hub.config().server.ws_path.clone();
    let router = Router::new()
        .route(&ws_path, get(ws_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(api_publish))
        .route("/api/broadcast", post(api_broadcast))
        .route("/api/presence", post(api_presence))
        .route("/api/history", post(api_history))
        .route("/api/channels", get(api_channels).post(api_channels))
        .route("/api/disconnect", post(api_disconnect))
        .route("/api/unsubscribe", post(api_unsubscribe))
        .route("/api/admin/stats", get(super::web::admin_stats))
        .route("/api/nodes", get(super::web::nodes))
        .route("/demo/token", post(super::web::demo_token));
    let mut router = router;
    for a in &super::web::ASSETS {
        router = router.route(a.path, get(move || async move { super::web::asset(a) }));
    }
    router
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(app)
}

// ---------------------------------------------------------------------------
// WebSocket route
// ---------------------------------------------------------------------------

async fn ws_route(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, Rejection>,
) -> Response {
    let client_ip = resolve_client_ip(
        peer.ip(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        &app.trusted,
    );
    let metrics = app.hub.metrics();
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rej) => {
            tracing::info!(%client_ip, status = rej.status, reason = %rej.reason, "upgrade rejected");
            metrics.reject(RejectReason::BadHandshake);
            return rej.into_response();
        }
    };
    if app.hub.is_draining() {
        tracing::info!(%client_ip, "upgrade rejected: draining");
        metrics.reject(RejectReason::Draining);
        return Rejection::new(503, "server is shutting down").into_response();
    }
    if let Err(reason) = check_origin(&app.hub.config().server.allowed_origins, upgrade.origin()) {
        tracing::info!(%client_ip, origin = upgrade.origin().unwrap_or(""), "upgrade rejected: {reason}");
        metrics.reject(RejectReason::Origin);
        return Rejection::new(403, reason).into_response();
    }
    let permit = match app.limiter.try_acquire(client_ip, Instant::now()) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%client_ip, error = %e, "upgrade rejected");
            metrics.reject(match e {
                super::ratelimit::IpLimitError::HandshakeRate => RejectReason::HandshakeRate,
                _ => RejectReason::PerIpConnections,
            });
            return Rejection::new(e.status(), e.to_string()).into_response();
        }
    };
    // The permit lives as long as the connection's session.
    let permit = Arc::new(Mutex::new(Some(permit)));
    let hub = app.hub.clone();
    let res = upgrade.on_upgrade(&app.server, move |ws| {
        let hub = hub.clone();
        let permit = permit.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            super::session::run(hub, ws).await;
            drop(permit);
        }
    });
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        tracing::info!(%client_ip, status = res.status().as_u16(), "upgrade rejected");
        metrics.reject(if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            RejectReason::MaxConnections
        } else {
            RejectReason::BadHandshake
        });
    }
    res
}

/// Checks the `Origin` header against the allow-list (empty: no check).
fn check_origin(allowed: &[String], origin: Option<&str>) -> Result<(), String> {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(()),
        Some(o) => Err(format!("origin {o:?} is not allowed")),
        None => Err("an Origin header is required".into()),
    }
}

// ---------------------------------------------------------------------------
// Health and metrics
// ---------------------------------------------------------------------------

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> Response {
    if app.hub.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !app.hub.broker().is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.hub.metrics().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        ErrorCode::BadRequest,
        "no such endpoint",
    )
}

// ---------------------------------------------------------------------------
// API plumbing
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: u16,
    message: &'a str,
}

pub(crate) fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json_response(
        status,
        &ErrorBody {
            error: ErrorInner {
                code: code.code(),
                message,
            },
        },
    )
}

pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The HTTP status for a hub error code.
pub(crate) fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::UnknownChannel => StatusCode::NOT_FOUND,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::UnrecoverablePosition => StatusCode::CONFLICT,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

pub(crate) fn op_error(e: OpError) -> Response {
    api_error(status_for(e.code), e.code, &e.message)
}

/// Checks the API key (`Authorization: apikey KEY` or `X-API-Key: KEY`).
pub(crate) fn authorize(
    app: &App,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), Box<Response>> {
    let Some(expected) = app.hub.config().api.key.as_deref() else {
        return Err(Box::new(api_error(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "the HTTP API is disabled: set api.key (or WSHUB_API_KEY)",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("apikey").then(|| rest.trim())
        })
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
    match given {
        Some(k) if constant_time_eq(k.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => {
            let client_ip: IpAddr = resolve_client_ip(
                peer.ip(),
                headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
                &app.trusted,
            );
            tracing::info!(%client_ip, "API request with a missing or wrong key");
            app.hub.metrics().reject(RejectReason::ApiUnauthorized);
            let mut res = api_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong API key (send `Authorization: apikey KEY`)",
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("apikey"));
            Err(Box::new(res))
        }
    }
}

/// Extractor: the request carries the API key ([`authorize`]); otherwise
/// it is answered with 401 (or 403 when the API is off).
pub(crate) struct ApiKey;

impl FromRequestParts<App> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        authorize(app, &parts.headers, peer)
            .map(|()| ApiKey)
            .map_err(|res| *res)
    }
}

/// Extractor: an API request with the key ([`ApiKey`]) and a JSON body
/// parsed into `T` (400 naming the problem, 413 over [`MAX_API_BODY`], 415
/// for a content type that is not JSON).
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<App> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &App) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        ApiKey::from_request_parts(&mut parts, app).await?;
        let headers = parts.headers.clone();
        let req = Request::from_parts(parts, body);
        let bytes = Bytes::from_request(req, app)
            .await
            .map_err(|rej| api_error(rej.status(), ErrorCode::BadRequest, &rej.body_text()))?;
        parse_body(&headers, &bytes)
            .map(ApiJson)
            .map_err(|res| *res)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body into `T`, answering 400 with the reason (415 when the
/// content type is set and is not JSON).
fn parse_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let json = ct.starts_with("application/json")
            || ct.starts_with("application/x-www-form-urlencoded"); // curl -d default
        if !json {
            return Err(Box::new(api_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest,
                "the body must be JSON (Content-Type: application/json)",
            )));
        }
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("invalid request body: {e}"),
        ))
    })
}

fn check_channel(channel: &str) -> Result<(), Box<Response>> {
    protocol::check_channel(channel).map_err(|reason| {
        Box::new(api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("invalid channel {channel:?}: {reason}"),
        ))
    })
}

// ---------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------

impl PublishBody {
    /// Checks the options' sizes; the error names the field.
    fn check(&self) -> Result<(), Box<Response>> {
        check_publication_options(
            &self.tags,
            self.idempotency_key.as_deref(),
            self.except_client.as_deref(),
            self.filter.as_ref(),
        )
        .map_err(|msg| {
            Box::new(api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &msg,
            ))
        })
    }

    fn request(&self, data: Bytes) -> PublishRequest {
        PublishRequest {
            data,
            info: None,
            tags: self.tags.clone(),
            audience: Audience {
                except_client: self.except_client.clone(),
                filter: self.filter.clone(),
            },
            idempotency_key: self.idempotency_key.clone(),
            source: PublishSource::Api,
        }
    }
}

async fn api_publish(State(app): State<App>, ApiJson(req): ApiJson<PublishBody>) -> Response {
    let Some(channel) = req.channel.as_deref() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "missing field `channel` (use /api/broadcast for several channels)",
        );
    };
    if req.channels.is_some() {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "unknown field `channels` (use /api/broadcast for several channels)",
        );
    }
    if let Err(res) = check_channel(channel).and_then(|()| req.check()) {
        return *res;
    }
    let data = Bytes::copy_from_slice(req.data.get().as_bytes());
    match app.hub.publish(channel, req.request(data)).await {
        Ok(pos) => json_response(StatusCode::OK, &pos),
        Err(e) => op_error(e),
    }
}

#[derive(Serialize)]
struct BroadcastItem {
    channel: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOwned>,
}

#[derive(Serialize)]
struct ErrorOwned {
    code: u16,
    message: String,
}

async fn api_broadcast(State(app): State<App>, ApiJson(req): ApiJson<PublishBody>) -> Response {
    if req.channel.is_some() {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "unknown field `channel` (broadcast takes `channels`, a list)",
        );
    }
    let Some(channels) = req.channels.as_ref() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "missing field `channels`",
        );
    };
    if channels.is_empty() || channels.len() > MAX_BROADCAST_CHANNELS {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!(
                "`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels, found {}",
                channels.len()
            ),
        );
    }
    for c in channels {
        if let Err(res) = check_channel(c) {
            return *res;
        }
    }
    if let Err(res) = req.check() {
        return *res;
    }
    let data = Bytes::copy_from_slice(req.data.get().as_bytes());
    let mut results = Vec::with_capacity(channels.len());
    for channel in channels {
        let r = app.hub.publish(channel, req.request(data.clone())).await;
        results.push(match r {
            Ok(p) => BroadcastItem {
                channel: channel.clone(),
                position: Some(p),
                error: None,
            },
            Err(e) => BroadcastItem {
                channel: channel.clone(),
                position: None,
                error: Some(ErrorOwned {
                    code: e.code.code(),
                    message: e.message,
                }),
            },
        });
    }
    #[derive(Serialize)]
    struct Out {
        results: Vec<BroadcastItem>,
    }
    json_response(StatusCode::OK, &Out { results })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

async fn api_presence(State(app): State<App>, ApiJson(req): ApiJson<ChannelBody>) -> Response {
    if let Err(res) = check_channel(&req.channel) {
        return *res;
    }
    match app.hub.presence(&req.channel).await {
        Ok(members) => json_response(StatusCode::OK, &protocol::PresenceResult { members }),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Position>,
}

async fn api_history(State(app): State<App>, ApiJson(req): ApiJson<HistoryBody>) -> Response {
    if let Err(res) = check_channel(&req.channel) {
        return *res;
    }
    match app
        .hub
        .history(&req.channel, req.limit, req.since, None)
        .await
    {
        Ok(h) => json_response(StatusCode::OK, &h),
        Err(e) => op_error(e),
    }
}

async fn api_channels(State(app): State<App>, _key: ApiKey) -> Response {
    #[derive(Serialize)]
    struct Item {
        channel: String,
        subscribers: usize,
    }
    #[derive(Serialize)]
    struct Out {
        channels: Vec<Item>,
    }
    let channels = match app.hub.cluster_channels().await {
        Ok(c) => c,
        Err(e) => return op_error(e),
    };
    let channels = channels
        .into_iter()
        .map(|(channel, subscribers)| Item {
            channel,
            subscribers,
        })
        .collect();
    json_response(StatusCode::OK, &Out { channels })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

async fn api_disconnect(State(app): State<App>, ApiJson(req): ApiJson<DisconnectBody>) -> Response {
    let code = req.code.unwrap_or(crate::close_codes::DISCONNECTED.0);
    if !(4000..=4999).contains(&code) {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("`code` must be an application close code 4000-4999, found {code}"),
        );
    }
    let reason = req.reason.as_deref().unwrap_or("disconnected");
    if reason.len() > 100 {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "`reason` must be at most 100 bytes",
        );
    }
    let n = match app
        .hub
        .disconnect_user_everywhere(&req.user, code, reason)
        .await
    {
        Ok(n) => n,
        Err(e) => return op_error(e),
    };
    tracing::info!(user = %req.user, code, local_connections = n, "API disconnect");
    #[derive(Serialize)]
    struct Out {
        disconnected: usize,
    }
    json_response(StatusCode::OK, &Out { disconnected: n })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

async fn api_unsubscribe(
    State(app): State<App>,
    ApiJson(req): ApiJson<UnsubscribeBody>,
) -> Response {
    if let Err(res) = check_channel(&req.channel) {
        return *res;
    }
    let n = match app
        .hub
        .unsubscribe_user_everywhere(&req.user, &req.channel, "unsubscribed by the server")
        .await
    {
        Ok(n) => n,
        Err(e) => return op_error(e),
    };
    #[derive(Serialize)]
    struct Out {
        sessions: usize,
    }
    json_response(StatusCode::OK, &Out { sessions: n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        assert!(check_origin(&[], None).is_ok());
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(check_origin(&allowed, Some("https://app.example.com")).is_ok());
        assert!(check_origin(&allowed, Some("https://APP.example.com")).is_ok());
        assert!(check_origin(&allowed, Some("https://evil.example.com")).is_err());
        assert!(check_origin(&allowed, None).is_err());
        assert!(check_origin(&["*".to_owned()], Some("x")).is_ok());
    }

    #[test]
    fn api_key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
