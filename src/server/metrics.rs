//! What the server counts, in the Prometheus text format, served on a listener of its own
//! (`--metrics-addr`, never the public port). Histograms have explicit buckets, so that the
//! nodes of a cluster can be summed. `docs/metrics.md` lists every series and what to alert on.
//!
//! The series live in one registry per process ([`metrics`]): the hub, the store's writer, the
//! sockets and the HTTP layer count as they go (an atomic add; the handles of the hot paths are
//! made once), and what is a state rather than a count (the database pools, the process, the
//! bus) is read when scraped.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Latency buckets, in seconds, for commits and deliveries: half a millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// HTTP request durations, in seconds (a request may take up to its 15 s deadline).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];
/// Events sent by one replay.
const REPLAY_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

/// The kinds of frame a server sends, as counted in `hubbub_frames_out_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// An event of a room's stream (a chat message, an edit, a join…), live or replayed.
    Event,
    Typing,
    Presence,
    Ack,
    Error,
    /// Everything else the protocol says (welcome, joined, room, left, read, pong, history_gap).
    Control,
    /// A `{"user","message"}` frame to a classic client.
    Classic,
}

const OUT_KINDS: [(Out, &str); 7] = [
    (Out::Event, "event"),
    (Out::Typing, "typing"),
    (Out::Presence, "presence"),
    (Out::Ack, "ack"),
    (Out::Error, "error"),
    (Out::Control, "control"),
    (Out::Classic, "classic"),
];

/// Every series of the process.
pub struct Metrics {
    registry: Registry,
    /// Open sockets of `hubbub.v1` and classic clients.
    pub rich: IntGauge,
    pub classic: IntGauge,
    handshakes: IntCounterVec,
    frames_in: IntCounterVec,
    frames_out: [IntCounter; OUT_KINDS.len()],
    /// Chat messages committed (not counting other events).
    pub messages_stored: IntCounter,
    /// Every event committed: messages, edits, deletes, reactions, membership changes.
    pub events_stored: IntCounter,
    /// Live events written to sockets (replays are counted apart).
    pub deliveries: IntCounter,
    /// Deliveries that found a member's queue full (the member then resyncs).
    pub queue_overflows: IntCounter,
    /// Sockets that re-read their rooms from storage after their queue overflowed.
    pub resyncs: IntCounter,
    closes: IntCounterVec,
    /// Events sent by each replay from storage (its count is the number of replays).
    pub replays: Histogram,
    /// From a batch's start to its commit (one observation per group commit).
    pub commit_seconds: Histogram,
    /// From the commit feed to the socket, for live events.
    pub delivery_seconds: Histogram,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    pool_connections: IntGaugeVec,
    process_rss: IntGauge,
    process_cpu: prometheus::Counter,
    process_fds: IntGauge,
    process_started: IntGauge,
    /// The CPU seconds already added to `process_cpu`, so each scrape adds only the difference.
    cpu_seen: Mutex<f64>,
    /// 1 while the bus is connected (cluster nodes only).
    pub bus_connected: IntGauge,
    pub bus_reconnects: IntCounter,
    /// Notes not published because the bus was away or behind.
    pub bus_dropped: IntCounter,
    /// From a note's publication on one node to its receipt on another.
    pub bus_lag_seconds: Histogram,
    /// Gaps in what the bus brought, read from the database (once per node).
    pub gap_reads: IntCounter,
}

/// The process's series, made on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("BUG: a valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("BUG: each series registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("BUG: a valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("BUG: each series registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("BUG: a valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("BUG: each series registered once");
    h
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("BUG: a valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("BUG: each series registered once");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new(
                "hubbub_connections",
                "Open WebSocket connections by protocol",
            ),
            &["protocol"],
        )
        .expect("BUG: a valid gauge");
        r.register(Box::new(connections.clone()))
            .expect("BUG: each series registered once");
        let frames_out = counter_vec(
            &r,
            "hubbub_frames_out_total",
            "Frames sent to WebSocket clients by type",
            &["type"],
        );
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hubbub_http_request_duration_seconds",
                "HTTP requests by route: time to the answer's head",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("BUG: a valid histogram");
        r.register(Box::new(http_seconds.clone()))
            .expect("BUG: each series registered once");
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "hubbub_db_pool_connections",
                "Database connections by pool and state (idle or in use)",
            ),
            &["pool", "state"],
        )
        .expect("BUG: a valid gauge");
        r.register(Box::new(pool_connections.clone()))
            .expect("BUG: each series registered once");
        let process_cpu = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "CPU time of the process, user and system",
        )
        .expect("BUG: a valid counter");
        r.register(Box::new(process_cpu.clone()))
            .expect("BUG: each series registered once");
        let m = Metrics {
            rich: connections.with_label_values(&["hubbub.v1"]),
            classic: connections.with_label_values(&["classic"]),
            handshakes: counter_vec(
                &r,
                "hubbub_handshakes_total",
                "WebSocket upgrade requests by outcome (the HTTP status answered)",
                &["outcome"],
            ),
            frames_in: counter_vec(
                &r,
                "hubbub_frames_in_total",
                "Frames received from WebSocket clients by type",
                &["type"],
            ),
            frames_out: OUT_KINDS.map(|(_, name)| frames_out.with_label_values(&[name])),
            messages_stored: counter(
                &r,
                "hubbub_messages_stored_total",
                "Chat messages committed to storage",
            ),
            events_stored: counter(
                &r,
                "hubbub_events_stored_total",
                "Events of every kind committed to storage (messages, edits, reactions, membership)",
            ),
            deliveries: counter(
                &r,
                "hubbub_deliveries_total",
                "Live events written to WebSocket clients",
            ),
            queue_overflows: counter(
                &r,
                "hubbub_queue_overflows_total",
                "Deliveries that found a member's queue full",
            ),
            resyncs: counter(
                &r,
                "hubbub_resyncs_total",
                "Sockets that re-read their rooms from storage after falling behind",
            ),
            closes: counter_vec(
                &r,
                "hubbub_closes_total",
                "WebSocket connections ended, by close code (none: the peer went away)",
                &["code"],
            ),
            replays: histogram(
                &r,
                "hubbub_replay_events",
                "Events sent by one replay from storage (resume, join, gap)",
                REPLAY_BUCKETS,
            ),
            commit_seconds: histogram(
                &r,
                "hubbub_commit_seconds",
                "Time to commit one group of appends",
                LATENCY_BUCKETS,
            ),
            delivery_seconds: histogram(
                &r,
                "hubbub_commit_to_delivery_seconds",
                "From an event's commit to its write to a socket",
                LATENCY_BUCKETS,
            ),
            http_requests: counter_vec(
                &r,
                "hubbub_http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            http_seconds,
            pool_connections,
            process_rss: gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory of the process",
            ),
            process_cpu,
            process_fds: gauge(&r, "process_open_fds", "Open file descriptors"),
            process_started: gauge(
                &r,
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch",
            ),
            cpu_seen: Mutex::new(0.0),
            bus_connected: gauge(
                &r,
                "hubbub_bus_connected",
                "1 while the bus between nodes is connected",
            ),
            bus_reconnects: counter(
                &r,
                "hubbub_bus_reconnects_total",
                "Times the bus connection came back after being lost",
            ),
            bus_dropped: counter(
                &r,
                "hubbub_bus_dropped_total",
                "Notes not published because the bus was away or behind",
            ),
            bus_lag_seconds: histogram(
                &r,
                "hubbub_bus_lag_seconds",
                "From a commit's publication on one node to its receipt on this one",
                LATENCY_BUCKETS,
            ),
            gap_reads: counter(
                &r,
                "hubbub_gap_reads_total",
                "Gaps in what the bus brought, read from the database",
            ),
            registry: r,
        };
        m.process_started.set(crate::server::auth::now_ms() / 1000);
        m
    }

    /// Counts an upgrade request by the status it was answered with.
    pub fn handshake(&self, status: u16) {
        let outcome = match status {
            101 => "101",
            401 => "401",
            403 => "403",
            429 => "429",
            503 => "503",
            400..=499 => "4xx",
            _ => "other",
        };
        self.handshakes.with_label_values(&[outcome]).inc();
    }

    /// Counts a frame received, by its type (`invalid` when it did not parse).
    pub fn frame_in(&self, kind: &'static str) {
        self.frames_in.with_label_values(&[kind]).inc();
    }

    /// Counts a frame sent.
    pub fn frame_out(&self, kind: Out) {
        self.frames_out[kind as usize].inc();
    }

    /// Counts `n` frames of one kind sent.
    pub fn frames_out(&self, kind: Out, n: u64) {
        self.frames_out[kind as usize].inc_by(n);
    }

    /// Counts a socket's end, by its close code (`None`: the peer went away without one). A
    /// client may close with any code of the application range: those count as `other`, so
    /// that no client can make series.
    pub fn closed(&self, code: Option<u16>) {
        let code = match code {
            None => "none".to_owned(),
            Some(c @ (1000..=1015 | 4000..=4002)) => c.to_string(),
            Some(_) => "other".to_owned(),
        };
        self.closes.with_label_values(&[&code]).inc();
    }

    /// Counts an HTTP request: `route` is the route's pattern (never the raw path, so that the
    /// series stay few).
    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[route, method, &status])
            .inc();
        self.http_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// Sets the connections of a database pool.
    pub fn pool(&self, pool: &str, idle: u64, in_use: u64) {
        self.pool_connections
            .with_label_values(&[pool, "idle"])
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
        self.pool_connections
            .with_label_values(&[pool, "in_use"])
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }

    /// Reads the process's memory, CPU time and descriptors from `/proc` (Linux; elsewhere they
    /// stay 0).
    fn read_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
            {
                self.process_rss.set(kib * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The fields after the command name (which may hold spaces) start after its ')'.
            let fields: Vec<&str> = stat
                .rfind(')')
                .map(|i| stat[i + 1..].split_whitespace().collect())
                .unwrap_or_default();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            // utime and stime, fields 14 and 15 of the line (11 and 12 after the name and
            // state), in clock ticks of 1/100 s on Linux.
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                let now = (user + system) / 100.0;
                let mut seen = self.cpu_seen.lock().unwrap_or_else(|p| p.into_inner());
                if now > *seen {
                    self.process_cpu.inc_by(now - *seen);
                    *seen = now;
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.read_process();
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_in_the_exposition_with_its_buckets() {
        let m = metrics();
        m.handshake(101);
        m.frame_in("send");
        m.frame_out(Out::Ack);
        m.closed(Some(1000));
        m.closed(Some(4999));
        m.http("/api/rooms", "GET", 200, Duration::from_millis(3));
        m.pool("read", 3, 1);
        m.commit_seconds.observe(0.002);
        let text = m.render();
        for series in [
            "hubbub_connections{protocol=\"hubbub.v1\"}",
            "hubbub_handshakes_total{outcome=\"101\"}",
            "hubbub_frames_in_total{type=\"send\"}",
            "hubbub_frames_out_total{type=\"ack\"}",
            "hubbub_frames_out_total{type=\"event\"}",
            "hubbub_closes_total{code=\"1000\"}",
            "hubbub_closes_total{code=\"other\"}",
            "hubbub_http_requests_total{method=\"GET\",route=\"/api/rooms\",status=\"200\"}",
            "hubbub_http_request_duration_seconds_bucket{route=\"/api/rooms\",le=\"0.005\"}",
            "hubbub_db_pool_connections{pool=\"read\",state=\"idle\"} 3",
            "hubbub_commit_seconds_bucket{le=\"0.0025\"}",
            "hubbub_commit_to_delivery_seconds_bucket{le=\"10\"}",
            "hubbub_replay_events_bucket{le=\"100\"}",
            "hubbub_messages_stored_total",
            "hubbub_deliveries_total",
            "hubbub_queue_overflows_total",
            "hubbub_resyncs_total",
            "hubbub_bus_connected",
            "hubbub_bus_lag_seconds_bucket",
            "process_open_fds",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("RSS");
        assert!(rss > 1_000_000.0, "RSS read from /proc: {rss}");
    }
}
