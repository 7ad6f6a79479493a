//! Group commit, shared by the stores: one task per store owns the write connection, takes every
//! append that is waiting (up to [`GROUP_MAX`]), stores them in one transaction with one flush,
//! then answers each. An append is answered only after the commit that holds it, so "ack only
//! after stored" holds; under load many share one commit. New messages then go to the commit
//! feed, in seq order, each exactly once: a commit that reports an error is checked against the
//! database, and what did land is fed and acked.
//!
//! A panic in the loop is caught: the appends of that batch fail (their senders retry with the
//! same `client_id`), the rooms are reconciled, and the loop goes on with the same queue.

use super::feed::FeedSender;
use super::{Appended, NewMessage, StoreError};
use crate::protocol::ChatMessage;
use crate::server::faults;
use crate::server::metrics::metrics;
use crate::server::tasks::{panic_message, Tasks};
use async_trait::async_trait;
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The name `/healthz` gives the group-commit task.
pub const WRITER_TASK: &str = "writer";

/// An append waiting for the group commit, and where its answer goes.
pub(super) type PendingAppend = (NewMessage, oneshot::Sender<Result<Appended, StoreError>>);

/// Most appends committed in one transaction.
pub(super) const GROUP_MAX: usize = 256;

/// What the writer remembers across batches, and across a panic of its loop: what it has put
/// on the commit feed, and which rooms may hold commits it has not.
#[derive(Default)]
pub(super) struct Fed {
    /// Per room, the last seq put on the feed (or the head when the room was first written).
    pub(super) heads: HashMap<String, u64>,
    /// Rooms of a batch whose outcome is unknown (a commit that reported an error, or a panic):
    /// what landed there is read back and fed before anything else is written.
    suspect: HashSet<String>,
}

/// What a backend does for the group commit.
#[async_trait]
pub(super) trait Batches: Send + Sync + 'static {
    /// Stores a batch in one transaction. A refused append (an unknown or archived room, say)
    /// fails only itself; a database error fails the whole batch, which is rolled back. Records
    /// in `fed.heads` the head of each room it writes to for the first time.
    async fn append_batch(
        &self,
        batch: &[PendingAppend],
        fed: &mut Fed,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError>;

    /// The room's committed events after `after`, in seq order.
    async fn committed_after(&self, room: &str, after: u64)
        -> Result<Vec<ChatMessage>, StoreError>;

    /// The stored event with this `(room, client_id)`, if the database answers and has it.
    async fn stored(&self, msg: &NewMessage) -> Option<ChatMessage>;
}

/// Starts the group commit over `batches`; returns where appends go and the feed of commits.
pub(super) fn start(
    batches: impl Batches,
    tasks: Tasks,
) -> (mpsc::Sender<PendingAppend>, FeedSender) {
    let (appends, pending) = mpsc::channel(4 * GROUP_MAX);
    let commits = FeedSender::default();
    tokio::spawn(group_commit(batches, pending, commits.clone(), tasks));
    (appends, commits)
}

/// Hands `msg` to the group commit and waits for its answer.
pub(super) async fn append_via(
    appends: &mpsc::Sender<PendingAppend>,
    msg: NewMessage,
) -> Result<Appended, StoreError> {
    let (reply, answer) = oneshot::channel();
    appends
        .send((msg, reply))
        .await
        .map_err(|_| StoreError::Batch("the writer has stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Batch("the writer has stopped".into()))?
}

async fn group_commit(
    batches: impl Batches,
    mut pending: mpsc::Receiver<PendingAppend>,
    commits: FeedSender,
    tasks: Tasks,
) {
    let mut fed = Fed::default();
    loop {
        tasks.started(WRITER_TASK);
        let run = AssertUnwindSafe(writer_loop(&batches, &mut pending, &commits, &mut fed))
            .catch_unwind()
            .await;
        match run {
            Ok(()) => break,
            Err(payload) => {
                tasks.panicked(WRITER_TASK, panic_message(&*payload));
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Whatever the lost batch committed is delivered now, not at the next append.
                if let Err(e) = reconcile(&batches, &commits, &mut fed).await {
                    tracing::error!(error = %e, "cannot read back an uncertain commit");
                }
            }
        }
    }
    tasks.stopped(WRITER_TASK);
    commits.close();
}

async fn writer_loop(
    batches: &impl Batches,
    pending: &mut mpsc::Receiver<PendingAppend>,
    commits: &FeedSender,
    fed: &mut Fed,
) {
    let mut batch: Vec<PendingAppend> = Vec::with_capacity(GROUP_MAX);
    while pending.recv_many(&mut batch, GROUP_MAX).await > 0 {
        if let Err(e) = reconcile(batches, commits, fed).await {
            let message = e.to_string();
            tracing::error!(error = %message, "cannot read back an uncertain commit");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Batch(message.clone())));
            }
            continue;
        }
        fed.suspect
            .extend(batch.iter().map(|(m, _)| m.room.clone()));
        let started = std::time::Instant::now();
        let outcome = batches.append_batch(&batch, fed).await;
        metrics()
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(results) => {
                if batch
                    .iter()
                    .any(|(m, _)| faults::hit("panic-after-commit", &m.body))
                {
                    panic!("injected fault: panic-after-commit");
                }
                for result in results.iter().flatten().filter(|a| a.created) {
                    feed(commits, fed, &result.message);
                    for more in &result.more {
                        feed(commits, fed, more);
                    }
                }
                for room in batch.iter().map(|(m, _)| &m.room) {
                    fed.suspect.remove(room);
                }
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, appends = batch.len(), "group commit failed");
                // The commit may have landed all the same: read back what is there.
                let landed = match reconcile(batches, commits, fed).await {
                    Ok(landed) => landed,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read back an uncertain commit");
                        HashMap::new()
                    }
                };
                for (msg, reply) in batch.drain(..) {
                    let key = (msg.room.clone(), msg.client_id.clone());
                    let answer = match landed.get(&key) {
                        Some(message) => Ok(Appended {
                            message: message.clone(),
                            more: Vec::new(),
                            created: true,
                            freed: Vec::new(),
                        }),
                        // Stored before (a resend): the original is the answer, as always.
                        None => match batches.stored(&msg).await {
                            Some(original) => Ok(Appended {
                                message: original,
                                more: Vec::new(),
                                created: false,
                                freed: Vec::new(),
                            }),
                            None => Err(StoreError::Batch(message.clone())),
                        },
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

fn feed(commits: &FeedSender, fed: &mut Fed, message: &ChatMessage) {
    let head = fed.heads.entry(message.room.clone()).or_default();
    *head = (*head).max(message.seq);
    let m = metrics();
    m.events_stored.inc();
    if message.is_message() {
        m.messages_stored.inc();
    }
    commits.send(Arc::new(message.clone()));
}

/// Feeds what committed in the suspect rooms after what was fed, and returns it by
/// (room, client_id). Nothing to do (and no query) when no room is suspect.
async fn reconcile(
    batches: &impl Batches,
    commits: &FeedSender,
    fed: &mut Fed,
) -> Result<HashMap<(String, String), ChatMessage>, StoreError> {
    let mut landed = HashMap::new();
    let rooms: Vec<String> = fed.suspect.iter().cloned().collect();
    for room in rooms {
        let Some(&after) = fed.heads.get(&room) else {
            // Never written by this writer: nothing of it can be uncertain.
            fed.suspect.remove(&room);
            continue;
        };
        for message in batches.committed_after(&room, after).await? {
            tracing::warn!(room = %message.room, seq = message.seq, "a commit reported as failed had landed; delivering it");
            feed(commits, fed, &message);
            landed.insert((message.room.clone(), message.client_id.clone()), message);
        }
        fed.suspect.remove(&room);
    }
    Ok(landed)
}
