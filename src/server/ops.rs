//! The operator's commands that work on the data rather than serve it: `hubbub admin grant`,
//! `hubbub export` (a room's history as JSON lines) and `hubbub import` (such a file into an
//! install). They open the storage the settings name, as the server would.
//!
//! The export's first line says what it is and describes the room (`{"export": …, "room":
//! {…}}`); every other line is one event of the room's stream as the protocol sends it, in seq
//! order from 1. An import takes the events as they are (seqs, times, texts, edits and
//! deletions) and works out from them what they leave behind: the members and the reactions.
//! Authors and mentioned people are matched by username to the accounts of the install that
//! imports; events of people it does not have keep their names and no account. Files are not
//! in an export (`hubbub backup` copies them).

use crate::protocol::{
    mentioned_usernames, ChatMessage, EventKind, RoomInfo, RoomKind, Visibility,
};
use crate::server::store::{DynAccounts, DynStore, RoomImport, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};

/// What the first line of an export says it is.
pub const EXPORT_FORMAT: &str = "hubbub.room.v1";
/// Events read from storage at a time while exporting.
const EXPORT_BATCH: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("there is no room named {0:?}")]
    NoSuchRoom(String),
    #[error("there is no account named {0:?}")]
    NoSuchUser(String),
    #[error("the room {0:?} already has history here: import into a new install, or under another name with --as")]
    RoomExists(String),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the file has no events")]
    Empty,
    #[error(transparent)]
    Store(StoreError),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        OpsError::Store(e)
    }
}

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    export: String,
    room: RoomInfo,
}

/// `hubbub admin grant|revoke USER`: makes the account an admin, or no longer one.
pub async fn set_admin(
    accounts: &DynAccounts,
    username: &str,
    admin: bool,
) -> Result<(), OpsError> {
    match accounts.set_admin(username, admin).await? {
        Some(_) => Ok(()),
        None => Err(OpsError::NoSuchUser(username.to_owned())),
    }
}

/// Writes the room's header and every event, in seq order; returns how many events.
pub async fn export(store: &DynStore, room: &str, out: &mut impl Write) -> Result<u64, OpsError> {
    let info = store
        .room_info(room, None)
        .await?
        .ok_or_else(|| OpsError::NoSuchRoom(room.to_owned()))?;
    let header = Header {
        export: EXPORT_FORMAT.to_owned(),
        room: RoomInfo {
            // What belongs to a reader, not to the room, stays out.
            member: false,
            last_read: 0,
            unread: 0,
            mentions: 0,
            ..info
        },
    };
    serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    let mut cursor = 0;
    let mut written = 0;
    loop {
        let batch = store.after(room, cursor, EXPORT_BATCH).await?;
        let done = batch.len() < EXPORT_BATCH;
        for m in batch {
            cursor = m.seq;
            serde_json::to_writer(&mut *out, &m).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        if done {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}

/// Reads an export and writes it into the store as the room `rename` (or its own name), with
/// `visibility` when given (else the exported room's). Nothing is written unless the whole file
/// is right. Returns the room's name and the number of events.
pub async fn import(
    store: &DynStore,
    input: impl BufRead,
    rename: Option<&str>,
    visibility: Option<Visibility>,
) -> Result<(String, u64), OpsError> {
    let (header, events) = read_export(input)?;
    let name = rename.map_or_else(|| header.room.name.clone(), str::to_owned);
    if !crate::protocol::valid_room_name(&name) {
        return Err(OpsError::Line {
            line: 1,
            message: format!("{name:?} is not a room name"),
        });
    }
    // Everyone the events name, matched to this install's accounts by username.
    let mut names: HashSet<String> = HashSet::new();
    for m in &events {
        names.extend(m.username.iter().cloned());
        names.extend(m.member.iter().cloned());
        if m.is_message() {
            names.extend(mentioned_usernames(&m.body));
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let ids: HashMap<String, i64> = store
        .users_named(&names)
        .await?
        .into_iter()
        .map(|u| (u.username, u.id))
        .collect();
    let plan = plan(&header.room, &name, visibility, events, &ids);
    let count = plan.events.len() as u64;
    match store.import_room(&plan).await {
        Err(StoreError::RoomExists) => Err(OpsError::RoomExists(name.clone())),
        other => other.map_err(OpsError::from),
    }?;
    Ok((name, count))
}

/// The header and the events of an export, checked: one room, seqs from 1 with no gap.
fn read_export(input: impl BufRead) -> Result<(Header, Vec<ChatMessage>), OpsError> {
    let mut header: Option<Header> = None;
    let mut events: Vec<ChatMessage> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let bad = |message: String| OpsError::Line { line: n, message };
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let Some(h) = &header else {
            let h: Header = serde_json::from_str(&line)
                .map_err(|e| bad(format!("not the header of a hubbub export: {e}")))?;
            if h.export != EXPORT_FORMAT {
                return Err(bad(format!(
                    "an export in the format {:?}, not {EXPORT_FORMAT:?}",
                    h.export
                )));
            }
            header = Some(h);
            continue;
        };
        let m: ChatMessage =
            serde_json::from_str(&line).map_err(|e| bad(format!("not an event: {e}")))?;
        if m.room != h.room.name {
            return Err(bad(format!(
                "an event of room {:?} in the export of {:?}",
                m.room, h.room.name
            )));
        }
        let want = events.len() as u64 + 1;
        if m.seq != want {
            return Err(bad(format!(
                "seq {} where {want} was due: an export is a room's whole history, in order",
                m.seq
            )));
        }
        if m.kind == EventKind::Other {
            return Err(bad(
                "an event of a kind this version does not know".to_owned()
            ));
        }
        events.push(m);
    }
    let header = header.ok_or(OpsError::Empty)?;
    if events.is_empty() {
        return Err(OpsError::Empty);
    }
    Ok((header, events))
}

/// The room as it will be written: its events with this install's ids, and the members and
/// reactions they leave behind.
fn plan(
    room: &RoomInfo,
    name: &str,
    visibility: Option<Visibility>,
    events: Vec<ChatMessage>,
    ids: &HashMap<String, i64>,
) -> RoomImport {
    let id_of = |username: Option<&String>| username.and_then(|u| ids.get(u)).copied();
    let head = events.last().map_or(0, |m| m.seq);
    let mut members: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut reactions: BTreeMap<(u64, String, i64), i64> = BTreeMap::new();
    let mut owner = None;
    let mut archived_at = None;
    let mut out = Vec::with_capacity(events.len());
    for mut m in events {
        let author = id_of(m.username.as_ref());
        let subject = id_of(m.member.as_ref().or(m.username.as_ref()));
        match m.kind {
            EventKind::RoomCreated => {
                owner = author;
                if let Some(a) = author {
                    members.insert(a, ("owner".to_owned(), m.ts));
                }
            }
            EventKind::MemberJoined | EventKind::MemberInvited => {
                if let Some(s) = subject {
                    members.entry(s).or_insert(("member".to_owned(), m.ts));
                }
            }
            EventKind::MemberLeft | EventKind::MemberRemoved => {
                if let Some(s) = subject {
                    members.remove(&s);
                }
            }
            EventKind::RoomArchived => archived_at = Some(m.ts),
            EventKind::ReactionAdded => {
                if let (Some(a), Some(target)) = (author, m.target) {
                    reactions.insert((target, m.body.clone(), a), m.ts);
                }
            }
            EventKind::ReactionRemoved => {
                if let (Some(a), Some(target)) = (author, m.target) {
                    reactions.remove(&(target, m.body.clone(), a));
                }
            }
            _ => {}
        }
        m.room = name.to_owned();
        m.user_id = author;
        m.mentions = if m.is_message() && !m.deleted {
            mentioned_usernames(&m.body)
                .iter()
                .filter_map(|u| ids.get(u).copied())
                .collect()
        } else {
            Vec::new()
        };
        // Worked out again when read: the quote of a reply, the reactions' summary, the file.
        m.reply = None;
        m.reactions = Vec::new();
        m.attachment = None;
        m.notify = Vec::new();
        out.push(m);
    }
    RoomImport {
        name: name.to_owned(),
        kind: if name.starts_with("dm-") {
            RoomKind::Dm
        } else {
            room.kind
        },
        visibility: visibility.unwrap_or(room.visibility),
        title: room.title.clone(),
        topic: room.topic.clone(),
        created_at: out.first().map_or(0, |m| m.ts),
        owner,
        archived_at: archived_at.filter(|_| room.archived),
        events: out,
        members: members
            .into_iter()
            .map(|(user, (role, at))| (user, role, at, head))
            .collect(),
        reactions: reactions
            .into_iter()
            .map(|((seq, emoji, user), at)| (seq, emoji, user, at))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: EventKind, who: &str, body: &str) -> ChatMessage {
        ChatMessage {
            room: "plans".into(),
            seq,
            client_id: format!("c{seq}"),
            kind,
            user: who.to_uppercase(),
            username: Some(who.into()),
            body: body.into(),
            ts: seq as i64 * 1_000,
            ..Default::default()
        }
    }

    fn header() -> String {
        let room = RoomInfo {
            name: "plans".into(),
            title: "Plans".into(),
            topic: "what next".into(),
            kind: RoomKind::Room,
            visibility: Visibility::Public,
            members: 1,
            head: 7,
            owner: Some("ann".into()),
            archived: false,
            member: false,
            last_read: 0,
            unread: 0,
            mentions: 0,
            people: Vec::new(),
        };
        serde_json::to_string(&Header {
            export: EXPORT_FORMAT.into(),
            room,
        })
        .expect("json")
    }

    fn file(events: &[ChatMessage]) -> String {
        let mut out = header();
        for e in events {
            out.push('\n');
            out.push_str(&serde_json::to_string(e).expect("json"));
        }
        out
    }

    #[test]
    fn members_and_reactions_are_what_the_events_leave() {
        let mut joined = event(2, EventKind::MemberJoined, "bob", "");
        joined.member = Some("bob".into());
        let mut react = event(4, EventKind::ReactionAdded, "bob", "👍");
        react.target = Some(3);
        let mut again = event(5, EventKind::ReactionAdded, "ann", "👍");
        again.target = Some(3);
        let mut back = event(6, EventKind::ReactionRemoved, "bob", "👍");
        back.target = Some(3);
        let mut left = event(7, EventKind::MemberLeft, "bob", "");
        left.member = Some("bob".into());
        let text = file(&[
            event(1, EventKind::RoomCreated, "ann", ""),
            joined,
            event(3, EventKind::Message, "carol", "hi @ann and @bob"),
            react,
            again,
            back,
            left,
        ]);
        let (header, events) = read_export(text.as_bytes()).expect("read");
        let ids = HashMap::from([("ann".to_owned(), 10), ("bob".to_owned(), 11)]);
        let p = plan(&header.room, "plans", None, events, &ids);
        assert_eq!(p.owner, Some(10));
        assert_eq!(p.members, vec![(10, "owner".to_owned(), 1_000, 7)]);
        assert_eq!(p.reactions, vec![(3, "👍".to_owned(), 10, 5_000)]);
        // Carol has no account here: her message keeps her name and no id.
        assert_eq!(p.events[2].user_id, None);
        assert_eq!(p.events[2].user, "CAROL");
        assert_eq!(p.events[2].mentions, vec![10, 11]);
        assert_eq!((p.title.as_str(), p.topic.as_str()), ("Plans", "what next"));
    }

    #[test]
    fn a_broken_file_is_refused_by_its_line() {
        let one = event(1, EventKind::Message, "ann", "a");
        let three = event(3, EventKind::Message, "ann", "c");
        let gap = file(&[one.clone(), three]);
        assert!(matches!(
            read_export(gap.as_bytes()),
            Err(OpsError::Line { line: 3, .. })
        ));
        let garbage = format!("{}\n{{not json", header());
        assert!(matches!(
            read_export(garbage.as_bytes()),
            Err(OpsError::Line { line: 2, .. })
        ));
        let mut other = one.clone();
        other.room = "elsewhere".into();
        assert!(matches!(
            read_export(file(&[other]).as_bytes()),
            Err(OpsError::Line { line: 2, .. })
        ));
        assert!(matches!(
            read_export(header().as_bytes()),
            Err(OpsError::Empty)
        ));
        assert!(matches!(
            read_export(&b"{\"user\":\"x\",\"message\":\"y\"}"[..]),
            Err(OpsError::Line { line: 1, .. })
        ));
    }
}
