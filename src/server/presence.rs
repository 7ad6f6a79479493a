//! Who is here: each account's sessions and how present they are, aggregated per person (active
//! if any session is, idle if all are, offline when the last one closes). Changes are coalesced
//! (at most one per person per [`FLUSH_EVERY`]) and go, through the hub, only to the sessions
//! that share a room with the person. Nothing here is stored or replayed, and the hub sheds it
//! first when a session's queue is under pressure. No SQL, no HTTP.

use crate::protocol::{PresenceInfo, PresenceUpdate, ServerFrame, Status};
use crate::server::chat::encode;
use crate::server::hub::{Delivery, Hub};
use axum::extract::ws::Utf8Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often changes go out; a person flickering faster is seen at this pace.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The registry's handle: cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Mutex<State>>,
    /// Where changes go out.
    hub: Hub,
}

#[derive(Default)]
struct State {
    /// By username.
    people: HashMap<Arc<str>, Person>,
    /// Room → the people following it (with how many of their sessions do).
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// People whose status may have changed since the last flush.
    dirty: HashSet<Arc<str>>,
}

struct Person {
    username: Arc<str>,
    /// Session id → its status.
    sessions: HashMap<u64, Status>,
    /// Room → how many of the person's sessions follow it.
    rooms: HashMap<Arc<str>, u32>,
    /// When the person was last active (ms since the epoch).
    last_active: i64,
    /// What was last sent out.
    shown: Status,
}

impl Person {
    fn status(&self) -> Status {
        if self.sessions.values().any(|s| *s == Status::Active) {
            Status::Active
        } else if self.sessions.is_empty() {
            Status::Offline
        } else {
            Status::Idle
        }
    }

    fn info(&self) -> PresenceInfo {
        PresenceInfo {
            username: self.username.to_string(),
            status: self.status(),
            last_active: self.last_active,
        }
    }
}

/// One session's place in the registry; dropping it ends the session (the person goes offline
/// at once when it was their last).
pub struct Session {
    presence: Presence,
    user: Arc<str>,
    id: u64,
    /// The rooms this session counted itself in.
    rooms: Vec<Arc<str>>,
}

impl Presence {
    pub fn new(hub: Hub) -> Self {
        Presence {
            inner: Arc::new(Mutex::new(State::default())),
            hub,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock leaves the maps consistent at each step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session (`id`) of `username`, active.
    pub fn connect(&self, username: &str, id: u64, now: i64) -> Session {
        let user: Arc<str> = Arc::from(username);
        let mut st = self.lock();
        let person = st
            .people
            .entry(Arc::clone(&user))
            .or_insert_with(|| Person {
                username: Arc::clone(&user),
                sessions: HashMap::new(),
                rooms: HashMap::new(),
                last_active: now,
                shown: Status::Offline,
            });
        person.sessions.insert(id, Status::Active);
        person.last_active = now;
        st.dirty.insert(Arc::clone(&user));
        Session {
            presence: self.clone(),
            user,
            id,
            rooms: Vec::new(),
        }
    }

    /// The people of `room` who are not offline.
    pub fn snapshot(&self, room: &str) -> Vec<PresenceInfo> {
        let st = self.lock();
        let Some(people) = st.rooms.get(room) else {
            return Vec::new();
        };
        let mut out: Vec<PresenceInfo> = people
            .keys()
            .filter_map(|id| st.people.get(id))
            .map(Person::info)
            .filter(|p| p.status != Status::Offline)
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        out
    }

    /// The presence of someone (offline, last active `0`, if not seen since start).
    pub fn of(&self, username: &str) -> PresenceInfo {
        match self.lock().people.get(username) {
            Some(p) => p.info(),
            None => PresenceInfo {
                username: username.to_owned(),
                status: Status::Offline,
                last_active: 0,
            },
        }
    }

    /// Sends out what changed since the last flush: one `presence` frame per person whose shown
    /// status changed, to every session in a room with them. People offline with no session
    /// left are forgotten but for their last-active time.
    pub fn flush(&self) -> usize {
        let mut out: Vec<(Vec<Arc<str>>, PresenceInfo)> = Vec::new();
        {
            let mut st = self.lock();
            let dirty: Vec<Arc<str>> = st.dirty.drain().collect();
            for user in dirty {
                let Some(person) = st.people.get_mut(&user) else {
                    continue;
                };
                let now = person.status();
                if now == person.shown {
                    continue;
                }
                person.shown = now;
                out.push((person.rooms.keys().cloned().collect(), person.info()));
            }
        }
        let sent = out.len();
        for (rooms, info) in out {
            self.announce(&rooms, info);
        }
        sent
    }

    /// Sends one person's presence to the sessions of `rooms`.
    fn announce(&self, rooms: &[Arc<str>], info: PresenceInfo) {
        let frame = ServerFrame::Presence(PresenceUpdate {
            room: None,
            users: vec![info],
        });
        self.hub.publish_to_rooms(
            rooms,
            Delivery {
                room: Arc::from(""),
                seq: 0,
                rich: encode(&frame),
                classic: Utf8Bytes::default(),
                personal: None,
                ephemeral: true,
            },
        );
    }

    /// Runs [`Presence::flush`] every [`FLUSH_EVERY`], for ever.
    pub async fn run(self) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.flush();
        }
    }
}

impl Session {
    /// The session's person is now `status` (`Offline` is not a session's to say).
    pub fn set(&self, status: Status, now: i64) {
        let status = if status == Status::Offline {
            Status::Idle
        } else {
            status
        };
        let mut st = self.presence.lock();
        if let Some(p) = st.people.get_mut(&*self.user) {
            if status == Status::Active {
                p.last_active = now;
            } else if p.sessions.get(&self.id) == Some(&Status::Active) {
                // Idle from now: it was active until a moment ago.
                p.last_active = now;
            }
            p.sessions.insert(self.id, status);
        }
        st.dirty.insert(Arc::clone(&self.user));
    }

    /// The session follows `room`: its person's changes reach the room's sessions.
    pub fn follow(&mut self, room: &str) {
        if self.rooms.iter().any(|r| &**r == room) {
            return;
        }
        let room: Arc<str> = Arc::from(room);
        self.rooms.push(Arc::clone(&room));
        let mut st = self.presence.lock();
        *st.rooms
            .entry(Arc::clone(&room))
            .or_default()
            .entry(Arc::clone(&self.user))
            .or_default() += 1;
        if let Some(p) = st.people.get_mut(&*self.user) {
            *p.rooms.entry(room).or_default() += 1;
        }
    }

    /// The session no longer follows `room`.
    pub fn unfollow(&mut self, room: &str) {
        let Some(at) = self.rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = self.rooms.swap_remove(at);
        let mut st = self.presence.lock();
        uncount(&mut st, &self.user, &room);
    }
}

/// Takes one of `user`'s sessions out of `room`'s counts.
fn uncount(st: &mut State, user: &Arc<str>, room: &Arc<str>) {
    if let Some(people) = st.rooms.get_mut(room) {
        if let Some(n) = people.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                people.remove(user);
            }
        }
        if people.is_empty() {
            st.rooms.remove(room);
        }
    }
    if let Some(p) = st.people.get_mut(user) {
        if let Some(n) = p.rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                p.rooms.remove(room);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let now = crate::server::auth::now_ms();
        let rooms = std::mem::take(&mut self.rooms);
        let mut st = self.presence.lock();
        let Some(p) = st.people.get_mut(&*self.user) else {
            return;
        };
        if p.sessions.remove(&self.id) == Some(Status::Active) {
            p.last_active = now;
        }
        // The person's last session closed: they are offline at once, told to every room they
        // were in (this session's among them, so before its counts go).
        let gone = p.sessions.is_empty().then(|| {
            p.shown = Status::Offline;
            (p.rooms.keys().cloned().collect::<Vec<_>>(), p.info())
        });
        if gone.is_none() {
            st.dirty.insert(Arc::clone(&self.user));
        }
        for room in &rooms {
            uncount(&mut st, &self.user, room);
        }
        drop(st);
        if let Some((rooms, info)) = gone {
            self.presence.announce(&rooms, info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hub::Event;

    /// The presence frames a member of `room` has been sent, as (username, status).
    fn seen(sub: &mut crate::server::hub::Subscriber) -> Vec<(String, Status)> {
        let mut out = Vec::new();
        while let Some(Event::Delivery(d)) = sub.try_recv() {
            assert!(d.ephemeral);
            let Ok(ServerFrame::Presence(p)) = serde_json::from_str(&d.rich) else {
                panic!("not a presence frame: {}", d.rich);
            };
            out.extend(p.users.into_iter().map(|u| (u.username, u.status)));
        }
        out
    }

    #[test]
    fn a_person_is_active_if_any_session_is_idle_if_all_are_offline_when_none_is_open() {
        let hub = Hub::new(64, 1 << 20);
        let presence = Presence::new(hub.clone());
        let mut watcher = hub.subscribe();
        watcher.join("general");
        let mut phone = presence.connect("ann", 10, 1_000);
        phone.follow("general");
        let mut laptop = presence.connect("ann", 11, 1_000);
        laptop.follow("general");
        presence.flush();
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Active)]);

        phone.set(Status::Idle, 2_000);
        presence.flush();
        assert!(seen(&mut watcher).is_empty(), "the laptop is still active");
        laptop.set(Status::Idle, 3_000);
        presence.flush();
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Idle)]);
        assert_eq!(presence.snapshot("general")[0].last_active, 3_000);

        drop(laptop);
        presence.flush();
        assert!(seen(&mut watcher).is_empty(), "still idle on the phone");
        // The last session's close is told at once, without waiting for a flush.
        drop(phone);
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Offline)]);
        assert!(presence.snapshot("general").is_empty());
        let (ann, bob) = (presence.of("ann"), presence.of("bob"));
        assert_eq!((ann.status, bob.status), (Status::Offline, Status::Offline));
        assert!(ann.last_active >= 3_000 && bob.last_active == 0);
    }

    #[test]
    fn changes_are_coalesced_and_go_only_to_rooms_the_person_is_in() {
        let hub = Hub::new(64, 1 << 20);
        let presence = Presence::new(hub.clone());
        let mut inside = hub.subscribe();
        inside.join("design");
        let mut outside = hub.subscribe();
        outside.join("general");
        let mut s = presence.connect("ann", 10, 0);
        s.follow("design");
        presence.flush();
        // Idle and back within one flush: nobody sees a flicker.
        s.set(Status::Idle, 1);
        s.set(Status::Active, 2);
        presence.flush();
        assert_eq!(seen(&mut inside), vec![("ann".into(), Status::Active)]);
        assert!(seen(&mut outside).is_empty());
        s.unfollow("design");
        s.set(Status::Idle, 3);
        presence.flush();
        assert!(seen(&mut inside).is_empty(), "no longer shares a room");
    }
}
