//! Files attached to messages: streamed to disk under their digest, typed by their bytes,
//! served only to the room's members in a way no browser runs them, refused early when too
//! large, freed with their message.

use crate::helpers::*;
use hubbub::protocol::{EventKind, ServerFrame};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A PNG header of the given size in pixels, then `extra` bytes of filler.
fn png(w: u32, h: u32, extra: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend(w.to_be_bytes());
    b.extend(h.to_be_bytes());
    b.extend([8, 6, 0, 0, 0]);
    b.extend((0..extra).map(|i| (i * 31 % 251) as u8));
    b
}

async fn upload(p: &Person, app: &TestApp, room: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let resp = p
        .http
        .post(app.url(&format!("/api/rooms/{room}/attachments?name={name}")))
        .header("Cookie", format!("hubbub_session={}", p.session))
        .header("Origin", p.origin.clone())
        // What the uploader claims is ignored.
        .header("Content-Type", "image/png")
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn fetch(p: &Person, app: &TestApp, id: &str) -> reqwest::Response {
    p.http
        .get(app.url(&format!("/api/attachments/{id}")))
        .header("Cookie", format!("hubbub_session={}", p.session))
        .send()
        .await
        .expect("get")
}

/// The blobs kept in the blob store, by their digests.
async fn blobs(app: &TestApp) -> Vec<String> {
    if app.on_postgres() {
        return app
            .db()
            .await
            .strings("SELECT sha256 FROM blob_chunks WHERE n = 0")
            .await;
    }
    let mut out = Vec::new();
    let root = app.dir.path().join("blobs");
    for dir in std::fs::read_dir(&root).expect("blobs").flatten() {
        if dir.file_name() == "incoming" {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

fn incoming(app: &TestApp) -> usize {
    std::fs::read_dir(app.dir.path().join("blobs/incoming"))
        .expect("incoming")
        .count()
}

#[tokio::test]
async fn an_image_is_stored_by_its_digest_shown_inline_and_reaches_the_room_live() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;

    let bytes = png(640, 480, 200_000);
    let (s, v) = upload(&ann, &app, "general", "holiday%20photo.png", bytes.clone()).await;
    assert_eq!(s, 201, "{v}");
    let a = &v["message"]["attachment"];
    assert_eq!(a["name"], "holiday photo.png");
    assert_eq!(a["size"], bytes.len());
    assert_eq!(
        (
            a["mime"].as_str(),
            a["width"].as_u64(),
            a["height"].as_u64()
        ),
        (Some("image/png"), Some(640), Some(480))
    );
    let id = a["id"].as_str().expect("id").to_owned();

    let ServerFrame::Message(live) = until(
        &mut b,
        |f| matches!(f, ServerFrame::Message(m) if m.attachment.is_some()),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(
        live.attachment.as_ref().map(|a| a.id.as_str()),
        Some(id.as_str())
    );

    let resp = fetch(&bob, &app, &id).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "default-src 'none'; sandbox");
    assert!(h["content-disposition"]
        .to_str()
        .expect("ascii")
        .starts_with("inline;"));
    assert_eq!(resp.bytes().await.expect("body").to_vec(), bytes);

    // Stored once under its digest, whatever its name.
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(blobs(&app).await.len(), 1);
    assert!(blobs(&app).await[0].ends_with(&digest));
    let (s, v) = upload(&bob, &app, "general", "same.png", bytes).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(blobs(&app).await.len(), 1, "the same bytes are one blob");
    assert_eq!(incoming(&app), 0);
}

/// A file served as a download, never rendered: any type, sandboxed, not sniffed.
fn is_a_sandboxed_download(resp: &reqwest::Response) {
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(h["content-disposition"]
        .to_str()
        .expect("ascii")
        .starts_with("attachment;"));
    assert_eq!(h["content-security-policy"], "default-src 'none'; sandbox");
    assert_eq!(h["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn html_that_claims_to_be_an_image_is_a_download_and_strangers_get_nothing() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let evil = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let (s, v) = upload(&ann, &app, "general", "cute.png", evil).await;
    assert_eq!(s, 201, "{v}");
    let a = &v["message"]["attachment"];
    assert_eq!(a["mime"], "text/plain");
    assert!(a.get("width").is_none());
    let resp = fetch(&bob, &app, a["id"].as_str().expect("id")).await;
    is_a_sandboxed_download(&resp);

    // An SVG (a picture that can carry script) is never an image here either: a download,
    // sandboxed, whatever it is called.
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>"#.to_vec();
    let (s, v) = upload(&ann, &app, "general", "logo.svg", svg).await;
    assert_eq!(s, 201, "{v}");
    let a = &v["message"]["attachment"];
    assert_ne!(a["mime"], "image/svg+xml");
    assert!(a.get("width").is_none());
    let resp = fetch(&bob, &app, a["id"].as_str().expect("id")).await;
    is_a_sandboxed_download(&resp);

    // A private room's files are no one else's: not to fetch, not to upload to.
    ann.post(
        &app,
        "/api/rooms",
        serde_json::json!({"name": "secret", "visibility": "private"}),
    )
    .await;
    let (s, v) = upload(&ann, &app, "secret", "plan.pdf", b"%PDF-1.7 plans".to_vec()).await;
    assert_eq!(s, 201);
    let secret = v["message"]["attachment"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(v["message"]["attachment"]["mime"], "application/pdf");
    let resp = fetch(&bob, &app, &secret).await;
    assert_eq!(resp.status(), 404);
    let resp = fetch(&bob, &app, "no-such-file").await;
    assert_eq!(resp.status(), 404);
    let anonymous = app
        .http
        .get(app.url(&format!("/api/attachments/{secret}")))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);
    let (s, v) = upload(&bob, &app, "secret", "x.txt", b"hi".to_vec()).await;
    assert_eq!((s, code(&v)), (404, "unknown_room"));
}

#[tokio::test]
async fn deleting_the_message_frees_the_file_unless_another_refers_to_it() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bytes = png(10, 10, 1_000);
    let (_, one) = upload(&ann, &app, "general", "a.png", bytes.clone()).await;
    let (_, two) = upload(&ann, &app, "general", "b.png", bytes).await;
    let seq = |v: &Value| v["message"]["seq"].as_u64().expect("seq");
    let id = |v: &Value| {
        v["message"]["attachment"]["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    assert_eq!(blobs(&app).await.len(), 1);
    let del = |s: u64| format!("/api/rooms/general/messages/{s}");
    assert_eq!(
        ann.call(&app, reqwest::Method::DELETE, &del(seq(&one)), None)
            .await
            .0,
        204
    );
    assert_eq!(fetch(&ann, &app, &id(&one)).await.status(), 404);
    assert_eq!(
        blobs(&app).await.len(),
        1,
        "the second message still has it"
    );
    assert_eq!(fetch(&ann, &app, &id(&two)).await.status(), 200);
    assert_eq!(
        ann.call(&app, reqwest::Method::DELETE, &del(seq(&two)), None)
            .await
            .0,
        204
    );
    assert!(
        blobs(&app).await.is_empty(),
        "no message refers to it: it is gone"
    );
}

#[tokio::test]
async fn too_large_is_refused_before_the_body_and_when_it_runs_over_and_quotas_hold() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.max_upload = 1_000_000;
        c.upload_quota = 1_500_000;
        c.request_timeout = Duration::from_secs(2);
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;

    // Announced too large: 413 at once, before any of it is sent.
    let mut tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/rooms/general/attachments?name=big.bin HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\n\
         Cookie: hubbub_session={}\r\nContent-Length: 11000000\r\n\r\n",
        app.addr,
        app.origin(),
        ann.session
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");

    // Sent without a length and running over: cut off at the limit, nothing kept.
    let over = png(1, 1, 1_200_000);
    let stream = futures_util::stream::iter(
        over.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = ann
        .http
        .post(app.url("/api/rooms/general/attachments?name=over.png"))
        .header("Cookie", format!("hubbub_session={}", ann.session))
        .header("Origin", ann.origin.clone())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    assert!(blobs(&app).await.is_empty());
    assert_eq!(incoming(&app), 0);

    // The quota: 900 KB fits, a second 900 KB does not.
    let (s, _) = upload(&ann, &app, "general", "one.png", png(1, 1, 900_000)).await;
    assert_eq!(s, 201);
    let (s, v) = upload(&ann, &app, "general", "two.png", png(1, 1, 900_000)).await;
    assert_eq!((s, code(&v)), (413, "quota_exceeded"));
    // Empty files are refused too.
    let (s, _) = upload(&ann, &app, "general", "empty", Vec::new()).await;
    assert_eq!(s, 400);

    // A body that stops arriving is cut off once it has been still for the request timeout.
    let mut tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/rooms/general/attachments?name=slow.bin HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\n\
         Cookie: hubbub_session={}\r\nContent-Length: 500000\r\n\r\nsome bytes",
        app.addr,
        app.origin(),
        ann.session
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let t = std::time::Instant::now();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"));
    assert!(t.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(incoming(&app), 0);
}

#[tokio::test]
async fn the_message_of_a_file_is_an_ordinary_message() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let resp = ann
        .http
        .post(
            app.url("/api/rooms/general/attachments?name=notes.txt&body=the%20notes&client_id=f1"),
        )
        .header("Cookie", format!("hubbub_session={}", ann.session))
        .header("Origin", ann.origin.clone())
        .body("line one\nline two")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    let (_, v) = ann.get(&app, "/api/rooms/general/messages").await;
    let m = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["client_id"] == "f1")
        .cloned()
        .expect("stored");
    assert_eq!(m["body"], "the notes");
    assert_eq!(m["attachment"]["mime"], "text/plain");
    assert!(m.get("kind").is_none() || m["kind"] == EventKind::Message.as_str());
}
