//! Fault injection: cut connections, killed servers, stalled and frozen clients. Nothing acked is
//! ever lost, and a client that comes back gets exactly what it missed.

use crate::helpers::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use hubbub::protocol::{Ack, ErrorReply, HistoryGap, Joined, Pong, Welcome};
use hubbub::protocol::{ClientFrame, ServerFrame};
use serde_json::json;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// Cuts the TCP connection with a reset: no close frame, no FIN handshake.
fn cut(ws: Ws) {
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_zero_linger();
    }
    drop(ws);
}

#[tokio::test]
async fn a_cut_connection_resumes_with_exactly_the_1000_it_missed() {
    let app = spawn_app().await;
    let mut a = app.rich(0).await;
    let mut b = app.rich(0).await;
    send(&mut b, &send_frame("general", "first", "seen")).await;
    assert_eq!(next_message(&mut a).await.seq, 1);
    cut(a);
    let acks = send_many(&mut b, "missed", 1000).await;
    assert_eq!(acks.len(), 1000);
    let mut a = app.rich_raw().await;
    send_text(&mut a, r#"{"type":"hello","resume":{"general":1}}"#).await;
    assert!(matches!(
        next(&mut a).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    for i in 0..1000u64 {
        let m = next_message(&mut a).await;
        assert_eq!((m.seq, m.client_id), (i + 2, format!("missed-{i}")));
    }
    assert!(matches!(
        next(&mut a).await,
        ServerFrame::Joined(Joined { head: 1001, .. })
    ));
    send(&mut b, &send_frame("general", "live", "live")).await;
    assert_eq!(next_message(&mut a).await.seq, 1002);
    quiet(&mut a).await;
}

#[tokio::test]
async fn sigkill_in_a_stream_of_sends_loses_no_acked_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let mut ws = server.rich(0).await;
    // Keep 50 sends in flight; kill the server once 300 are acked.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0usize;
    let mut server = Some(server);
    loop {
        while sent < acked.len() + 50 {
            let frame = send_frame("general", &format!("k-{sent}"), "stream");
            let text = serde_json::to_string(&frame).expect("json");
            if ws.send(Message::text(text)).await.is_err() {
                break;
            }
            sent += 1;
        }
        if acked.len() >= 300 {
            if let Some(s) = server.take() {
                s.signal("-KILL");
                drop(s);
            }
        }
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no stall")
        {
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerFrame::Ack(Ack { client_id, seq, .. })) = serde_json::from_str(&t) {
                    acked.insert(client_id, seq);
                }
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    assert!(acked.len() >= 300);
    // Restart on the same data directory.
    let server = ServerProcess::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "http://{}/api/rooms/general/messages?after={after}&limit=200",
                server.addr
            ))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let batch = page["messages"].as_array().expect("messages").clone();
        if batch.is_empty() {
            break;
        }
        after = batch.last().and_then(|m| m["seq"].as_u64()).expect("seq");
        stored.extend(batch);
    }
    let seqs: Vec<u64> = stored.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    for (client_id, seq) in &acked {
        let m = &stored[(*seq - 1) as usize];
        assert_eq!(
            m["client_id"],
            json!(client_id),
            "acked message {client_id} is stored at {seq}"
        );
    }
    println!(
        "SIGKILL: {} acked of {sent} sent; {} stored after restart",
        acked.len(),
        stored.len()
    );
    // A client resumes from the last seq it saw and gets the rest.
    let last_seen = 200;
    let mut ws = server.rich(last_seen).await;
    send(&mut ws, &send_frame("general", "after-restart", "back")).await;
    assert_eq!(next_message(&mut ws).await.seq, stored.len() as u64 + 1);
    drop(server);
    let url = format!("sqlite://{}", dir.path().join("hubbub.sqlite3").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer_and_nobody_else_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &["--send-timeout", "1s"]);
    let baseline_kib = server.status_kib("VmRSS:");

    // The stalled client: a 4 KiB receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket
        .connect(server.addr.parse().expect("addr"))
        .await
        .expect("connect");
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("hubbub.v1"),
    );
    let (mut stalled, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("handshake");
    let hello = ClientFrame::Hello {
        resume: BTreeMap::from([("general".to_owned(), 0)]),
        user: None,
    };
    stalled
        .send(Message::text(serde_json::to_string(&hello).expect("json")))
        .await
        .expect("hello");

    // 4,000 posts of 3,000 bytes: 12 MB, three times what the kernel buffers of the stalled
    // socket hold, so the server must give up on it; posted in seconds (the server gives a slow
    // consumer a minute to take its close frame, and the test reads it right after posting).
    let mut readers = join_all((0..3).map(|_| server.rich(0))).await;
    let total = 4_000u64;
    let started = Instant::now();
    let posters = (0..8u64).map(|p| {
        let http = reqwest::Client::new();
        let url = format!("http://{}/api/rooms/general/messages", server.addr);
        async move {
            for i in 0..total / 8 {
                let body = json!({"body": format!("message {p}-{i} {}", "x".repeat(3_000)), "client_id": format!("{p}-{i}")});
                let r = http.post(&url).json(&body).send().await.expect("post");
                assert_eq!(r.status(), 201);
            }
        }
    });
    let reading = readers.iter_mut().map(|ws| async move {
        for seq in 1..=total {
            assert_eq!(next_message(ws).await.seq, seq);
        }
    });
    let (_, _) = tokio::join!(join_all(posters), join_all(reading));
    let elapsed = started.elapsed();
    let peak_kib = server.status_kib("VmHWM:");
    let rss_kib = server.status_kib("VmRSS:");
    println!(
        "slow consumer: {total} messages to 3 readers in {:.1} s; server RSS {} KiB at start, {} KiB after, peak {} KiB",
        elapsed.as_secs_f64(),
        baseline_kib,
        rss_kib,
        peak_kib
    );
    assert!(
        peak_kib < 256 * 1024,
        "server memory stayed bounded: peak {peak_kib} KiB"
    );

    // The stalled client now reads what was buffered, then the close that tells it to resume.
    // It does so at once: the server waits a minute for a slow consumer to take its close frame.
    let code = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stalled.next().await {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the stalled client's stream ends");
    assert_eq!(code, Some(4000));

    // A client 4,000 messages behind catches up in bounded batches.
    let started = Instant::now();
    let mut late = server.rich_raw().await;
    send_text(&mut late, r#"{"type":"hello","resume":{"general":0}}"#).await;
    assert!(matches!(
        next(&mut late).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    for seq in 1..=total {
        assert_eq!(next_message(&mut late).await.seq, seq);
    }
    assert!(
        matches!(next(&mut late).await, ServerFrame::Joined(Joined { head, .. }) if head == total)
    );
    println!(
        "catch-up: {total} missed messages replayed in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// Open WebSockets, as the server counts them.
async fn health(app: &TestApp) -> u64 {
    app.get_json("/healthz").await["websockets"]
        .as_u64()
        .expect("count")
}

#[tokio::test]
async fn a_frozen_client_is_closed_within_two_ping_intervals() {
    let interval = Duration::from_millis(400);
    let app = spawn_app_with(|c| c.ping_interval = interval).await;
    assert_eq!(health(&app).await, 0);
    let mut alive = app.rich(0).await;
    let mut frozen = app.rich(0).await;
    assert_eq!(health(&app).await, 2);
    // `frozen` reads nothing from now on, so it never answers a ping; `alive` keeps reading.
    let started = Instant::now();
    let keep_alive = async {
        let mut pongs = 0;
        while started.elapsed() < interval * 4 {
            send_text(&mut alive, r#"{"type":"ping"}"#).await;
            if let ServerFrame::Pong(Pong { .. }) = next(&mut alive).await {
                pongs += 1;
            }
            tokio::time::sleep(interval / 4).await;
        }
        pongs
    };
    assert!(keep_alive.await > 0);
    // By now the frozen one is gone and the live one is still here.
    let deadline = Instant::now() + interval;
    while health(&app).await != 1 {
        assert!(Instant::now() < deadline, "frozen client still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(close_code(&mut frozen).await, 4002);
    send_text(&mut alive, r#"{"type":"ping","nonce":1}"#).await;
    assert_eq!(
        next(&mut alive).await,
        ServerFrame::Pong(Pong { nonce: Some(1) })
    );
}

#[tokio::test]
async fn a_cursor_that_cannot_be_served_gets_an_explicit_answer() {
    let app = spawn_app().await;
    app.post("general", json!({"body": "one"})).await;
    // A cursor past the head (the room's history was reset): history_gap, then live from the head.
    let mut ws = app.rich_raw().await;
    send_text(
        &mut ws,
        r#"{"type":"hello","resume":{"general":999,"gone":5}}"#,
    )
    .await;
    assert!(matches!(
        next(&mut ws).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(next(&mut ws).await);
    }
    assert!(answers.contains(&ServerFrame::HistoryGap(HistoryGap {
        room: "general".into(),
        from: 999
    })));
    assert!(answers.contains(&ServerFrame::Joined(Joined {
        room: "general".into(),
        head: 1
    })));
    assert!(answers.iter().any(|f| matches!(
        f,
        ServerFrame::Error(ErrorReply { code: hubbub::protocol::ErrorCode::UnknownRoom, reference: Some(r), .. }) if r == "gone"
    )));
    app.post("general", json!({"body": "two"})).await;
    assert_eq!(next_message(&mut ws).await.seq, 2);
}
