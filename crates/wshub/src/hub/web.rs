//! What the hub serves to browsers besides the WebSocket: the client library
//! (`/wshub.js`, from `clients/js/`), the demo chat (`/`), the admin
//! dashboard (`/admin`), the demo's token endpoint (`POST /demo/token`, only
//! with `[demo] enabled = true`) and the admin API the dashboard reads
//! (`/api/admin/stats`, `/api/nodes`).
//!
//! The pages are plain HTML/CSS/JS compiled into the binary, so the hub needs
//! no files and no CDN: they work offline.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::api::{api_error, json_response, op_error, ApiKey, App};
use super::auth::{ClaimsBuilder, Minter};
use super::core::{random_id, Hub, HubInner};
use super::protocol::ErrorCode;

/// Longest demo name, in characters.
const MAX_DEMO_NAME: usize = 32;

/// A file compiled into the binary.
pub(crate) struct Asset {
    pub(crate) path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every static file the hub serves.
pub(crate) const ASSETS: [Asset; 7] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("web/index.html"),
    },
    Asset {
        path: "/chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/chat.js"),
    },
    Asset {
        path: "/chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("web/chat.css"),
    },
    Asset {
        path: "/admin",
        content_type: "text/html; charset=utf-8",
        body: include_str!("web/admin.html"),
    },
    Asset {
        path: "/admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/admin.js"),
    },
    Asset {
        path: "/admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("web/admin.css"),
    },
    Asset {
        path: "/wshub.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../../clients/js/wshub.js"),
    },
];

/// Serves one asset.
pub(crate) fn asset(a: &'static Asset) -> Response {
    let mut res = Response::new(axum::body::Body::from(a.body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // The binary is the version: revalidate rather than cache stale pages.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The demo's token minter, when the demo is on.
pub(crate) fn demo_minter(
    config: &super::config::HubConfig,
    secret: Option<&str>,
) -> Option<Minter> {
    if !config.demo.enabled {
        return None;
    }
    let minter = secret.and_then(|s| Minter::hs256(s.as_bytes()).ok());
    if minter.is_none() {
        tracing::warn!("demo.enabled but no usable auth.hmac_secret: /demo/token is off");
    }
    minter
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTokenBody {
    name: String,
}

#[derive(Serialize)]
struct DemoToken<'a> {
    token: String,
    user: String,
    name: &'a str,
    ws_path: &'a str,
    namespace: &'a str,
}

/// `POST /demo/token`: a token for a visitor-chosen name.
pub(crate) async fn demo_token(State(app): State<App>, body: Bytes) -> Response {
    let inner: &HubInner = &app.hub.inner;
    let Some(minter) = inner.demo_minter.as_ref() else {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            "the demo is off (set [demo] enabled = true)",
        );
    };
    let req: DemoTokenBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("invalid request body: {e} (send {{\"name\":\"Ada\"}})"),
            )
        }
    };
    let name = req.name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_DEMO_NAME || name.chars().any(char::is_control) {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("`name` must be 1 to {MAX_DEMO_NAME} printable characters"),
        );
    }
    let config = &inner.config;
    let user = format!("demo-{}", random_id(8));
    let mut claims = ClaimsBuilder::new(&user)
        .ttl(config.demo.token_ttl)
        .info(serde_json::json!({ "name": name }));
    if let Some(aud) = &config.auth.audience {
        claims = claims.audience(aud);
    }
    if let Some(iss) = &config.auth.issuer {
        claims = claims.issuer(iss);
    }
    let token = match minter.mint(&claims, SystemTime::now()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "demo token minting failed");
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "token minting failed",
            );
        }
    };
    json_response(
        StatusCode::OK,
        &DemoToken {
            token,
            user,
            name,
            ws_path: &config.server.ws_path,
            namespace: &config.demo.namespace,
        },
    )
}

#[derive(Serialize)]
struct Stats<'a> {
    node: &'a str,
    uptime_seconds: u64,
    sessions: usize,
    #[serde(flatten)]
    metrics: super::metrics::MetricsSnapshot,
}

/// `GET /api/admin/stats`: the node's totals (the dashboard derives rates).
pub(crate) async fn admin_stats(State(app): State<App>, _key: ApiKey) -> Response {
    let hub = &app.hub;
    json_response(
        StatusCode::OK,
        &Stats {
            node: &hub.inner.node,
            uptime_seconds: uptime(hub).as_secs(),
            sessions: hub.session_count(),
            metrics: hub.metrics().snapshot(),
        },
    )
}

/// `GET /api/nodes`: the hub's live nodes with their load (the broker's
/// node registry; with the in-memory broker, this node alone).
pub(crate) async fn nodes(State(app): State<App>, _key: ApiKey) -> Response {
    #[derive(Serialize)]
    struct Node {
        #[serde(flatten)]
        info: super::broker::NodeInfo,
        #[serde(rename = "self")]
        this: bool,
    }
    #[derive(Serialize)]
    struct Out {
        nodes: Vec<Node>,
    }
    let hub = &app.hub;
    match hub.nodes().await {
        Ok(list) => {
            let nodes = list
                .into_iter()
                .map(|info| Node {
                    this: info.node == hub.node_id(),
                    info,
                })
                .collect();
            json_response(StatusCode::OK, &Out { nodes })
        }
        Err(e) => op_error(e),
    }
}

fn uptime(hub: &Hub) -> Duration {
    hub.inner.started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_compiled_in_with_a_type() {
        for a in &ASSETS {
            assert!(a.path.starts_with('/'));
            assert!(a.content_type.contains("charset=utf-8"));
        }
        let paths: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        assert!(paths.contains(&"/wshub.js"));
        assert!(paths.contains(&"/admin"));
    }
}
