//! The one path by which a message enters the system, whichever door it came through: validate,
//! store durably, then fan out to the room.

use crate::protocol::{self, ChatMessage, ClassicMessage, ServerFrame};
use crate::server::error::AppError;
use crate::server::hub::{Delivery, Hub};
use crate::server::store::{Appended, CommitFeed, DynStore, NewMessage, StoreError};
use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

/// Storage and fan-out together, behind one cheap handle.
#[derive(Clone)]
pub struct Chat {
    pub store: DynStore,
    pub hub: Hub,
}

/// Hands every committed message to the hub, in commit order: deliveries leave in seq order
/// (members never see a gap they must replay from storage), and a message is delivered even when
/// the request or socket that posted it has gone. Ends when the store does.
async fn fan_out(mut feed: CommitFeed, hub: Hub) {
    loop {
        match feed.recv().await {
            Ok(message) => {
                hub.publish(delivery(&message));
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Some commits were never handed out: every member re-reads from storage.
                tracing::warn!(
                    missed,
                    "fan-out fell behind the commits; resyncing every member"
                );
                hub.resync_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Encodes a frame the server built itself; serialising these plain structs cannot fail.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).expect("BUG: server frames always serialise"))
}

fn delivery(m: &ChatMessage) -> Delivery {
    let classic = ClassicMessage {
        user: m.user.clone(),
        message: m.body.clone(),
    };
    Delivery {
        room: m.room.as_str().into(),
        seq: m.seq,
        rich: encode(&ServerFrame::Message(m.clone())),
        classic: Utf8Bytes::from(
            serde_json::to_string(&classic).expect("BUG: classic frames always serialise"),
        ),
    }
}

impl Chat {
    /// Joins storage and the hub, and starts the fan-out from the store's commit feed.
    pub fn new(store: DynStore, hub: Hub) -> Self {
        tokio::spawn(fan_out(store.commits(), hub.clone()));
        Chat { store, hub }
    }

    /// Validates and stores a message by `user` (whom the caller identified); once committed,
    /// the fan-out task hands it to every member of the room. A resend of a known `client_id`
    /// returns the stored original and is not fanned out again.
    pub async fn post(
        &self,
        room: &str,
        client_id: String,
        user: String,
        body: String,
    ) -> Result<Appended, AppError> {
        protocol::validate_client_id(&client_id)?;
        protocol::validate_body(&body)?;
        self.store
            .append(NewMessage {
                room: room.to_owned(),
                client_id,
                user,
                body,
            })
            .await
            .map_err(|e| match e {
                StoreError::RoomNotFound => AppError::UnknownRoom(room.to_owned()),
                other => AppError::Store(other),
            })
    }
}

/// An idempotency key for messages whose sender gave none (HTTP callers, classic clients): unique
/// across restarts, since it carries the time and the process id.
pub fn server_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "srv-{nanos:x}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
