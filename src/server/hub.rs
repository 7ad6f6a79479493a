//! The in-process fan-out hub: rooms, their members, and delivery of each stored message to every
//! member. It knows nothing of HTTP or SQL; the rest of the server talks to it through [`Hub`].
//!
//! Every member has one bounded queue. Publishing never waits: a member whose queue is full is
//! flagged as lagging instead, and its connection re-reads what it missed from storage (it keeps a
//! per-room cursor), so a slow reader is resynced, never silently skipped.

use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// One stored message, encoded once for every kind of subscriber.
#[derive(Debug)]
pub struct Delivery {
    pub room: Arc<str>,
    pub seq: u64,
    /// The `hubbub.v1` `message` frame.
    pub rich: Utf8Bytes,
    /// The classic `{"user","message"}` frame.
    pub classic: Utf8Bytes,
}

/// The hub's handle: cheap to clone, shared by every connection and the HTTP API.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: Mutex<HashMap<Arc<str>, HashMap<u64, Member>>>,
    next_id: AtomicU64,
    /// Deliveries that found a member's queue full since start (each one triggers a resync).
    overflows: AtomicU64,
    /// Capacity of each member's queue, in messages.
    queue_len: usize,
    /// Capacity of each member's queue, in bytes of encoded frames.
    queue_bytes: usize,
}

#[derive(Clone)]
struct Member {
    tx: mpsc::Sender<Arc<Delivery>>,
    lagged: Arc<Notify>,
    /// Bytes of the frames in the queue.
    queued: Arc<AtomicUsize>,
}

/// A connection's membership: its queue, its lag signal, and the rooms it is in. Dropping it leaves
/// every room.
pub struct Subscriber {
    id: u64,
    hub: Hub,
    member: Member,
    rx: mpsc::Receiver<Arc<Delivery>>,
    rooms: Vec<Arc<str>>,
}

impl Delivery {
    /// What the delivery weighs in a member's queue.
    fn size(&self) -> usize {
        self.rich.len().max(self.classic.len())
    }
}

impl Hub {
    pub fn new(queue_len: usize, queue_bytes: usize) -> Self {
        Hub {
            inner: Arc::new(Inner {
                rooms: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                overflows: AtomicU64::new(0),
                queue_len: queue_len.max(1),
                queue_bytes: queue_bytes.max(1),
            }),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, HashMap<u64, Member>>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a member with its own queue; it receives nothing until it joins a room.
    pub fn subscribe(&self) -> Subscriber {
        let (tx, rx) = mpsc::channel(self.inner.queue_len);
        Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            hub: self.clone(),
            member: Member {
                tx,
                lagged: Arc::new(Notify::new()),
                queued: Arc::new(AtomicUsize::new(0)),
            },
            rx,
            rooms: Vec::new(),
        }
    }

    /// Hands a delivery to every member of its room without waiting on any of them.
    /// Returns how many members got it in their queue.
    pub fn publish(&self, delivery: Delivery) -> usize {
        let delivery = Arc::new(delivery);
        let mut delivered = 0;
        let mut gone = Vec::new();
        let mut rooms = self.rooms();
        if let Some(members) = rooms.get(&delivery.room) {
            let size = delivery.size();
            for (id, member) in members {
                if member.queued.load(Ordering::Relaxed) + size > self.inner.queue_bytes {
                    self.inner.overflows.fetch_add(1, Ordering::Relaxed);
                    member.lagged.notify_one();
                    continue;
                }
                match member.tx.try_send(Arc::clone(&delivery)) {
                    Ok(()) => {
                        member.queued.fetch_add(size, Ordering::Relaxed);
                        delivered += 1;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.inner.overflows.fetch_add(1, Ordering::Relaxed);
                        member.lagged.notify_one();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
                }
            }
        }
        if !gone.is_empty() {
            if let Some(members) = rooms.get_mut(&delivery.room) {
                for id in gone {
                    members.remove(&id);
                }
            }
        }
        delivered
    }

    /// Deliveries that did not fit a member's queue since start.
    pub fn overflows(&self) -> u64 {
        self.inner.overflows.load(Ordering::Relaxed)
    }

    /// Members currently in `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms().get(room).map_or(0, HashMap::len)
    }
}

impl Subscriber {
    /// Starts receiving the room's deliveries. Call it before reading the room's history, so that
    /// nothing stored in between is missed (duplicates are dropped by seq).
    pub fn join(&mut self, room: &str) {
        if self.rooms.iter().any(|r| &**r == room) {
            return;
        }
        let room: Arc<str> = Arc::from(room);
        self.hub
            .rooms()
            .entry(Arc::clone(&room))
            .or_default()
            .insert(self.id, self.member.clone());
        self.rooms.push(room);
    }

    pub fn leave(&mut self, room: &str) {
        self.rooms.retain(|r| &**r != room);
        let mut rooms = self.hub.rooms();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&self.id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Signalled when a delivery could not be queued for this member: it must resync from storage.
    pub fn lag_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.member.lagged)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn taken(&self, d: Arc<Delivery>) -> Arc<Delivery> {
        self.member.queued.fetch_sub(d.size(), Ordering::Relaxed);
        d
    }

    /// The next delivery; pending forever once the hub is gone (it never is while we hold it).
    pub async fn recv(&mut self) -> Option<Arc<Delivery>> {
        let d = self.rx.recv().await?;
        Some(self.taken(d))
    }

    /// The next delivery if one is queued.
    pub fn try_recv(&mut self) -> Option<Arc<Delivery>> {
        let d = self.rx.try_recv().ok()?;
        Some(self.taken(d))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for room in std::mem::take(&mut self.rooms) {
            self.leave(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(room: &str, seq: u64) -> Delivery {
        Delivery {
            room: room.into(),
            seq,
            rich: Utf8Bytes::from(format!("r{seq}")),
            classic: Utf8Bytes::from(format!("c{seq}")),
        }
    }

    #[tokio::test]
    async fn members_get_their_rooms_only() {
        let hub = Hub::new(8, 1 << 20);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        a.join("general");
        b.join("other");
        assert_eq!(hub.publish(delivery("general", 1)), 1);
        assert_eq!(a.recv().await.map(|d| d.seq), Some(1));
        assert!(b.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_flags_lag_instead_of_blocking() {
        let hub = Hub::new(2, 1 << 20);
        let mut a = hub.subscribe();
        a.join("general");
        for seq in 1..=3 {
            hub.publish(delivery("general", seq));
        }
        // The third did not fit: the member is told it lagged, and keeps what was queued.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.lag_signal().notified())
            .await
            .expect("lag signalled");
        assert_eq!(a.recv().await.map(|d| d.seq), Some(1));
        assert_eq!(a.recv().await.map(|d| d.seq), Some(2));
    }

    #[tokio::test]
    async fn the_byte_bound_flags_lag_too() {
        let hub = Hub::new(100, 10);
        let mut a = hub.subscribe();
        a.join("general");
        hub.publish(delivery("general", 1)); // 2 bytes
        let mut big = delivery("general", 2);
        big.rich = Utf8Bytes::from("x".repeat(9));
        assert_eq!(hub.publish(big), 0);
        assert_eq!(hub.overflows(), 1);
        assert_eq!(a.recv().await.map(|d| d.seq), Some(1));
        // Once drained, the queue takes the big one.
        let mut big = delivery("general", 2);
        big.rich = Utf8Bytes::from("x".repeat(9));
        assert_eq!(hub.publish(big), 1);
    }

    #[tokio::test]
    async fn dropping_a_subscriber_leaves_its_rooms() {
        let hub = Hub::new(2, 1 << 20);
        let mut a = hub.subscribe();
        a.join("general");
        assert_eq!(hub.member_count("general"), 1);
        drop(a);
        assert_eq!(hub.member_count("general"), 0);
    }
}
