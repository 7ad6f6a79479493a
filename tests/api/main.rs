//! Integration tests: the real server on a real port, driven over real sockets and HTTP.

mod helpers;

mod abuse;
mod admin;
mod api_docs;
mod auth;
mod backup;
mod bad_input;
mod config;
mod edges;
mod fanout;
mod faults;
mod files;
mod history;
mod lifecycle;
mod limits;
mod messages;
mod metrics;
mod rooms;
mod search;
