//! Changes to messages (edits, deletes, reactions, replies, mentions) as events of the room's
//! stream, and the signals that are never stored (typing, presence), over real sockets and HTTP.

use crate::helpers::*;
use hubbub::protocol::{
    Ack, ChatMessage, ClientFrame, ErrorReply, EventKind, PresenceUpdate, ServerFrame, Status,
    TypingNote,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Reads until a `message` frame of `kind` comes.
async fn event(ws: &mut Ws, kind: EventKind) -> ChatMessage {
    match until(
        ws,
        |f| matches!(f, ServerFrame::Message(m) if m.kind == kind),
    )
    .await
    {
        ServerFrame::Message(m) => m,
        _ => unreachable!(),
    }
}

/// Reads until an `ack` or `error` about `client_id`; `Ok(seq)` or `Err(code)`.
async fn answer(ws: &mut Ws, client_id: &str) -> Result<u64, String> {
    let f = until(ws, |f| match f {
        ServerFrame::Ack(a) => a.client_id == client_id,
        ServerFrame::Error(e) => e.reference.as_deref() == Some(client_id),
        _ => false,
    })
    .await;
    match f {
        ServerFrame::Ack(Ack { seq, .. }) => Ok(seq),
        ServerFrame::Error(ErrorReply { code, .. }) => Err(code.as_str().to_owned()),
        _ => unreachable!(),
    }
}

fn say(room: &str, id: &str, body: &str) -> ClientFrame {
    send_frame(room, id, body)
}

/// Posts over the socket and returns the stored seq.
async fn post(ws: &mut Ws, body: &str) -> u64 {
    let id = format!("p-{}", rand_id());
    send(ws, &say("general", &id, body)).await;
    answer(ws, &id).await.expect("stored")
}

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

async fn history(p: &Person, app: &TestApp) -> Vec<Value> {
    let (s, v) = p.get(app, "/api/rooms/general/messages?limit=200").await;
    assert_eq!(s, 200, "{v}");
    v["messages"].as_array().expect("messages").clone()
}

fn by_seq(list: &[Value], seq: u64) -> Value {
    list.iter()
        .find(|m| m["seq"] == seq)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn edits_are_events_that_a_resumed_client_applies_and_history_shows_the_latest_text() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let seq = post(&mut a, "the meeting is at 3").await;

    // Bob saw it, then went offline.
    let (mut b, _) = bob.socket(&app, &[("general", seq - 1)]).await;
    let first = event(&mut b, EventKind::Message).await;
    assert_eq!(
        (first.seq, first.body.as_str()),
        (seq, "the meeting is at 3")
    );
    drop(b);

    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e1".into(),
            target: seq,
            body: "the meeting is at 4".into(),
        },
    )
    .await;
    let edit_seq = answer(&mut a, "e1").await.expect("edited");
    assert_eq!(edit_seq, seq + 1, "the edit is the room's next event");
    // The same edit again (a resend) is stored once.
    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e1".into(),
            target: seq,
            body: "the meeting is at 4".into(),
        },
    )
    .await;
    assert_eq!(answer(&mut a, "e1").await, Ok(edit_seq));

    // Bob comes back from where he was: the edit arrives as an event naming its target.
    let (mut b, _) = bob.socket(&app, &[("general", seq)]).await;
    let e = event(&mut b, EventKind::MessageEdited).await;
    assert_eq!(
        (e.seq, e.target, e.body.as_str(), e.username.as_deref()),
        (edit_seq, Some(seq), "the meeting is at 4", Some("ann"))
    );

    // History and the page answer with the latest text, marked edited.
    let list = history(&bob, &app).await;
    let m = by_seq(&list, seq);
    assert_eq!(m["body"], "the meeting is at 4");
    assert!(m["edited"].as_i64().is_some_and(|t| t > 0), "{m}");
    let page = bob
        .http
        .get(app.url("/"))
        .header("Cookie", format!("hubbub_session={}", bob.session))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("the meeting is at 4") && !page.contains("the meeting is at 3"));
}

#[tokio::test]
async fn only_the_author_edits_within_the_window_and_nothing_else_changes_when_refused() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.edit_window = hubbub::server::config::Window(Some(std::time::Duration::from_secs(2)));
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;
    let seq = post(&mut a, "mine").await;

    let edit = |id: &str, target: u64, body: &str| ClientFrame::Edit {
        room: "general".into(),
        client_id: id.into(),
        target,
        body: body.into(),
    };
    send(&mut b, &edit("x1", seq, "bob was here")).await;
    assert_eq!(answer(&mut b, "x1").await, Err("forbidden".into()));
    send(&mut a, &edit("x2", 9_999, "nothing there")).await;
    assert_eq!(answer(&mut a, "x2").await, Err("unknown_message".into()));
    // Seq 1 of general is Ann's joining: an event, not a message.
    send(&mut a, &edit("x3", 1, "not a message")).await;
    assert_eq!(answer(&mut a, "x3").await, Err("unknown_message".into()));
    send(&mut a, &edit("x4", seq, "   ")).await;
    assert_eq!(answer(&mut a, "x4").await, Err("empty_message".into()));
    // Over HTTP too.
    let (s, v) = bob
        .call(
            &app,
            reqwest::Method::PATCH,
            &format!("/api/rooms/general/messages/{seq}"),
            Some(json!({"body": "bob again"})),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));

    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    send(&mut a, &edit("x5", seq, "too late")).await;
    assert_eq!(answer(&mut a, "x5").await, Err("edit_window_closed".into()));
    let m = by_seq(&history(&ann, &app).await, seq);
    assert_eq!((m["body"].as_str(), m.get("edited")), (Some("mine"), None));
    // No event was stored for any of them.
    let (_, v) = ann.get(&app, "/api/rooms/general").await;
    assert_eq!(v["room"]["head"], seq);
}

#[tokio::test]
async fn a_delete_erases_the_text_everywhere_and_leaves_a_tombstone() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;

    let seq = post(&mut a, "my password is hunter2").await;
    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e".into(),
            target: seq,
            body: "my password is swordfish".into(),
        },
    )
    .await;
    answer(&mut a, "e").await.expect("edited");
    let reply = "r1";
    send(
        &mut b,
        &ClientFrame::Send {
            room: "general".into(),
            client_id: reply.into(),
            body: "oops".into(),
            user: None,
            reply_to: Some(seq),
        },
    )
    .await;
    let reply_seq = answer(&mut b, reply).await.expect("replied");
    send(
        &mut b,
        &ClientFrame::React {
            room: "general".into(),
            target: seq,
            emoji: "😱".into(),
            on: true,
        },
    )
    .await;
    event(&mut a, EventKind::ReactionAdded).await;

    // Bob may not delete Ann's message; Ann may.
    let del = |id: &str| ClientFrame::Delete {
        room: "general".into(),
        client_id: id.into(),
        target: seq,
    };
    send(&mut b, &del("d0")).await;
    assert_eq!(answer(&mut b, "d0").await, Err("forbidden".into()));
    send(&mut a, &del("d1")).await;
    answer(&mut a, "d1").await.expect("deleted");
    let gone = event(&mut b, EventKind::MessageDeleted).await;
    assert_eq!(gone.target, Some(seq));

    let list = history(&bob, &app).await;
    let m = by_seq(&list, seq);
    assert_eq!(
        (m["deleted"].as_bool(), m["body"].as_str()),
        (Some(true), Some(""))
    );
    assert!(
        m.get("reactions").is_none(),
        "its reactions went with it: {m}"
    );
    let quote = &by_seq(&list, reply_seq)["reply"];
    assert_eq!(
        (quote["deleted"].as_bool(), quote["body"].as_str()),
        (Some(true), Some(""))
    );
    let all = serde_json::to_string(&list).expect("json");
    assert!(
        !all.contains("hunter2") && !all.contains("swordfish"),
        "{all}"
    );
    // Nothing more can be done to it.
    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e2".into(),
            target: seq,
            body: "back".into(),
        },
    )
    .await;
    assert_eq!(answer(&mut a, "e2").await, Err("message_deleted".into()));
    send(&mut a, &del("d2")).await;
    assert_eq!(answer(&mut a, "d2").await, Err("message_deleted".into()));

    // And the text is gone from the store itself: from every row, and from the search index.
    let db = app.db().await;
    let rows = db
        .int("SELECT COUNT(*) FROM messages WHERE body LIKE '%hunter2%' OR body LIKE '%swordfish%'")
        .await;
    assert_eq!(rows, 0);
    let index = if app.on_postgres() {
        "SELECT COUNT(*) FROM messages \
         WHERE search @@ to_tsquery('simple', 'swordfish | hunter2')"
    } else {
        "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'swordfish OR hunter2'"
    };
    assert_eq!(db.int(index).await, 0);
    // Nor is it anywhere in the file: freed space is overwritten, the index's segments too.
    if !app.on_postgres() {
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").await;
        let file = std::fs::read(app.data_dir.join("hubbub.sqlite3")).expect("the database file");
        for secret in [&b"hunter2"[..], b"swordfish"] {
            assert!(
                !file.windows(secret.len()).any(|w| w == secret),
                "{} is still in the file",
                String::from_utf8_lossy(secret)
            );
        }
    }
}

#[tokio::test]
async fn the_owner_deletes_anyones_message_in_their_room() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (s, _) = ann
        .post(
            &app,
            "/api/rooms",
            json!({"name": "team", "visibility": "public"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        bob.post(&app, "/api/rooms/team/join", json!({})).await.0,
        200
    );
    let (s, v) = bob
        .post(
            &app,
            "/api/rooms/team/messages",
            json!({"body": "spam spam"}),
        )
        .await;
    assert_eq!(s, 201);
    let seq = v["message"]["seq"].as_u64().expect("seq");
    let path = format!("/api/rooms/team/messages/{seq}");
    let (s, _) = ann.call(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 204);
    let (_, v) = ann.get(&app, "/api/rooms/team/messages").await;
    let m = by_seq(v["messages"].as_array().expect("list"), seq);
    assert_eq!(m["deleted"], true);
    let (s, v) = ann.call(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!((s, code(&v)), (409, "message_deleted"));
}

#[tokio::test]
async fn reactions_count_once_per_person_resume_right_and_are_bounded() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let seq = post(&mut a, "lunch?").await;
    let react = |emoji: &str, on: bool| ClientFrame::React {
        room: "general".into(),
        target: seq,
        emoji: emoji.into(),
        on,
    };
    send(&mut a, &react("👍", true)).await;
    let r = event(&mut a, EventKind::ReactionAdded).await;
    assert_eq!(
        (r.target, r.body.as_str(), r.count),
        (Some(seq), "👍", Some(1))
    );
    // Again: already so, nothing stored.
    send(&mut a, &react("👍", true)).await;
    let path = format!("/api/rooms/general/messages/{seq}/reactions/%F0%9F%91%8D");
    let (s, _) = bob.call(&app, reqwest::Method::PUT, &path, None).await;
    assert_eq!(s, 204);
    let r = event(&mut a, EventKind::ReactionAdded).await;
    assert_eq!((r.count, r.username.as_deref()), (Some(2), Some("bob")));
    let (_, v) = ann.get(&app, "/api/rooms/general").await;
    assert_eq!(
        v["room"]["head"],
        seq + 2,
        "the second 👍 of Ann's stored nothing"
    );

    let m = by_seq(&history(&ann, &app).await, seq);
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 2, "users": ["ann", "bob"]}])
    );

    // Bob takes his back; a client resuming from before all this ends with the right count.
    let (s, _) = bob.call(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 204);
    let (s, _) = bob.call(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 204, "taking back what is not there changes nothing");
    let (mut late, _) = bob.socket(&app, &[("general", seq - 1)]).await;
    let mut count = None;
    loop {
        match next(&mut late).await {
            ServerFrame::Message(m) if m.seq == seq => count = Some(m.reactions.clone()),
            ServerFrame::Message(m) if m.kind.changes_message() => {
                assert_eq!(m.target, Some(seq));
            }
            ServerFrame::Joined(_) => break,
            _ => {}
        }
    }
    let replayed = count.expect("the message was replayed");
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].count, 1, "replayed with the count it has now");

    // Bad emoji, and a storm of distinct ones: at most 20 kinds.
    for bad in ["", "lol", "x y"] {
        send(&mut a, &react(bad, true)).await;
        let ServerFrame::Error(e) = until(&mut a, |f| matches!(f, ServerFrame::Error(_))).await
        else {
            unreachable!()
        };
        assert_eq!(e.code.as_str(), "invalid_frame", "{bad:?}");
    }
    let mut refused = 0;
    for i in 0..1_000u32 {
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
        let emoji = char::from_u32(0x1F300 + i).expect("emoji").to_string();
        let path = format!(
            "/api/rooms/general/messages/{seq}/reactions/{}",
            urlencode(&emoji)
        );
        let (s, v) = ann.call(&app, reqwest::Method::PUT, &path, None).await;
        match s {
            204 => {}
            422 => {
                assert_eq!(code(&v), "limit_reached");
                refused += 1;
            }
            other => panic!("{other} {v}"),
        }
    }
    assert_eq!(refused, 980);
    let m = by_seq(&history(&ann, &app).await, seq);
    assert_eq!(m["reactions"].as_array().expect("list").len(), 20);
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn replies_quote_their_original_in_the_same_room_only() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let seq = post(
        &mut a,
        &format!("a long question {}\nsecond line", "x".repeat(300)),
    )
    .await;
    let (s, v) = bob
        .post(
            &app,
            "/api/rooms/general/messages",
            json!({"body": "an answer", "reply_to": seq}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let quote = &v["message"]["reply"];
    assert_eq!(v["message"]["reply_to"], seq);
    assert_eq!(quote["username"], "ann");
    assert!(quote["body"].as_str().expect("body").chars().count() <= 121);
    let ServerFrame::Message(live) = until(
        &mut a,
        |f| matches!(f, ServerFrame::Message(m) if m.reply_to.is_some()),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(live.reply.as_ref().map(|q| q.user.as_str()), Some("Ann"));

    for (target, want) in [(9_999, "unknown_message"), (1, "unknown_message")] {
        let (s, v) = bob
            .post(
                &app,
                "/api/rooms/general/messages",
                json!({"body": "?", "reply_to": target}),
            )
            .await;
        assert_eq!((s, code(&v)), (404, want));
    }
    // A private room's messages cannot be answered (or seen) from outside it.
    ann.post(
        &app,
        "/api/rooms",
        json!({"name": "secret", "visibility": "private"}),
    )
    .await;
    let (s, v) = bob
        .post(
            &app,
            "/api/rooms/secret/messages",
            json!({"body": "?", "reply_to": 1}),
        )
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_room"));
}

#[tokio::test]
async fn mentions_count_beside_unread_and_an_edit_notifies_only_the_newly_named() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let carol = app.sign_up("carol", "Carol").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    };
    let seq = post(&mut a, "@bob can you look? cc @nobody and @ann herself").await;
    let m = by_seq(&history(&ann, &app).await, seq);
    let bob_id = 2;
    assert_eq!(ids(&m["mentions"]), vec![bob_id], "{m}");

    let general = |v: &Value| v["rooms"][0].clone();
    let (_, v) = bob.get(&app, "/api/rooms").await;
    assert_eq!(
        (
            general(&v)["unread"].as_u64(),
            general(&v)["mentions"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, v) = carol.get(&app, "/api/rooms").await;
    assert_eq!(general(&v)["mentions"], 0);

    // The edit names Carol too: only she is notified of it.
    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e".into(),
            target: seq,
            body: "@bob can you look? and @carol".into(),
        },
    )
    .await;
    answer(&mut a, "e").await.expect("edited");
    let e = event(&mut a, EventKind::MessageEdited).await;
    assert_eq!(e.mentions, vec![bob_id, 3]);
    assert_eq!(e.notify, vec![3]);
    let (_, v) = bob.get(&app, "/api/rooms").await;
    assert_eq!(general(&v)["mentions"], 1, "Bob is not mentioned twice");
    let (_, v) = carol.get(&app, "/api/rooms").await;
    assert_eq!(general(&v)["mentions"], 1);

    // Reading clears it.
    let (s, v) = bob
        .call(
            &app,
            reqwest::Method::PUT,
            "/api/rooms/general/read",
            Some(json!({"seq": seq + 1})),
        )
        .await;
    assert_eq!((s, v["mentions"].as_u64()), (200, Some(0)));
}

#[tokio::test]
async fn typing_reaches_the_others_is_never_stored_and_a_storm_costs_no_messages() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.message_rate = 5;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;

    let typing = |stop| ClientFrame::Typing {
        room: "general".into(),
        stop,
    };
    send(&mut a, &typing(false)).await;
    let ServerFrame::Typing(TypingNote { username, stop, .. }) =
        until(&mut b, |f| matches!(f, ServerFrame::Typing(_))).await
    else {
        unreachable!()
    };
    assert_eq!((username.as_str(), stop), ("ann", false));
    send(&mut a, &typing(true)).await;
    let ServerFrame::Typing(TypingNote { stop, .. }) =
        until(&mut b, |f| matches!(f, ServerFrame::Typing(_))).await
    else {
        unreachable!()
    };
    assert!(stop);

    // A storm: 64 KiB of typing frames at once. The allowance takes a few, the rest are
    // dropped; they cost no message budget (Ann's next messages go at once, within her rate of
    // 5 a second), nothing is stored, and Bob hears of her typing a few times at most.
    let frame = serde_json::to_string(&typing(false)).expect("json");
    let storm = 64 * 1024 / frame.len();
    for _ in 0..storm {
        send_text(&mut a, &frame).await;
    }
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(post(&mut a, &format!("after the storm {i}")).await);
    }
    let mut typing_seen = 0;
    let mut messages = 0;
    while messages < 5 {
        match next(&mut b).await {
            ServerFrame::Typing(_) => typing_seen += 1,
            ServerFrame::Message(m) if m.is_message() => messages += 1,
            _ => {}
        }
    }
    eprintln!("{storm} typing frames sent, {typing_seen} relayed");
    assert!(typing_seen <= 6, "{typing_seen} relayed");
    let (_, v) = ann.get(&app, "/api/rooms/general").await;
    assert_eq!(
        v["room"]["head"], seqs[4],
        "nothing of the storm was stored"
    );
    // A typing frame of 64 KiB and more is a message too big.
    let huge = format!(r#"{{"type":"typing","room":"{}"}}"#, "g".repeat(70_000));
    send_text(&mut b, &huge).await;
    assert_eq!(close_code(&mut b).await, 1009);
}

#[tokio::test]
async fn typing_is_off_in_rooms_over_the_limit() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.typing_max_members = 1;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;
    send(
        &mut a,
        &ClientFrame::Typing {
            room: "general".into(),
            stop: false,
        },
    )
    .await;
    // The next thing Bob sees is Ann's message, with no typing before it.
    post(&mut a, "hello").await;
    let f = until(&mut b, |f| {
        matches!(f, ServerFrame::Typing(_) | ServerFrame::Message(_))
    })
    .await;
    assert!(matches!(f, ServerFrame::Message(_)), "{f:?}");
}

/// Reads until a presence frame about `who`, returning their status.
async fn presence_of(ws: &mut Ws, who: &str) -> Status {
    // Bounded as a whole: pings keep a socket busy, so the wait for one frame never ends alone.
    tokio::time::timeout(WAIT, async {
        loop {
            if let ServerFrame::Presence(PresenceUpdate { users, .. }) = next(ws).await {
                if let Some(u) = users.into_iter().find(|u| u.username == who) {
                    return u.status;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no presence of {who} came"))
}

#[tokio::test]
async fn presence_follows_sessions_goes_to_room_mates_only_and_is_offline_at_once_on_close() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let carol = app.sign_up("carol", "Carol").await;
    // Carol shares no room with Ann but a DM with Bob... she leaves general.
    assert_eq!(
        carol
            .post(&app, "/api/rooms/general/leave", json!({}))
            .await
            .0,
        204
    );
    let (mut c, rooms) = carol.socket(&app, &[]).await;
    settle(&mut c, rooms.len()).await;

    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    // Bob's joining of general comes with a snapshot where Ann is active.
    let (mut b, _) = bob.socket(&app, &[]).await;
    let snapshot = until(
        &mut b,
        |f| matches!(f, ServerFrame::Presence(p) if p.room.as_deref() == Some("general")),
    )
    .await;
    let ServerFrame::Presence(PresenceUpdate { users, .. }) = snapshot else {
        unreachable!()
    };
    assert!(users
        .iter()
        .any(|u| u.username == "ann" && u.status == Status::Active));

    // A second tab of Ann's goes idle: she stays active; both idle: idle.
    let (mut a2, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a2, rooms.len()).await;
    send(
        &mut a2,
        &ClientFrame::Presence {
            status: Status::Idle,
        },
    )
    .await;
    // Typing first spends the signal allowance: the status that follows still counts.
    for _ in 0..10 {
        send(
            &mut a,
            &ClientFrame::Typing {
                room: "general".into(),
                stop: false,
            },
        )
        .await;
    }
    send(
        &mut a,
        &ClientFrame::Presence {
            status: Status::Idle,
        },
    )
    .await;
    assert_eq!(presence_of(&mut b, "ann").await, Status::Idle);
    let (_, v) = bob.get(&app, "/api/rooms/general").await;
    let member = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["username"] == "ann")
        .cloned()
        .expect("ann");
    assert_eq!(member["status"], "idle");
    assert!(member["last_active"].as_i64().is_some_and(|t| t > 0));

    send(
        &mut a,
        &ClientFrame::Presence {
            status: Status::Active,
        },
    )
    .await;
    assert_eq!(presence_of(&mut b, "ann").await, Status::Active);

    // Closing both tabs: offline at once (no heartbeat to wait for).
    drop(a2);
    drop(a);
    let t = std::time::Instant::now();
    assert_eq!(presence_of(&mut b, "ann").await, Status::Offline);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );

    // Carol, in no room with Ann, heard none of it.
    quiet(&mut c).await;
}

#[tokio::test]
async fn classic_clients_see_messages_only() {
    let app = spawn_app().await;
    let mut classic = app.classic("/").await;
    let ann = app.sign_up("ann", "Ann").await;
    let (mut a, rooms) = ann.socket(&app, &[]).await;
    settle(&mut a, rooms.len()).await;
    let seq = post(&mut a, "hello classic").await;
    send(
        &mut a,
        &ClientFrame::Edit {
            room: "general".into(),
            client_id: "e".into(),
            target: seq,
            body: "edited".into(),
        },
    )
    .await;
    answer(&mut a, "e").await.expect("edited");
    send(
        &mut a,
        &ClientFrame::React {
            room: "general".into(),
            target: seq,
            emoji: "👋".into(),
            on: true,
        },
    )
    .await;
    send(
        &mut a,
        &ClientFrame::Typing {
            room: "general".into(),
            stop: false,
        },
    )
    .await;
    post(&mut a, "second").await;
    let first: Value = serde_json::from_str(&next_text(&mut classic).await).expect("json");
    let second: Value = serde_json::from_str(&next_text(&mut classic).await).expect("json");
    assert_eq!(first, json!({"user": "Ann", "message": "hello classic"}));
    assert_eq!(second, json!({"user": "Ann", "message": "second"}));
    quiet(&mut classic).await;
}

#[tokio::test]
async fn many_people_coming_online_at_once_reach_a_room_mate_in_a_few_frames_none_lost() {
    use futures_util::StreamExt;
    let app = spawn_secure_app().await;
    let bob = app.sign_up("bob", "Bob").await;
    let mut people = Vec::new();
    for i in 0..24 {
        people.push(app.sign_up(&format!("p{i:02}"), "P").await);
    }
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;
    // Everyone opens a tab at once (all are in general with Bob).
    let sockets = futures_util::future::join_all(people.iter().map(|p| p.socket(&app, &[]))).await;
    let mut heard = std::collections::BTreeSet::new();
    let mut frames = 0;
    tokio::time::timeout(WAIT, async {
        while heard.len() < people.len() {
            let Some(Ok(Message::Text(t))) = b.next().await else {
                continue;
            };
            if let Ok(ServerFrame::Presence(PresenceUpdate { room: None, users })) =
                serde_json::from_str::<ServerFrame>(&t)
            {
                frames += 1;
                heard.extend(
                    users
                        .into_iter()
                        .filter(|u| u.status == Status::Active && u.username.starts_with('p'))
                        .map(|u| u.username),
                );
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("heard {} of 24 come online", heard.len()));
    // The changes of each second come together: far fewer frames than people.
    assert!(frames <= 8, "24 people came online in {frames} frames");
    drop(sockets);
}

#[tokio::test]
async fn presence_changes_are_coalesced_per_person_and_a_vanished_client_goes_offline_by_heartbeat()
{
    use futures_util::{SinkExt, StreamExt};
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.ping_interval = std::time::Duration::from_secs(1);
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let (mut b, rooms) = bob.socket(&app, &[]).await;
    settle(&mut b, rooms.len()).await;
    let (a, rooms) = ann.socket(&app, &[]).await;
    // Ann's tab reads all along (and so answers the server's pings) until it freezes below.
    let (mut to_ann, mut from_ann) = a.split();
    let mut joined = 0;
    while joined < rooms.len() {
        if let Some(Ok(Message::Text(t))) = from_ann.next().await {
            if t.starts_with(r#"{"type":"joined""#) {
                joined += 1;
            }
        }
    }
    let reading = tokio::spawn(async move {
        while let Some(Ok(_)) = from_ann.next().await {}
        from_ann
    });
    assert_eq!(presence_of(&mut b, "ann").await, Status::Active);

    // Eleven changes in a moment: Bob hears at most one change a second of Ann, ending where
    // she ended.
    for i in 0..11 {
        let status = if i % 2 == 0 {
            Status::Idle
        } else {
            Status::Active
        };
        let frame = serde_json::to_string(&ClientFrame::Presence { status }).expect("json");
        to_ann.send(Message::text(frame)).await.expect("send");
    }
    let mut heard = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(2_500);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, b.next()).await {
        if let Message::Text(t) = msg {
            if let Ok(ServerFrame::Presence(PresenceUpdate { users, .. })) =
                serde_json::from_str::<ServerFrame>(&t)
            {
                heard.extend(
                    users
                        .into_iter()
                        .filter(|u| u.username == "ann")
                        .map(|u| u.status),
                );
            }
        }
    }
    assert!(
        (1..=3).contains(&heard.len()),
        "eleven changes in a moment came as {heard:?}"
    );
    assert_eq!(heard.last(), Some(&Status::Idle));

    // Ann's tab vanishes without closing: it reads nothing more, so it answers no ping. She is
    // offline once the server gives up on it, within two ping intervals.
    reading.abort();
    let t = std::time::Instant::now();
    assert_eq!(presence_of(&mut b, "ann").await, Status::Offline);
    println!("a vanished client went offline after {:?}", t.elapsed());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    drop(to_ann);
}
