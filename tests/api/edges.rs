//! Edges where state could go wrong: the page snapshot under concurrent posts, re-joins, bounded
//! resumes and replays, server-made ids, forwarded addresses, cookies under TLS, and shutdown
//! within its promise.

use crate::helpers::*;
use hubbub::protocol::{Ack, ErrorReply, HistoryGap, Joined, Pong, Welcome};
use hubbub::protocol::{ClientFrame, ErrorCode, ServerFrame};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The `head` the page was rendered with and the seqs of the messages it shows.
fn page_state(html: &str) -> (u64, Vec<u64>) {
    let seqs = html
        .split("data-seq=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    let head = ["\"head\":", "\\\"head\\\":"]
        .iter()
        .find_map(|marker| {
            let rest = html.split(marker).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no head in the page: {}",
                html.chars().take(600).collect::<String>()
            )
        });
    (head, seqs)
}

#[tokio::test]
async fn the_page_reads_its_head_and_messages_in_one_snapshot() {
    let app = spawn_app().await;
    let mut writer = app.rich(0).await;
    let addr = app.addr;
    let writing = tokio::spawn(async move {
        for round in 0..40 {
            send_many(&mut writer, &format!("w{round}"), 25).await;
        }
    });
    let http = reqwest::Client::new();
    let mut checked = 0;
    while !writing.is_finished() {
        let page = http
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("get");
        if page.status() != 200 {
            // A loaded test machine may time a render out; only rendered pages are checked.
            continue;
        }
        let html = page.text().await.expect("body");
        let (head, seqs) = page_state(&html);
        if let Some(&last) = seqs.last() {
            assert_eq!(last, head, "the newest message shown is the head");
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
            checked += 1;
        }
    }
    writing.await.expect("writer");
    assert!(
        checked > 5,
        "only {checked} pages were read during the writes"
    );
}

#[tokio::test]
async fn a_second_join_keeps_the_cursor_whichever_way_it_points() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.post("general", json!({"body": format!("m{i}")})).await;
    }
    let mut ws = app.rich(5).await;
    // Two more arrive while the client asks to join again, from behind and from ahead.
    app.post("general", json!({"body": "m5"})).await;
    app.post("general", json!({"body": "m6"})).await;
    send(
        &mut ws,
        &ClientFrame::Join {
            room: "general".into(),
            after: Some(2),
        },
    )
    .await;
    send(
        &mut ws,
        &ClientFrame::Join {
            room: "general".into(),
            after: Some(100),
        },
    )
    .await;
    let mut seqs = Vec::new();
    let mut joined = 0;
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), next(&mut ws)).await {
        match frame {
            ServerFrame::Message(m) => seqs.push(m.seq),
            ServerFrame::Joined(Joined { .. }) => joined += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, vec![6, 7], "nothing repeated, nothing skipped");
    assert_eq!(joined, 2, "each re-join is answered");
    app.post("general", json!({"body": "m7"})).await;
    assert_eq!(next_message(&mut ws).await.seq, 8);
}

#[tokio::test]
async fn a_hello_resumes_at_most_100_rooms_and_pays_for_each() {
    let app = spawn_app_with(|c| c.message_rate = 20).await;
    let mut ws = app.rich_raw().await;
    let resume: BTreeMap<String, u64> = (0..101).map(|i| (format!("room{i}"), 0)).collect();
    send(&mut ws, &ClientFrame::Hello { resume, user: None }).await;
    match next(&mut ws).await {
        ServerFrame::Error(ErrorReply { code, message, .. }) => {
            assert_eq!(code, ErrorCode::InvalidFrame);
            assert!(message.contains("100"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Refused outright, it cost one: the next frame goes at once.
    send(&mut ws, &ClientFrame::Ping { nonce: Some(1) }).await;
    let t = Instant::now();
    assert_eq!(
        next(&mut ws).await,
        ServerFrame::Pong(Pong { nonce: Some(1) })
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // 100 rooms are allowed, and cost one each (down to a debt of one burst, 40): the next frame
    // waits for 41 tokens at 20 a second.
    let resume: BTreeMap<String, u64> = (0..100).map(|i| (format!("room{i}"), 0)).collect();
    send(&mut ws, &ClientFrame::Hello { resume, user: None }).await;
    send(&mut ws, &ClientFrame::Ping { nonce: Some(2) }).await;
    let t = Instant::now();
    loop {
        match next(&mut ws).await {
            ServerFrame::Pong(Pong { nonce }) => {
                assert_eq!(nonce, Some(2));
                break;
            }
            ServerFrame::Welcome(Welcome { .. }) | ServerFrame::Error(ErrorReply { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_join_that_would_replay_more_than_10000_answers_history_gap() {
    let app = spawn_app().await;
    let mut writer = app.rich(0).await;
    for round in 0..41 {
        send_many(&mut writer, &format!("r{round}"), 250).await;
    }
    let head = 41 * 250;
    let mut far = app.rich_raw().await;
    let mut resume = BTreeMap::new();
    resume.insert("general".to_owned(), 0u64);
    send(&mut far, &ClientFrame::Hello { resume, user: None }).await;
    assert!(matches!(
        next(&mut far).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    assert_eq!(
        next(&mut far).await,
        ServerFrame::HistoryGap(HistoryGap {
            room: "general".into(),
            from: 0
        })
    );
    assert_eq!(
        next(&mut far).await,
        ServerFrame::Joined(Joined {
            room: "general".into(),
            head
        })
    );
    // Live from there.
    app.post("general", json!({"body": "after"})).await;
    assert_eq!(next_message(&mut far).await.seq, head + 1);
    // Near enough, it replays.
    let mut near = app.rich(head - 5).await;
    app.post("general", json!({"body": "again"})).await;
    assert_eq!(next_message(&mut near).await.seq, head + 2);
}

#[tokio::test]
async fn server_made_client_ids_are_uuid_v7() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = app.post("general", json!({"body": "hi"})).await;
        let v: serde_json::Value = r.json().await.expect("json");
        ids.push(v["message"]["client_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(parts[2].starts_with('7'), "version 7: {id}");
    }
    assert!(ids[0] < ids[1], "time-ordered: {ids:?}");
}

#[tokio::test]
async fn behind_chained_proxies_the_client_is_the_nearest_untrusted_address() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.trusted_proxies = vec![
            "127.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        ];
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let attempt = |chain: &'static str| {
        let (http, url, csrf, origin) = (
            ann.http.clone(),
            app.url("/auth/login"),
            ann.csrf.clone(),
            app.origin(),
        );
        async move {
            http.post(url)
                .header("Origin", origin)
                .header("Cookie", format!("hubbub_csrf={csrf}"))
                .header("X-Forwarded-For", chain)
                .form(&[
                    ("username", "ann"),
                    ("password", "wrong"),
                    ("csrf", csrf.as_str()),
                ])
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    // The client 203.0.113.5, through the proxy 10.0.0.2, then the one at 127.0.0.1.
    for _ in 0..4 {
        assert_eq!(attempt("203.0.113.5, 10.0.0.2").await, 303);
    }
    assert_eq!(attempt("203.0.113.5, 10.0.0.2").await, 429);
    // What the client claims left of its own address changes nothing.
    assert_eq!(attempt("192.0.2.1, 203.0.113.5, 10.0.0.2").await, 429);
    // Garbage left of the client's entry is never reached; a port on an entry is dropped.
    assert_eq!(attempt("not-an-address, 203.0.113.5, 10.0.0.2").await, 429);
    assert_eq!(attempt("203.0.113.5:4711, 10.0.0.2").await, 429);
    // Another client behind the same proxy is somebody else.
    assert_eq!(attempt("198.51.100.1, 10.0.0.2").await, 303);
}

#[tokio::test]
async fn with_secure_cookies_they_carry_the_host_prefix_and_pages_the_production_policy() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.secure_cookies = true;
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(app.url("/signup")).send().await.expect("get");
    let csrf_header = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-hubbub_csrf="))
        .expect("a __Host- CSRF cookie")
        .to_owned();
    assert!(
        csrf_header.contains("; Secure")
            && csrf_header.contains("Path=/")
            && !csrf_header.contains("Domain")
    );
    let csrf = set_cookie(&page, "__Host-hubbub_csrf").expect("value");
    let origin = format!("https://{}", app.addr);
    let r = http
        .post(app.url("/auth/signup"))
        .header("Origin", &origin)
        .header("Cookie", format!("__Host-hubbub_csrf={csrf}"))
        .form(&[
            ("username", "ann"),
            ("password", "correct horse battery"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    let session_header = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-hubbub_session="))
        .expect("a __Host- session cookie")
        .to_owned();
    assert!(session_header.contains("; Secure") && session_header.contains("HttpOnly"));
    let session = set_cookie(&r, "__Host-hubbub_session").expect("value");
    // The prefixed cookie is the one that counts; the bare name is ignored.
    assert!(app
        .upgrade(&[
            ("Cookie", format!("__Host-hubbub_session={session}")),
            ("Origin", origin.clone())
        ])
        .await
        .is_ok());
    assert_eq!(
        app.upgrade(&[
            ("Cookie", format!("hubbub_session={session}")),
            ("Origin", origin.clone())
        ])
        .await
        .err(),
        Some(401)
    );
    // The page's policy allows the page's own WebSocket only, not any ws: origin.
    let page = http
        .get(app.url("/"))
        .header("Cookie", format!("__Host-hubbub_session={session}"))
        .send()
        .await
        .expect("get");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("connect-src 'self';"), "{csp}");
    assert!(!csp.contains(" ws:"), "{csp}");
}

#[tokio::test]
async fn shutdown_keeps_its_five_seconds_with_stuck_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &[]);
    // A socket whose client never reads (so never answers the close), and a request whose body
    // never finishes.
    let (stuck, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .expect("connect");
    let mut body = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    body.write_all(b"POST /api/rooms/general/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"body\":")
        .await
        .expect("write");
    let mut readers = Vec::new();
    for _ in 0..5 {
        readers.push(server.rich(0).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.signal("-TERM");
    let exit = server.wait_exit().await;
    let took = started.elapsed();
    println!("shutdown with stuck clients took {took:?}");
    assert!(exit.success(), "clean exit, got {exit:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop((stuck, body, readers));
}

#[tokio::test]
async fn long_messages_are_not_kept_in_memory_once_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let mut writer = server.rich(0).await;
    let mut reader = server.rich(0).await;
    // Warm up the caches (SQLite's, the allocator's) with a first round.
    let body = "🦀".repeat(hubbub::protocol::MAX_BODY_CHARS); // 16 KB
    round(&mut writer, &body, 0, 300).await;
    drain(&mut reader, 300).await;
    let before = server.status_kib("VmRSS");
    // 3,000 more: 48 MB of text, which a feed that kept its last 16,384 commits would hold.
    for tag in 1..=10 {
        round(&mut writer, &body, tag, 300).await;
        drain(&mut reader, 300).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.status_kib("VmRSS");
    println!(
        "3,000 messages of 16 KB through the server: RSS {before} KiB before, {after} KiB after"
    );
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "RSS grew {} KiB",
        after - before
    );
}

/// Sends `n` messages of `body` without waiting, then waits for their acks.
async fn round(ws: &mut Ws, body: &str, tag: usize, n: usize) {
    for i in 0..n {
        send(ws, &send_frame("general", &format!("{tag}-{i}"), body)).await;
    }
    let mut acks = 0;
    while acks < n {
        if let ServerFrame::Ack(Ack { .. }) = next(ws).await {
            acks += 1;
        }
    }
}

/// Reads `n` messages.
async fn drain(ws: &mut Ws, n: usize) {
    for _ in 0..n {
        next_message(ws).await;
    }
}
