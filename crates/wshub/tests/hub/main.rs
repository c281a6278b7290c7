//! The hub over real sockets: every `wshub.v1` command, its error codes, the
//! namespace and token permission rules, the limits, and recovery (exact gap
//! filled, not recoverable, epoch change). `api.rs` covers the HTTP API and
//! operations (health, metrics, drain).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
#[path = "../common/mod.rs"]
mod common;
mod in_flight;
mod queue;
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use wshub::hub::auth::ClaimsBuilder;

// ---------------------------------------------------------------------------
// connect
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connect_returns_client_user_ttl_and_heartbeat() {
    let hub = TestHub::start(config()).await;
    let mut c = HubClient::open(&hub).await;
    let r = c
        .ok(
            "connect",
            json!({"token": token("alice"), "name": "test", "version": "1"}),
        )
        .await;
    assert_eq!(r["user"], "alice");
    assert!(r["client"].as_str().unwrap().len() > 8);
    assert!(r["ttl"].as_u64().unwrap() <= 3600);
    assert!(r["expires"].as_u64().is_some());
    assert_eq!(r["ping"], 25);
    assert_eq!(r["pong"], 10);
    // Client ids are unique.
    let other = hub.client("bob").await;
    assert_ne!(other.client, r["client"].as_str().unwrap());
}

#[tokio::test]
async fn bad_token_is_101_then_close_4500() {
    let hub = TestHub::start(config()).await;
    let mut c = HubClient::open(&hub).await;
    assert_eq!(c.err("connect", json!({"token": "not.a.jwt"})).await, 101);
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4500);
    assert_eq!(pushes[0]["push"], "disconnect");
    assert_eq!(pushes[0]["code"], 4500);
    assert_eq!(pushes[0]["reconnect"], false);
}

#[tokio::test]
async fn token_signed_with_another_key_is_refused() {
    let hub = TestHub::start(config()).await;
    let forged = wshub::hub::auth::Minter::hs256(b"another-secret-that-is-32-bytes-long!!")
        .unwrap()
        .mint(&ClaimsBuilder::new("mallory"), std::time::SystemTime::now())
        .unwrap();
    let mut c = HubClient::open(&hub).await;
    assert_eq!(c.err("connect", json!({"token": forged})).await, 101);
    assert_eq!(c.until_closed().await.1, 4500);
}

#[tokio::test]
async fn expired_token_is_109_then_close_4003() {
    let hub = TestHub::start(config()).await;
    let now = std::time::SystemTime::now();
    let claims = ClaimsBuilder::new("alice")
        .ttl(Duration::from_secs(1))
        .build(now - Duration::from_secs(3600));
    let expired = wshub::hub::auth::Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .sign(&claims)
        .unwrap();
    let mut c = HubClient::open(&hub).await;
    assert_eq!(c.err("connect", json!({"token": expired})).await, 109);
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4003);
    assert_eq!(pushes[0]["reconnect"], true);
}

#[tokio::test]
async fn anonymous_needs_configuration() {
    let hub = TestHub::start(config()).await;
    let mut c = HubClient::open(&hub).await;
    assert_eq!(c.err("connect", json!({})).await, 101);
    assert_eq!(c.until_closed().await.1, 4500);

    let mut cfg = config();
    cfg.auth.allow_anonymous = true;
    let hub = TestHub::start(cfg).await;
    let mut c = HubClient::open(&hub).await;
    let r = c.ok("connect", json!({})).await;
    assert_eq!(r["user"], "");
    assert!(r.get("ttl").is_none());
    // Anonymous clients pass `all` namespaces but not `users` ones.
    c.ok("subscribe", json!({"channel": "open:x"})).await;
    assert_eq!(c.err("subscribe", json!({"channel": "chat:x"})).await, 103);
}

#[tokio::test]
async fn commands_before_connect_are_101_and_second_connect_is_107() {
    let hub = TestHub::start(config()).await;
    let mut c = HubClient::open(&hub).await;
    assert_eq!(c.err("subscribe", json!({"channel": "chat:a"})).await, 101);
    assert_eq!(c.err("ping", Value::Null).await, 101);
    c.ok("connect", json!({"token": token("alice")})).await;
    assert_eq!(
        c.err("connect", json!({"token": token("alice")})).await,
        107
    );
    c.ok("ping", Value::Null).await;
}

#[tokio::test]
async fn client_without_the_subprotocol_gets_4502() {
    let hub = TestHub::start(config()).await;
    let mut ws = within("upgrade", wshub::client::connect(&hub.url()))
        .await
        .unwrap();
    let frame = within("push", ws.recv()).await.unwrap();
    let push: Value = serde_json::from_str(&frame.to_string()).unwrap();
    assert_eq!(push["push"], "disconnect");
    assert_eq!(push["code"], 4502);
    let why = closed(&ws).await;
    assert_eq!(why.code().0, 4502);
}

#[tokio::test]
async fn connect_deadline_closes_with_4005() {
    let mut cfg = config();
    cfg.limits.connect_timeout = Duration::from_millis(200);
    let hub = TestHub::start(cfg).await;
    let mut c = HubClient::open(&hub).await;
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4005);
    assert_eq!(pushes[0]["code"], 4005);
}

#[tokio::test]
async fn oversized_frame_before_connect_is_1009() {
    let mut cfg = config();
    cfg.limits.max_preauth_message_size = 200;
    let hub = TestHub::start(cfg).await;
    let mut c = HubClient::open(&hub).await;
    let big = format!(
        r#"{{"id":1,"method":"connect","params":{{"token":"{}"}}}}"#,
        "x".repeat(300)
    );
    c.send_raw(&big);
    assert_eq!(c.until_closed().await.1, 1009);
}

// ---------------------------------------------------------------------------
// Frames that cannot be answered, malformed commands
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unparseable_frame_closes_with_4501() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    c.send_raw("{not json");
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4501);
    assert_eq!(pushes[0]["code"], 4501);
}

#[tokio::test]
async fn binary_frame_closes_with_4501() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    c.ws.send_binary(vec![1u8, 2, 3]).unwrap();
    assert_eq!(c.until_closed().await.1, 4501);
}

#[tokio::test]
async fn malformed_commands_get_104_and_107_naming_the_field() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    c.send_raw(r#"{"id":7,"method":"sub"}"#);
    let r = c.reply(7).await;
    assert_eq!(r["error"]["code"], 104);
    c.send_raw(r#"{"id":8,"method":"subscribe","params":{"chanel":"a"}}"#);
    let r = c.reply(8).await;
    assert_eq!(r["error"]["code"], 107);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("params.chanel"));
    c.send_raw(r#"{"id":9,"method":"subscribe","params":{"channel":"a b"}}"#);
    let r = c.reply(9).await;
    assert_eq!(r["error"]["code"], 107);
    // The connection is still usable.
    c.ok("ping", Value::Null).await;
}

// ---------------------------------------------------------------------------
// subscribe / publish / unsubscribe
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_reaches_subscribers_with_positions_in_order() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    let sub = alice
        .ok("subscribe", json!({"channel": "open:lobby"}))
        .await;
    assert_eq!(sub["position"]["offset"], 0);
    assert_eq!(sub["recoverable"], true);
    assert_eq!(sub["recovered"], false);
    let epoch = sub["position"]["epoch"].as_str().unwrap().to_owned();
    bob.ok("subscribe", json!({"channel": "open:lobby"})).await;

    for i in 1..=3 {
        let pos = bob
            .ok(
                "publish",
                json!({"channel": "open:lobby", "data": {"n": i}}),
            )
            .await;
        assert_eq!(pos["offset"], i);
        assert_eq!(pos["epoch"], epoch);
    }
    for i in 1..=3 {
        let p = alice.push().await;
        assert_eq!(p["push"], "pub");
        assert_eq!(p["channel"], "open:lobby");
        assert_eq!(p["offset"], i);
        assert_eq!(p["epoch"], epoch);
        assert_eq!(p["data"], json!({"n": i}));
        assert_eq!(p["info"]["user"], "bob");
        assert_eq!(p["info"]["client"], bob.client);
    }
    // The publisher, subscribed too, gets its own publications.
    let pushes = bob.pending_pushes().await;
    let pubs: Vec<&Value> = pushes.iter().filter(|p| p["push"] == "pub").collect();
    assert_eq!(pubs.len(), 3);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_idempotent() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    alice.ok("subscribe", json!({"channel": "chat:a"})).await;
    assert_eq!(
        alice.ok("unsubscribe", json!({"channel": "chat:a"})).await,
        json!({})
    );
    assert_eq!(
        alice.ok("unsubscribe", json!({"channel": "chat:a"})).await,
        json!({})
    );
    bob.ok("publish", json!({"channel": "chat:a", "data": 1}))
        .await;
    assert!(alice.pending_pushes().await.is_empty());
    // Subscribing again works.
    alice.ok("subscribe", json!({"channel": "chat:a"})).await;
}

#[tokio::test]
async fn subscribe_errors_102_105_106() {
    let mut cfg = config();
    cfg.limits.max_channels_per_connection = 2;
    let hub = TestHub::start(cfg).await;
    let mut c = hub.client("alice").await;
    assert_eq!(c.err("subscribe", json!({"channel": "nope:x"})).await, 102);
    c.ok("subscribe", json!({"channel": "chat:1"})).await;
    assert_eq!(c.err("subscribe", json!({"channel": "chat:1"})).await, 105);
    c.ok("subscribe", json!({"channel": "chat:2"})).await;
    assert_eq!(c.err("subscribe", json!({"channel": "chat:3"})).await, 106);
    // Per-channel subscriber cap (namespace `small` allows one).
    let mut c2 = hub.client("bob").await;
    let mut c3 = hub.client("carol").await;
    c2.ok("subscribe", json!({"channel": "small:x"})).await;
    assert_eq!(
        c3.err("subscribe", json!({"channel": "small:x"})).await,
        106
    );
    c2.ok("unsubscribe", json!({"channel": "small:x"})).await;
    c3.ok("subscribe", json!({"channel": "small:x"})).await;
}

#[tokio::test]
async fn namespace_and_token_permissions() {
    let hub = TestHub::start(config()).await;
    let mut plain = hub.client("alice").await;
    // `grant`: only with a matching claim.
    assert_eq!(
        plain.err("subscribe", json!({"channel": "vip:room"})).await,
        103
    );
    assert_eq!(
        plain
            .err("publish", json!({"channel": "vip:room", "data": 1}))
            .await,
        103
    );
    assert_eq!(
        plain.err("presence", json!({"channel": "vip:room"})).await,
        103
    );
    assert_eq!(
        plain.err("history", json!({"channel": "vip:room"})).await,
        103
    );
    let granted = token_with(
        ClaimsBuilder::new("vip-user")
            .channel("vip:*")
            .publish("vip:room"),
    );
    let mut vip = HubClient::connected(&hub, Some(&granted)).await;
    vip.ok("subscribe", json!({"channel": "vip:room"})).await;
    vip.ok("publish", json!({"channel": "vip:room", "data": 1}))
        .await;
    assert_eq!(
        vip.err("publish", json!({"channel": "vip:other", "data": 1}))
            .await,
        103
    );
    // `none` publish: clients cannot publish (108), subscribing is fine.
    plain
        .ok("subscribe", json!({"channel": "news:today"}))
        .await;
    assert_eq!(
        plain
            .err("publish", json!({"channel": "news:today", "data": 1}))
            .await,
        108
    );
}

#[tokio::test]
async fn user_channels_belong_to_their_user() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    alice
        .ok("subscribe", json!({"channel": "chat:inbox#alice"}))
        .await;
    assert_eq!(
        bob.err("subscribe", json!({"channel": "chat:inbox#alice"}))
            .await,
        103
    );
    assert_eq!(
        bob.err("publish", json!({"channel": "chat:inbox#alice", "data": 1}))
            .await,
        103
    );
    // A backend delivers to the user's channel.
    let (status, _) = hub
        .api(
            "/api/publish",
            json!({"channel": "chat:inbox#alice", "data": {"note": "hi"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(alice.push().await["data"]["note"], "hi");
}

#[tokio::test]
async fn publication_over_the_namespace_limit_is_112() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    let big = "x".repeat(100);
    assert_eq!(
        c.err("publish", json!({"channel": "small:a", "data": big}))
            .await,
        112
    );
    c.ok("publish", json!({"channel": "small:a", "data": "ok"}))
        .await;
}

// ---------------------------------------------------------------------------
// presence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn presence_and_join_leave() {
    let hub = TestHub::start(config()).await;
    let info_token = token_with(ClaimsBuilder::new("alice").info(json!({"name": "Ada"})));
    let mut alice = HubClient::connected(&hub, Some(&info_token)).await;
    let mut bob = hub.client("bob").await;
    alice.ok("subscribe", json!({"channel": "chat:p"})).await;
    bob.ok("subscribe", json!({"channel": "chat:p"})).await;
    let join = alice.push().await;
    assert_eq!(join["push"], "join");
    assert_eq!(join["member"]["user"], "bob");
    assert_eq!(join["member"]["client"], bob.client);

    let r = bob.ok("presence", json!({"channel": "chat:p"})).await;
    let mut users: Vec<&str> = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    let ada = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "alice")
        .unwrap();
    assert_eq!(ada["info"]["name"], "Ada");

    bob.ok("unsubscribe", json!({"channel": "chat:p"})).await;
    let leave = alice.push().await;
    assert_eq!(leave["push"], "leave");
    assert_eq!(leave["member"]["user"], "bob");
    // A disconnect leaves too.
    bob.ok("subscribe", json!({"channel": "chat:p"})).await;
    assert_eq!(alice.push().await["push"], "join");
    drop(bob);
    assert_eq!(alice.push().await["push"], "leave");
    let r = alice.ok("presence", json!({"channel": "chat:p"})).await;
    assert_eq!(r["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn presence_and_history_off_are_108() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    assert_eq!(c.err("presence", json!({"channel": "bare:x"})).await, 108);
    assert_eq!(c.err("history", json!({"channel": "bare:x"})).await, 108);
    // Without history the subscription is not recoverable.
    let r = c.ok("subscribe", json!({"channel": "bare:x"})).await;
    assert_eq!(r["recoverable"], false);
}

// ---------------------------------------------------------------------------
// history and recovery
// ---------------------------------------------------------------------------

async fn publish_n(c: &mut HubClient, channel: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 0..n {
        let r = c
            .ok("publish", json!({"channel": channel, "data": {"i": i}}))
            .await;
        epoch = r["epoch"].as_str().unwrap().to_owned();
    }
    epoch
}

#[tokio::test]
async fn history_latest_and_paged_since() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    let epoch = publish_n(&mut c, "chat:h", 5).await;
    let r = c
        .ok("history", json!({"channel": "chat:h", "limit": 2}))
        .await;
    assert_eq!(r["position"]["offset"], 5);
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5]);
    let r = c
        .ok(
            "history",
            json!({"channel": "chat:h", "limit": 2, "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
    let r = c
        .ok("history", json!({"channel": "chat:h", "limit": 0}))
        .await;
    assert!(r["publications"].as_array().unwrap().is_empty());
    assert_eq!(
        c.err(
            "history",
            json!({"channel": "chat:h", "since": {"offset": 1, "epoch": "other"}})
        )
        .await,
        111
    );
}

#[tokio::test]
async fn recovery_fills_the_exact_gap() {
    let hub = TestHub::start(config()).await;
    let mut alice = hub.client("alice").await;
    let mut bob = hub.client("bob").await;
    let sub = alice.ok("subscribe", json!({"channel": "chat:r"})).await;
    let epoch = sub["position"]["epoch"].as_str().unwrap().to_owned();
    publish_n(&mut bob, "chat:r", 2).await;
    assert_eq!(alice.push().await["offset"], 1);
    assert_eq!(alice.push().await["offset"], 2);
    // Alice goes away; three more are published; she comes back.
    drop(alice);
    publish_n(&mut bob, "chat:r", 3).await;
    let mut alice = hub.client("alice").await;
    let r = alice
        .ok(
            "subscribe",
            json!({"channel": "chat:r", "since": {"offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["position"]["offset"], 5);
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    // Live pushes continue right after.
    bob.ok("publish", json!({"channel": "chat:r", "data": "next"}))
        .await;
    let p = alice.push().await;
    assert_eq!(p["offset"], 6);
    // Nothing missed: a since at the head recovers nothing.
    let mut carol = hub.client("carol").await;
    let r = carol
        .ok(
            "subscribe",
            json!({"channel": "chat:r", "since": {"offset": 6, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], true);
    assert!(r.get("publications").is_none());
}

#[tokio::test]
async fn recovery_beyond_history_is_not_recoverable() {
    let hub = TestHub::start(config()).await;
    let mut bob = hub.client("bob").await;
    // `small` keeps 3 publications.
    let epoch = publish_n(&mut bob, "small:r", 6).await;
    let mut alice = hub.client("alice").await;
    let r = alice
        .ok(
            "subscribe",
            json!({"channel": "small:r", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["position"]["offset"], 6);
    assert!(r.get("publications").is_none());
}

#[tokio::test]
async fn recovery_from_another_epoch_is_not_recoverable() {
    let hub = TestHub::start(config()).await;
    let mut bob = hub.client("bob").await;
    publish_n(&mut bob, "chat:e", 2).await;
    let mut alice = hub.client("alice").await;
    let r = alice
        .ok(
            "subscribe",
            json!({"channel": "chat:e", "since": {"offset": 1, "epoch": "stale-epoch"}}),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["position"]["offset"], 2);
    assert_ne!(r["position"]["epoch"], "stale-epoch");
}

// ---------------------------------------------------------------------------
// refresh and expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refresh_replaces_the_token() {
    let hub = TestHub::start(config()).await;
    let mut c = hub.client("alice").await;
    let r = c.ok("refresh", json!({"token": token("alice")})).await;
    assert!(r["ttl"].as_u64().unwrap() <= 3600);
    // An already expired replacement: 109, the connection lives on.
    let now = std::time::SystemTime::now();
    let old = ClaimsBuilder::new("alice")
        .ttl(Duration::from_secs(1))
        .build(now - Duration::from_secs(3600));
    let expired = wshub::hub::auth::Minter::hs256(SECRET.as_bytes())
        .unwrap()
        .sign(&old)
        .unwrap();
    assert_eq!(c.err("refresh", json!({"token": expired})).await, 109);
    c.ok("ping", Value::Null).await;
    // Another user's token: 101 and close 4500.
    assert_eq!(
        c.err("refresh", json!({"token": token("mallory")})).await,
        101
    );
    assert_eq!(c.until_closed().await.1, 4500);
}

#[tokio::test]
async fn token_expiry_without_refresh_closes_with_4003() {
    let mut cfg = config();
    cfg.auth.leeway = Duration::ZERO;
    let hub = TestHub::start(cfg).await;
    let short = token_with(ClaimsBuilder::new("alice").ttl(Duration::from_secs(1)));
    let mut c = HubClient::connected(&hub, Some(&short)).await;
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4003);
    assert_eq!(pushes.last().unwrap()["code"], 4003);
}

// ---------------------------------------------------------------------------
// command rate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn command_rate_gives_110_then_4004() {
    let mut cfg = config();
    cfg.limits.command_rate = 0.001;
    cfg.limits.command_burst = 3;
    cfg.limits.command_rate_strikes = 2;
    let hub = TestHub::start(cfg).await;
    let mut c = hub.client("alice").await; // connect takes one token
    c.ok("ping", Value::Null).await;
    c.ok("ping", Value::Null).await;
    assert_eq!(c.err("ping", Value::Null).await, 110);
    assert_eq!(c.err("ping", Value::Null).await, 110);
    c.send_raw(r#"{"id":99,"method":"ping"}"#);
    let (pushes, code) = c.until_closed().await;
    assert_eq!(code, 4004);
    assert_eq!(pushes[0]["code"], 4004);
}

// ---------------------------------------------------------------------------
// Handshake limits: Origin, per-IP caps
// ---------------------------------------------------------------------------

fn upgrade_with(path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![("Sec-WebSocket-Protocol", "wshub.v1")];
    headers.extend_from_slice(extra);
    common::upgrade_request(path, &headers)
}

#[tokio::test]
async fn origin_allow_list_rejects_with_403() {
    let mut cfg = config();
    cfg.server.allowed_origins = vec!["https://app.example.com".into()];
    let hub = TestHub::start(cfg).await;
    let res = http_request(
        hub.addr,
        upgrade_with("/ws", &[("Origin", "https://evil.example.com")]).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 403);
    assert!(res.body.contains("not allowed"), "{}", res.body);
    let res = http_request(
        hub.addr,
        upgrade_with("/ws", &[("Origin", "https://app.example.com")]).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 101);
}

#[tokio::test]
async fn per_ip_connection_cap_is_429() {
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 2;
    let hub = TestHub::start(cfg).await;
    let a = hub.client("a").await;
    let _b = hub.client("b").await;
    let res = http_request(hub.addr, upgrade_with("/ws", &[]).as_bytes()).await;
    assert_eq!(res.status, 429);
    // A slot frees when a connection ends.
    drop(a);
    let mut ok = false;
    for _ in 0..200 {
        let res = http_request(hub.addr, upgrade_with("/ws", &[]).as_bytes()).await;
        if res.status == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was never released");
}

#[tokio::test]
async fn per_ip_handshake_rate_is_429() {
    let mut cfg = config();
    cfg.limits.handshake_rate_per_ip = 0.001;
    cfg.limits.handshake_burst_per_ip = 2;
    let hub = TestHub::start(cfg).await;
    let _a = hub.client("a").await;
    let _b = hub.client("b").await;
    let res = http_request(hub.addr, upgrade_with("/ws", &[]).as_bytes()).await;
    assert_eq!(res.status, 429);
    let metrics = hub.get("/metrics").await.body;
    assert!(
        metrics.contains("wshub_rejects_total{reason=\"handshake_rate\"} 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Slow consumers: per-namespace policy
// ---------------------------------------------------------------------------

/// A subscriber that stops reading: a raw client that connects and
/// subscribes to `channel`, then never reads again.
async fn stalled_subscriber(hub: &TestHub, channel: &str) -> common::RawClient {
    let mut raw =
        common::RawClient::connect_with(hub.addr, "/ws", &[("Sec-WebSocket-Protocol", "wshub.v1")])
            .await;
    let connect = json!({"id": 1, "method": "connect", "params": {"token": token("slow")}});
    raw.send_text(&connect.to_string()).await;
    raw.expect_frame().await;
    let sub = json!({"id": 2, "method": "subscribe", "params": {"channel": channel}});
    raw.send_text(&sub.to_string()).await;
    raw.expect_frame().await;
    raw
}

/// Publishes 16 KB messages until `done` holds for the metrics page (at most
/// 4000 of them, 64 MB); returns the metrics text.
async fn flood_until(hub: &TestHub, channel: &str, done: impl Fn(&str) -> bool) -> String {
    let mut publisher = hub.client("publisher").await;
    let payload = "x".repeat(16 * 1024 - 16);
    for i in 0..4000 {
        publisher
            .ok("publish", json!({"channel": channel, "data": payload}))
            .await;
        if i % 50 == 49 {
            let metrics = hub.get("/metrics").await.body;
            if done(&metrics) {
                return metrics;
            }
        }
    }
    panic!("the queue never overflowed");
}

fn slow_config() -> wshub::hub::config::HubConfig {
    let mut cfg = config();
    cfg.limits.max_queue_bytes = 64 * 1024;
    cfg.limits.write_stall_timeout = Duration::from_secs(60);
    cfg.limits.command_rate = 0.0;
    let lossy = wshub::hub::config::NamespaceConfig {
        slow_consumer: wshub::hub::config::SlowConsumer::DropOldest,
        history_size: 0,
        ..Default::default()
    };
    cfg.namespaces.insert("lossy".into(), lossy);
    cfg
}

#[tokio::test]
async fn slow_consumer_in_a_close_namespace_gets_4001() {
    let hub = TestHub::start(slow_config()).await;
    let mut raw = stalled_subscriber(&hub, "open:flood").await;
    flood_until(&hub, "open:flood", |m| {
        m.contains("wshub_slow_consumers_total 1")
    })
    .await;
    let frames = raw.frames_until_eof().await;
    let close = frames
        .iter()
        .rev()
        .find(|f| f.opcode == 0x8)
        .expect("no close frame");
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        4001
    );
}

#[tokio::test]
async fn slow_consumer_in_a_drop_oldest_namespace_loses_messages_not_the_connection() {
    let hub = TestHub::start(slow_config()).await;
    let mut raw = stalled_subscriber(&hub, "lossy:flood").await;
    let metrics = flood_until(&hub, "lossy:flood", |m| {
        !m.contains("wshub_queue_drops_total 0")
    })
    .await;
    assert!(
        metrics.contains("wshub_slow_consumers_total 0"),
        "{metrics}"
    );
    // Still connected: reading resumes and a ping is answered.
    let ping = json!({"id": 3, "method": "ping"});
    raw.send_text(&ping.to_string()).await;
    within("the ping reply", async {
        loop {
            let f = raw.expect_frame().await;
            if f.opcode == 0x1 && f.payload.starts_with(br#"{"id":3"#) {
                break;
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Message size, client IP behind proxies, wss
// ---------------------------------------------------------------------------

#[tokio::test]
async fn frame_over_the_message_limit_is_1009() {
    let mut cfg = config();
    cfg.limits.max_message_size = 4096;
    cfg.limits.max_preauth_message_size = 4096;
    for ns in cfg.namespaces.values_mut() {
        ns.max_publication_size = 1024;
    }
    cfg.default_namespace.max_publication_size = 1024;
    let hub = TestHub::start(cfg).await;
    let mut c = hub.client("alice").await;
    let big = json!({"id": 5, "method": "publish", "params": {"channel": "chat:a", "data": "x".repeat(5000)}});
    c.send_raw(&big.to_string());
    assert_eq!(c.until_closed().await.1, 1009);
}

#[tokio::test]
async fn per_ip_limits_use_the_forwarded_client_behind_a_trusted_proxy() {
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 1;
    cfg.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let hub = TestHub::start(cfg).await;
    let upgrade = |ip: &'static str| upgrade_with("/ws", &[("X-Forwarded-For", ip)]);
    // Two clients behind the proxy, one connection each: both fit.
    let mut a = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut a, upgrade("203.0.113.1").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut a, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    let res = http_request(hub.addr, upgrade("203.0.113.2").as_bytes()).await;
    assert_eq!(res.status, 101);
    // A second connection of the first client is over its cap.
    let res = http_request(hub.addr, upgrade("203.0.113.1").as_bytes()).await;
    assert_eq!(res.status, 429);
    drop(a);
}

#[tokio::test]
async fn hub_over_wss() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let server_tls = wshub::tls::server_config_from_pem(
        ck.cert.pem().as_bytes(),
        ck.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap();
    let hub = TestHub::start_with_tls(config(), Some(server_tls)).await;
    let client_tls = wshub::tls::client_config_from_ca_pem(
        ck.cert.pem().as_bytes(),
        wshub::tls::PemSource::Memory,
    )
    .unwrap();
    let url = format!("wss://localhost:{}/ws", hub.addr.port());
    let ws = within(
        "the wss upgrade",
        wshub::client::ClientBuilder::new()
            .protocols(["wshub.v1"])
            .tls_config(client_tls)
            .connect(&url),
    )
    .await
    .unwrap();
    let connect = json!({"id": 1, "method": "connect", "params": {"token": token("alice")}});
    ws.send(connect.to_string()).unwrap();
    let mut ws = ws;
    let reply = within("the connect reply", ws.recv()).await.unwrap();
    let reply: Value = serde_json::from_str(&reply.to_string()).unwrap();
    assert_eq!(reply["result"]["user"], "alice");
}
