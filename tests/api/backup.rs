//! `hubbub backup` while 20 clients send at full rate, and `hubbub restore` into an empty data
//! directory: the copy passes `PRAGMA integrity_check`, holds every message acked before the
//! backup began, and a server started on it serves them.

use crate::helpers::*;
use futures_util::StreamExt;
use hubbub::protocol::{Ack, ServerFrame};
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_hubbub");

#[tokio::test]
async fn a_backup_under_load_restores_every_message_acked_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    // Every ack, by client_id, with when it arrived.
    let acked: Arc<Mutex<HashMap<String, (u64, std::time::Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(server.rich(0).await);
    }
    let mut senders = Vec::new();
    for (c, mut ws) in sockets.into_iter().enumerate() {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            let mut in_flight = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while in_flight < 8 {
                    let frame = send_frame(
                        "general",
                        &format!("b{c}-{i}"),
                        &format!("client {c} says {i}"),
                    );
                    send(&mut ws, &frame).await;
                    i += 1;
                    in_flight += 1;
                }
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    if let Ok(ServerFrame::Ack(Ack { client_id, seq, .. })) =
                        serde_json::from_str::<ServerFrame>(&t)
                    {
                        in_flight -= 1;
                        acked
                            .lock()
                            .expect("acks")
                            .insert(client_id, (seq, std::time::Instant::now()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let dest = dir.path().join("backup");
    let began = std::time::Instant::now();
    let data_dir = dir.path().display().to_string();
    let out = tokio::task::spawn_blocking({
        let dest = dest.clone();
        move || {
            Command::new(BIN)
                .arg("backup")
                .arg(&dest)
                .args(["--data-dir", &data_dir])
                .output()
                .expect("backup")
        }
    })
    .await
    .expect("join");
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.abort();
    }
    let before: Vec<(String, u64)> = acked
        .lock()
        .expect("acks")
        .iter()
        .filter(|(_, (_, at))| *at < began)
        .map(|(id, (seq, _))| (id.clone(), *seq))
        .collect();
    let total = acked.lock().expect("acks").len();
    assert!(
        before.len() > 100,
        "only {} acked before the backup",
        before.len()
    );
    assert!(
        total > before.len(),
        "the clients went on sending during the backup"
    );
    eprintln!(
        "backup in {took:?} while sending: {} acked before, {total} by the end; {}",
        before.len(),
        String::from_utf8_lossy(&out.stdout).trim()
    );

    // The copy is sound and holds what was acked before it began.
    hubbub::server::backup::integrity(&dest.join("hubbub.sqlite3"))
        .await
        .expect("integrity_check ok");

    // Restored into an empty data directory, a server serves them.
    let restored = tempfile::tempdir().expect("tempdir");
    let target = restored.path().join("data");
    let out = Command::new(BIN)
        .arg("restore")
        .arg(&dest)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not over a database that is there.
    let again = Command::new(BIN)
        .arg("restore")
        .arg(&dest)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("restore");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty data directory"));
    drop(server);
    let server = ServerProcess::start(&target, &[]);
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut after = 0;
    loop {
        let page: serde_json::Value = reqwest::get(server.url(&format!(
            "/api/rooms/general/messages?after={after}&limit=100"
        )))
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            after = m["seq"].as_u64().expect("seq");
            if let Some(id) = m["client_id"].as_str() {
                seqs.insert(id.to_owned(), after);
            }
        }
    }
    for (id, seq) in &before {
        assert_eq!(
            seqs.get(id),
            Some(seq),
            "{id}, acked before the backup, is served"
        );
    }
}

/// Runs `hubbub ARGS` on the storage of `app` (its data directory, or its PostgreSQL).
fn hubbub_on(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).env("HUBBUB_DATA_DIR", &app.data_dir);
    if let Some(hubbub::server::config::Database::Postgres(url)) = &app.database {
        command.args(["--database", url]);
    }
    command.output().expect("run hubbub")
}

/// A message's entry in the room's history over HTTP.
async fn entry(app: &TestApp, p: &Person, room: &str, seq: u64) -> serde_json::Value {
    let (status, v) = p
        .get(app, &format!("/api/rooms/{room}/messages?limit=200"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["seq"] == seq)
        .cloned()
        .unwrap_or_else(|| panic!("no seq {seq} in {v}"))
}

#[tokio::test]
async fn a_room_exported_and_imported_into_a_new_install_keeps_its_history() {
    use reqwest::Method;
    use serde_json::json;
    // The first install: a room with messages, an edit, a delete, reactions and a member.
    let first = spawn_secure_app().await;
    let ann = first.sign_up("ann", "Ann").await;
    let bob = first.sign_up("bob", "Bob").await;
    let (s, _) = ann
        .post(
            &first,
            "/api/rooms",
            json!({"name": "plans", "topic": "What comes next", "visibility": "private"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = ann
        .post(
            &first,
            "/api/rooms/plans/members",
            json!({"username": "bob"}),
        )
        .await;
    assert!(s < 300, "{s}");
    let mut seqs = Vec::new();
    for (who, body) in [
        (&ann, "the first plan"),
        (&ann, "ping @bob about it"),
        (&bob, "a typo I regret"),
    ] {
        let (s, v) = who
            .post(&first, "/api/rooms/plans/messages", json!({ "body": body }))
            .await;
        assert_eq!(s, 201, "{v}");
        seqs.push(v["message"]["seq"].as_u64().expect("seq"));
    }
    let (s, _) = ann
        .call(
            &first,
            Method::PATCH,
            &format!("/api/rooms/plans/messages/{}", seqs[0]),
            Some(json!({"body": "the first plan, edited"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = bob
        .call(
            &first,
            Method::DELETE,
            &format!("/api/rooms/plans/messages/{}", seqs[2]),
            None,
        )
        .await;
    assert!(s < 300, "{s}");
    let thumbs = format!(
        "/api/rooms/plans/messages/{}/reactions/%F0%9F%91%8D",
        seqs[0]
    );
    let party = format!(
        "/api/rooms/plans/messages/{}/reactions/%F0%9F%8E%89",
        seqs[0]
    );
    assert_eq!(bob.call(&first, Method::PUT, &thumbs, None).await.0, 204);
    assert_eq!(ann.call(&first, Method::PUT, &party, None).await.0, 204);
    assert_eq!(ann.call(&first, Method::DELETE, &party, None).await.0, 204);
    let (_, room) = ann.get(&first, "/api/rooms/plans").await;
    let head = room["room"]["head"].as_u64().expect("head");
    let before: Vec<serde_json::Value> = {
        let (_, v) = ann.get(&first, "/api/rooms/plans/messages?limit=200").await;
        v["messages"].as_array().expect("messages").clone()
    };

    let file = first.dir.path().join("plans.jsonl");
    let out = hubbub_on(
        &first,
        &[
            "export",
            "--room",
            "plans",
            "--out",
            &file.display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("export");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["export"], "hubbub.room.v1");
    assert_eq!(lines[0]["room"]["topic"], "What comes next");
    let exported: Vec<u64> = lines[1..]
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        exported,
        (1..=head).collect::<Vec<u64>>(),
        "every event, in order"
    );
    assert!(
        !text.contains("a typo I regret"),
        "deleted text is not exported"
    );
    let missing = hubbub_on(&first, &["export", "--room", "nowhere"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no room named"));

    // A new install with the same people; the room comes in whole.
    let second = spawn_secure_app().await;
    let ann2 = second.sign_up("ann", "Ann").await;
    let bob2 = second.sign_up("bob", "Bob").await;
    let out = hubbub_on(&second, &["import", &file.display().to_string()]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("imported {head} events into #plans")),
        "{said}"
    );
    let (s, v) = ann2
        .get(&second, "/api/rooms/plans/messages?limit=200")
        .await;
    assert_eq!(s, 200, "{v}");
    let after = v["messages"].as_array().expect("messages");
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(after) {
        for field in [
            "seq", "kind", "body", "username", "ts", "target", "deleted", "edited",
        ] {
            assert_eq!(a.get(field), b.get(field), "{field} of seq {}", b["seq"]);
        }
    }
    let first_plan = entry(&second, &ann2, "plans", seqs[0]).await;
    assert_eq!(first_plan["body"], "the first plan, edited");
    let reactions = first_plan["reactions"].as_array().expect("reactions");
    assert_eq!(reactions.len(), 1, "{first_plan}");
    assert_eq!(
        (&reactions[0]["emoji"], &reactions[0]["count"]),
        (&json!("👍"), &json!(1))
    );
    assert_eq!(
        entry(&second, &ann2, "plans", seqs[2]).await["deleted"],
        true
    );
    // The room is as it was: private, its topic, both people in it, Ann its owner; it goes on
    // from its head, and its words are found.
    let (_, room) = bob2.get(&second, "/api/rooms/plans").await;
    assert_eq!(room["room"]["visibility"], "private");
    assert_eq!(room["room"]["topic"], "What comes next");
    assert_eq!(room["room"]["members"], 2);
    assert_eq!(room["room"]["owner"], "ann");
    let (s, v) = bob2
        .post(
            &second,
            "/api/rooms/plans/messages",
            json!({"body": "back again"}),
        )
        .await;
    assert_eq!((s, v["message"]["seq"].as_u64()), (201, Some(head + 1)));
    let (_, found) = bob2.get(&second, "/api/search?q=edited").await;
    assert_eq!(found["hits"][0]["seq"], seqs[0], "{found}");
    let (_, found) = bob2.get(&second, "/api/search?q=typo").await;
    assert_eq!(found["hits"].as_array().map(Vec::len), Some(0), "{found}");

    // Once only, and a broken file changes nothing.
    let again = hubbub_on(&second, &["import", &file.display().to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has history"));
    let broken = first.dir.path().join("broken.jsonl");
    let mut cut: Vec<&str> = text.lines().collect();
    cut.remove(3);
    std::fs::write(&broken, cut.join("\n")).expect("write");
    let out = hubbub_on(
        &second,
        &["import", &broken.display().to_string(), "--as", "plans-2"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 4"));
    assert_eq!(ann2.get(&second, "/api/rooms/plans-2").await.0, 404);

    // An operator makes Bob an admin from the command line.
    assert_eq!(bob2.get(&second, "/admin").await.0, 403);
    let out = hubbub_on(&second, &["admin", "grant", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = bob2
        .http
        .get(second.url("/admin"))
        .header("Cookie", format!("hubbub_session={}", bob2.session))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    let nobody = hubbub_on(&second, &["admin", "grant", "nobody"]);
    assert!(!nobody.status.success());
}
