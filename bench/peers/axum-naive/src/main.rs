//! The naive axum broadcast server: one tokio broadcast channel, default WebSocket buffers, no
//! storage, no auth. The Rust baseline of the benchmark.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

async fn upgrade(State(tx): State<broadcast::Sender<Message>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| client(socket, tx))
}

async fn client(socket: WebSocket, tx: broadcast::Sender<Message>) {
    let (mut sink, mut stream) = socket.split();
    let mut rx = tx.subscribe();
    let forward = tokio::spawn(async move {
        while let Ok(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if matches!(msg, Message::Text(_)) {
            let _ = tx.send(msg);
        }
    }
    forward.abort();
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3403);
    let (tx, _) = broadcast::channel(1024);
    let app = Router::new().route("/", get(upgrade)).with_state(tx);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("naive axum broadcast server on {port}");
    axum::serve(listener, app).await.expect("serve");
}
