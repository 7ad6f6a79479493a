//! What the stores read, as Rust: the rows both backends select (the same columns under the
//! same names) and how they become the protocol's types. No SQL lives here.

use crate::protocol::api::Snippet;
use crate::protocol::{
    self, Attachment, ChatMessage, EventKind, Quote, Reaction, RoomInfo, RoomKind, Visibility,
};
use crate::server::store::{AdminUser, RoomAccess, RoomActivity, Term, User};

#[derive(sqlx::FromRow)]
pub(super) struct Row {
    pub(super) id: i64,
    pub(super) room_id: i64,
    pub(super) room: String,
    pub(super) seq: i64,
    pub(super) client_id: String,
    pub(super) kind: String,
    pub(super) user: String,
    pub(super) user_id: Option<i64>,
    pub(super) username: Option<String>,
    pub(super) guest: bool,
    pub(super) body: String,
    pub(super) member: Option<String>,
    pub(super) ts: i64,
    pub(super) target: Option<i64>,
    pub(super) reply_to: Option<i64>,
    pub(super) edited_at: Option<i64>,
    pub(super) deleted: bool,
    pub(super) mentions: String,
    pub(super) count: Option<i64>,
    /// The message a reply answers, as it is now.
    pub(super) q_user: Option<String>,
    pub(super) q_username: Option<String>,
    pub(super) q_body: Option<String>,
    pub(super) q_deleted: Option<bool>,
    pub(super) attachment: Option<String>,
    pub(super) a_name: Option<String>,
    pub(super) a_size: Option<i64>,
    pub(super) a_mime: Option<String>,
    pub(super) a_width: Option<i64>,
    pub(super) a_height: Option<i64>,
}

pub(super) fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// A comma-separated list of ids, as the `mentions` column keeps it.
pub(super) fn ids_of(list: &str) -> Vec<i64> {
    list.split(',').filter_map(|s| s.parse().ok()).collect()
}

pub(super) fn ids_text(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// The room and seq range of the messages among `rows` that may have reactions.
pub(super) fn reaction_bounds(rows: &[Row]) -> Option<(i64, i64, i64)> {
    rows.iter()
        .filter(|r| r.kind == "message" && !r.deleted)
        .fold(None, |b: Option<(i64, i64, i64)>, r| match b {
            None => Some((r.room_id, r.seq, r.seq)),
            Some((room, lo, hi)) => Some((room, lo.min(r.seq), hi.max(r.seq))),
        })
}

/// Puts reactions read as (seq, emoji, username), in the order given, on their messages.
pub(super) fn add_reactions(out: &mut [ChatMessage], given: Vec<(i64, String, String)>) {
    for (seq, emoji, username) in given {
        let Some(m) = out
            .iter_mut()
            .find(|m| m.seq == seq_of(seq) && m.is_message())
        else {
            continue;
        };
        let at = match m.reactions.iter().position(|r| r.emoji == emoji) {
            Some(at) => at,
            None => {
                m.reactions.push(Reaction {
                    emoji,
                    ..Default::default()
                });
                m.reactions.len() - 1
            }
        };
        let r = &mut m.reactions[at];
        r.count += 1;
        if r.users.len() < protocol::REACTION_NAMES {
            r.users.push(username);
        }
    }
}

impl From<Row> for ChatMessage {
    fn from(r: Row) -> Self {
        let reply = r.reply_to.and(r.q_user).map(|user| {
            let deleted = r.q_deleted.unwrap_or(false);
            Quote {
                user,
                username: r.q_username,
                body: if deleted {
                    String::new()
                } else {
                    protocol::quote_of(r.q_body.as_deref().unwrap_or(""))
                },
                deleted,
            }
        });
        let attachment = r.attachment.map(|id| Attachment {
            id,
            name: r.a_name.unwrap_or_default(),
            size: u64::try_from(r.a_size.unwrap_or_default()).unwrap_or_default(),
            mime: r.a_mime.unwrap_or_default(),
            width: r.a_width.and_then(|w| u32::try_from(w).ok()),
            height: r.a_height.and_then(|h| u32::try_from(h).ok()),
        });
        ChatMessage {
            room: r.room,
            seq: seq_of(r.seq),
            id: r.id,
            client_id: r.client_id,
            kind: EventKind::parse(&r.kind),
            user: r.user,
            user_id: r.user_id,
            username: r.username,
            guest: r.guest,
            body: r.body,
            member: r.member,
            ts: r.ts,
            target: r.target.map(seq_of),
            reply_to: r.reply_to.map(seq_of),
            reply,
            edited: r.edited_at,
            deleted: r.deleted,
            mentions: ids_of(&r.mentions),
            count: r.count.map(seq_of),
            attachment,
            ..Default::default()
        }
    }
}

/// A room with the caller's membership, as `room_access`, `rooms_of` and `public_rooms` read it.
#[derive(sqlx::FromRow)]
pub(super) struct RoomRow {
    name: String,
    title: String,
    topic: String,
    kind: String,
    visibility: String,
    head_seq: i64,
    owner_id: Option<i64>,
    owner: Option<String>,
    archived: bool,
    members: i64,
    role: Option<String>,
    last_read: Option<i64>,
    unread: i64,
    mentions: i64,
    people: Option<String>,
}

impl RoomRow {
    pub(super) fn access(self) -> RoomAccess {
        let owner_id = self.owner_id;
        let role = self.role.clone();
        RoomAccess {
            info: self.info(),
            owner_id,
            role,
        }
    }

    pub(super) fn info(self) -> RoomInfo {
        RoomInfo {
            name: self.name,
            title: self.title,
            topic: self.topic,
            kind: if self.kind == "dm" {
                RoomKind::Dm
            } else {
                RoomKind::Room
            },
            visibility: if self.visibility == "private" {
                Visibility::Private
            } else {
                Visibility::Public
            },
            members: u64::try_from(self.members).unwrap_or_default(),
            head: u64::try_from(self.head_seq).unwrap_or_default(),
            owner: self.owner,
            archived: self.archived,
            member: self.role.is_some(),
            last_read: self
                .last_read
                .and_then(|r| u64::try_from(r).ok())
                .unwrap_or_default(),
            unread: u64::try_from(self.unread).unwrap_or_default(),
            mentions: u64::try_from(self.mentions).unwrap_or_default(),
            people: self
                .people
                .map(|p| p.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }
}

pub(super) fn kind_str(k: RoomKind) -> &'static str {
    match k {
        RoomKind::Room => "room",
        RoomKind::Dm => "dm",
    }
}

pub(super) fn visibility_str(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
    }
}

/// A room's activity as both stores select it: name, title, kind, members, messages, last.
pub(super) type ActivityRow = (String, String, String, i64, i64, i64);

pub(super) fn activity((name, title, kind, members, messages, last): ActivityRow) -> RoomActivity {
    RoomActivity {
        name,
        title,
        kind: if kind == kind_str(RoomKind::Dm) {
            RoomKind::Dm
        } else {
            RoomKind::Room
        },
        members: u64::try_from(members).unwrap_or(0),
        messages: u64::try_from(messages).unwrap_or(0),
        last,
    }
}

/// An account as both stores select it for the admin view: id, username, display name, admin,
/// created, disabled, sessions.
pub(super) type AdminUserRow = (i64, String, String, bool, i64, bool, i64);

pub(super) fn admin_user(
    (id, username, display_name, is_admin, created_at, disabled, sessions): AdminUserRow,
) -> AdminUser {
    AdminUser {
        user: User {
            id,
            username,
            display_name,
            is_admin,
        },
        created_at,
        disabled,
        sessions: u64::try_from(sessions).unwrap_or(0),
    }
}

/// The `LIKE` pattern of "contains `s`", with `s`'s wildcards (and the escape character `\`)
/// escaped.
pub(super) fn contains_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: i64,
    username: String,
    display_name: String,
    is_admin: bool,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            is_admin: r.is_admin,
        }
    }
}

/// Words of a text as a search sees them: runs of letters and digits, lowercased.
pub(super) fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Words a snippet shows around its first hit.
const SNIPPET_WORDS: usize = 16;

/// A snippet of `body` for a search: up to [`SNIPPET_WORDS`] words from a little before the
/// first word it found, those words marked, `…` where it was cut. Built from the text itself,
/// as text (a snippet is never markup).
pub(super) fn snippet_of(body: &str, terms: &[Term]) -> Vec<Snippet> {
    let mut exact: Vec<String> = Vec::new();
    let mut prefix: Option<String> = None;
    for (i, term) in terms.iter().enumerate() {
        let (Term::Word(t) | Term::Phrase(t)) = term;
        let mut words = words_of(t);
        if i + 1 == terms.len() && matches!(term, Term::Word(_)) {
            prefix = words.pop();
        }
        exact.extend(words);
    }
    let found = |w: &str| {
        let w = w.to_lowercase();
        exact.contains(&w) || prefix.as_ref().is_some_and(|p| w.starts_with(p.as_str()))
    };
    // Byte spans of the words, and whether each is a hit.
    let mut spans: Vec<(usize, usize, bool)> = Vec::new();
    let mut start = None;
    for (at, c) in body
        .char_indices()
        .chain(std::iter::once((body.len(), ' ')))
    {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(at),
            (false, Some(from)) => {
                spans.push((from, at, found(&body[from..at])));
                start = None;
            }
            _ => {}
        }
    }
    let first_hit = spans.iter().position(|s| s.2).unwrap_or(0);
    let from = first_hit
        .saturating_sub(4)
        .min(spans.len().saturating_sub(SNIPPET_WORDS));
    let to = (from + SNIPPET_WORDS).min(spans.len());
    let text_from = if from == 0 { 0 } else { spans[from].0 };
    let text_to = if to == spans.len() {
        body.len()
    } else {
        spans[to - 1].1
    };
    let mut out = Vec::new();
    let mut push = |text: &str, hit: bool| {
        if text.is_empty() {
            return;
        }
        match out.last_mut() {
            Some(Snippet { text: t, hit: h }) if *h == hit => t.push_str(text),
            _ => out.push(Snippet {
                text: text.to_owned(),
                hit,
            }),
        }
    };
    if from > 0 {
        push("…", false);
    }
    let mut at = text_from;
    for &(a, b, hit) in spans.get(from..to).unwrap_or_default() {
        if hit {
            push(&body[at..a], false);
            push(&body[a..b], true);
            at = b;
        }
    }
    push(&body[at..text_to], false);
    if to < spans.len() {
        push("…", false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(parts: &[Snippet]) -> String {
        parts
            .iter()
            .map(|p| {
                if p.hit {
                    format!("[{}]", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    #[test]
    fn snippets_mark_the_words_found_and_keep_the_text_as_it_is() {
        let w = |t: &str| Term::Word(t.into());
        assert_eq!(
            shown(&snippet_of(
                "release <b>banner</b> for Friday",
                &[w("friday")]
            )),
            "release <b>banner</b> for [Friday]"
        );
        assert_eq!(
            shown(&snippet_of("status report 44", &[w("stat")])),
            "[status] report 44",
            "the last word is a prefix"
        );
        assert_eq!(
            shown(&snippet_of(
                "a b c d e f g h i j k l m n o p q r s t u v w x y z needle and more",
                &[Term::Phrase("needle".into())]
            )),
            "…n o p q r s t u v w x y z [needle] and more"
        );
        let long = "word ".repeat(40);
        assert!(shown(&snippet_of(&long, &[w("nothing")])).ends_with('…'));
        assert!(snippet_of("", &[w("x")]).is_empty());
    }
}
