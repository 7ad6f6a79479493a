//! Acks per second of the two stores: C concurrent writers append chat messages (each waits for
//! its ack, as a socket does) to SQLite (a file, WAL, fsync per commit) and to PostgreSQL (a
//! fresh database on `HUBBUB_TEST_POSTGRES` or the machine's), through the same group commit.
//! For each store and each C: acks per second and the p50/p99 time to ack, in one hot room and
//! spread over 50 rooms.
//!
//!   cargo run --release --features ssr --example store_bench [-- SECONDS]

use hubbub::server::store::scratch::ScratchDb;
use hubbub::server::store::{Author, DynStore, NewMessage, PgStore, SqliteStore};
use hubbub::server::tasks::Tasks;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `writers` tasks append for `seconds` to `rooms` rooms; returns (acks/s, p50 ms, p99 ms).
async fn drive(
    store: &DynStore,
    writers: usize,
    rooms: usize,
    seconds: f64,
    tag: &str,
) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let stop = Arc::clone(&stop);
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let room = format!("r{}", (w + i as usize) % rooms);
                    let m = NewMessage::chat(
                        &room,
                        format!("{tag}-{w}-{i}"),
                        Author::guest(format!("writer{w}")),
                        format!(
                            "message {i} from writer {w}, 64 bytes or so of ordinary chat text"
                        ),
                    );
                    let t = Instant::now();
                    store.append(m).await.expect("append");
                    times.push(t.elapsed());
                    i += 1;
                }
                times
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite: DynStore = Arc::new(
        SqliteStore::open_file(&dir.path().join("bench.sqlite3"), Tasks::default())
            .await
            .expect("sqlite"),
    );
    let db = ScratchDb::create()
        .await
        .expect("a scratch PostgreSQL database");
    let postgres: DynStore = Arc::new(
        PgStore::connect(db.url(), Tasks::default())
            .await
            .expect("postgres"),
    );
    for store in [&sqlite, &postgres] {
        for r in 0..50 {
            store.create_room(&format!("r{r}")).await.expect("room");
        }
    }
    println!("acks per second, each writer waiting for its ack; {seconds} s per run");
    println!("| writers | rooms | SQLite acks/s | SQLite p50 / p99 ms | PostgreSQL acks/s | PostgreSQL p50 / p99 ms | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut run = 0;
    for writers in [1, 16, 64, 256] {
        for rooms in [1, 50] {
            run += 1;
            // The two stores take turns going first.
            let (s, p) = if run % 2 == 0 {
                let s = drive(&sqlite, writers, rooms, seconds, &format!("s{run}")).await;
                let p = drive(&postgres, writers, rooms, seconds, &format!("p{run}")).await;
                (s, p)
            } else {
                let p = drive(&postgres, writers, rooms, seconds, &format!("p{run}")).await;
                let s = drive(&sqlite, writers, rooms, seconds, &format!("s{run}")).await;
                (s, p)
            };
            println!(
                "| {writers} | {rooms} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} |",
                s.0,
                s.1,
                s.2,
                p.0,
                p.1,
                p.2,
                p.0 / s.0
            );
        }
    }
}
