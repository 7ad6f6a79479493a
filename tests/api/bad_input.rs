//! Bad input gets a clear answer and breaks nothing.

use crate::helpers::*;
use futures_util::SinkExt;
use hubbub::protocol::{ErrorCode, ServerFrame, MAX_BODY_CHARS};
use hubbub::protocol::{ErrorReply, Pong};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(ws: &mut Ws, code: ErrorCode) {
    match next(ws).await {
        ServerFrame::Error(ErrorReply {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

async fn still_usable(ws: &mut Ws) {
    send_text(ws, r#"{"type":"ping","nonce":7}"#).await;
    assert_eq!(next(ws).await, ServerFrame::Pong(Pong { nonce: Some(7) }));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    send_text(&mut ws, "{not json").await;
    expect_error(&mut ws, ErrorCode::MalformedJson).await;
    send_text(&mut ws, r#"{"type":"dance"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownType).await;
    send_text(
        &mut ws,
        r#"{"type":"send","room":"general","body":"no id"}"#,
    )
    .await;
    expect_error(&mut ws, ErrorCode::InvalidFrame).await;
    send_text(&mut ws, r#"{"no":"type"}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidFrame).await;
    send(&mut ws, &send_frame("general", "e1", "   ")).await;
    expect_error(&mut ws, ErrorCode::EmptyMessage).await;
    send(
        &mut ws,
        &send_frame("general", "e2", &"x".repeat(MAX_BODY_CHARS + 1)),
    )
    .await;
    expect_error(&mut ws, ErrorCode::MessageTooLong).await;
    send(&mut ws, &send_frame("nowhere", "e3", "hi")).await;
    expect_error(&mut ws, ErrorCode::NotJoined).await;
    send_text(&mut ws, r#"{"type":"join","room":"nowhere"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownRoom).await;
    send_text(&mut ws, r#"{"type":"hello"}"#).await;
    expect_error(&mut ws, ErrorCode::BadSequence).await;
    still_usable(&mut ws).await;
    assert!(app.history("").await.is_empty(), "nothing was stored");
    // A valid message after all that is stored as seq 1.
    send(&mut ws, &send_frame("general", "ok", "fine")).await;
    assert_eq!(next_message(&mut ws).await.seq, 1);
}

#[tokio::test]
async fn a_classic_client_only_ever_gets_classic_frames_and_bad_input_a_close_code() {
    let app = spawn_app().await;
    // An empty message stores nothing and says nothing; the next one goes through.
    let mut ws = app.classic("/").await;
    send_text(&mut ws, r#"{"user":"x","message":"  "}"#).await;
    send_text(&mut ws, r#"{"user":"x","message":"ok"}"#).await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
    assert_eq!(v, json!({"user":"x","message":"ok"}));
    // A frame it cannot read: no rich error frame, a close with 1007 and a reason.
    send_text(&mut ws, "hello?").await;
    assert_eq!(close_code(&mut ws).await, 1007);
    let mut ws = app.classic("/").await;
    send_text(&mut ws, r#"{"user":"x"}"#).await;
    assert_eq!(close_code(&mut ws).await, 1007);
    // Too long for a message: 1009.
    let mut ws = app.classic("/").await;
    let long = json!({"user": "x", "message": "y".repeat(MAX_BODY_CHARS + 1)}).to_string();
    send_text(&mut ws, &long).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    // What came before the bad frames is stored, once.
    let stored = app.history("").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, "ok");
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_1009() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    let body = "y".repeat(70 * 1024);
    let _ = ws.send(Message::text(body)).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    // The server is fine for others.
    let mut other = app.rich(0).await;
    still_usable(&mut other).await;
}

/// A client that is still sending an oversized message when the server refuses it must still read
/// the Close 1009: the server keeps reading (and dropping) the rest instead of resetting the
/// connection, which would destroy the close frame and fail the client's writes.
#[tokio::test]
async fn a_client_still_sending_an_oversized_message_reads_close_1009() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 2 * 1024 * 1024;
    let app = spawn_app().await;
    for round in 0..5 {
        let mut tcp = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: hubbub.v1\r\n\r\n",
            app.addr
        );
        tcp.write_all(head.as_bytes()).await.expect("handshake");
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.expect("101 head");
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 101"), "round {round}");
        let (mut rd, mut wr) = tcp.into_split();
        // One masked 2 MiB text frame, written in 64 KiB pieces, then FIN.
        let writer = tokio::spawn(async move {
            let mut frame = vec![0x81u8, 0x80 | 127];
            frame.extend_from_slice(&(SIZE as u64).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            wr.write_all(&frame).await?;
            let piece = vec![b'x'; 64 * 1024];
            for _ in 0..SIZE / piece.len() {
                wr.write_all(&piece).await?;
            }
            wr.shutdown().await
        });
        let mut received = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rd.read_to_end(&mut received),
        )
        .await
        .expect("the server closes the connection");
        assert!(read.is_ok(), "round {round}: reading ended with {read:?}");
        writer
            .await
            .expect("writer task")
            .unwrap_or_else(|e| panic!("round {round}: the server reset the upload: {e}"));
        // Walk the server's (unmasked) frames to the close frame.
        let byte = |i: usize| received.get(i).copied();
        let mut at = 0;
        let mut close = None;
        while let (Some(b0), Some(b1)) = (byte(at), byte(at + 1)) {
            let (len, start) = match b1 & 0x7f {
                126 => match (byte(at + 2), byte(at + 3)) {
                    (Some(hi), Some(lo)) => (usize::from(u16::from_be_bytes([hi, lo])), at + 4),
                    _ => break,
                },
                127 => break, // hubbub never sends frames that large
                n => (usize::from(n), at + 2),
            };
            if b0 & 0x0f == 0x8 {
                close = byte(start)
                    .zip(byte(start + 1))
                    .map(|(hi, lo)| u16::from_be_bytes([hi, lo]));
                break;
            }
            at = start + len;
        }
        assert_eq!(close, Some(1009), "round {round}: {received:?}");
    }
    let mut other = app.rich(0).await;
    still_usable(&mut other).await;
}

#[tokio::test]
async fn a_binary_frame_is_closed_with_1003() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, 1003);
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let app = spawn_app().await;
    let mut ws = app.rich(0).await;
    let frame = Frame::message(vec![0xC3u8, 0x28, b'a'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut ws).await, 1007);
}

#[tokio::test]
async fn the_http_api_answers_bad_requests_clearly() {
    let app = spawn_app().await;
    let get = |q: &'static str| {
        let url = app.url(&format!("/api/rooms/{q}"));
        let http = app.http.clone();
        async move { http.get(url).send().await.expect("get") }
    };
    let r = get("nowhere/messages").await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unknown_room");
    for q in [
        "general/messages?limit=0",
        "general/messages?limit=201",
        "general/messages?limit=ten",
        "general/messages?before=-1",
        "general/messages?before=3&after=1",
    ] {
        let r = get(q).await;
        assert_eq!(r.status(), 400, "{q}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "invalid_query", "{q}");
    }
    assert_eq!(
        app.post("nowhere", json!({"body": "x"})).await.status(),
        404
    );
    let r = app.post("general", json!({"body": ""})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "empty_message");
    let r = app
        .post("general", json!({"body": "x".repeat(MAX_BODY_CHARS + 1)}))
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(app.url("/api/rooms/general/messages"))
        .body("{oops")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert!(app.history("").await.is_empty());
}

#[tokio::test]
async fn the_autobahn_echo_route_is_absent_from_normal_builds() {
    let app = spawn_app().await;
    let echo = tokio_tungstenite::connect_async(format!("ws://{}/autobahn/echo", app.addr)).await;
    assert!(
        echo.is_err(),
        "no WebSocket on /autobahn/echo without the feature"
    );
}
