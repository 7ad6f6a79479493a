//! The server's error type and how it answers over HTTP: a JSON body with a shared error code;
//! details of internal failures go to the log, not to the client.

use crate::protocol::api::{ErrorAnswer, ErrorBody};
use crate::protocol::{ErrorCode, Invalid};
use crate::server::chat::ChatError;
use crate::server::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("no room named {0:?}")]
    UnknownRoom(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("not allowed")]
    Denied(crate::server::auth::Denied),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{0}")]
    NotFound(String),
    /// The request stopped arriving.
    #[error("the request stopped arriving")]
    Timeout,
    #[error("disk error: {0}")]
    Io(std::io::Error),
}

impl From<crate::server::auth::Denied> for AppError {
    fn from(d: crate::server::auth::Denied) -> Self {
        AppError::Denied(d)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::Store(e)
    }
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Invalid(i) => i.code,
            AppError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            AppError::BadRequest(_) => ErrorCode::InvalidQuery,
            AppError::Store(_) => ErrorCode::Internal,
            AppError::Denied(_) => ErrorCode::Unauthorized,
            AppError::Chat(e) => e.code(),
            AppError::NotFound(_) => ErrorCode::UnknownMessage,
            AppError::Timeout => ErrorCode::InvalidQuery,
            AppError::Io(_) => ErrorCode::Internal,
        }
    }

    /// The message a client may see: internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Store(_) | AppError::Io(_) => "internal error".to_owned(),
            AppError::Chat(e) => e.public_message(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Denied(d) = self {
            return d.into_response();
        }
        let status = match &self {
            AppError::Invalid(_) | AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::UnknownRoom(_) => StatusCode::NOT_FOUND,
            AppError::Denied(_) => StatusCode::UNAUTHORIZED,
            AppError::Store(e) | AppError::Chat(ChatError::Store(e)) => {
                tracing::error!(error = %e, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AppError::Chat(e) => chat_status(e),
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Timeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Io(e) => {
                tracing::error!(error = %e, "request failed on disk");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = ErrorAnswer {
            error: ErrorBody {
                code: self.code(),
                message: self.public_message(),
            },
        };
        (status, Json(body)).into_response()
    }
}

/// The HTTP status of what the chat refused.
fn chat_status(e: &ChatError) -> StatusCode {
    match e {
        ChatError::Invalid(_) => StatusCode::BAD_REQUEST,
        // A room the caller may not see is one that does not exist.
        ChatError::UnknownRoom(_) | ChatError::UnknownUser(_) | ChatError::UnknownMessage(_) => {
            StatusCode::NOT_FOUND
        }
        ChatError::EditWindowClosed(_) | ChatError::MessageDeleted => StatusCode::CONFLICT,
        ChatError::TooLarge(_) | ChatError::Quota(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ChatError::NotMember(_) | ChatError::Forbidden(_) => StatusCode::FORBIDDEN,
        ChatError::Archived(_) | ChatError::RoomExists(_) => StatusCode::CONFLICT,
        ChatError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ChatError::TooOften(_) => StatusCode::TOO_MANY_REQUESTS,
        ChatError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
