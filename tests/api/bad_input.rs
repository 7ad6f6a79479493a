//! Bad input gets a clear answer and breaks nothing.

use crate::helpers::*;
use futures_util::SinkExt;
use hubbub::protocol::{ErrorCode, ServerFrame, MAX_BODY_CHARS};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(ws: &mut Ws, code: ErrorCode) {
    match next(ws).await {
        ServerFrame::Error {
            code: got, message, ..
        } => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

async fn still_usable(ws: &mut Ws) {
    send_text(ws, r#"{"type":"ping","nonce":7}"#).await;
    assert_eq!(next(ws).await, ServerFrame::Pong { nonce: Some(7) });
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
async fn a_bad_classic_frame_gets_an_error_and_the_connection_stays() {
    let app = spawn_app().await;
    let mut ws = app.classic("/").await;
    send_text(&mut ws, "hello?").await;
    expect_error(&mut ws, ErrorCode::MalformedJson).await;
    send_text(&mut ws, r#"{"user":"x"}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidFrame).await;
    send_text(&mut ws, r#"{"user":"x","message":""}"#).await;
    expect_error(&mut ws, ErrorCode::EmptyMessage).await;
    send_text(&mut ws, r#"{"user":"x","message":"ok"}"#).await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
    assert_eq!(v, json!({"user":"x","message":"ok"}));
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
