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
