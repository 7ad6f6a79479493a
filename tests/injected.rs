//! Faults injected into the real binary (built with the test-only `faults` feature): a panic in
//! the store's writer or in the fan-out, and a commit that reports an error although it landed.
//! In each case the server goes on, nothing stored is lost or delivered twice, and `/healthz`
//! says what happened.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::*;
use hubbub::protocol::{Ack, ErrorReply};
use hubbub::protocol::{ClientFrame, ServerFrame};
use serde_json::{json, Value};
use std::time::Duration;

fn start(faults: &str) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &[("HUBBUB_FAULTS", faults)], &[]);
    (dir, server)
}

async fn post(server: &ServerProcess, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/api/rooms/general/messages"))
        .json(&json!({ "body": body }))
        .send()
        .await
        .expect("post")
}

async fn health(server: &ServerProcess) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("health");
    (r.status().as_u16(), r.json().await.expect("json"))
}

#[tokio::test]
async fn a_panic_in_the_writer_fails_its_batch_and_the_writer_goes_on() {
    let (_dir, server) = start("writer-panic=BOOM");
    let mut reader = server.rich(0).await;
    let r = post(&server, "BOOM").await;
    assert_eq!(
        r.status(),
        500,
        "the sender learns it failed, and may retry"
    );
    let r = post(&server, "after").await;
    assert_eq!(r.status(), 201);
    let m = next_message(&mut reader).await;
    assert_eq!((m.seq, m.body.as_str()), (1, "after"));
    let (status, h) = health(&server).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["tasks"]["writer"]["restarts"], 1, "{h}");
    assert_eq!(h["tasks"]["writer"]["running"], true, "{h}");
    assert!(h["tasks"]["writer"]["last_panic"]
        .as_str()
        .is_some_and(|p| p.contains("writer-panic")));
}

#[tokio::test]
async fn a_panic_in_the_fan_out_restarts_it_and_members_resync() {
    let (_dir, server) = start("fanout-panic=FANOUT");
    let mut reader = server.rich(0).await;
    assert_eq!(post(&server, "FANOUT").await.status(), 201, "stored");
    // The fan-out died on it; its successor has members resync, so the message arrives anyway.
    let m = next_message(&mut reader).await;
    assert_eq!((m.seq, m.body.as_str()), (1, "FANOUT"));
    assert_eq!(post(&server, "next").await.status(), 201);
    assert_eq!(next_message(&mut reader).await.seq, 2);
    quiet(&mut reader).await;
    let (status, h) = health(&server).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["tasks"]["fanout"]["restarts"], 1, "{h}");
    assert_eq!(h["tasks"]["fanout"]["running"], true, "{h}");
}

#[tokio::test]
async fn a_commit_reported_failed_that_landed_is_acked_and_delivered_once() {
    let (_dir, server) = start("commit-error=LANDED");
    let mut reader = server.rich(0).await;
    let mut sender = server.rich(0).await;
    send(&mut sender, &send_frame("general", "c-1", "LANDED")).await;
    // What the sender is delivered, in all: each seq once.
    let mut delivered = Vec::new();
    loop {
        match next(&mut sender).await {
            ServerFrame::Ack(Ack { client_id, seq, .. }) => {
                assert_eq!((client_id.as_str(), seq), ("c-1", 1));
                break;
            }
            ServerFrame::Message(m) => delivered.push(m.seq),
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    let m = next_message(&mut reader).await;
    assert_eq!((m.seq, m.body.as_str()), (1, "LANDED"));
    // A resend is the same message, and is not delivered again.
    send(
        &mut sender,
        &ClientFrame::Send {
            room: "general".into(),
            client_id: "c-1".into(),
            body: "LANDED".into(),
            user: None,
            reply_to: None,
        },
    )
    .await;
    loop {
        match next(&mut sender).await {
            ServerFrame::Ack(Ack { client_id, seq, .. }) => {
                assert_eq!(
                    (client_id.as_str(), seq),
                    ("c-1", 1),
                    "acked as the original"
                );
                break;
            }
            ServerFrame::Message(m) => delivered.push(m.seq),
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    assert_eq!(post(&server, "later").await.status(), 201);
    let m = next_message(&mut reader).await;
    assert_eq!((m.seq, m.body.as_str()), (2, "later"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    quiet(&mut reader).await;
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), next(&mut sender)).await
    {
        if let ServerFrame::Message(m) = frame {
            delivered.push(m.seq);
        }
    }
    assert_eq!(delivered, vec![1, 2], "each message once, in order");
    let (status, h) = health(&server).await;
    assert_eq!(
        (status, &h["tasks"]["writer"]["restarts"]),
        (200, &json!(0)),
        "{h}"
    );
}

#[tokio::test]
async fn a_panic_after_the_commit_still_delivers_the_message_once() {
    let (_dir, server) = start("panic-after-commit=COMMITTED");
    let mut reader = server.rich(0).await;
    assert_eq!(post(&server, "first").await.status(), 201);
    assert_eq!(next_message(&mut reader).await.seq, 1);
    let mut sender = server.rich(1).await;
    send(&mut sender, &send_frame("general", "c-9", "COMMITTED")).await;
    // The writer died between the commit and the feed: the sender is not told it is stored...
    loop {
        match next(&mut sender).await {
            ServerFrame::Error(ErrorReply { reference, .. }) => {
                assert_eq!(reference.as_deref(), Some("c-9"));
                break;
            }
            ServerFrame::Message(m) => assert_eq!(m.seq, 2),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // ...but the restarted writer reads back what landed and delivers it, once.
    let m = next_message(&mut reader).await;
    assert_eq!((m.seq, m.body.as_str()), (2, "COMMITTED"));
    // The sender's retry is acked as the original.
    send(&mut sender, &send_frame("general", "c-9", "again")).await;
    loop {
        match next(&mut sender).await {
            ServerFrame::Ack(Ack { client_id, seq, .. }) => {
                assert_eq!((client_id.as_str(), seq), ("c-9", 2));
                break;
            }
            ServerFrame::Message(m) => assert_eq!(m.seq, 2),
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    assert_eq!(post(&server, "third").await.status(), 201);
    assert_eq!(next_message(&mut reader).await.seq, 3);
    quiet(&mut reader).await;
    let (status, h) = health(&server).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["tasks"]["writer"]["restarts"], 1, "{h}");
}
