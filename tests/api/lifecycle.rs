//! Closing from either side, and shutdown.

use crate::helpers::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_close_gets_a_close_reply() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    assert_eq!(close_code(&mut ws).await, 1000);
    let end = tokio::time::timeout(WAIT, ws.next()).await.expect("ends");
    assert!(end.is_none() || matches!(end, Some(Err(_))));
}

#[tokio::test]
async fn stopping_the_server_closes_every_socket_with_1001() {
    let mut app = spawn_app().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(app.rich(0).await);
    }
    clients.push(app.classic("/").await);
    app.stop();
    for ws in clients.iter_mut() {
        assert_eq!(close_code(ws).await, 1001);
    }
    let res = tokio::time::timeout(Duration::from_secs(5), &mut app.handle)
        .await
        .expect("run returns within 5 s");
    assert!(matches!(res, Ok(Ok(()))));
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &[]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .expect("connect");
        clients.push(ws);
    }
    let started = Instant::now();
    server.signal("-TERM");
    for ws in clients.iter_mut() {
        assert_eq!(close_code(ws).await, 1001);
    }
    let exit = server.wait_exit().await;
    assert!(exit.success(), "clean exit, got {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn each_socket_logs_one_line_when_it_opens_and_one_when_it_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &[("HUBBUB_LOG_FORMAT", "json")], &[]);
    let mut ws = server.rich(0).await;
    let acks = send_many(&mut ws, "logged", 3).await;
    assert_eq!(acks.len(), 3);
    // The echoes of all three come (an ack can come before its own message's delivery).
    until(
        &mut ws,
        |f| matches!(f, hubbub::protocol::ServerFrame::Message(m) if m.seq == acks[2]),
    )
    .await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .expect("close");
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
    drop(ws);
    let deadline = std::time::Instant::now() + WAIT;
    let lines: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = server
            .log
            .lock()
            .expect("log")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines
            .iter()
            .any(|l| l["fields"]["message"] == "socket closed")
        {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no close line in {:?}",
            server.log.lock().expect("log")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let opened: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "socket open")
        .collect();
    let closed: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "socket closed")
        .collect();
    assert_eq!((opened.len(), closed.len()), (1, 1), "{lines:?}");
    let (open, close) = (&opened[0]["fields"], &closed[0]["fields"]);
    assert_eq!(open["conn"], close["conn"]);
    assert_eq!(close["protocol"], "Rich");
    // The hello and three sends in; the three messages out (their echoes to this socket).
    assert_eq!(close["frames_in"], 4, "{close}");
    assert_eq!(close["messages_out"], 3, "{close}");
    assert_eq!(close["code"], 1000, "the client's close code: {close}");
    assert!(close["duration_ms"].as_u64().is_some(), "{close}");
}

#[tokio::test]
async fn each_request_logs_a_line_with_its_id_and_answers_with_the_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &[("HUBBUB_LOG_FORMAT", "json")], &[]);
    let http = reqwest::Client::new();
    let given = http
        .get(server.url("/healthz"))
        .header("x-request-id", "test-request-7")
        .send()
        .await
        .expect("get");
    assert_eq!(given.headers()["x-request-id"], "test-request-7");
    let made = http.get(server.url("/healthz")).send().await.expect("get");
    let id = made.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let lines: Vec<serde_json::Value> = server
            .log
            .lock()
            .expect("log")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &serde_json::Value| l["fields"]["message"] == "request")
            .collect();
        let ids: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["span"]["id"].as_str())
            .collect();
        if ids.contains(&"test-request-7") && ids.contains(&id.as_str()) {
            let line = &lines[0];
            assert_eq!(line["fields"]["status"], 200, "{line}");
            assert_eq!(line["span"]["path"], "/healthz", "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request lines: {lines:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
