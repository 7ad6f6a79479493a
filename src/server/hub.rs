//! The in-process fan-out hub: rooms, their members, and delivery of each stored message to every
//! member. It knows nothing of HTTP or SQL; the rest of the server talks to it through [`Hub`].
//!
//! Every member has one bounded queue. Publishing never waits: a member whose queue is full is
//! flagged as lagging instead, and its connection re-reads what it missed from storage (it keeps a
//! per-room cursor), so a slow reader is resynced, never silently skipped.

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

/// One stored message, encoded once for every kind of subscriber.
#[derive(Debug)]
pub struct Delivery {
    pub room: Arc<str>,
    pub seq: u64,
    /// The `hubbub.v1` `message` frame.
    pub rich: Utf8Bytes,
    /// The classic `{"user","message"}` frame; empty for events classic clients do not see.
    pub classic: Utf8Bytes,
    /// Set on what goes to one account's sockets rather than to a room's members.
    pub personal: Option<Personal>,
    /// A signal that is never stored (typing, presence): no seq, passed on as it is, and the
    /// first thing a member's queue sheds under pressure.
    pub ephemeral: bool,
    /// When the event was taken off the commit feed (or the bus), for the commit-to-delivery
    /// latency.
    pub at: std::time::Instant,
}

/// What a delivery on an account's own channel (see [`personal_channel`]) asks its sockets to do.
#[derive(Debug)]
pub enum Personal {
    /// The account is now in `room`: subscribe, and replay from `from` (the event that added it).
    Joined { room: Arc<str>, from: u64 },
    /// The account is no longer in `room`: unsubscribe.
    Left { room: Arc<str> },
    /// Pass the rich frame on as it is (a read position moved).
    Frame,
}

/// The channel of one account's sockets, beside the rooms: membership changes and read positions
/// reach every tab and device of the account through it. No room name can take this form.
pub fn personal_channel(username: &str) -> String {
    format!("@{username}")
}

/// What a member receives next.
#[derive(Debug)]
pub enum Event {
    Delivery(Arc<Delivery>),
    /// Deliveries were dropped because the queue was full: re-read every room from storage.
    Lagged,
}

/// The hub's handle: cheap to clone, shared by every connection and the HTTP API.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Room name → member id → that member's queue.
type Rooms = HashMap<Arc<str>, HashMap<u64, Arc<Queue>>>;

struct Inner {
    rooms: Mutex<Rooms>,
    next_id: AtomicU64,
    /// Deliveries that found a member's queue full since start (each one triggers a resync).
    overflows: AtomicU64,
    /// Capacity of each member's queue, in messages.
    queue_len: usize,
    /// Capacity of each member's queue, in bytes of encoded frames.
    queue_bytes: usize,
    /// Per room, the lowest cursor a connection replayed it to lately: where a cluster node
    /// that has not yet heard of the room starts ordering its events (see `sequencer.rs`).
    floors: Mutex<HashMap<Arc<str>, u64>>,
    /// Reads of the database that filled a gap in the events heard of (cluster nodes).
    gap_reads: AtomicU64,
    /// Whether floors are kept (only a cluster node needs them).
    clustered: std::sync::atomic::AtomicBool,
}

/// A member's queue: one small allocation per connection, empty until something is queued (an
/// idle connection's memory is most of what a server with many connections holds).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// The member's task, woken when something is queued or the queue overflowed.
    waker: AtomicWaker,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Delivery>>,
    /// Bytes of the frames in `items`.
    bytes: usize,
    lagged: bool,
}

impl QueueState {
    fn flag_lagged(&mut self) {
        self.items.clear();
        self.items.shrink_to(0);
        self.bytes = 0;
        self.lagged = true;
    }
}

enum Pushed {
    Queued,
    /// An ephemeral delivery, dropped because the queue is busy.
    Shed,
    /// The queue is full: the member is flagged to resync.
    Overflowed,
    /// The member is already flagged to resync, which will read this one from storage.
    Skipped,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every update under this lock is a single push, pop or flag: a panic cannot leave it
        // half-done, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `d`, which weighs `size` (see [`Delivery::size`]), within the bounds.
    fn push(&self, d: &Arc<Delivery>, size: usize, max_len: usize, max_bytes: usize) -> Pushed {
        let pushed = {
            let mut st = self.lock();
            if st.lagged {
                // It resyncs from storage anyway (and was woken when flagged); this one will be
                // read there.
                return Pushed::Skipped;
            } else if d.ephemeral
                && (st.items.len() >= max_len / 2 || st.bytes + size > max_bytes / 2)
            {
                // Typing and presence give way to messages: past half its bounds a queue takes
                // no more of them (they are never replayed, so nothing needs resyncing).
                return Pushed::Shed;
            } else if st.items.len() >= max_len || st.bytes + size > max_bytes {
                // What it had queued will be read from storage by the resync: keeping it would
                // only hold memory and make the next overflow come sooner.
                st.flag_lagged();
                Pushed::Overflowed
            } else {
                st.items.push_back(Arc::clone(d));
                st.bytes += size;
                Pushed::Queued
            }
        };
        self.waker.wake();
        pushed
    }

    fn pop(&self) -> Option<Event> {
        let mut st = self.lock();
        if st.lagged {
            st.lagged = false;
            return Some(Event::Lagged);
        }
        let d = st.items.pop_front()?;
        st.bytes -= d.size();
        Some(Event::Delivery(d))
    }
}

/// A connection's membership: its queue and the rooms it is in. Dropping it leaves every room.
pub struct Subscriber {
    id: u64,
    hub: Hub,
    queue: Arc<Queue>,
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
                floors: Mutex::default(),
                gap_reads: AtomicU64::new(0),
                clustered: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // A panic while holding this lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a member with its own queue; it receives nothing until it joins a room.
    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            hub: self.clone(),
            queue: Arc::default(),
            rooms: Vec::new(),
        }
    }

    /// Hands a delivery to every member of its room without waiting on any of them.
    /// Returns how many members got it in their queue.
    pub fn publish(&self, delivery: Delivery) -> usize {
        let delivery = Arc::new(delivery);
        let (max_len, max_bytes) = (self.inner.queue_len, self.inner.queue_bytes);
        let size = delivery.size();
        let mut delivered = 0;
        let rooms = self.rooms();
        if let Some(members) = rooms.get(&delivery.room) {
            for queue in members.values() {
                match queue.push(&delivery, size, max_len, max_bytes) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Overflowed => {
                        self.inner.overflows.fetch_add(1, Ordering::Relaxed);
                        crate::server::metrics::metrics().queue_overflows.inc();
                    }
                    Pushed::Skipped | Pushed::Shed => {}
                }
            }
        }
        delivered
    }

    /// Hands ephemeral payloads, each for the members of its rooms, as one delivery per member
    /// holding every payload that concerns it (each once, in the order given): a burst of
    /// changes (a hundred people coming online at once) costs a member one frame, not one per
    /// change, and so cannot fill its queue. `encode` makes the delivery of a set of payloads;
    /// members owed the same set share one. Returns how many members got a delivery.
    pub fn publish_batched<T>(
        &self,
        items: &[(Vec<Arc<str>>, T)],
        encode: impl Fn(&[&T]) -> Delivery,
    ) -> usize {
        let mut owed: HashMap<u64, (Arc<Queue>, Vec<usize>)> = HashMap::new();
        {
            let all = self.rooms();
            for (i, (rooms, _)) in items.iter().enumerate() {
                for members in rooms.iter().filter_map(|r| all.get(r)) {
                    for (id, queue) in members {
                        let (_, owed) = owed
                            .entry(*id)
                            .or_insert_with(|| (Arc::clone(queue), Vec::new()));
                        if owed.last() != Some(&i) {
                            owed.push(i);
                        }
                    }
                }
            }
        }
        let (max_len, max_bytes) = (self.inner.queue_len, self.inner.queue_bytes);
        let mut encoded: HashMap<Vec<usize>, (Arc<Delivery>, usize)> = HashMap::new();
        let mut delivered = 0;
        for (queue, set) in owed.into_values() {
            let (delivery, size) = encoded.entry(set).or_insert_with_key(|set| {
                let payloads: Vec<&T> = set.iter().map(|&i| &items[i].1).collect();
                let delivery = Arc::new(encode(&payloads));
                let size = delivery.size();
                (delivery, size)
            });
            if matches!(
                queue.push(delivery, *size, max_len, max_bytes),
                Pushed::Queued
            ) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Tells every member to re-read its rooms from storage (after deliveries were lost before
    /// they reached the hub).
    pub fn resync_all(&self) {
        for members in self.rooms().values() {
            for queue in members.values() {
                queue.lock().flag_lagged();
                queue.waker.wake();
            }
        }
    }

    /// Deliveries that did not fit a member's queue since start.
    pub fn overflows(&self) -> u64 {
        self.inner.overflows.load(Ordering::Relaxed)
    }

    /// Members currently in `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms().get(room).map_or(0, HashMap::len)
    }

    /// The rooms (not accounts' own channels) that have members here.
    pub fn followed_rooms(&self) -> Vec<String> {
        self.rooms()
            .keys()
            .filter(|r| !r.starts_with('@'))
            .map(|r| r.to_string())
            .collect()
    }

    fn floors(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.inner.floors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a read of the database that filled a gap for the whole node.
    pub fn count_gap_read(&self) {
        self.inner.gap_reads.fetch_add(1, Ordering::Relaxed);
        crate::server::metrics::metrics().gap_reads.inc();
    }

    /// Gap reads since start.
    pub fn gap_reads(&self) -> u64 {
        self.inner.gap_reads.load(Ordering::Relaxed)
    }

    /// Starts keeping floors: this node is one of a cluster.
    pub fn set_clustered(&self) {
        self.inner.clustered.store(true, Ordering::Relaxed);
    }

    /// Notes that a connection replayed `room` from storage up to `cursor`.
    pub fn note_replayed(&self, room: &Arc<str>, cursor: u64) {
        if !self.inner.clustered.load(Ordering::Relaxed) {
            return;
        }
        let mut floors = self.floors();
        let floor = floors.entry(Arc::clone(room)).or_insert(cursor);
        *floor = (*floor).min(cursor);
    }

    /// The lowest cursor `room` was replayed to since the floors were last taken.
    pub fn take_floor(&self, room: &str) -> Option<u64> {
        self.floors().remove(room)
    }

    /// Every room's floor, forgetting them.
    pub fn take_floors(&self) -> HashMap<Arc<str>, u64> {
        std::mem::take(&mut *self.floors())
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
            .insert(self.id, Arc::clone(&self.queue));
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

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; pending until something is queued.
    pub async fn recv(&mut self) -> Event {
        let queue = &self.queue;
        poll_fn(|cx| {
            if let Some(event) = queue.pop() {
                return Poll::Ready(event);
            }
            queue.waker.register(cx.waker());
            // A push between the pop and the register would have found no waker: look again.
            match queue.pop() {
                Some(event) => Poll::Ready(event),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.queue.pop()
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
            personal: None,
            ephemeral: false,
            at: std::time::Instant::now(),
        }
    }

    fn seq(event: Option<Event>) -> Option<u64> {
        match event {
            Some(Event::Delivery(d)) => Some(d.seq),
            other => panic!("expected a delivery, got {other:?}"),
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
        assert_eq!(seq(Some(a.recv().await)), Some(1));
        assert!(b.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_flags_lag_instead_of_blocking_and_frees_what_it_held() {
        let hub = Hub::new(2, 1 << 20);
        let mut a = hub.subscribe();
        a.join("general");
        for seq in 1..=4 {
            hub.publish(delivery("general", seq));
        }
        // The third did not fit, and the fourth was skipped for the coming resync (one overflow):
        // the member is told it lagged (it resyncs from storage) and holds nothing else, so the
        // queue starts empty again.
        assert!(matches!(a.recv().await, Event::Lagged));
        assert!(a.try_recv().is_none());
        assert_eq!(hub.overflows(), 1);
        hub.publish(delivery("general", 5));
        assert_eq!(seq(a.try_recv()), Some(5));
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
        assert!(matches!(a.recv().await, Event::Lagged));
        assert!(a.try_recv().is_none());
        // Once flagged and drained, the queue takes the big one.
        let mut big = delivery("general", 2);
        big.rich = Utf8Bytes::from("x".repeat(9));
        assert_eq!(hub.publish(big), 1);
    }

    #[tokio::test]
    async fn a_waiting_member_is_woken_by_a_publish() {
        let hub = Hub::new(8, 1 << 20);
        let mut a = hub.subscribe();
        a.join("general");
        let waiting = tokio::spawn(async move { seq(Some(a.recv().await)) });
        tokio::task::yield_now().await;
        hub.publish(delivery("general", 7));
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn resync_all_tells_every_member() {
        let hub = Hub::new(8, 1 << 20);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        a.join("general");
        b.join("other");
        hub.resync_all();
        assert!(matches!(a.try_recv(), Some(Event::Lagged)));
        assert!(matches!(b.try_recv(), Some(Event::Lagged)));
        assert!(a.try_recv().is_none());
    }

    #[tokio::test]
    async fn ephemeral_deliveries_give_way_under_pressure_and_never_flag_lag() {
        let hub = Hub::new(4, 1 << 20);
        let mut a = hub.subscribe();
        a.join("general");
        let typing = || {
            let mut d = delivery("general", 0);
            d.ephemeral = true;
            d
        };
        assert_eq!(hub.publish(typing()), 1);
        hub.publish(delivery("general", 1));
        // Two of four queued: half full, so typing is shed; messages still fit.
        assert_eq!(hub.publish(typing()), 0);
        assert_eq!(hub.publish(delivery("general", 2)), 1);
        assert_eq!(hub.overflows(), 0);
        let mut got = Vec::new();
        while let Some(Event::Delivery(d)) = a.try_recv() {
            got.push((d.seq, d.ephemeral));
        }
        assert_eq!(got, vec![(0, true), (1, false), (2, false)]);
    }

    #[tokio::test]
    async fn a_batch_reaches_each_member_once_with_what_concerns_it() {
        let hub = Hub::new(4, 1 << 20);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        let mut c = hub.subscribe();
        let mut d = hub.subscribe();
        a.join("general");
        b.join("general");
        b.join("x");
        c.join("x");
        d.join("elsewhere");
        let rooms = |names: &[&str]| names.iter().map(|&n| Arc::from(n)).collect::<Vec<_>>();
        // More changes than a queue holds: one delivery each all the same.
        let mut items = vec![
            (rooms(&["general"]), 1),
            (rooms(&["x"]), 2),
            (rooms(&["general", "x"]), 3),
        ];
        items.extend((10..20).map(|n| (rooms(&["general"]), n)));
        let encodes = std::cell::Cell::new(0);
        let delivered = hub.publish_batched(&items, |set| {
            encodes.set(encodes.get() + 1);
            let text: Vec<String> = set.iter().map(|n| n.to_string()).collect();
            let mut d = delivery("", 0);
            d.rich = Utf8Bytes::from(text.join(","));
            d.ephemeral = true;
            d
        });
        assert_eq!(delivered, 3);
        // a, b and c are owed different sets: three frames encoded, none for d.
        assert_eq!(encodes.get(), 3);
        let body = |s: &mut Subscriber| match s.try_recv() {
            Some(Event::Delivery(d)) => d.rich.to_string(),
            other => panic!("expected a delivery, got {other:?}"),
        };
        assert_eq!(body(&mut a), "1,3,10,11,12,13,14,15,16,17,18,19");
        assert_eq!(body(&mut b), "1,2,3,10,11,12,13,14,15,16,17,18,19");
        assert_eq!(body(&mut c), "2,3");
        for s in [&mut a, &mut b, &mut c, &mut d] {
            assert!(s.try_recv().is_none());
        }
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
