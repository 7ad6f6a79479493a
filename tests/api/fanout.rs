//! Fan-out: every member gets every message once, in the room's order.

use crate::helpers::*;
use futures_util::future::join_all;
use hubbub::protocol::Ack;
use hubbub::protocol::{ClassicMessage, ServerFrame};
use serde_json::json;

#[tokio::test]
async fn a_message_reaches_all_50_clients() {
    let app = spawn_app().await;
    let mut clients = join_all((0..50).map(|_| app.rich(0))).await;
    send(&mut clients[0], &send_frame("general", "c-1", "hello all")).await;
    for ws in clients.iter_mut() {
        let m = next_message(ws).await;
        assert_eq!(
            (m.seq, m.body.as_str(), m.user.as_str()),
            (1, "hello all", "tester")
        );
    }
}

#[tokio::test]
async fn an_http_post_reaches_every_websocket_client() {
    let app = spawn_app().await;
    let mut rich = join_all((0..5).map(|_| app.rich(0))).await;
    let mut classic = join_all((0..3).map(|_| app.classic("/ws"))).await;
    let r = app
        .post("general", json!({"user": "bot", "body": "from http"}))
        .await;
    assert_eq!(r.status(), 201);
    for ws in rich.iter_mut() {
        let m = next_message(ws).await;
        assert_eq!((m.user.as_str(), m.body.as_str()), ("bot", "from http"));
    }
    for ws in classic.iter_mut() {
        let c: ClassicMessage = serde_json::from_str(&next_text(ws).await).expect("classic");
        assert_eq!(
            c,
            ClassicMessage {
                user: "bot".into(),
                message: "from http".into()
            }
        );
    }
}

#[tokio::test]
async fn ten_concurrent_senders_give_everyone_the_same_gapless_order() {
    let app = spawn_app().await;
    let mut observers = join_all((0..4).map(|_| app.rich(0))).await;
    let senders = join_all((0..10).map(|_| app.rich(0))).await;
    let sending = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| async move {
            for i in 0..100 {
                send(
                    &mut ws,
                    &send_frame("general", &format!("s{s}-{i}"), &format!("{s}/{i}")),
                )
                .await;
            }
            // Every send is acked; the sender also sees all 1,000 messages.
            let mut acks = 0;
            let mut seen = Vec::new();
            while acks < 100 || seen.len() < 1000 {
                match next(&mut ws).await {
                    ServerFrame::Ack(Ack { .. }) => acks += 1,
                    ServerFrame::Message(m) => seen.push((m.seq, m.client_id)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        });
    let sender_views = join_all(sending).await;
    let mut views = Vec::new();
    for ws in observers.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 1000 {
            let m = next_message(ws).await;
            seen.push((m.seq, m.client_id));
        }
        views.push(seen);
    }
    views.extend(sender_views);
    let first = &views[0];
    assert_eq!(
        first.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<u64>>()
    );
    for v in &views {
        assert_eq!(v, first, "every client sees the same order");
    }
    // Each sender's own messages keep their sending order.
    for s in 0..10 {
        let mine: Vec<&String> = first
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.starts_with(&format!("s{s}-")))
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("s{s}-{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn classic_format_round_trips_on_the_root_path() {
    let app = spawn_app().await;
    let mut a = app.classic("/").await;
    let mut b = app.classic("/").await;
    let mut rich = app.rich(0).await;
    send_text(
        &mut a,
        r#"{"user":"alice","message":"hi from the classic client"}"#,
    )
    .await;
    for ws in [&mut a, &mut b] {
        let c: ClassicMessage = serde_json::from_str(&next_text(ws).await).expect("classic");
        assert_eq!(c.user, "alice");
        assert_eq!(c.message, "hi from the classic client");
    }
    let m = next_message(&mut rich).await;
    assert_eq!(
        (m.room.as_str(), m.user.as_str(), m.seq),
        ("general", "alice", 1)
    );
    // A plain GET of the root still gets the page.
    let page = app.http.get(app.url("/")).send().await.expect("get");
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .expect("body")
        .contains("hi from the classic client"));
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_resynced_from_storage_not_skipped() {
    // A queue of one message: the hub overflows this reader's queue as soon as its socket blocks.
    let app = spawn_app_with(|c| c.queue_len = 1).await;
    let mut slow = app.rich(0).await;
    let body = "z".repeat(4_000);
    // 2,000 messages of 4 KB (8 MB) from 8 concurrent posters while `slow` reads nothing, far more
    // than the socket buffers hold, so its connection task blocks and its queue overflows.
    let posters = (0..8).map(|p| {
        let http = app.http.clone();
        let url = app.url("/api/rooms/general/messages");
        let body = body.clone();
        async move {
            for i in 0..250 {
                let r = http
                    .post(&url)
                    .json(&json!({"body": body, "client_id": format!("p{p}-{i}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
        }
    });
    join_all(posters).await;
    for seq in 1..=2000u64 {
        let m = next_message(&mut slow).await;
        assert_eq!(m.seq, seq, "in order, no gap, no duplicate");
    }
    quiet(&mut slow).await;
    let health = app.get_json("/healthz").await;
    assert!(
        health["queue_overflows"].as_u64() > Some(0),
        "the queue did overflow: {health}"
    );
}
