//! Who is here: each account's sessions and how present they are, aggregated per person (active
//! if any session is, idle if all are, offline when the last one closes). Changes are coalesced
//! (at most one per person per [`FLUSH_EVERY`]) and go, through the hub, only to the sessions
//! that share a room with the person. Nothing here is stored or replayed, and the hub sheds it
//! first when a session's queue is under pressure. No SQL, no HTTP.
//!
//! On a node of a cluster, each node tells the others (on the bus) how its people are, and
//! everyone's view merges them: a person active on one node and gone from another is active.
//! Each node repeats its whole list every [`HEARTBEAT_EVERY`]; a node not heard of for
//! [`NODE_EXPIRES`] is taken to be gone, and its people offline there.

use crate::protocol::{PresenceInfo, PresenceUpdate, ServerFrame, Status};
use crate::server::bus::{Bus, NodePerson, Note};
use crate::server::chat::encode;
use crate::server::hub::{Delivery, Hub};
use axum::extract::ws::Utf8Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often changes go out; a person flickering faster is seen at this pace.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often a cluster node sends its whole list of people.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A node not heard of this long is gone, and its people offline there.
pub const NODE_EXPIRES: Duration = Duration::from_secs(35);

/// The registry's handle: cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Mutex<State>>,
    /// Where changes go out.
    hub: Hub,
    /// Where this node's changes go to the others (a no-op on a single node).
    bus: Bus,
}

#[derive(Default)]
struct State {
    /// By username: the people with sessions on this node (or who had some).
    people: HashMap<Arc<str>, Person>,
    /// Room → the people following it here (with how many of their sessions do).
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// People whose status may have changed since the last flush.
    dirty: HashSet<Arc<str>>,
    /// What was last sent out of each person (the merged status), and the rooms it went to
    /// (where going offline must be told, once the rooms are gone from the person).
    shown: HashMap<Arc<str>, (Status, Vec<Arc<str>>)>,
    /// The other nodes' people, by node.
    nodes: HashMap<String, NodeView>,
}

struct NodeView {
    people: HashMap<Arc<str>, NodePerson>,
    heard: Instant,
}

struct Person {
    username: Arc<str>,
    /// Session id → its status.
    sessions: HashMap<u64, Status>,
    /// Room → how many of the person's sessions follow it.
    rooms: HashMap<Arc<str>, u32>,
    /// When the person was last active (ms since the epoch).
    last_active: i64,
    /// What the other nodes were last told of the person.
    told: Option<NodePerson>,
}

fn rank(s: Status) -> u8 {
    match s {
        Status::Offline => 0,
        Status::Idle => 1,
        Status::Active => 2,
    }
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

    fn as_node_person(&self) -> NodePerson {
        let mut rooms: Vec<String> = self.rooms.keys().map(|r| r.to_string()).collect();
        rooms.sort();
        NodePerson {
            username: self.username.to_string(),
            status: self.status(),
            last_active: self.last_active,
            rooms,
        }
    }
}

impl State {
    /// The person as every node together sees them, with the rooms they follow anywhere.
    fn merged(&self, username: &str) -> (PresenceInfo, Vec<Arc<str>>) {
        let mut info = PresenceInfo {
            username: username.to_owned(),
            status: Status::Offline,
            last_active: 0,
        };
        let mut rooms: HashSet<Arc<str>> = HashSet::new();
        if let Some(p) = self.people.get(username) {
            info.status = p.status();
            info.last_active = p.last_active;
            rooms.extend(p.rooms.keys().cloned());
        }
        for view in self.nodes.values() {
            if let Some(p) = view.people.get(username) {
                if rank(p.status) > rank(info.status) {
                    info.status = p.status;
                }
                info.last_active = info.last_active.max(p.last_active);
                rooms.extend(p.rooms.iter().map(|r| Arc::from(r.as_str())));
            }
        }
        (info, rooms.into_iter().collect())
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
        Self::with_bus(hub, Bus::none())
    }

    /// A registry that tells the other nodes of a cluster, through `bus`, about its people.
    pub fn with_bus(hub: Hub, bus: Bus) -> Self {
        Presence {
            inner: Arc::new(Mutex::new(State::default())),
            hub,
            bus,
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
                told: None,
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
        let mut names: HashSet<&str> = st
            .rooms
            .get(room)
            .map(|people| people.keys().map(|u| &**u).collect())
            .unwrap_or_default();
        for view in st.nodes.values() {
            names.extend(
                view.people
                    .values()
                    .filter(|p| p.rooms.iter().any(|r| r == room))
                    .map(|p| p.username.as_str()),
            );
        }
        let mut out: Vec<PresenceInfo> = names
            .into_iter()
            .map(|u| st.merged(u).0)
            .filter(|p| p.status != Status::Offline)
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        out
    }

    /// The presence of someone (offline, last active `0`, if not seen since start).
    pub fn of(&self, username: &str) -> PresenceInfo {
        self.lock().merged(username).0
    }

    /// Sends out the changes since the last flush: each person whose merged status differs from
    /// what was last shown, once, to the rooms they are in; and, on a cluster node, this node's
    /// view of its people to the other nodes. Returns how many changes went out.
    pub fn flush(&self) -> usize {
        let mut out: Vec<(Vec<Arc<str>>, PresenceInfo)> = Vec::new();
        let mut tell: Vec<NodePerson> = Vec::new();
        {
            let mut st = self.lock();
            let dirty: Vec<Arc<str>> = st.dirty.drain().collect();
            for user in dirty {
                if self.bus.enabled() {
                    if let Some(person) = st.people.get_mut(&user) {
                        let now = person.as_node_person();
                        if person.told.as_ref() != Some(&now) {
                            person.told = Some(now.clone());
                            tell.push(now);
                        }
                    }
                }
                let (info, mut rooms) = st.merged(&user);
                let shown = st.shown.get(&user).map_or(Status::Offline, |(s, _)| *s);
                if info.status == shown {
                    // The same status, in rooms where it was not told yet (the person followed
                    // a room since): told there only.
                    if info.status != Status::Offline {
                        let told: Vec<Arc<str>> = st
                            .shown
                            .get(&user)
                            .map(|(_, r)| r.clone())
                            .unwrap_or_default();
                        let new: Vec<Arc<str>> = rooms
                            .iter()
                            .filter(|r| !told.contains(r))
                            .cloned()
                            .collect();
                        if !new.is_empty() {
                            st.shown
                                .insert(Arc::clone(&user), (info.status, rooms.clone()));
                            out.push((new, info));
                        }
                    }
                    continue;
                }
                if info.status == Status::Offline {
                    if let Some((_, before)) = st.shown.remove(&user) {
                        for r in before {
                            if !rooms.contains(&r) {
                                rooms.push(r);
                            }
                        }
                    }
                } else {
                    st.shown
                        .insert(Arc::clone(&user), (info.status, rooms.clone()));
                }
                out.push((rooms, info));
            }
        }
        if !tell.is_empty() {
            self.bus.publish(Note::Presence {
                people: tell,
                full: false,
            });
        }
        let sent = out.len();
        self.announce(&out);
        sent
    }

    /// Tells the sessions in each change's rooms how its person is: one frame per session with
    /// every change it shares a room with.
    fn announce(&self, changes: &[(Vec<Arc<str>>, PresenceInfo)]) {
        if changes.is_empty() {
            return;
        }
        let at = std::time::Instant::now();
        self.hub.publish_batched(changes, |infos| {
            let frame = ServerFrame::Presence(PresenceUpdate {
                room: None,
                users: infos.iter().map(|&i| i.clone()).collect(),
            });
            Delivery {
                room: Arc::from(""),
                seq: 0,
                rich: encode(&frame),
                classic: Utf8Bytes::default(),
                personal: None,
                ephemeral: true,
                at,
            }
        });
    }

    /// Takes what another node says of its people (`full`: all of them; whoever it no longer
    /// lists is offline there). The changes go out at the next flush.
    pub fn from_node(&self, node: &str, people: Vec<NodePerson>, full: bool) {
        let mut st = self.lock();
        let st = &mut *st;
        let view = st.nodes.entry(node.to_owned()).or_insert_with(|| NodeView {
            people: HashMap::new(),
            heard: Instant::now(),
        });
        view.heard = Instant::now();
        if full {
            let listed: HashSet<&str> = people.iter().map(|p| p.username.as_str()).collect();
            let gone: Vec<Arc<str>> = view
                .people
                .keys()
                .filter(|u| !listed.contains(&***u))
                .cloned()
                .collect();
            for user in gone {
                view.people.remove(&user);
                st.dirty.insert(user);
            }
        }
        for p in people {
            let user: Arc<str> = Arc::from(p.username.as_str());
            if p.status == Status::Offline {
                view.people.remove(&user);
            } else {
                view.people.insert(Arc::clone(&user), p);
            }
            st.dirty.insert(user);
        }
    }

    /// Sends this node's whole list to the others, and forgets the nodes not heard of lately.
    fn heartbeat(&self) {
        let people: Vec<NodePerson> = {
            let mut st = self.lock();
            let st = &mut *st;
            let expired: Vec<String> = st
                .nodes
                .iter()
                .filter(|(_, v)| v.heard.elapsed() >= NODE_EXPIRES)
                .map(|(n, _)| n.clone())
                .collect();
            for node in expired {
                tracing::info!(
                    node,
                    "no presence from this node lately: its people are offline there"
                );
                if let Some(view) = st.nodes.remove(&node) {
                    st.dirty.extend(view.people.into_keys());
                }
            }
            st.people
                .values()
                .filter(|p| !p.sessions.is_empty())
                .map(Person::as_node_person)
                .collect()
        };
        self.bus.publish(Note::Presence { people, full: true });
    }

    /// Flushes every [`FLUSH_EVERY`] (and, on a cluster node, sends the heartbeat); runs until
    /// dropped.
    pub async fn run(self) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beats = (HEARTBEAT_EVERY.as_secs() / FLUSH_EVERY.as_secs()).max(1);
        let mut n = 0u64;
        loop {
            every.tick().await;
            if self.bus.enabled() && n.is_multiple_of(beats) {
                self.heartbeat();
            }
            n += 1;
            self.flush();
        }
    }
}

impl Session {
    /// Sets this session's status (`Offline` is taken as idle: a session is offline only by
    /// closing).
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
                // The moment it stopped being active is when it was last active.
                p.last_active = now;
            }
            p.sessions.insert(self.id, status);
        }
        st.dirty.insert(Arc::clone(&self.user));
    }

    /// Counts this session in `room`: the person's changes reach the room's sessions.
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
        // The room's people (and the other nodes) learn of the person at the next flush.
        st.dirty.insert(Arc::clone(&self.user));
    }

    pub fn unfollow(&mut self, room: &str) {
        let Some(at) = self.rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = self.rooms.swap_remove(at);
        let mut st = self.presence.lock();
        uncount(&mut st, &self.user, &room);
        if self.presence.bus.enabled() {
            st.dirty.insert(Arc::clone(&self.user));
        }
    }
}

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
        let last_here = p.sessions.is_empty();
        // The rooms to tell, taken before this session's are uncounted.
        let (info, told_rooms) = st.merged(&self.user);
        st.dirty.insert(Arc::clone(&self.user));
        for room in &rooms {
            uncount(&mut st, &self.user, room);
        }
        // The last session anywhere closing is told at once, without waiting for a flush.
        let gone = (last_here && info.status == Status::Offline)
            .then(|| {
                st.shown.remove(&*self.user).map(|(_, before)| {
                    let mut rooms = told_rooms;
                    for r in before {
                        if !rooms.contains(&r) {
                            rooms.push(r);
                        }
                    }
                    (rooms, info)
                })
            })
            .flatten();
        drop(st);
        if let Some(gone) = gone {
            self.presence.announce(&[gone]);
        }
        if last_here && self.presence.bus.enabled() {
            // The other nodes hear of it now, too.
            self.presence.flush_one(&self.user);
        }
    }
}

impl Presence {
    /// Tells the other nodes how `user` is here now, if that changed.
    fn flush_one(&self, user: &str) {
        let note = {
            let mut st = self.lock();
            let Some(person) = st.people.get_mut(user) else {
                return;
            };
            let now = person.as_node_person();
            if person.told.as_ref() == Some(&now) {
                return;
            }
            person.told = Some(now.clone());
            now
        };
        self.bus.publish(Note::Presence {
            people: vec![note],
            full: false,
        });
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

    /// A flush between a session's start and its rooms (or a room followed later) must not
    /// leave the room's people unaware that the person is here.
    #[test]
    fn a_room_followed_after_a_flush_is_told_of_the_person() {
        let hub = Hub::new(64, 1 << 20);
        let presence = Presence::new(hub.clone());
        let mut general = hub.subscribe();
        general.join("general");
        let mut design = hub.subscribe();
        design.join("design");
        let mut s = presence.connect("ann", 10, 0);
        presence.flush();
        assert!(seen(&mut general).is_empty(), "in no room yet");
        s.follow("general");
        presence.flush();
        assert_eq!(seen(&mut general), vec![("ann".into(), Status::Active)]);
        s.follow("design");
        presence.flush();
        assert_eq!(seen(&mut design), vec![("ann".into(), Status::Active)]);
        assert!(seen(&mut general).is_empty(), "told there already");
        presence.flush();
        assert!(seen(&mut design).is_empty(), "once");
    }

    #[test]
    fn the_other_nodes_people_merge_with_this_nodes() {
        let hub = Hub::new(64, 1 << 20);
        let presence = Presence::new(hub.clone());
        let mut watcher = hub.subscribe();
        watcher.join("general");
        let ann = |status| NodePerson {
            username: "ann".into(),
            status,
            last_active: 5_000,
            rooms: vec!["general".into()],
        };
        // Ann is active on another node only.
        presence.from_node("b", vec![ann(Status::Active)], false);
        presence.flush();
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Active)]);
        assert_eq!(presence.snapshot("general")[0].username, "ann");
        // Idle here and active there: active.
        let mut here = presence.connect("ann", 1, 6_000);
        here.follow("general");
        here.set(Status::Idle, 7_000);
        presence.flush();
        assert!(seen(&mut watcher).is_empty());
        assert_eq!(presence.of("ann").last_active, 7_000);
        // The other node's full list no longer has her: idle (here).
        presence.from_node("b", vec![], true);
        presence.flush();
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Idle)]);
        // Her last session here closes while another node says she is idle: still idle.
        presence.from_node("c", vec![ann(Status::Idle)], false);
        drop(here);
        presence.flush();
        assert!(seen(&mut watcher).is_empty());
        presence.from_node("c", vec![ann(Status::Offline)], false);
        presence.flush();
        assert_eq!(seen(&mut watcher), vec![("ann".into(), Status::Offline)]);
    }
}
