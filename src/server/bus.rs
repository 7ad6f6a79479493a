//! The bus between the nodes of a cluster (NATS). The database is the source of truth and the bus
//! only a hint: each commit is published after it commits, and a node that misses one fills the
//! gap from the database (see `sequencer.rs`), so a lost note costs a read, never a message.
//! Besides commits, the bus carries what lives in memory on each node: relayed frames (typing,
//! read positions), ended credentials, the presence of each node's people, and what each account
//! spent of its limits on each node.
//!
//! Publishing never waits on the bus: notes go to a bounded queue that one task writes to the
//! connection; when the bus is away the queue fills and notes are dropped (and counted).

use crate::protocol::{ChatMessage, Status};
use crate::server::auth::Credential;
use crate::server::metrics::metrics;
use crate::server::tasks::Tasks;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The subject every node of a cluster publishes to and listens on: this prefix and a digest
/// of the cluster's identity (see [`subject`]).
pub const SUBJECT_PREFIX: &str = "hubbub.v1";

/// The subject of the cluster whose shared database is `identity`.
pub fn subject(identity: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(identity.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SUBJECT_PREFIX}.{hex}")
}
/// The name `/healthz` gives the task that writes to the bus.
pub const BUS_TASK: &str = "bus";
/// Notes waiting for the bus connection at most; past it they are dropped.
const OUT_QUEUE: usize = 16_384;
/// Notes received and not yet handled at most; past it they are dropped.
const IN_QUEUE: usize = 65_536;
/// How long one publish may wait on the connection before the note is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// What one node tells the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Note {
    /// An event committed on the sending node.
    Commit { m: Box<ChatMessage> },
    /// A frame for the members of `room` (typing), or for an account's own channel (`@name`:
    /// a read position moved).
    Relay {
        room: String,
        frame: String,
        personal: bool,
    },
    /// A credential ended: close the sockets opened with it.
    Revoke { user: i64, credential: Credential },
    /// Every session of an account ended (and its tokens too, unless `sessions_only`): close its
    /// sockets opened with them.
    RevokeAll { user: i64, sessions_only: bool },
    /// What the sending node's accounts spent of their message budget since its last note, and
    /// how many sockets each has open there (`full`: the whole list, the others are gone).
    Usage {
        spent: Vec<(i64, f64)>,
        sockets: Vec<(i64, u32)>,
        full: bool,
    },
    /// The presence of the sending node's people (`full`: all of them, the others are offline
    /// there).
    Presence { people: Vec<NodePerson>, full: bool },
}

/// One person as one node sees them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodePerson {
    pub username: String,
    pub status: Status,
    pub last_active: i64,
    /// The rooms their sessions on that node follow.
    pub rooms: Vec<String>,
}

/// A note and the node it came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    /// When it was published, in microseconds since the epoch (0 from nodes that do not say),
    /// for the bus's lag.
    #[serde(default)]
    pub sent_us: i64,
    pub note: Note,
}

/// Microseconds since the epoch.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bad bus URL {0:?}")]
    Url(String),
    #[error("cannot use the bus: {0}")]
    Connect(String),
}

/// The bus's handle: cheap to clone; a no-op on a single node.
#[derive(Clone, Default)]
pub struct Bus {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    node: String,
    out: mpsc::Sender<Bytes>,
    connected: AtomicBool,
    disconnects: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    /// When the connection was last lost (ms since the epoch), and when it came back.
    last_down: Mutex<Option<(i64, Option<i64>)>>,
}

/// What `/healthz` says of the bus.
#[derive(Debug, Serialize)]
pub struct BusStatus {
    pub node: String,
    pub connected: bool,
    /// Times the connection was lost since start.
    pub disconnects: u64,
    /// Notes dropped because the bus could not take them.
    pub dropped: u64,
    pub received: u64,
    /// When the connection was last lost and when it came back (ms since the epoch).
    pub last_down: Option<i64>,
    pub last_up: Option<i64>,
}

impl Bus {
    /// The bus of a single node: publishes nothing.
    pub fn none() -> Self {
        Bus::default()
    }

    /// Connects to the NATS server at `url` as `node` of the cluster whose database is
    /// `cluster`, in the background: the server starts even while the bus is away, and
    /// reconnects whenever it is lost. Received notes come out of the returned queue.
    pub async fn connect(
        url: &str,
        node: &str,
        cluster: &str,
        tasks: &Tasks,
    ) -> Result<(Bus, mpsc::Receiver<Envelope>), BusError> {
        let subject = subject(cluster);
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
        let state = Arc::new(Inner {
            node: node.to_owned(),
            out: out_tx,
            connected: AtomicBool::new(false),
            disconnects: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_down: Mutex::new(None),
        });
        let events = Arc::downgrade(&state);
        let client = async_nats::ConnectOptions::new()
            .name(format!("hubbub {node}"))
            // A node hears the others, never itself.
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1_000))
            })
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if let Some(state) = events.upgrade() {
                        state.on_event(&event);
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        let mut sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        let (in_tx, in_rx) = mpsc::channel(IN_QUEUE);
        let bus = Bus {
            inner: Some(Arc::clone(&state)),
        };
        tasks.started(BUS_TASK);
        let writer = {
            let state = Arc::clone(&state);
            let client = client.clone();
            async move {
                while let Some(bytes) = out_rx.recv().await {
                    let publish = client.publish(subject.clone(), bytes);
                    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        state.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics().bus_dropped.inc();
                    }
                }
            }
        };
        tokio::spawn(writer);
        let reader = {
            let state = Arc::clone(&state);
            let tasks = tasks.clone();
            async move {
                while let Some(msg) = sub.next().await {
                    state.received.fetch_add(1, Ordering::Relaxed);
                    match serde_json::from_slice::<Envelope>(&msg.payload) {
                        Ok(envelope) if envelope.from != state.node => {
                            if envelope.sent_us > 0 {
                                let lag = (now_us() - envelope.sent_us).max(0) as f64 / 1e6;
                                metrics().bus_lag_seconds.observe(lag);
                            }
                            if in_tx.try_send(envelope).is_err() {
                                state.dropped.fetch_add(1, Ordering::Relaxed);
                                metrics().bus_dropped.inc();
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "a note on the bus could not be read"),
                    }
                }
                tasks.stopped(BUS_TASK);
                drop(client);
            }
        };
        tokio::spawn(reader);
        Ok((bus, in_rx))
    }

    /// Whether there is a bus (a cluster) at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Sends `note` to the other nodes, without waiting: dropped when the bus cannot take it.
    pub fn publish(&self, note: Note) {
        let Some(inner) = &self.inner else {
            return;
        };
        let envelope = Envelope {
            from: inner.node.clone(),
            sent_us: now_us(),
            note,
        };
        let bytes = match serde_json::to_vec(&envelope) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "a note could not be encoded");
                return;
            }
        };
        if inner.out.try_send(bytes).is_err() {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics().bus_dropped.inc();
        }
    }

    pub fn status(&self) -> Option<BusStatus> {
        let inner = self.inner.as_ref()?;
        let down = *inner.last_down.lock().unwrap_or_else(|p| p.into_inner());
        Some(BusStatus {
            node: inner.node.clone(),
            connected: inner.connected.load(Ordering::Relaxed),
            disconnects: inner.disconnects.load(Ordering::Relaxed),
            dropped: inner.dropped.load(Ordering::Relaxed),
            received: inner.received.load(Ordering::Relaxed),
            last_down: down.map(|(d, _)| d),
            last_up: down.and_then(|(_, u)| u),
        })
    }

    /// Whether the bus is connected now (`true` on a single node, which needs none).
    pub fn connected(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|i| i.connected.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn on_event(&self, event: &async_nats::Event) {
        let now = crate::server::auth::now_ms();
        match event {
            async_nats::Event::Connected => {
                self.connected.store(true, Ordering::Relaxed);
                metrics().bus_connected.set(1);
                let mut down = self.last_down.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, up)) = down.as_mut() {
                    *up = Some(now);
                    metrics().bus_reconnects.inc();
                    tracing::info!(
                        "bus connection back: missed commits are read from the database"
                    );
                } else {
                    tracing::info!("bus connected");
                }
            }
            async_nats::Event::Disconnected => {
                self.connected.store(false, Ordering::Relaxed);
                metrics().bus_connected.set(0);
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                *self.last_down.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, None));
                tracing::warn!(
                    "bus connection lost: other nodes' messages arrive by database reads until it is back"
                );
            }
            other => tracing::info!(event = %other, "bus"),
        }
    }
}
