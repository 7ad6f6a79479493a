//! What a node of a cluster does with the bus beside the fan-out: hands each note from the other
//! nodes to the part it concerns, and tells them, a few times a second, what its accounts spent
//! of their budgets and how many sockets each has open here.

use crate::protocol::ChatMessage;
use crate::server::auth::Auth;
use crate::server::bus::{Bus, Envelope, Note};
use crate::server::chat::Chat;
use crate::server::limits::Rates;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often spending and socket counts go out.
pub const USAGE_EVERY: Duration = Duration::from_millis(200);
/// Every this many usage notes, the whole socket list goes (the others carry changes only).
const FULL_EVERY: u64 = 25;
/// The name `/healthz` gives the task that hands the notes out.
pub const NOTES_TASK: &str = "bus-notes";

/// The parts of the node the notes go to.
#[derive(Clone)]
pub struct Parts {
    pub chat: Chat,
    pub auth: Auth,
    pub rates: Rates,
    /// Where the other nodes' commits go (the fan-out orders them).
    pub commits: mpsc::Sender<ChatMessage>,
}

/// Hands each note from the bus to its part; runs until the bus is gone.
pub async fn hand_out(mut notes: mpsc::Receiver<Envelope>, parts: Parts) {
    while let Some(Envelope { from, note, .. }) = notes.recv().await {
        match note {
            Note::Commit { m } => {
                // A full queue drops it: the fan-out's sweep reads it from the database.
                let _ = parts.commits.try_send(*m);
            }
            Note::Relay {
                room,
                frame,
                personal,
            } => parts.chat.relayed(room, frame, personal),
            Note::Revoke { user, credential } => {
                let closed = parts.auth.revoke_here(user, &credential);
                if closed > 0 {
                    tracing::info!(node = %from, closed, "closed sockets of a credential that ended on another node");
                }
            }
            Note::RevokeAll {
                user,
                sessions_only,
            } => {
                let closed = parts.auth.revoke_all_here(user, sessions_only);
                if closed > 0 {
                    tracing::info!(node = %from, closed, "closed sockets of an account whose credentials ended on another node");
                }
            }
            Note::Usage {
                spent,
                sockets,
                full,
            } => {
                for (account, cost) in spent {
                    parts.rates.charge(account, cost);
                }
                parts.auth.sockets_elsewhere(&from, sockets, full);
            }
            Note::Presence { people, full } => parts.chat.presence.from_node(&from, people, full),
        }
    }
}

/// Tells the other nodes what this node's accounts spent and how many sockets they have open
/// here, every [`USAGE_EVERY`]; runs until dropped.
pub async fn tell_usage(bus: Bus, auth: Auth, rates: Rates) {
    let mut every = tokio::time::interval(USAGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        every.tick().await;
        let full = n.is_multiple_of(FULL_EVERY);
        n += 1;
        let spent = rates.drain_spent();
        let sockets = auth.socket_counts(full);
        if spent.is_empty() && sockets.is_empty() && !full {
            continue;
        }
        bus.publish(Note::Usage {
            spent,
            sockets,
            full,
        });
    }
}
