//! Durable history: acks, paging, resume and idempotent sends.

use crate::helpers::*;
use hubbub::protocol::ServerFrame;
use hubbub::protocol::{Ack, Joined, Welcome};
use serde_json::{json, Value};

#[tokio::test]
async fn an_ack_comes_only_after_the_row_is_stored() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    for i in 0..20 {
        let id = format!("ack-{i}");
        send(&mut ws, &send_frame("general", &id, "durable")).await;
        let seq = loop {
            match next(&mut ws).await {
                ServerFrame::Ack(Ack { client_id, seq, .. }) => {
                    assert_eq!(client_id, id);
                    break seq;
                }
                ServerFrame::Message(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        // Another connection to the database sees the row the moment the ack is in.
        let rows = app.history(&format!("?after={}&limit=1", seq - 1)).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].seq, rows[0].client_id.as_str()),
            (seq, id.as_str())
        );
    }
}

#[tokio::test]
async fn history_pages_both_ways() {
    let app = spawn_app().await;
    for i in 1..=120 {
        let r = app.post("general", json!({"body": format!("m{i}")})).await;
        assert_eq!(r.status(), 201);
    }
    let seqs = |v: Vec<hubbub::protocol::ChatMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    // Default: the newest 50, oldest first.
    assert_eq!(seqs(app.history("").await), (71..=120).collect::<Vec<_>>());
    assert_eq!(
        seqs(app.history("?before=71&limit=50").await),
        (21..=70).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(app.history("?before=21&limit=50").await),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(app.history("?after=100&limit=10").await),
        (101..=110).collect::<Vec<_>>()
    );
    assert_eq!(seqs(app.history("?after=118").await), vec![119, 120]);
    assert!(app.history("?after=120").await.is_empty());
    let page = app.get_json("/api/rooms/general/messages?limit=1").await;
    assert_eq!(page["head"], 120);
}

#[tokio::test]
async fn resume_after_a_dropped_connection_gets_exactly_what_was_missed() {
    let app = spawn_app().await;
    let mut a = app.rich(0).await;
    let mut b = app.rich(0).await;
    send(&mut b, &send_frame("general", "before-1", "seen by a")).await;
    let seen = next_message(&mut a).await;
    assert_eq!(seen.seq, 1);
    // Cut A's TCP connection without a close frame.
    drop(a);
    // Wait for B's acks of the 25 so all are stored.
    assert_eq!(send_many(&mut b, "missed", 25).await.len(), 25);
    let mut a = app.rich_raw().await;
    send_text(&mut a, r#"{"type":"hello","resume":{"general":1}}"#).await;
    assert!(matches!(
        next(&mut a).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    for i in 0..25u64 {
        let m = next_message(&mut a).await;
        assert_eq!((m.seq, m.client_id), (i + 2, format!("missed-{i}")));
    }
    assert_eq!(
        next(&mut a).await,
        ServerFrame::Joined(Joined {
            room: "general".into(),
            head: 26
        })
    );
    // Then live traffic, with nothing repeated.
    send(&mut b, &send_frame("general", "live", "after resume")).await;
    let m = next_message(&mut a).await;
    assert_eq!((m.seq, m.client_id.as_str()), (27, "live"));
    quiet(&mut a).await;
}

#[tokio::test]
async fn a_resent_client_id_is_stored_once_and_acked_each_time() {
    let app = spawn_app().await;
    let mut sender = app.rich(0).await;
    let mut observer = app.rich(0).await;
    for _ in 0..3 {
        send(&mut sender, &send_frame("general", "same-id", "only once")).await;
    }
    let mut acks = Vec::new();
    let mut messages = 0;
    while acks.len() < 3 {
        match next(&mut sender).await {
            ServerFrame::Ack(Ack { seq, client_id, .. }) => {
                assert_eq!(client_id, "same-id");
                acks.push(seq);
            }
            ServerFrame::Message(_) => messages += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acks, vec![1, 1, 1]);
    let m = next_message(&mut observer).await;
    assert_eq!((m.seq, m.body.as_str()), (1, "only once"));
    quiet(&mut observer).await;
    assert!(messages <= 1);
    assert_eq!(app.history("").await.len(), 1);
    // The same over HTTP: a repeat answers 200 with the original.
    let first = app
        .post("general", json!({"body": "x", "client_id": "http-1"}))
        .await;
    assert_eq!(first.status(), 201);
    let again = app
        .post("general", json!({"body": "y", "client_id": "http-1"}))
        .await;
    assert_eq!(again.status(), 200);
    let v: Value = again.json().await.expect("json");
    assert_eq!(
        (v["message"]["seq"].as_u64(), v["message"]["body"].as_str()),
        (Some(2), Some("x"))
    );
}

#[tokio::test]
async fn the_page_is_server_rendered_with_history_as_text() {
    let app = spawn_app().await;
    app.post(
        "general",
        json!({"user": "mallory", "body": "<img src=x onerror=alert(1)>"}),
    )
    .await;
    app.post("general", json!({"user": "ann", "body": "plain words"}))
        .await;
    let html = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(html.contains("plain words"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!html.contains("<img src=x"));
    assert!(
        html.contains("/pkg/hubbub.js"),
        "the hydration script is linked"
    );
    let missing = app
        .http
        .get(app.url("/r/nowhere"))
        .send()
        .await
        .expect("get");
    assert!(missing
        .text()
        .await
        .expect("body")
        .contains("There is no such room."));
}

#[tokio::test]
async fn pages_carry_a_nonce_content_security_policy_and_the_other_headers() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/")).send().await.expect("get");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("csp")
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("'wasm-unsafe-eval'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("nonce")
        .to_owned();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(
            page.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    let html = page.text().await.expect("body");
    assert!(
        html.contains(&format!("nonce=\"{nonce}\"")),
        "the inline scripts carry the nonce"
    );
    // A new nonce for every page.
    let again = app.http.get(app.url("/")).send().await.expect("get");
    let csp2 = again.headers().get("content-security-policy").expect("csp");
    assert_ne!(csp2.to_str().ok(), Some(csp.as_str()));
    // Non-page responses get the strictest policy.
    let api = app.http.get(app.url("/healthz")).send().await.expect("get");
    assert_eq!(
        api.headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok()),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
}
