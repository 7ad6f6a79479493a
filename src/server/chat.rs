//! The one path by which a message enters the system, whichever door it came through: validate,
//! store durably, then fan out to the room.

use crate::protocol::{self, ChatMessage, ClassicMessage, ServerFrame};
use crate::server::error::AppError;
use crate::server::faults;
use crate::server::hub::{Delivery, Hub};
use crate::server::store::{Appended, CommitFeed, DynStore, FeedError, NewMessage, StoreError};
use crate::server::tasks::{supervise, Tasks};
use axum::extract::ws::Utf8Bytes;

/// The name `/healthz` gives the fan-out task.
pub const FANOUT_TASK: &str = "fanout";

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
                if faults::hit("fanout-panic", &message.body) {
                    panic!("injected fault: fanout-panic");
                }
                hub.publish(delivery(&message));
            }
            Err(FeedError::Lagged(missed)) => {
                // Some commits were never handed out: every member re-reads from storage.
                tracing::warn!(
                    missed,
                    "fan-out fell behind the commits; resyncing every member"
                );
                hub.resync_all();
            }
            Err(FeedError::Closed) => return,
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
    /// Joins storage and the hub, and starts the fan-out from the store's commit feed under
    /// supervision: if it panics, a new one subscribes and every member resyncs from storage
    /// (what was committed meanwhile is read there).
    pub fn new(store: DynStore, hub: Hub, tasks: Tasks) -> Self {
        let (s, h) = (store.clone(), hub.clone());
        tokio::spawn(supervise(tasks, FANOUT_TASK, move |run| {
            let feed = s.commits();
            if run > 0 {
                h.resync_all();
            }
            fan_out(feed, h.clone())
        }));
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

/// An idempotency key for messages whose sender gave none (HTTP callers, classic clients): a
/// UUIDv7, unique across restarts and nodes (it does not lean on the process id, which is 1 in
/// every container).
pub fn server_client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
