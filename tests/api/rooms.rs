//! Rooms, direct messages, membership and unread: every path that reads or writes a room goes
//! through one authorisation point, so a private room is invisible from outside on all of them.

use crate::helpers::*;
use hubbub::protocol::{ClientFrame, EventKind, ServerFrame};
use hubbub::protocol::{ErrorReply, Joined, Left, ReadPosition, RoomUpdate, Welcome};
use serde_json::{json, Value};

#[tokio::test]
async fn a_private_room_is_invisible_from_outside_on_every_path() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (s, room) = ann
        .post(
            &app,
            "/api/rooms",
            json!({"name": "secret", "topic": "plans", "visibility": "private"}),
        )
        .await;
    assert_eq!(s, 201, "{room}");
    assert_eq!(room["room"]["visibility"], "private");
    assert_eq!(room["room"]["owner"], "ann");
    let (s, _) = ann
        .post(
            &app,
            "/api/rooms/secret/messages",
            json!({"body": "the launch is friday"}),
        )
        .await;
    assert_eq!(s, 201);

    // Bob's socket is open before anything else, so it shows what live delivery would leak.
    let (mut bob_ws, rooms) = bob.socket(&app, &[]).await;
    assert_eq!(rooms, vec!["general"]);
    settle(&mut bob_ws, 1).await;

    // HTTP: each answers exactly as for a room that does not exist.
    for (path, method, body) in [
        ("/api/rooms/{}", reqwest::Method::GET, None),
        ("/api/rooms/{}/messages", reqwest::Method::GET, None),
        (
            "/api/rooms/{}/messages",
            reqwest::Method::POST,
            Some(json!({"body": "hi"})),
        ),
        ("/api/rooms/{}/join", reqwest::Method::POST, None),
        ("/api/rooms/{}/leave", reqwest::Method::POST, None),
        (
            "/api/rooms/{}/members",
            reqwest::Method::POST,
            Some(json!({"username": "bob"})),
        ),
        (
            "/api/rooms/{}/read",
            reqwest::Method::PUT,
            Some(json!({"seq": 1})),
        ),
        (
            "/api/rooms/{}",
            reqwest::Method::PATCH,
            Some(json!({"title": "mine"})),
        ),
    ] {
        let (s1, v1) = bob
            .call(
                &app,
                method.clone(),
                &path.replace("{}", "secret"),
                body.clone(),
            )
            .await;
        let (s2, v2) = bob
            .call(&app, method.clone(), &path.replace("{}", "nosuch"), body)
            .await;
        assert_eq!((s1, code(&v1)), (404, "unknown_room"), "{method} {path}");
        assert_eq!((s2, code(&v2)), (404, "unknown_room"), "{method} {path}");
        assert_eq!(
            v1["error"]["message"]
                .as_str()
                .map(|m| m.replace("secret", "nosuch")),
            v2["error"]["message"].as_str().map(str::to_owned),
            "the same answer, name aside"
        );
    }
    for path in ["/api/rooms", "/api/rooms?public=true"] {
        let (_, list) = bob.get(&app, path).await;
        assert!(!list.to_string().contains("secret"), "{path}: {list}");
    }
    // The server-rendered page.
    let page = |room: &str| {
        bob.http
            .get(app.url(&format!("/r/{room}")))
            .header("Cookie", format!("hubbub_session={}", bob.session))
            .send()
    };
    let secret = page("secret").await.expect("page");
    let nosuch = page("nosuch").await.expect("page");
    assert_eq!(secret.status(), nosuch.status());
    let html = secret.text().await.expect("html");
    assert!(!html.contains("launch"), "the page shows none of it");

    // The socket: resume, join and send are refused as for an unknown room.
    let (mut probe, _) = bob.socket(&app, &[("secret", 0)]).await;
    let ServerFrame::Error(ErrorReply { code, .. }) = until(&mut probe, |f| {
        matches!(f, ServerFrame::Error(ErrorReply { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(code.as_str(), "unknown_room");
    send(
        &mut probe,
        &ClientFrame::Join {
            room: "secret".into(),
            after: Some(0),
        },
    )
    .await;
    let ServerFrame::Error(ErrorReply { code, .. }) = until(&mut probe, |f| {
        matches!(f, ServerFrame::Error(ErrorReply { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(code.as_str(), "unknown_room");
    send(&mut probe, &send_frame("secret", "c1", "let me in")).await;
    let ServerFrame::Error(ErrorReply { code, .. }) = until(&mut probe, |f| {
        matches!(f, ServerFrame::Error(ErrorReply { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(code.as_str(), "not_joined");
    // Nothing of the room reached Bob's open socket.
    quiet(&mut bob_ws).await;

    // Invited, Bob's open socket follows the room at once, from his invitation on.
    let (s, _) = ann
        .post(
            &app,
            "/api/rooms/secret/members",
            json!({"username": "bob"}),
        )
        .await;
    assert_eq!(s, 204);
    let ServerFrame::Room(RoomUpdate { room }) = until(&mut bob_ws, |f| {
        matches!(f, ServerFrame::Room(RoomUpdate { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!((room.name.as_str(), room.members), ("secret", 2));
    let ServerFrame::Message(invited) = next_durable(&mut bob_ws).await else {
        panic!("expected the invitation event");
    };
    assert_eq!(invited.kind, EventKind::MemberInvited);
    assert_eq!(invited.member.as_deref(), Some("bob"));
    assert_eq!(invited.username.as_deref(), Some("ann"));
    assert!(matches!(
        next_durable(&mut bob_ws).await,
        ServerFrame::Joined(Joined { .. })
    ));
    let (s, page) = bob.get(&app, "/api/rooms/secret/messages").await;
    assert_eq!(s, 200);
    assert!(page.to_string().contains("the launch is friday"));

    // Removed, his socket is told and unsubscribed, and every path is closed again.
    let (s, _) = ann
        .call(
            &app,
            reqwest::Method::DELETE,
            "/api/rooms/secret/members/bob",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let ServerFrame::Message(removed) = next_durable(&mut bob_ws).await else {
        panic!("expected the removal event");
    };
    assert_eq!(removed.kind, EventKind::MemberRemoved);
    assert!(
        matches!(next_durable(&mut bob_ws).await, ServerFrame::Left(Left { room }) if room == "secret")
    );
    ann.post(
        &app,
        "/api/rooms/secret/messages",
        json!({"body": "after bob"}),
    )
    .await;
    quiet(&mut bob_ws).await;
    let (s, _) = bob.get(&app, "/api/rooms/secret/messages").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn membership_and_room_changes_are_events_replayed_in_seq_order() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (s, _) = ann
        .post(
            &app,
            "/api/rooms",
            json!({"name": "design", "visibility": "public"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, browse) = bob.get(&app, "/api/rooms?public=true").await;
    assert_eq!(s, 200);
    assert!(browse["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .any(|r| r["name"] == "design" && r["member"] == false));
    assert_eq!(
        bob.post(&app, "/api/rooms/design/join", json!({})).await.0,
        200
    );
    // Joining again changes nothing.
    assert_eq!(
        bob.post(&app, "/api/rooms/design/join", json!({})).await.0,
        200
    );
    bob.post(&app, "/api/rooms/design/messages", json!({"body": "hello"}))
        .await;
    let patch = |body: Value| {
        ann.call(
            &app,
            reqwest::Method::PATCH,
            "/api/rooms/design",
            Some(body),
        )
    };
    assert_eq!(patch(json!({"title": "Design & UX"})).await.0, 200);
    assert_eq!(patch(json!({"topic": "pixels"})).await.0, 200);
    // Only the owner manages the room.
    let (s, v) = bob
        .call(
            &app,
            reqwest::Method::PATCH,
            "/api/rooms/design",
            Some(json!({"topic": "mine now"})),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    assert_eq!(
        bob.post(&app, "/api/rooms/design/leave", json!({})).await.0,
        204
    );

    // A client resuming from 0 sees every change, in order, once.
    let (mut ws, _) = ann.socket(&app, &[("design", 0)]).await;
    let mut kinds = Vec::new();
    loop {
        match next(&mut ws).await {
            ServerFrame::Message(m) if m.room == "design" => {
                assert_eq!(m.seq, kinds.len() as u64 + 1, "gapless");
                kinds.push(m.kind);
            }
            ServerFrame::Joined(Joined { room, head }) if room == "design" => {
                assert_eq!(head, 6);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        vec![
            EventKind::RoomCreated,
            EventKind::MemberJoined,
            EventKind::Message,
            EventKind::RoomRenamed,
            EventKind::TopicChanged,
            EventKind::MemberLeft,
        ]
    );
    let (_, room) = ann.get(&app, "/api/rooms/design").await;
    assert_eq!(room["room"]["title"], "Design & UX");
    assert_eq!(room["room"]["topic"], "pixels");
    assert_eq!(room["members"].as_array().map(Vec::len), Some(1));

    // Archived: read-only, gone from the lists, its history kept.
    assert_eq!(patch(json!({"archived": true})).await.0, 200);
    let (s, v) = ann
        .post(
            &app,
            "/api/rooms/design/messages",
            json!({"body": "still?"}),
        )
        .await;
    assert_eq!((s, code(&v)), (409, "room_archived"));
    let (_, mine) = ann.get(&app, "/api/rooms").await;
    assert!(!mine.to_string().contains("\"design\""), "{mine}");
    let (s, page) = ann.get(&app, "/api/rooms/design/messages").await;
    assert_eq!(s, 200);
    assert!(page.to_string().contains("hello"));
}

#[tokio::test]
async fn unread_counts_follow_the_reader_across_sessions() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    // Bob's second session: a log-in elsewhere.
    let bob2 = {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let page = http.get(app.url("/login")).send().await.expect("get");
        let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf");
        let r = app
            .form(
                &http,
                "/auth/login",
                &csrf,
                None,
                &[("username", "bob"), ("password", "correct horse battery")],
            )
            .await;
        Person {
            session: set_cookie(&r, "hubbub_session").expect("session"),
            http,
            origin: app.origin(),
            csrf,
        }
    };
    let (mut tab1, _) = bob.socket(&app, &[]).await;
    settle(&mut tab1, 1).await;
    let (mut tab2, _) = bob2.socket(&app, &[]).await;
    settle(&mut tab2, 1).await;
    let mut head = 0;
    for i in 0..3 {
        let (_, v) = ann
            .post(
                &app,
                "/api/rooms/general/messages",
                json!({"body": format!("m{i}")}),
            )
            .await;
        head = v["message"]["seq"].as_u64().expect("seq");
    }
    // His own message is not unread to him.
    bob.post(&app, "/api/rooms/general/messages", json!({"body": "mine"}))
        .await;
    let general = |v: &Value| {
        v["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .find(|r| r["name"] == "general")
            .cloned()
            .expect("general")
    };
    let (_, rooms) = bob.get(&app, "/api/rooms").await;
    assert_eq!(general(&rooms)["unread"], 3, "{rooms}");

    // Reading in one tab clears the count in the other at once.
    send(
        &mut tab1,
        &ClientFrame::Read {
            room: "general".into(),
            seq: head,
        },
    )
    .await;
    let ServerFrame::Read(ReadPosition {
        room, seq, unread, ..
    }) = until(&mut tab2, |f| {
        matches!(f, ServerFrame::Read(ReadPosition { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!((room.as_str(), seq, unread), ("general", head, 0));
    let (_, rooms) = bob.get(&app, "/api/rooms").await;
    assert_eq!(general(&rooms)["unread"], 0);
    assert_eq!(general(&rooms)["last_read"], head);
    // A read position never moves back, nor past the head.
    let (s, v) = bob
        .call(
            &app,
            reqwest::Method::PUT,
            "/api/rooms/general/read",
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!((s, v["last_read"].as_u64()), (200, Some(head)));
    let (_, v) = bob
        .call(
            &app,
            reqwest::Method::PUT,
            "/api/rooms/general/read",
            Some(json!({"seq": 1_000_000})),
        )
        .await;
    assert_eq!(v["last_read"].as_u64(), Some(head + 1));
    // Ann never read what Bob wrote.
    let (_, rooms) = ann.get(&app, "/api/rooms").await;
    assert_eq!(general(&rooms)["unread"], 1);
}

#[tokio::test]
async fn a_dm_is_the_same_room_every_time_and_private_to_its_people() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let carol = app.sign_up("carol", "Carol").await;
    let (mut bob_ws, _) = bob.socket(&app, &[]).await;
    settle(&mut bob_ws, 1).await;
    let (s, first) = ann
        .post(&app, "/api/dms", json!({"usernames": ["bob"]}))
        .await;
    assert_eq!(s, 200, "{first}");
    let name = first["room"]["name"].as_str().expect("name").to_owned();
    assert_eq!(first["room"]["kind"], "dm");
    assert_eq!(first["room"]["members"], 2);
    for (who, usernames) in [
        (&ann, json!(["bob"])),
        (&ann, json!(["bob", "ann", "bob"])),
        (&bob, json!(["ann"])),
    ] {
        let (_, again) = who
            .post(&app, "/api/dms", json!({ "usernames": usernames }))
            .await;
        assert_eq!(again["room"]["name"], name.as_str());
    }
    // Bob's open socket follows the new conversation without asking.
    let ServerFrame::Room(RoomUpdate { room }) = until(&mut bob_ws, |f| {
        matches!(f, ServerFrame::Room(RoomUpdate { .. }))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(room.name, name);
    ann.post(
        &app,
        &format!("/api/rooms/{name}/messages"),
        json!({"body": "psst"}),
    )
    .await;
    let m = until(
        &mut bob_ws,
        |f| matches!(f, ServerFrame::Message(m) if m.is_message()),
    )
    .await;
    assert!(
        matches!(m, ServerFrame::Message(m) if m.body == "psst" && m.username.as_deref() == Some("ann"))
    );
    // Carol sees nothing of it, and cannot be added to it.
    let (s, _) = carol
        .get(&app, &format!("/api/rooms/{name}/messages"))
        .await;
    assert_eq!(s, 404);
    let (s, v) = ann
        .post(
            &app,
            &format!("/api/rooms/{name}/members"),
            json!({"username": "carol"}),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    // A group DM is another room; too many people or unknown ones are refused.
    let (_, group) = ann
        .post(&app, "/api/dms", json!({"usernames": ["bob", "carol"]}))
        .await;
    assert_ne!(group["room"]["name"], name.as_str());
    assert_eq!(group["room"]["members"], 3);
    let nine: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let (s, v) = ann
        .post(&app, "/api/dms", json!({ "usernames": nine }))
        .await;
    assert_eq!((s, code(&v)), (422, "limit_reached"));
    let (s, v) = ann
        .post(&app, "/api/dms", json!({"usernames": ["nobody"]}))
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_user"));
}

#[tokio::test]
async fn room_limits_and_bad_input_are_refused_and_change_nothing() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.rooms_per_hour = 3;
        c.max_room_members = 2;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let carol = app.sign_up("carol", "Carol").await;
    for bad in [
        json!({"name": "Big"}),
        json!({"name": ""}),
        json!({"name": "a b"}),
        json!({"name": "dm-mine"}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "ok", "title": "evil\u{202E}txt"}),
        json!({"name": "ok", "topic": "t".repeat(251)}),
    ] {
        let (s, v) = ann.post(&app, "/api/rooms", bad.clone()).await;
        assert_eq!((s, code(&v)), (400, "invalid_name"), "{bad}");
    }
    let (s, v) = ann
        .post(
            &app,
            "/api/rooms",
            json!({"name": "x", "visibility": "secret"}),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_query"), "{v}");
    let (s, _) = ann
        .post(&app, "/api/rooms", json!({"name": "general"}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        ann.post(&app, "/api/rooms", json!({"name": "one"})).await.0,
        201
    );
    let (s, v) = ann.post(&app, "/api/rooms", json!({"name": "one"})).await;
    assert_eq!((s, code(&v)), (409, "room_exists"));
    assert_eq!(
        ann.post(&app, "/api/rooms", json!({"name": "two"})).await.0,
        201
    );
    assert_eq!(
        ann.post(
            &app,
            "/api/rooms",
            json!({"name": "hidden", "visibility": "private"})
        )
        .await
        .0,
        201
    );
    let (s, v) = ann.post(&app, "/api/rooms", json!({"name": "four"})).await;
    assert_eq!((s, code(&v)), (429, "rate_limited"));
    // Full at two members: Carol is refused and nothing changed.
    assert_eq!(
        bob.post(&app, "/api/rooms/one/join", json!({})).await.0,
        200
    );
    let (s, v) = carol.post(&app, "/api/rooms/one/join", json!({})).await;
    assert_eq!((s, code(&v)), (422, "limit_reached"));
    let (_, room) = ann.get(&app, "/api/rooms/one").await;
    assert_eq!(room["room"]["members"], 2);
    assert_eq!(room["room"]["head"], 2, "no event for the refused join");
    // Unknown people, uninvited joins, members' posts only.
    let (s, v) = ann
        .post(
            &app,
            "/api/rooms/two/members",
            json!({"username": "nobody"}),
        )
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_user"));
    let (s, v) = carol.post(&app, "/api/rooms/hidden/join", json!({})).await;
    assert_eq!((s, code(&v)), (404, "unknown_room"));
    let (s, v) = carol
        .post(&app, "/api/rooms/two/messages", json!({"body": "drive-by"}))
        .await;
    assert_eq!((s, code(&v)), (403, "not_member"));
    // Bodies: unknown fields, wrong types, oversized.
    let (s, _) = ann
        .post(&app, "/api/rooms/two/members", json!({"user": "bob"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = ann
        .post(&app, "/api/dms", json!({"usernames": ["x".repeat(9_000)]}))
        .await;
    assert_eq!(s, 413);
    let (s, v) = ann
        .call(
            &app,
            reqwest::Method::PUT,
            "/api/rooms/two/read",
            Some(json!({"seq": -1})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_query"));
    // Display names that could pass for someone else are refused at sign-up.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(app.url("/signup")).send().await.expect("get");
    let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf");
    let r = app
        .form(
            &http,
            "/auth/signup",
            &csrf,
            None,
            &[
                ("username", "mallory"),
                ("display_name", "An\u{200B}n"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert!(
        set_cookie(&r, "hubbub_session").is_none(),
        "no account made"
    );
}

#[tokio::test]
async fn classic_clients_see_only_the_chat_messages_of_general() {
    let app = spawn_app().await;
    let mut classic = app.classic("/").await;
    let ann = app.sign_up("ann", "Ann").await;
    // Ann's sign-up is a member_joined event in general: not for classic eyes.
    ann.post(
        &app,
        "/api/rooms/general/messages",
        json!({"body": "hi all"}),
    )
    .await;
    let text = next_text(&mut classic).await;
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v, json!({"user": "Ann", "message": "hi all"}));
    quiet(&mut classic).await;
    // A rich client sees both, the author with her handle.
    let mut rich = app.rich_raw().await;
    send_text(&mut rich, r#"{"type":"hello","resume":{"general":0}}"#).await;
    assert!(matches!(
        next(&mut rich).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    let joined = next_message(&mut rich).await;
    assert_eq!(joined.kind, EventKind::MemberJoined);
    assert_eq!(joined.member.as_deref(), Some("ann"));
    let said = next_message(&mut rich).await;
    assert_eq!(
        (said.username.as_deref(), said.user_id.is_some(), said.guest),
        (Some("ann"), true, false)
    );
    assert!(matches!(
        next(&mut rich).await,
        ServerFrame::Joined(Joined { .. })
    ));
    // A guest's message is marked as a guest's.
    app.post("general", json!({"body": "who am i", "user": "Ann"}))
        .await;
    let guest = next_message(&mut rich).await;
    assert!(guest.guest && guest.username.is_none());
}
