//! The one place that decides who may do what in a room. Every path that reads or writes a room
//! (socket hello, join, resume and send; HTTP history, post and room endpoints; the server-rendered
//! room page) asks [`authorize`] with the caller's account, and only then touches the room.
//!
//! A room the caller may not read answers exactly as a room that does not exist, so private rooms
//! and DMs do not leak their names.

use crate::protocol::{self, RoomKind, Visibility};
use crate::server::chat::ChatError;
use crate::server::store::{DynStore, ReadScope, RoomAccess, User};

/// What the caller wants to do in the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read its history, subscribe to it, see its members.
    Read,
    /// Post a message.
    Post,
    /// Join a public room.
    Join,
    /// Leave it.
    Leave,
    /// Add someone to it.
    Invite,
    /// Rename it, set its topic, remove members, archive it: its owner's (or an admin's) right.
    Manage,
    /// Move one's read position.
    MarkRead,
}

/// Whether `user` (a guest when `None`) may do `action` in `room`; on success, the room as the
/// caller sees it. The rules:
/// - members read; anyone with an account reads public rooms;
/// - accounts post where they are members; nobody in an archived room;
/// - guests (anonymous mode) read and post in the default room, and nowhere else;
/// - accounts join public rooms; members invite (not into DMs: a DM's people are fixed);
/// - the owner, or a server admin, manages a room (never a DM).
pub async fn authorize(
    store: &DynStore,
    user: Option<&User>,
    room: &str,
    action: Action,
) -> Result<RoomAccess, ChatError> {
    let unknown = || ChatError::UnknownRoom(room.to_owned());
    if !protocol::valid_room_name(room) {
        return Err(unknown());
    }
    let access = store
        .room_access(room, user.map(|u| u.id))
        .await?
        .ok_or_else(unknown)?;
    decide(&access, user, action).map_err(|e| match e {
        Refusal::Hidden => unknown(),
        Refusal::Error(e) => e,
    })?;
    Ok(access)
}

enum Refusal {
    /// The caller may not know the room exists.
    Hidden,
    Error(ChatError),
}

fn decide(access: &RoomAccess, user: Option<&User>, action: Action) -> Result<(), Refusal> {
    let info = &access.info;
    let member = access.role.is_some();
    let public = info.visibility == Visibility::Public && info.kind == RoomKind::Room;
    if !member && !public {
        return Err(Refusal::Hidden);
    }
    // Guests (anonymous mode) have the default room only.
    if user.is_none() && info.name != protocol::DEFAULT_ROOM {
        return Err(Refusal::Hidden);
    }
    let archived = || Refusal::Error(ChatError::Archived(info.name.clone()));
    let forbidden = |why: &'static str| Refusal::Error(ChatError::Forbidden(why));
    match (action, user) {
        (Action::Read, _) => Ok(()),
        (Action::Post, _) if info.archived => Err(archived()),
        (Action::Post, None) => Ok(()),
        (Action::Post, Some(_)) if member => Ok(()),
        (Action::Post, Some(_)) => Err(Refusal::Error(ChatError::NotMember(info.name.clone()))),
        (_, None) => Err(forbidden("guests cannot do that; sign up first")),
        (Action::Join, Some(_)) if info.archived => Err(archived()),
        // A member joining again is a no-op the caller handles.
        (Action::Join, Some(_)) => Ok(()),
        (Action::Leave | Action::MarkRead, Some(_)) if member => Ok(()),
        (Action::Leave | Action::MarkRead, Some(_)) => {
            Err(Refusal::Error(ChatError::NotMember(info.name.clone())))
        }
        (Action::Invite | Action::Manage, Some(_)) if !member && !is_admin(user) => {
            Err(Refusal::Error(ChatError::NotMember(info.name.clone())))
        }
        (Action::Invite | Action::Manage, Some(_)) if info.kind == RoomKind::Dm => Err(forbidden(
            "the people of a direct message are fixed; start a new one",
        )),
        (Action::Invite | Action::Manage, Some(_)) if info.archived => Err(archived()),
        (Action::Invite, Some(_)) => Ok(()),
        (Action::Manage, Some(u)) if access.owner_id == Some(u.id) || u.is_admin => Ok(()),
        (Action::Manage, Some(_)) => Err(forbidden("only the room's owner may do that")),
    }
}

/// The rooms `user` may search: what [`decide`] lets them read, as the store can ask it of many
/// rooms at once (their rooms, and the public rooms anyone with an account may read).
pub fn search_scope(user: &User) -> ReadScope {
    ReadScope {
        member: user.id,
        public_rooms: true,
    }
}

/// What only the server's administrators may do: the admin view and its actions, invite links.
pub fn administer(user: &User) -> Result<(), ChatError> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ChatError::Forbidden("only administrators may do that"))
    }
}

fn is_admin(user: Option<&User>) -> bool {
    user.is_some_and(|u| u.is_admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomInfo;

    fn room(visibility: Visibility, kind: RoomKind, role: Option<&str>, owner: i64) -> RoomAccess {
        RoomAccess {
            info: RoomInfo {
                name: "r".into(),
                title: "r".into(),
                topic: String::new(),
                kind,
                visibility,
                members: 1,
                head: 0,
                owner: None,
                archived: false,
                member: role.is_some(),
                last_read: 0,
                unread: 0,
                mentions: 0,
                people: Vec::new(),
            },
            owner_id: Some(owner),
            role: role.map(str::to_owned),
        }
    }

    fn user(id: i64, admin: bool) -> User {
        User {
            id,
            username: format!("u{id}"),
            display_name: format!("U{id}"),
            is_admin: admin,
        }
    }

    fn hidden(r: Result<(), Refusal>) -> bool {
        matches!(r, Err(Refusal::Hidden))
    }

    #[test]
    fn private_rooms_and_dms_are_hidden_from_everyone_outside_them() {
        let (ann, admin) = (user(1, false), user(9, true));
        for kind in [RoomKind::Room, RoomKind::Dm] {
            let r = room(Visibility::Private, kind, None, 2);
            for action in [Action::Read, Action::Post, Action::Join, Action::Manage] {
                assert!(hidden(decide(&r, Some(&ann), action)));
                assert!(hidden(decide(&r, Some(&admin), action)));
                assert!(hidden(decide(&r, None, action)));
            }
        }
        // A DM is never public, whatever its visibility says.
        let dm = room(Visibility::Public, RoomKind::Dm, None, 2);
        assert!(hidden(decide(&dm, Some(&ann), Action::Read)));
    }

    /// The search scope lets an account search exactly the rooms [`decide`] lets it read.
    #[test]
    fn the_search_scope_is_the_read_rule() {
        let ann = user(1, false);
        let scope = search_scope(&ann);
        for visibility in [Visibility::Public, Visibility::Private] {
            for kind in [RoomKind::Room, RoomKind::Dm] {
                for role in [None, Some("member"), Some("owner")] {
                    let r = room(visibility, kind, role, 2);
                    let may_read = decide(&r, Some(&ann), Action::Read).is_ok();
                    let in_scope = role.is_some()
                        || (scope.public_rooms
                            && visibility == Visibility::Public
                            && kind == RoomKind::Room);
                    assert_eq!(may_read, in_scope, "{visibility:?} {kind:?} {role:?}");
                }
            }
        }
        assert_eq!(scope.member, ann.id);
        assert!(administer(&user(9, true)).is_ok());
        assert!(administer(&ann).is_err());
    }

    #[test]
    fn owners_and_admins_manage_members_do_not() {
        let r = room(Visibility::Public, RoomKind::Room, Some("member"), 1);
        assert!(decide(&r, Some(&user(1, false)), Action::Manage).is_ok());
        assert!(decide(&r, Some(&user(9, true)), Action::Manage).is_ok());
        assert!(matches!(
            decide(&r, Some(&user(2, false)), Action::Manage),
            Err(Refusal::Error(ChatError::Forbidden(_)))
        ));
        let dm = room(Visibility::Private, RoomKind::Dm, Some("member"), 1);
        assert!(matches!(
            decide(&dm, Some(&user(1, false)), Action::Invite),
            Err(Refusal::Error(ChatError::Forbidden(_)))
        ));
    }

    #[test]
    fn accounts_post_where_they_are_members_guests_in_the_default_room() {
        let mut outside = room(Visibility::Public, RoomKind::Room, None, 1);
        assert!(hidden(decide(&outside, None, Action::Read)));
        outside.info.name = protocol::DEFAULT_ROOM.into();
        assert!(matches!(
            decide(&outside, Some(&user(2, false)), Action::Post),
            Err(Refusal::Error(ChatError::NotMember(_)))
        ));
        assert!(decide(&outside, None, Action::Post).is_ok());
        assert!(decide(&outside, Some(&user(2, false)), Action::Read).is_ok());
        let mut archived = room(Visibility::Public, RoomKind::Room, Some("member"), 1);
        archived.info.archived = true;
        assert!(matches!(
            decide(&archived, Some(&user(2, false)), Action::Post),
            Err(Refusal::Error(ChatError::Archived(_)))
        ));
        assert!(decide(&archived, Some(&user(2, false)), Action::Read).is_ok());
    }
}
