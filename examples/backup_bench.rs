//! What `hubbub backup` costs on a large history: fills a SQLite store with 1,000,000 messages
//! (written straight into the tables, search index included, as a year of a busy team's
//! chat), then times the backup (`VACUUM INTO`), the integrity check of the copy, and the
//! restore, and prints their sizes.
//!
//!   cargo run --release --features ssr --example backup_bench [-- MESSAGES]

use hubbub::server::backup;
use hubbub::server::config::Config;
use hubbub::server::store::{SqliteStore, Store};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data).await.expect("store");
    let rooms: Vec<String> = (0..20).map(|i| format!("room{i}")).collect();
    for r in &rooms {
        store.create_room(r).await.expect("room");
    }
    drop(store);
    let url = format!("sqlite://{}", data.join("hubbub.sqlite3").display());
    let db = sqlx::SqlitePool::connect(&url).await.expect("db");
    let filled = Instant::now();
    let mut seqs = vec![0i64; rooms.len()];
    let mut written = 0;
    while written < total {
        let mut tx = db.begin().await.expect("tx");
        for _ in 0..20_000.min(total - written) {
            let r = written % rooms.len();
            seqs[r] += 1;
            sqlx::query(
                "INSERT INTO messages (room_id, seq, client_id, kind, user, username, body, ts) \
                 VALUES ((SELECT id FROM rooms WHERE name = ?), ?, ?, 'message', ?, ?, ?, ?)",
            )
            .bind(&rooms[r])
            .bind(seqs[r])
            .bind(format!("b{written}"))
            .bind(format!("person{}", written % 50))
            .bind(format!("person{}", written % 50))
            .bind(format!(
                "message {written}: about the release, the review and the lunch order, as ever"
            ))
            .bind(written as i64)
            .execute(&mut *tx)
            .await
            .expect("insert");
            written += 1;
        }
        tx.commit().await.expect("commit");
    }
    for (r, seq) in rooms.iter().zip(&seqs) {
        sqlx::query("UPDATE rooms SET head_seq = ? WHERE name = ?")
            .bind(seq)
            .bind(r)
            .execute(&db)
            .await
            .expect("head");
    }
    db.close().await;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let live = size(&data.join("hubbub.sqlite3")) + size(&data.join("hubbub.sqlite3-wal"));
    println!(
        "history: {total} messages in {:.1} s; database {:.1} MB (with its WAL)",
        filled.elapsed().as_secs_f64(),
        live as f64 / 1e6
    );

    let config = Config::with_data_dir(&data);
    let dest = dir.path().join("backup");
    let report = backup::backup(&config, &dest).await.expect("backup");
    println!(
        "backup: {:.2} s, {:.1} MB",
        report.took.as_secs_f64(),
        report.database_bytes as f64 / 1e6
    );
    let checked = Instant::now();
    backup::integrity(&dest.join("hubbub.sqlite3"))
        .await
        .expect("integrity");
    println!(
        "integrity_check of the copy: ok in {:.2} s",
        checked.elapsed().as_secs_f64()
    );
    let restored = Instant::now();
    let target = Config::with_data_dir(dir.path().join("restored"));
    backup::restore(&target, &dest).await.expect("restore");
    println!(
        "restore (check and copy): {:.2} s",
        restored.elapsed().as_secs_f64()
    );
}
