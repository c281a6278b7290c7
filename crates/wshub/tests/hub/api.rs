//! The hub's HTTP side over real sockets: the API (key, every endpoint,
//! status codes for bad input, audience: except and tag filters), health,
//! readiness, metrics, and draining on shutdown.

use serde_json::{json, Value};
use wshub::hub::auth::ClaimsBuilder;

use crate::support::*;

#[tokio::test]
async fn api_key_is_required() {
    let hub = TestHub::start(config()).await;
    let body = r#"{"channel":"chat:a","data":1}"#;
    let (status, v) = hub.api_raw("/api/publish", body, None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], 101);
    let (status, _) = hub
        .api_raw("/api/publish", body, Some("wrong-key-wrong-key"))
        .await;
    assert_eq!(status, 401);
    // Without a configured key the API is off.
    let mut cfg = config();
    cfg.api.key = None;
    let off = TestHub::start(cfg).await;
    let (status, v) = off.api_raw("/api/publish", body, Some(API_KEY)).await;
    assert_eq!(status, 403);
    assert!(v["error"]["message"].as_str().unwrap().contains("api.key"));
}

#[tokio::test]
async fn publish_status_codes_for_bad_input() {
    let hub = TestHub::start(config()).await;
    let (s, v) = hub.api_raw("/api/publish", "{nope", Some(API_KEY)).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = hub.api("/api/publish", json!({"data": 1})).await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("channel"));
    let (s, _) = hub
        .api("/api/publish", json!({"channel": "a b", "data": 1}))
        .await;
    assert_eq!(s, 400);
    let (s, v) = hub
        .api(
            "/api/publish",
            json!({"channel": "chat:a", "data": 1, "extra": 2}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("extra"));
    let (s, v) = hub
        .api("/api/publish", json!({"channel": "nope:a", "data": 1}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], 102);
    let (s, v) = hub
        .api(
            "/api/publish",
            json!({"channel": "small:a", "data": "x".repeat(100)}),
        )
        .await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["code"], 112);
    let (s, _) = hub.api("/api/nope", json!({})).await;
    assert_eq!(s, 404);
    // Publication options are bounded and named when wrong.
    for (body, field) in [
        (
            json!({"channel": "chat:a", "data": 1, "idempotency_key": "k".repeat(129)}),
            "idempotency_key",
        ),
        (
            json!({"channel": "chat:a", "data": 1, "except_client": ""}),
            "except_client",
        ),
        (
            json!({"channel": "chat:a", "data": 1, "tags": {"t": "v".repeat(129)}}),
            "tags",
        ),
        (
            json!({"channel": "chat:a", "data": 1, "filter": {"k": vec!["v"; 65]}}),
            "filter",
        ),
    ] {
        let (s, v) = hub.api("/api/publish", body).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (s, _) = hub
        .api(
            "/api/broadcast",
            json!({"channels": ["chat:a"], "data": 1, "tags": many}),
        )
        .await;
    assert_eq!(s, 400);
    // Over the 1 MiB body limit.
    let huge = json!({"channel": "chat:a", "data": "x".repeat(2 << 20)}).to_string();
    let (s, v) = hub.api_raw("/api/publish", &huge, Some(API_KEY)).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], 107);
}

#[tokio::test]
async fn publish_and_broadcast_reach_subscribers() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    alice.ok("subscribe", json!({"channel": "news:a"})).await;
    alice.ok("subscribe", json!({"channel": "news:b"})).await;
    let (s, v) = hub
        .api(
            "/api/publish",
            json!({"channel": "news:a", "data": {"t": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["offset"], 1);
    let p = alice.push().await;
    assert_eq!(p["data"], json!({"t": 1}));
    assert!(
        p.get("info").is_none(),
        "a backend publish has no publisher"
    );

    let (s, v) = hub
        .api(
            "/api/broadcast",
            json!({"channels": ["news:a", "news:b", "nope:c"], "data": "all"}),
        )
        .await;
    assert_eq!(s, 200);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["offset"], 2);
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(results[2]["error"]["code"], 102);
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        got.push(alice.push().await["channel"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["news:a", "news:b"]);
}

#[tokio::test]
async fn idempotency_key_deduplicates_retries() {
    let hub = TestHub::start(config()).await;
    let body = json!({"channel": "news:i", "data": 1, "idempotency_key": "k1"});
    let (_, a) = hub.api("/api/publish", body.clone()).await;
    let (_, b) = hub.api("/api/publish", body).await;
    assert_eq!(a, b);
    let (_, h) = hub.api("/api/history", json!({"channel": "news:i"})).await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn except_client_and_tag_filter_select_the_audience() {
    let hub = TestHub::start(config()).await;
    let eu = token_with(ClaimsBuilder::new("eu-user").tag("region", "eu"));
    let us = token_with(ClaimsBuilder::new("us-user").tag("region", "us"));
    let mut a = HubClient::connected(&hub, Some(&eu)).await;
    let mut b = HubClient::connected(&hub, Some(&us)).await;
    let mut c = hub.client("untagged").await;
    for x in [&mut a, &mut b, &mut c] {
        x.ok("subscribe", json!({"channel": "news:t"})).await;
    }
    // Everyone but `a`.
    let (s, _) = hub
        .api(
            "/api/publish",
            json!({"channel": "news:t", "data": "not-a", "except_client": a.client}),
        )
        .await;
    assert_eq!(s, 200);
    // Only region eu.
    let (s, _) = hub
        .api(
            "/api/publish",
            json!({"channel": "news:t", "data": "eu-only", "filter": {"region": ["eu"]}}),
        )
        .await;
    assert_eq!(s, 200);
    let data = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .filter(|p| p["push"] == "pub")
            .map(|p| p["data"].clone())
            .collect()
    };
    assert_eq!(data(a.pending_pushes().await), [json!("eu-only")]);
    assert_eq!(data(b.pending_pushes().await), [json!("not-a")]);
    assert_eq!(data(c.pending_pushes().await), [json!("not-a")]);
    // History and recovery respect the audience too.
    let h = b.ok("history", json!({"channel": "news:t"})).await;
    let seen: Vec<&Value> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(seen, [&json!("not-a")]);
}

#[tokio::test]
async fn presence_history_and_channels_endpoints() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    alice.ok("subscribe", json!({"channel": "chat:x"})).await;
    alice.ok("subscribe", json!({"channel": "chat:y"})).await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "chat:x"})).await;
    bob.ok("publish", json!({"channel": "chat:x", "data": "m"}))
        .await;

    let (s, v) = hub.api("/api/presence", json!({"channel": "chat:x"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    let (s, v) = hub.api("/api/presence", json!({"channel": "bare:x"})).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 108);

    let (s, v) = hub
        .api("/api/history", json!({"channel": "chat:x", "limit": 10}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["publications"][0]["data"], "m");
    assert_eq!(v["publications"][0]["info"]["user"], "bob");
    let (s, v) = hub
        .api(
            "/api/history",
            json!({"channel": "chat:x", "since": {"offset": 0, "epoch": "zzz"}}),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(v["error"]["code"], 111);

    let res = hub.get("/api/channels").await;
    assert_eq!(res.status, 200);
    let v: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(
        v["channels"],
        json!([
            {"channel": "chat:x", "subscribers": 2},
            {"channel": "chat:y", "subscribers": 1}
        ])
    );
}

#[tokio::test]
async fn disconnect_and_unsubscribe_a_user() {
    let hub = TestHub::start(config()).await;
    let mut alice1 = hub.client("alice").await;
    let mut alice2 = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    bob.ok("subscribe", json!({"channel": "chat:z"})).await;
    let (s, v) = hub
        .api(
            "/api/unsubscribe",
            json!({"user": "bob", "channel": "chat:z"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["sessions"], 1);
    let p = bob.push().await;
    assert_eq!(p["push"], "unsub");
    assert_eq!(p["code"], 103);
    assert_eq!(p["resubscribe"], false);
    // Bob no longer receives the channel.
    hub.api("/api/publish", json!({"channel": "chat:z", "data": 1}))
        .await;
    assert!(bob.pending_pushes().await.is_empty());

    let (s, v) = hub
        .api(
            "/api/disconnect",
            json!({"user": "alice", "reason": "banned"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["disconnected"], 2);
    for c in [&mut alice1, &mut alice2] {
        let (pushes, code) = c.until_closed().await;
        assert_eq!(code, 4503);
        assert_eq!(pushes[0]["push"], "disconnect");
        assert_eq!(pushes[0]["reason"], "banned");
        assert_eq!(pushes[0]["reconnect"], false);
    }
    let (s, _) = hub
        .api("/api/disconnect", json!({"user": "bob", "code": 1000}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let hub = TestHub::start(config()).await;
    assert_eq!(hub.get("/healthz").await.status, 200);
    assert_eq!(hub.get("/readyz").await.status, 200);
    let mut c = hub.client("alice").await;
    c.ok("subscribe", json!({"channel": "chat:m"})).await;
    c.ok("publish", json!({"channel": "chat:m", "data": 1}))
        .await;
    let res = hub.get("/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for needle in [
        "wshub_connections 1",
        "wshub_connections_total 1",
        "wshub_publications_total{source=\"client\"} 1",
        "wshub_publish_duration_seconds_count 1",
        "wshub_subscriptions 1",
        "wshub_commands_total{method=\"subscribe\"} 1",
    ] {
        assert!(
            res.body.contains(needle),
            "missing {needle:?} in\n{}",
            res.body
        );
    }
}

#[tokio::test]
async fn shutdown_drains_with_4000_and_readiness_goes_false() {
    let mut cfg = config();
    cfg.server.drain_batch = 1;
    let mut hub = TestHub::start(cfg).await;
    let mut a = hub.client("a").await;
    let mut b = hub.client("b").await;
    let mut pending = HubClient::open(&hub).await; // never sent connect
    hub.begin_shutdown();
    for c in [&mut a, &mut b, &mut pending] {
        let (pushes, code) = c.until_closed().await;
        assert_eq!(code, 4000);
        assert_eq!(pushes.last().unwrap()["push"], "disconnect");
        assert_eq!(pushes.last().unwrap()["reconnect"], true);
    }
    hub.stop().await;
}

#[tokio::test]
async fn draining_hub_is_not_ready_and_refuses_upgrades() {
    let mut cfg = config();
    cfg.server.drain_timeout = std::time::Duration::from_secs(30);
    let mut hub = TestHub::start(cfg).await;
    // A raw WebSocket that ignores the close keeps the drain going.
    let mut raw = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        crate::common::upgrade_request("/ws", &[("Sec-WebSocket-Protocol", "wshub.v1")]).as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 256];
    let _ = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
        .await
        .unwrap();
    hub.begin_shutdown();
    let mut ready = 200;
    for _ in 0..500 {
        ready = hub.get("/readyz").await.status;
        if ready == 503 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(ready, 503);
    assert_eq!(hub.get("/healthz").await.status, 200);
    let res = http_request(
        hub.addr,
        crate::common::upgrade_request("/ws", &[("Sec-WebSocket-Protocol", "wshub.v1")]).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 503);
    drop(raw);
}

#[tokio::test]
async fn pages_and_the_client_library_are_served() {
    let hub = TestHub::start(config()).await;
    for (path, ty) in [
        ("/", "text/html"),
        ("/admin", "text/html"),
        ("/wshub.js", "text/javascript"),
        ("/chat.js", "text/javascript"),
        ("/admin.css", "text/css"),
    ] {
        let res = hub.get(path).await;
        assert_eq!(res.status, 200, "{path}");
        assert!(
            res.header("content-type").unwrap().starts_with(ty),
            "{path}"
        );
    }
}

#[tokio::test]
async fn demo_tokens_only_when_enabled() {
    let hub = TestHub::start(config()).await;
    let (s, _) = hub.api("/demo/token", json!({"name": "Ada"})).await;
    assert_eq!(s, 404);

    let mut cfg = config();
    cfg.demo.enabled = true;
    let hub = TestHub::start(cfg).await;
    let (s, v) = hub.api_raw("/demo/token", r#"{"name":"Ada"}"#, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "Ada");
    assert_eq!(v["namespace"], "chat");
    assert_eq!(v["ws_path"], "/ws");
    let user = v["user"].as_str().unwrap();
    assert!(user.starts_with("demo-"));
    // The token works, and presence shows the chosen name.
    let mut c = HubClient::connected(&hub, v["token"].as_str()).await;
    c.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    let p = c.ok("presence", json!({"channel": "chat:lobby"})).await;
    assert_eq!(p["members"][0]["info"]["name"], "Ada");
    assert_eq!(p["members"][0]["user"], user);
    for bad in [r#"{"name":""}"#, r#"{"name":"   "}"#, r#"{"nom":"x"}"#] {
        let (s, _) = hub.api_raw("/demo/token", bad, None).await;
        assert_eq!(s, 400, "{bad}");
    }
    let long = json!({"name": "x".repeat(33)}).to_string();
    assert_eq!(hub.api_raw("/demo/token", &long, None).await.0, 400);
}

#[tokio::test]
async fn admin_stats_and_nodes() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    c.ok("subscribe", json!({"channel": "chat:s"})).await;
    c.ok("publish", json!({"channel": "chat:s", "data": 1}))
        .await;
    let res = hub.get("/api/admin/stats").await;
    assert_eq!(res.status, 200);
    let v: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(v["connections"], 1);
    assert_eq!(v["sessions"], 1);
    assert_eq!(v["channels"], 1);
    assert_eq!(v["subscriptions"], 1);
    assert_eq!(v["publications"]["client"], 1);
    assert_eq!(v["disconnects"]["normal"], 0);
    assert!(v["node"].as_str().unwrap().len() >= 8);
    let res = hub.get("/api/nodes").await;
    let n: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(n["nodes"].as_array().unwrap().len(), 1, "{n}");
    assert_eq!(n["nodes"][0]["connections"], 1);
    assert_eq!(n["nodes"][0]["subscriptions"], 1);
    assert_eq!(n["nodes"][0]["self"], true);
    // Both need the key.
    let req = "GET /api/admin/stats HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(http_request(hub.addr, req.as_bytes()).await.status, 401);
}
