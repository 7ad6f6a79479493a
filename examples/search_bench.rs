//! Search on a large history: fills a store with 1,000,000 messages (natural-looking text from a
//! vocabulary of 20,000 words, in 10 public rooms, from 50 people), then times `Store::search`
//! (the real query, with its access rule) for several kinds of search, and what the full-text
//! index costs each message written, by appending the same messages with its triggers and
//! without them.
//!
//!   cargo run --release --features ssr --example search_bench [-- MESSAGES]

use hubbub::server::chat::parse_search;
use hubbub::server::store::{AccountStore, Author, NewMessage, SqliteStore, Store};
use std::time::{Duration, Instant};

/// A small deterministic generator, so every run writes the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word index with a Zipf-like spread: a few words are everywhere, most are rare.
    fn word(&mut self, vocabulary: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((vocabulary as f64).powf(u) as usize).saturating_sub(1)
    }
}

fn word(i: usize) -> String {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "zo", "pi", "se", "da", "vu", "fe", "gro", "bel",
        "tor", "wen", "sha", "qui", "mar", "lin", "dor", "ix", "ul", "ber",
    ];
    let mut w = String::new();
    let mut n = i + 1;
    while n > 0 {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    w
}

fn sentence(rng: &mut Rng, vocabulary: usize) -> String {
    let len = 4 + (rng.next() % 14) as usize;
    (0..len)
        .map(|_| word(rng.word(vocabulary)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes one search of a kind from the generator.
type MakeQuery = fn(&mut Rng) -> String;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let vocabulary = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("store");
    let reader = store
        .create_user("reader", "Reader", "x", None)
        .await
        .expect("user");
    let rooms: Vec<String> = (0..10).map(|i| format!("room{i}")).collect();
    for r in &rooms {
        store.create_room(r).await.expect("room");
    }
    let people: Vec<String> = (0..50).map(|i| format!("person{i}")).collect();

    // The history, written straight into the tables in large transactions (the triggers keep
    // the index as they do for every message), so filling it takes a minute, not an hour.
    let url = format!("sqlite://{}", dir.path().join("hubbub.sqlite3").display());
    let db = sqlx::SqlitePool::connect(&url).await.expect("db");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let filled = Instant::now();
    let batch = 20_000;
    let mut seqs = vec![0i64; rooms.len()];
    let mut written = 0;
    while written < total {
        let mut tx = db.begin().await.expect("tx");
        for _ in 0..batch.min(total - written) {
            let r = (rng.next() % rooms.len() as u64) as usize;
            seqs[r] += 1;
            let who = &people[(rng.next() % people.len() as u64) as usize];
            sqlx::query(
                "INSERT INTO messages (room_id, seq, client_id, kind, user, username, body, ts) \
                 VALUES ((SELECT id FROM rooms WHERE name = ?), ?, ?, 'message', ?, ?, ?, ?)",
            )
            .bind(&rooms[r])
            .bind(seqs[r])
            .bind(format!("b{written}"))
            .bind(who)
            .bind(who)
            .bind(sentence(&mut rng, vocabulary))
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
    let fill_secs = filled.elapsed().as_secs_f64();
    let size: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "history: {total} messages in {fill_secs:.1} s; database {:.0} MB",
        size as f64 / 1e6
    );

    // The searches, each 100 times with different words.
    let kinds: [(&str, MakeQuery); 6] = [
        ("a common word", |r| word(r.word(30))),
        ("a rare word", |r| {
            word(5_000 + (r.next() % 10_000) as usize)
        }),
        ("two words", |r| {
            format!("{} {}", word(r.word(2_000)), word(r.word(2_000)))
        }),
        ("a phrase", |r| {
            format!("\"{} {}\"", word(r.word(200)), word(r.word(200)))
        }),
        ("a word from:@person", |r| {
            format!("{} from:@person{}", word(r.word(500)), r.next() % 50)
        }),
        ("a word in:#room", |r| {
            format!("{} in:#room{}", word(r.word(500)), r.next() % 10)
        }),
    ];
    println!("\n| search | p50 ms | p99 ms | max ms | hits (mean of 20 asked) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut all = Vec::new();
    for (name, make) in kinds {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..100 {
            let q = make(&mut rng);
            let search = parse_search(&q).expect("query");
            let t = Instant::now();
            let found = store
                .search(
                    hubbub::server::access::search_scope(&reader),
                    &search,
                    None,
                    20,
                )
                .await
                .expect("search");
            times.push(t.elapsed());
            hits += found.len();
        }
        times.sort();
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} |",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
            hits as f64 / 100.0
        );
        all.extend(times);
    }
    all.sort();
    println!(
        "| all | {:.2} | {:.2} | {:.2} | |",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );

    // What the index costs a write: the same appends through the store (group commit, one
    // fsync per batch) with the index's triggers, then without them, alternating in rounds.
    let appends = 4_000;
    let author = Author::guest("bench".into());
    let mut with = Duration::ZERO;
    let mut without = Duration::ZERO;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'messages_fts%'",
    )
    .fetch_all(&db)
    .await
    .expect("triggers");
    for round in 0..4 {
        for indexed in [true, false] {
            if !indexed {
                for t in [
                    "messages_fts_insert",
                    "messages_fts_update",
                    "messages_fts_delete",
                ] {
                    sqlx::query(&format!("DROP TRIGGER {t}"))
                        .execute(&db)
                        .await
                        .expect("drop");
                }
            }
            let t = Instant::now();
            let sends = (0..appends / 4).map(|i| {
                let body = sentence(&mut Rng(round * 1_000_003 + i as u64 + 1), vocabulary);
                let m = NewMessage::chat(
                    &rooms[i % rooms.len()],
                    format!("w{round}-{indexed}-{i}"),
                    author.clone(),
                    body,
                );
                store.append(m)
            });
            for r in futures_util::future::join_all(sends).await {
                r.expect("append");
            }
            let took = t.elapsed();
            if indexed {
                with += took;
            } else {
                without += took;
                for sql in &triggers {
                    sqlx::query(sql).execute(&db).await.expect("trigger");
                }
            }
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / appends as f64;
    println!(
        "\nappends (concurrent, group commit): {:.1} µs a message with the index, {:.1} µs without: \
         the index adds {:.1} µs ({:.0}%)",
        per(with),
        per(without),
        per(with) - per(without),
        (per(with) / per(without) - 1.0) * 100.0
    );
}
