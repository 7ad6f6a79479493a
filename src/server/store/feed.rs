//! The commit feed: every committed message, in commit order, to each subscriber through its own
//! queue, bounded by count and by bytes. A message is freed as soon as every subscriber has taken
//! it, so an idle feed holds nothing; a subscriber that falls past a bound loses what it had
//! queued and is told how many it missed (`Lagged`), and must resync from storage.

use crate::protocol::ChatMessage;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;

/// Committed messages one subscriber may have waiting.
pub const COMMIT_FEED_LEN: usize = 16 * 1024;
/// Bytes of committed messages one subscriber may have waiting.
pub const COMMIT_FEED_BYTES: usize = 32 * 1024 * 1024;

/// Why [`CommitFeed::recv`] returned no message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// This many messages were dropped: re-read from storage.
    #[error("the feed dropped {0} messages")]
    Lagged(u64),
    /// The store has stopped.
    #[error("the store has stopped")]
    Closed,
}

#[derive(Default)]
struct State {
    items: VecDeque<Arc<ChatMessage>>,
    bytes: usize,
    lagged: u64,
    closed: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    waker: AtomicWaker,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is one push, pop or flag: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a message weighs in a queue: its text and a fixed overhead.
fn weight(m: &ChatMessage) -> usize {
    m.body.len() + m.user.len() + m.client_id.len() + m.room.len() + 96
}

/// The sending side, held by the store's writer.
#[derive(Clone)]
pub struct FeedSender {
    subscribers: Arc<Mutex<Vec<Weak<Queue>>>>,
    max_len: usize,
    max_bytes: usize,
}

impl Default for FeedSender {
    fn default() -> Self {
        FeedSender::new(COMMIT_FEED_LEN, COMMIT_FEED_BYTES)
    }
}

impl FeedSender {
    pub fn new(max_len: usize, max_bytes: usize) -> Self {
        FeedSender {
            subscribers: Arc::default(),
            max_len: max_len.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn subscribers(&self) -> MutexGuard<'_, Vec<Weak<Queue>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscriber, which gets every message sent from now on.
    pub fn subscribe(&self) -> CommitFeed {
        let queue = Arc::new(Queue::default());
        self.subscribers().push(Arc::downgrade(&queue));
        CommitFeed { queue }
    }

    /// Hands a committed message to every subscriber without waiting on any.
    pub fn send(&self, message: Arc<ChatMessage>) {
        let size = weight(&message);
        let mut subs = self.subscribers();
        subs.retain(|weak| {
            let Some(queue) = weak.upgrade() else {
                return false;
            };
            {
                let mut st = queue.lock();
                if st.items.len() >= self.max_len || st.bytes + size > self.max_bytes {
                    // Free what it had: it resyncs from storage anyway.
                    st.lagged += st.items.len() as u64 + 1;
                    st.items.clear();
                    st.bytes = 0;
                } else {
                    st.items.push_back(Arc::clone(&message));
                    st.bytes += size;
                }
            }
            queue.waker.wake();
            true
        });
    }

    /// Tells every subscriber that no more messages will come.
    pub fn close(&self) {
        for weak in self.subscribers().drain(..) {
            if let Some(queue) = weak.upgrade() {
                queue.lock().closed = true;
                queue.waker.wake();
            }
        }
    }
}

/// The receiving end of [`crate::server::store::Store::commits`].
pub struct CommitFeed {
    queue: Arc<Queue>,
}

impl CommitFeed {
    fn pop(&self) -> Option<Result<Arc<ChatMessage>, FeedError>> {
        let mut st = self.queue.lock();
        if st.lagged > 0 {
            return Some(Err(FeedError::Lagged(std::mem::take(&mut st.lagged))));
        }
        if let Some(m) = st.items.pop_front() {
            st.bytes -= weight(&m);
            return Some(Ok(m));
        }
        st.closed.then_some(Err(FeedError::Closed))
    }

    /// The next committed message; pending until there is one.
    pub async fn recv(&mut self) -> Result<Arc<ChatMessage>, FeedError> {
        poll_fn(|cx| {
            if let Some(next) = self.pop() {
                return Poll::Ready(next);
            }
            self.queue.waker.register(cx.waker());
            match self.pop() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next committed message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Result<Arc<ChatMessage>, FeedError>> {
        self.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, body: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            room: "general".into(),
            seq,
            id: seq as i64,
            client_id: format!("c{seq}"),
            kind: Default::default(),
            user: "ann".into(),
            user_id: None,
            username: None,
            guest: true,
            body: body.into(),
            member: None,
            ts: 0,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn each_subscriber_gets_every_message_in_order() {
        let tx = FeedSender::default();
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        for seq in 1..=3 {
            tx.send(msg(seq, "hi"));
        }
        for feed in [&mut a, &mut b] {
            for seq in 1..=3 {
                assert_eq!(feed.recv().await.expect("message").seq, seq);
            }
            assert!(feed.try_recv().is_none());
        }
        tx.close();
        assert_eq!(a.recv().await.err(), Some(FeedError::Closed));
    }

    #[tokio::test]
    async fn a_subscriber_past_the_byte_bound_lags_and_holds_nothing() {
        let tx = FeedSender::new(1000, 10_000);
        let mut slow = tx.subscribe();
        let big = "x".repeat(3_000);
        for seq in 1..=4 {
            tx.send(msg(seq, &big));
        }
        // Three fitted, the fourth did not: all four are dropped and counted.
        assert_eq!(slow.recv().await.err(), Some(FeedError::Lagged(4)));
        assert!(slow.try_recv().is_none());
        tx.send(msg(5, "small"));
        assert_eq!(slow.recv().await.expect("message").seq, 5);
    }

    #[tokio::test]
    async fn dropped_subscribers_are_forgotten() {
        let tx = FeedSender::default();
        let a = tx.subscribe();
        drop(a);
        tx.send(msg(1, "hi"));
        assert!(tx.subscribers().is_empty());
    }
}
