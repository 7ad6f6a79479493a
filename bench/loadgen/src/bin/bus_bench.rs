//! The bus engines side by side, with their maintained Rust clients (async-nats, redis-rs): one
//! publisher and one subscriber connection each, notes of 512 bytes (about a commit's size).
//!   latency     10,000 notes/s for 5 s, publish to receipt, p50 / p99 / max
//!   throughput  200,000 notes as fast as the publisher can send them: notes/s received
//!
//!   hubbub-bus-bench [--nats nats://127.0.0.1:4222] [--redis redis://127.0.0.1:6379]

use futures_util::StreamExt;
use std::time::{Duration, Instant};

const SIZE: usize = 512;
const RATE: u64 = 10_000;
const SECONDS: u64 = 5;
const BURST: u64 = 200_000;

/// A note: its number and when it was sent (ns since `base`), then padding.
fn note(base: Instant, n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIZE);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
    v.resize(SIZE, b'x');
    v
}

fn read(base: Instant, payload: &[u8]) -> Option<(u64, Duration)> {
    let n = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    let now = base.elapsed().as_nanos() as u64;
    Some((n, Duration::from_nanos(now.saturating_sub(sent))))
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// What a run measured.
struct Figures {
    latencies: Vec<Duration>,
    received: u64,
    elapsed: Duration,
}

/// Receives until `expected` notes (numbered from `first`) arrived or `deadline`.
async fn receive<S>(mut stream: S, base: Instant, first: u64, expected: u64) -> Figures
where
    S: futures_util::Stream<Item = Vec<u8>> + Unpin,
{
    let start = Instant::now();
    let mut last = start;
    let mut latencies = Vec::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received < expected {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(p)) => {
                if let Some((n, lat)) = read(base, &p) {
                    if n >= first {
                        received += 1;
                        latencies.push(lat);
                        last = Instant::now();
                    }
                }
            }
            _ => break,
        }
    }
    latencies.sort();
    Figures {
        latencies,
        received,
        elapsed: last.duration_since(start),
    }
}

fn report(engine: &str, test: &str, sent: u64, f: &Figures, sending: Duration) {
    println!(
        "| {engine} | {test} | {sent} | {} | {:.0} | {:.0} | {:.2} / {:.2} / {:.2} |",
        f.received,
        sent as f64 / sending.as_secs_f64(),
        f.received as f64 / f.elapsed.as_secs_f64(),
        ms(&f.latencies, 0.5),
        ms(&f.latencies, 0.99),
        ms(&f.latencies, 1.0)
    );
}

async fn nats(url: &str) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let base = Instant::now();
    let publisher = async_nats::connect(url).await.map_err(|e| err(&e))?;
    // Room for the whole burst in the client's queue: past its capacity NATS drops notes for a
    // slow consumer (at most once), which would measure the queue, not the bus.
    let subscriber = async_nats::ConnectOptions::new()
        .subscription_capacity(BURST as usize * 2)
        .connect(url)
        .await
        .map_err(|e| err(&e))?;
    for (test, first, count, paced) in [
        ("latency", 0, RATE * SECONDS, true),
        ("throughput", 1 << 40, BURST, false),
    ] {
        let sub = subscriber
            .subscribe(format!("bench.{test}"))
            .await
            .map_err(|e| err(&e))?;
        subscriber.flush().await.map_err(|e| err(&e))?;
        let stream = sub.map(|m| m.payload.to_vec());
        let receiving = tokio::spawn(receive(stream, base, first, count));
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for n in 0..count {
            if paced && n % (RATE / 1000) == 0 {
                tick.tick().await;
            }
            publisher
                .publish(format!("bench.{test}"), note(base, first + n).into())
                .await
                .map_err(|e| err(&e))?;
        }
        publisher.flush().await.map_err(|e| err(&e))?;
        let sending = start.elapsed();
        let f = receiving.await.map_err(|e| err(&e))?;
        report("NATS", test, count, &f, sending);
    }
    Ok(())
}

async fn redis(url: &str) -> Result<(), String> {
    use redis::AsyncCommands;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let base = Instant::now();
    let client = redis::Client::open(url).map_err(|e| err(&e))?;
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err(&e))?;
    for (test, first, count, paced) in [
        ("latency", 0, RATE * SECONDS, true),
        ("throughput", 1 << 40, BURST, false),
    ] {
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| err(&e))?;
        pubsub
            .subscribe(format!("bench.{test}"))
            .await
            .map_err(|e| err(&e))?;
        let stream = pubsub
            .into_on_message()
            .map(|m| m.get_payload_bytes().to_vec());
        let receiving = tokio::spawn(receive(stream, base, first, count));
        let start = Instant::now();
        let channel = format!("bench.{test}");
        let publish = |n: u64| {
            let mut conn = publisher.clone();
            let channel = channel.clone();
            async move {
                let _: Result<i64, _> = conn.publish(channel, note(base, first + n)).await;
            }
        };
        if paced {
            // Each publish its own task, RATE/1000 of them a millisecond: the multiplexed
            // connection pipelines them.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut tasks = Vec::with_capacity(count as usize);
            for n in 0..count {
                if n % (RATE / 1000) == 0 {
                    tick.tick().await;
                }
                tasks.push(tokio::spawn(publish(n)));
            }
            for t in tasks {
                let _ = t.await;
            }
        } else {
            // Up to 256 publishes in flight.
            futures_util::stream::iter(0..count)
                .map(publish)
                .buffer_unordered(256)
                .collect::<Vec<()>>()
                .await;
        }
        let sending = start.elapsed();
        let f = receiving.await.map_err(|e| err(&e))?;
        report("Redis", test, count, &f, sending);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut nats_url = std::env::var("HUBBUB_TEST_NATS").unwrap_or("nats://127.0.0.1:4222".into());
    let mut redis_url =
        std::env::var("HUBBUB_TEST_REDIS").unwrap_or("redis://127.0.0.1:6379".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--nats", Some(u)) => nats_url = u,
            ("--redis", Some(u)) => redis_url = u,
            _ => {
                eprintln!("usage: hubbub-bus-bench [--nats URL] [--redis URL]");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("notes of {SIZE} bytes, one publisher and one subscriber connection");
    println!(
        "| engine | test | sent | received | sent/s | received/s | latency ms p50 / p99 / max |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, result) in [
        ("NATS", nats(&nats_url).await),
        ("Redis", redis(&redis_url).await),
    ] {
        if let Err(e) = result {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
