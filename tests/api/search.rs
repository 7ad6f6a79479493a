//! Full-text search over what the caller may read, kept in step with every message, edit and
//! delete in the same transaction.

use crate::helpers::*;
use serde_json::{json, Value};

async fn search(p: &Person, app: &TestApp, q: &str) -> (u16, Value) {
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    p.get(app, &format!("/api/search?q={q}")).await
}

fn texts(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| {
            h["snippet"]
                .as_array()
                .expect("snippet")
                .iter()
                .map(|s| s["text"].as_str().unwrap_or_default())
                .collect::<String>()
        })
        .collect()
}

async fn post(p: &Person, app: &TestApp, room: &str, body: &str) -> u64 {
    let (s, v) = p
        .post(
            app,
            &format!("/api/rooms/{room}/messages"),
            json!({ "body": body }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["message"]["seq"].as_u64().expect("seq")
}

#[tokio::test]
async fn words_phrases_people_and_rooms_newest_first_with_highlights_as_text() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    ann.post(
        &app,
        "/api/rooms",
        json!({"name": "design", "visibility": "public"}),
    )
    .await;
    bob.post(&app, "/api/rooms/design/join", json!({})).await;
    post(&ann, &app, "general", "the release is on friday").await;
    post(
        &bob,
        &app,
        "general",
        "friday works, the release notes are ready",
    )
    .await;
    post(&ann, &app, "design", "release <b>banner</b> for friday").await;
    post(&bob, &app, "design", "unrelated chatter about lunch").await;

    let (s, v) = search(&ann, &app, "release friday").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        texts(&v),
        vec![
            "release <b>banner</b> for friday",
            "friday works, the release notes are ready",
            "the release is on friday",
        ],
        "newest first"
    );
    let first = &v["hits"][0];
    assert_eq!(
        (first["room"].as_str(), first["user"].as_str()),
        (Some("design"), Some("Ann"))
    );
    let marked: Vec<&str> = first["snippet"]
        .as_array()
        .expect("snippet")
        .iter()
        .filter(|s| s["hit"] == true)
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(marked, vec!["release", "friday"]);

    let (_, v) = search(&ann, &app, "\"release notes\"").await;
    assert_eq!(texts(&v), vec!["friday works, the release notes are ready"]);
    let (_, v) = search(&ann, &app, "friday from:@ann").await;
    assert_eq!(v["hits"].as_array().expect("hits").len(), 2);
    let (_, v) = search(&ann, &app, "friday in:#design").await;
    assert_eq!(texts(&v), vec!["release <b>banner</b> for friday"]);
    // The last word is also a prefix, for searching as one types.
    let (_, v) = search(&ann, &app, "lun").await;
    assert_eq!(texts(&v), vec!["unrelated chatter about lunch"]);
    // Query syntax a user types is just words.
    let (s, v) = search(&ann, &app, "friday OR NEAR( * ^ -x").await;
    assert_eq!(s, 200, "{v}");

    for bad in ["", "from:@ann", &"word ".repeat(30)] {
        let (s, v) = search(&ann, &app, bad).await;
        assert_eq!((s, code(&v)), (400, "invalid_query"), "{bad:?}");
    }
}

#[tokio::test]
async fn pages_go_back_in_time() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    for i in 0..45 {
        post(&ann, &app, "general", &format!("status report {i}")).await;
    }
    let (_, v) = ann.get(&app, "/api/search?q=status&limit=20").await;
    assert_eq!(v["hits"].as_array().expect("hits").len(), 20);
    assert_eq!(texts(&v)[0], "status report 44");
    let next = v["next"].as_i64().expect("next");
    let (_, v) = ann
        .get(
            &app,
            &format!("/api/search?q=status&limit=20&before={next}"),
        )
        .await;
    assert_eq!(texts(&v)[0], "status report 24");
    let next = v["next"].as_i64().expect("next");
    let (_, v) = ann
        .get(
            &app,
            &format!("/api/search?q=status&limit=20&before={next}"),
        )
        .await;
    assert_eq!(v["hits"].as_array().expect("hits").len(), 5);
    assert!(v["next"].is_null());
}

#[tokio::test]
async fn nothing_of_a_private_room_is_found_from_outside_and_no_stale_or_deleted_text() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    ann.post(
        &app,
        "/api/rooms",
        json!({"name": "secret", "visibility": "private"}),
    )
    .await;
    post(&ann, &app, "secret", "the acquisition closes tuesday").await;
    let (_, v) = search(&bob, &app, "acquisition").await;
    assert!(texts(&v).is_empty());
    let (_, v) = search(&bob, &app, "acquisition in:#secret").await;
    assert!(texts(&v).is_empty(), "naming the room finds nothing either");
    let (_, v) = search(&ann, &app, "acquisition").await;
    assert_eq!(texts(&v).len(), 1);

    // Invited, Bob finds it; removed, no longer.
    ann.post(
        &app,
        "/api/rooms/secret/members",
        json!({"username": "bob"}),
    )
    .await;
    let (_, v) = search(&bob, &app, "acquisition").await;
    assert_eq!(texts(&v).len(), 1);
    ann.call(
        &app,
        reqwest::Method::DELETE,
        "/api/rooms/secret/members/bob",
        None,
    )
    .await;
    let (_, v) = search(&bob, &app, "acquisition").await;
    assert!(texts(&v).is_empty());

    // An edit is found by its new text only; a delete by nothing.
    let seq = post(&ann, &app, "general", "lunch at noon").await;
    let path = format!("/api/rooms/general/messages/{seq}");
    let (s, _) = ann
        .call(
            &app,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"body": "dinner at eight"})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = search(&ann, &app, "lunch").await;
    assert!(texts(&v).is_empty(), "{v}");
    let (_, v) = search(&ann, &app, "dinner").await;
    assert_eq!(texts(&v), vec!["dinner at eight"]);
    ann.call(&app, reqwest::Method::DELETE, &path, None).await;
    let (_, v) = search(&ann, &app, "dinner").await;
    assert!(texts(&v).is_empty());
}
