//! Per-room ordering of the commits a node hears of, from its own store and from the bus: each
//! room's events leave in seq order, once, with no gap. A gap (a note lost on the bus, or still
//! on its way) waits a moment for the missing seqs, then is filled by one read of the database
//! for the whole node, not one per connection. No I/O here: the fan-out task does the reads.

use crate::protocol::ChatMessage;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a gap may wait for its seqs to arrive by the bus before they are read.
pub const GAP_WAIT: Duration = Duration::from_millis(200);
/// Events held back behind a gap at most, per room; past it the gap is filled at once.
const MAX_PENDING: usize = 4_096;
/// Rooms with no news this long, nothing pending and no local members are forgotten.
const IDLE_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Sequencer {
    rooms: HashMap<Arc<str>, RoomSeq>,
}

struct RoomSeq {
    /// The next seq to hand out.
    next: u64,
    /// Events past a gap, by seq.
    pending: BTreeMap<u64, ChatMessage>,
    /// Since when the first pending event waits.
    gap_since: Option<Instant>,
    /// The room's head in the database at the last sweep.
    swept_head: u64,
    touched: Instant,
}

/// A gap to fill from the database: the events after `after`, up to `upto` at least.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub room: Arc<str>,
    pub after: u64,
    pub upto: u64,
}

impl RoomSeq {
    fn new(next: u64, now: Instant) -> Self {
        RoomSeq {
            next,
            pending: BTreeMap::new(),
            gap_since: None,
            swept_head: 0,
            touched: now,
        }
    }

    /// Hands out what follows `next` without a gap.
    fn drain(&mut self, out: &mut Vec<ChatMessage>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() < self.next {
                entry.remove();
            } else if *entry.key() == self.next {
                out.push(entry.remove());
                self.next += 1;
            } else {
                break;
            }
        }
        if self.pending.is_empty() {
            self.gap_since = None;
        }
    }
}

impl Sequencer {
    /// Takes one commit; returns the events it lets out, in order. `floor` is consulted for a
    /// room this node has no state of: the lowest cursor a local connection replayed to, if any
    /// (what lies between it and this event must be read).
    pub fn offer(
        &mut self,
        m: ChatMessage,
        now: Instant,
        floor: impl FnOnce() -> Option<u64>,
    ) -> Vec<ChatMessage> {
        let mut out = Vec::new();
        let room = self
            .rooms
            .entry(Arc::from(m.room.as_str()))
            .or_insert_with(|| {
                let next = floor().map_or(m.seq, |f| (f + 1).min(m.seq));
                RoomSeq::new(next, now)
            });
        room.touched = now;
        if m.seq < room.next {
            return out; // already handed out
        }
        if m.seq == room.next {
            room.next += 1;
            out.push(m);
            room.drain(&mut out);
            return out;
        }
        room.pending.insert(m.seq, m);
        room.gap_since.get_or_insert(now);
        out
    }

    /// The gaps that waited [`GAP_WAIT`] (or hold too much), to read from the database.
    pub fn due(&self, now: Instant) -> Vec<Gap> {
        self.rooms
            .iter()
            .filter_map(|(name, r)| {
                let since = r.gap_since?;
                let (&upto, _) = r.pending.first_key_value()?;
                (now.duration_since(since) >= GAP_WAIT || r.pending.len() >= MAX_PENDING).then(
                    || Gap {
                        room: Arc::clone(name),
                        after: r.next - 1,
                        upto: upto - 1,
                    },
                )
            })
            .collect()
    }

    /// Puts what was read for a gap in its place; returns what it lets out, in order.
    pub fn fill(&mut self, room: &str, read: Vec<ChatMessage>, now: Instant) -> Vec<ChatMessage> {
        let mut out = Vec::new();
        let Some(r) = self.rooms.get_mut(room) else {
            return out;
        };
        for m in read {
            if m.seq >= r.next {
                r.pending.insert(m.seq, m);
            }
        }
        r.drain(&mut out);
        if !r.pending.is_empty() {
            // Still a gap (the read stopped short): try again after another wait.
            r.gap_since = Some(now);
        }
        out
    }

    /// Gives up on a gap in a room nobody here follows: what is pending goes out, and whoever
    /// joins later reads the room from the database anyway.
    pub fn skip(&mut self, room: &str) -> Vec<ChatMessage> {
        let mut out = Vec::new();
        if let Some(r) = self.rooms.get_mut(room) {
            if let Some((&first, _)) = r.pending.first_key_value() {
                r.next = first;
            }
            r.drain(&mut out);
        }
        out
    }

    /// Compares the rooms' heads in the database with what was handed out: a room whose head
    /// was already past it at the previous sweep lost its last events on the way (nothing later
    /// came to show the gap). `floors` start the rooms this node has no state of.
    pub fn sweep(
        &mut self,
        heads: &[(String, u64)],
        floors: &HashMap<Arc<str>, u64>,
        now: Instant,
    ) -> Vec<Gap> {
        let mut gaps = Vec::new();
        for (name, head) in heads {
            let room = match self.rooms.get_mut(name.as_str()) {
                Some(r) => r,
                None => match floors.get(name.as_str()) {
                    Some(&floor) => self
                        .rooms
                        .entry(Arc::from(name.as_str()))
                        .or_insert_with(|| RoomSeq::new(floor + 1, now)),
                    None => continue,
                },
            };
            let handed = room.next - 1;
            if *head > handed && room.swept_head > handed && room.pending.is_empty() {
                gaps.push(Gap {
                    room: Arc::from(name.as_str()),
                    after: handed,
                    upto: *head,
                });
            }
            room.swept_head = *head;
        }
        gaps
    }

    /// Forgets rooms with no news for a while, nothing pending, and none of `followed`.
    pub fn forget_idle(&mut self, now: Instant, followed: impl Fn(&str) -> bool) {
        self.rooms.retain(|name, r| {
            !r.pending.is_empty() || now.duration_since(r.touched) < IDLE_FOR || followed(name)
        });
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventKind;

    fn m(room: &str, seq: u64) -> ChatMessage {
        ChatMessage {
            room: room.to_owned(),
            seq,
            kind: EventKind::Message,
            body: format!("m{seq}"),
            ..ChatMessage::default()
        }
    }

    fn seqs(v: &[ChatMessage]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_events_pass_at_once_and_duplicates_never() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        assert_eq!(seqs(&s.offer(m("a", 5), now, || None)), [5]);
        assert_eq!(seqs(&s.offer(m("a", 6), now, || None)), [6]);
        assert!(s.offer(m("a", 6), now, || None).is_empty());
        assert!(s.offer(m("a", 3), now, || None).is_empty());
        assert!(s.due(now + GAP_WAIT).is_empty());
    }

    #[test]
    fn events_out_of_order_wait_for_the_missing_one() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        s.offer(m("a", 1), now, || None);
        assert!(s.offer(m("a", 3), now, || None).is_empty());
        assert!(s.offer(m("a", 4), now, || None).is_empty());
        assert!(s.due(now).is_empty(), "a gap waits before it is read");
        assert_eq!(seqs(&s.offer(m("a", 2), now, || None)), [2, 3, 4]);
        assert!(s.due(now + GAP_WAIT).is_empty());
    }

    #[test]
    fn a_gap_that_stays_is_read_once_and_filled() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        s.offer(m("a", 1), now, || None);
        s.offer(m("a", 4), now, || None);
        s.offer(m("b", 1), now, || None);
        let due = s.due(now + GAP_WAIT);
        assert_eq!(
            due,
            [Gap {
                room: "a".into(),
                after: 1,
                upto: 3
            }]
        );
        // The read brings 2 and 3 (and 4 again, which is dropped).
        let out = s.fill("a", vec![m("a", 2), m("a", 3), m("a", 4)], now + GAP_WAIT);
        assert_eq!(seqs(&out), [2, 3, 4]);
        assert!(s.due(now + GAP_WAIT * 3).is_empty());
        assert_eq!(seqs(&s.offer(m("a", 5), now, || None)), [5]);
    }

    #[test]
    fn a_read_that_stops_short_leaves_the_rest_waiting() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        s.offer(m("a", 1), now, || None);
        s.offer(m("a", 5), now, || None);
        assert_eq!(seqs(&s.fill("a", vec![m("a", 2)], now + GAP_WAIT)), [2]);
        assert!(s.due(now + GAP_WAIT).is_empty());
        let due = s.due(now + GAP_WAIT * 2);
        assert_eq!(due[0].after, 2);
    }

    #[test]
    fn a_new_room_starts_at_the_lowest_replayed_cursor() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        // A connection replayed the room to 7; 8 was lost on the bus, 9 arrives.
        assert!(s.offer(m("a", 9), now, || Some(7)).is_empty());
        assert_eq!(s.due(now + GAP_WAIT)[0].after, 7);
    }

    #[test]
    fn a_sweep_finds_lost_last_events_once_they_stay_lost() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        s.offer(m("a", 1), now, || None);
        let heads = vec![("a".to_owned(), 3)];
        // The first sweep only notes the head: 2 and 3 may be on their way.
        assert!(s.sweep(&heads, &HashMap::new(), now).is_empty());
        let gaps = s.sweep(&heads, &HashMap::new(), now);
        assert_eq!(
            gaps,
            [Gap {
                room: "a".into(),
                after: 1,
                upto: 3
            }]
        );
        // A room known only by a replayed cursor starts there.
        let floors = HashMap::from([(Arc::from("b"), 4)]);
        let heads = vec![("b".to_owned(), 6)];
        assert!(s.sweep(&heads, &floors, now).is_empty());
        assert_eq!(s.sweep(&heads, &floors, now)[0].after, 4);
    }

    #[test]
    fn skipping_a_gap_lets_the_rest_out_and_idle_rooms_are_forgotten() {
        let now = Instant::now();
        let mut s = Sequencer::default();
        s.offer(m("a", 1), now, || None);
        s.offer(m("a", 3), now, || None);
        assert_eq!(seqs(&s.skip("a")), [3]);
        s.forget_idle(now + IDLE_FOR, |_| false);
        assert_eq!(s.rooms(), 0);
    }
}
