//! Limits at the HTTP layer, and TLS.

use crate::helpers::*;
use hubbub::protocol::{Ack, ErrorReply};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Sends raw bytes and reads the answer until the server closes or a timeout.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

async fn healthy(app: &TestApp) {
    let r = app.http.get(app.url("/healthz")).send().await.expect("get");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused_at_once() {
    let app = spawn_secure_app().await;
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (answer, took) = raw(app.addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    healthy(&app).await;

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let (answer, took) = raw(app.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    healthy(&app).await;
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_closed_within_the_timeout() {
    let app = spawn_secure_app().await;
    let started = Instant::now();
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // One header byte every half second: the head never completes.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if s.write_all(b"X").await.is_err() {
                return started.elapsed();
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                return started.elapsed();
            }
        }
    };
    // Meanwhile others are served.
    healthy(&app).await;
    let closed_after = tokio::time::timeout(Duration::from_secs(14), trickle)
        .await
        .expect("the slow client is closed");
    assert!(
        closed_after >= Duration::from_secs(9) && closed_after < Duration::from_secs(12),
        "closed after {closed_after:?}"
    );
    healthy(&app).await;
}

#[tokio::test]
async fn tls_serves_https_and_wss_with_hsts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed_cert(dir.path());
    let app = spawn_app_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");

    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("strict-transport-security: max-age=31536000"));

    // WSS with the same configuration.
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = "wss://localhost/ws".into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("hubbub.v1"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("wss handshake");
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(r#"{"type":"ping","nonce":3}"#))
        .await
        .expect("send");
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time")
        .expect("frame")
        .expect("ok");
    assert_eq!(pong, Message::text(r#"{"type":"pong","nonce":3}"#));

    // Plain HTTP to the TLS port gets nothing.
    let (answer, _) = raw(app.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_socket_over_its_rate_is_slowed_then_closed_after_ten_seconds_while_others_go_on() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.message_rate = 20;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let mut flooder = app.upgrade(&ann.cookie_headers()).await.expect("ann");
    hello(&mut flooder, 0).await;
    let mut polite = app.upgrade(&bob.cookie_headers()).await.expect("bob");
    hello(&mut polite, 0).await;
    use futures_util::{SinkExt, StreamExt};
    use hubbub::protocol::ServerFrame;
    use tokio_tungstenite::tungstenite::Message;
    // 100 frames a second, without pause, reading the answers meanwhile.
    let started = Instant::now();
    let (mut sink, mut stream) = flooder.split();
    let closed = std::sync::atomic::AtomicBool::new(false);
    let flood = async {
        let sending = async {
            for i in 0..3000 {
                if closed.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let frame = send_frame("general", &format!("f{i}"), "flood");
                let text = serde_json::to_string(&frame).expect("json");
                // A send blocks once the server stops reading: that is the back-pressure.
                match tokio::time::timeout(Duration::from_secs(15), sink.send(Message::text(text)))
                    .await
                {
                    Ok(Ok(())) => {}
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let reading = async {
            let (mut acks, mut errors, mut close) = (0, 0, None);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, stream.next()).await {
                match msg {
                    Message::Text(t) => match serde_json::from_str(&t) {
                        Ok(ServerFrame::Ack(Ack { .. })) => acks += 1,
                        Ok(ServerFrame::Error(ErrorReply { .. })) => errors += 1,
                        _ => {}
                    },
                    Message::Close(f) => {
                        close = f.map(|f| (u16::from(f.code), started.elapsed()));
                        closed.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    _ => {}
                }
            }
            (acks, errors, close)
        };
        tokio::join!(sending, reading).1
    };
    let chat = async {
        for i in 0..10 {
            send(
                &mut polite,
                &send_frame("general", &format!("p{i}"), "polite"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let ((acks, errors, close), ()) = tokio::join!(flood, chat);
    assert_eq!(errors, 0, "over its rate, a client is slowed, not refused");
    let (code, after) = close.expect("closed");
    assert_eq!(code, 1008);
    assert!(
        after >= Duration::from_secs(10) && after < Duration::from_secs(14),
        "closed after {after:?}"
    );
    // Its budget: a burst of 40, then 20 a second for the 10 s it stayed over.
    assert!((200..=300).contains(&acks), "{acks} acks");
    // The other account's messages were all stored and delivered, in time.
    let mut polite_seen = 0;
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(500), polite.next()).await
    {
        if let Ok(ServerFrame::Ack(Ack { .. })) = serde_json::from_str(&t) {
            polite_seen += 1;
        }
    }
    assert_eq!(polite_seen, 10, "every polite message was acked");
}

#[tokio::test]
async fn sockets_per_user_and_unauthenticated_handshakes_are_capped_with_429() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.max_sockets_per_user = 3;
        c.max_anonymous_handshakes = 5;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(app.upgrade(&ann.cookie_headers()).await.expect("upgrade"));
    }
    assert_eq!(app.upgrade(&ann.cookie_headers()).await.err(), Some(429));
    // Closing one frees its slot.
    drop(open.pop());
    let mut freed = false;
    for _ in 0..50 {
        if app.upgrade(&ann.cookie_headers()).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed);
    // Handshakes without credentials: five refusals a minute, then 429.
    for _ in 0..5 {
        assert_eq!(app.upgrade(&[]).await.err(), Some(401));
    }
    assert_eq!(app.upgrade(&[]).await.err(), Some(429));
}
