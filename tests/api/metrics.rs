//! The metrics listener of the real binary, scraped after known traffic: every count is the
//! traffic's, and nothing of it is served on the public port.

use crate::helpers::*;
use futures_util::SinkExt;
use hubbub::protocol::{ClientFrame, ServerFrame};
use std::collections::BTreeMap;
use tokio_tungstenite::tungstenite::Message;

/// The series of an exposition: `name{label="value",…}` (labels sorted) → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

/// The value of a series, 0 when it is absent (a labelled counter not yet counted).
fn get(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        l.sort_unstable();
        format!("{name}{{{}}}", l.join(","))
    };
    m.get(&key).copied().unwrap_or(0.0)
}

/// The metrics address the server logged.
fn metrics_url(server: &ServerProcess) -> String {
    let log = server.log.lock().unwrap_or_else(|p| p.into_inner());
    let line = log
        .iter()
        .find(|l| l.contains("metrics on http://"))
        .expect("the metrics address in the log")
        .clone();
    let start = line.find("http://").expect("url");
    line[start..]
        .split_whitespace()
        .next()
        .expect("url")
        .trim_matches('"')
        .to_owned()
}

async fn scrape(url: &str) -> BTreeMap<String, f64> {
    let r = reqwest::get(url).await.expect("scrape");
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"]
        .to_str()
        .expect("type")
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    parse(&r.text().await.expect("body"))
}

#[tokio::test]
async fn a_scrape_after_known_traffic_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    // A moment for the listener's line to be read from the log.
    let deadline = std::time::Instant::now() + WAIT;
    while !server
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|l| l.contains("metrics on"))
    {
        assert!(std::time::Instant::now() < deadline, "no metrics line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let url = metrics_url(&server);
    let http = reqwest::Client::new();

    // Three hubbub.v1 clients send ten messages each; a classic client sends two; two
    // messages come over HTTP.
    let mut rich = Vec::new();
    for _ in 0..3 {
        rich.push(server.rich(0).await);
    }
    let (mut classic, _) = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr))
        .await
        .expect("classic");
    for (i, ws) in rich.iter_mut().enumerate() {
        send_many(ws, &format!("r{i}"), 10).await;
    }
    for i in 0..2 {
        classic
            .send(Message::text(format!(
                r#"{{"user":"old","message":"classic {i}"}}"#
            )))
            .await
            .expect("classic send");
    }
    for i in 0..2 {
        let r = http
            .post(server.url("/api/rooms/general/messages"))
            .json(&serde_json::json!({"body": format!("http {i}"), "client_id": format!("h{i}")}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    // Every member has every message: 34 messages (seqs 1 to 34) to 4 sockets.
    for ws in rich.iter_mut() {
        until(ws, |f| matches!(f, ServerFrame::Message(m) if m.seq == 34)).await;
    }
    for _ in 0..34 {
        next_text(&mut classic).await;
    }
    // A frame that is not one, two credentials that are not, a binary frame (closed 1003), a
    // client that closes with 1000, and a late reader that replays all 34.
    send_text(&mut rich[0], "not json").await;
    assert!(matches!(next(&mut rich[0]).await, ServerFrame::Error(_)));
    for _ in 0..2 {
        let bad = tokio_tungstenite::connect_async(
            tokio_tungstenite::tungstenite::http::Request::builder()
                .uri(format!("ws://{}/ws", server.addr))
                .header("Host", &server.addr)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("Authorization", "Bearer hbt_made_up")
                .body(())
                .expect("request"),
        )
        .await;
        assert!(bad.is_err(), "a made-up token is refused");
    }
    let mut binary = server.rich_raw().await;
    binary
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("binary");
    assert_eq!(close_code(&mut binary).await, 1003);
    drop(binary);
    let mut leaving = rich.pop().expect("a client");
    leaving
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut leaving).await {}
    let mut late = server.rich_raw().await;
    send(
        &mut late,
        &ClientFrame::Hello {
            resume: BTreeMap::from([("general".to_owned(), 0)]),
            user: Some("late".into()),
        },
    )
    .await;
    until(&mut late, |f| matches!(f, ServerFrame::Joined(_))).await;
    for _ in 0..3 {
        let r = http
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 200);
    }
    // The connections end before the scrape; give the server a moment to count them.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let m = scrape(&url).await;
    assert_eq!(get(&m, "hubbub_messages_stored_total", &[]), 34.0);
    assert_eq!(get(&m, "hubbub_events_stored_total", &[]), 34.0);
    assert_eq!(
        get(&m, "hubbub_deliveries_total", &[]),
        34.0 * 4.0,
        "each message to three hubbub.v1 clients and the classic one"
    );
    assert_eq!(
        get(&m, "hubbub_connections", &[("protocol", "hubbub.v1")]),
        3.0
    );
    assert_eq!(
        get(&m, "hubbub_connections", &[("protocol", "classic")]),
        1.0
    );
    // Upgrades: three, the classic one, the binary one and the late one; two refused.
    assert_eq!(
        get(&m, "hubbub_handshakes_total", &[("outcome", "101")]),
        6.0
    );
    assert_eq!(
        get(&m, "hubbub_handshakes_total", &[("outcome", "401")]),
        2.0
    );
    assert_eq!(get(&m, "hubbub_frames_in_total", &[("type", "send")]), 30.0);
    assert_eq!(get(&m, "hubbub_frames_in_total", &[("type", "hello")]), 4.0);
    assert_eq!(
        get(&m, "hubbub_frames_in_total", &[("type", "classic")]),
        2.0
    );
    assert_eq!(
        get(&m, "hubbub_frames_in_total", &[("type", "invalid")]),
        1.0
    );
    assert_eq!(get(&m, "hubbub_frames_out_total", &[("type", "ack")]), 30.0);
    assert_eq!(
        get(&m, "hubbub_frames_out_total", &[("type", "error")]),
        1.0
    );
    assert_eq!(
        get(&m, "hubbub_frames_out_total", &[("type", "classic")]),
        34.0
    );
    assert!(get(&m, "hubbub_frames_out_total", &[("type", "event")]) >= 34.0 * 3.0 + 34.0);
    assert_eq!(get(&m, "hubbub_closes_total", &[("code", "1003")]), 1.0);
    assert_eq!(get(&m, "hubbub_closes_total", &[("code", "1000")]), 1.0);
    // The late reader's replay: one replay of all 34 (and the hellos' replays of nothing).
    assert!(get(&m, "hubbub_replay_events_sum", &[]) >= 34.0);
    assert!(get(&m, "hubbub_replay_events_count", &[]) >= 1.0);
    let commits = get(&m, "hubbub_commit_seconds_count", &[]);
    assert!((1.0..=34.0).contains(&commits), "{commits} group commits");
    assert_eq!(
        get(&m, "hubbub_commit_seconds_bucket", &[("le", "+Inf")]),
        commits
    );
    assert_eq!(
        get(&m, "hubbub_commit_to_delivery_seconds_count", &[]),
        34.0 * 4.0
    );
    assert_eq!(
        get(
            &m,
            "hubbub_http_requests_total",
            &[("route", "/healthz"), ("method", "GET"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        get(
            &m,
            "hubbub_http_requests_total",
            &[
                ("route", "/api/rooms/{room}/messages"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        2.0
    );
    assert_eq!(
        get(
            &m,
            "hubbub_http_request_duration_seconds_count",
            &[("route", "/healthz")]
        ),
        3.0
    );
    assert!(
        get(
            &m,
            "hubbub_db_pool_connections",
            &[("pool", "write"), ("state", "idle")]
        ) >= 0.0
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("hubbub_db_pool_connections{")));
    assert!(get(&m, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(get(&m, "process_open_fds", &[]) >= 5.0);
    assert!(get(&m, "process_cpu_seconds_total", &[]) > 0.0);
    assert_eq!(get(&m, "hubbub_queue_overflows_total", &[]), 0.0);

    // Nothing of it on the public port.
    let public = http.get(server.url("/metrics")).send().await.expect("get");
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn metrics_on_the_public_address_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args([
            "--addr",
            "127.0.0.1:39217",
            "--metrics-addr",
            "127.0.0.1:39217",
        ])
        .env("HUBBUB_DATA_DIR", dir.path())
        .output()
        .expect("run hubbub");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("never served on the public port"), "{said}");
}
