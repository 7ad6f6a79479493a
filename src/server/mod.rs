//! Everything that runs only on the server: configuration, storage, the hub, the WebSocket and HTTP
//! endpoints, and [`run`], which serves them all on a listener until told to stop.

pub mod api;
pub mod auth;
pub mod chat;
pub mod config;
pub mod error;
pub mod hub;
pub mod pages;
pub mod serve;
pub mod store;
pub mod ws;

use crate::app::{shell, App};
use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::Config;

/// How long shutdown waits for WebSocket connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// The server's shared state: cheap to clone, only handles inside.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub chat: chat::Chat,
    /// Flips to `true` once, when the server starts shutting down.
    pub shutdown: watch::Sender<bool>,
    pub connections: Connections,
    /// Heartbeat and write-stall limits of every WebSocket.
    pub ws_limits: ws::Limits,
    pub auth: auth::Auth,
}

/// Counts open WebSocket connections so shutdown can wait for them.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<(AtomicUsize, Notify)>,
}

/// Held by a connection task for its lifetime.
pub struct ConnectionGuard(Connections);

impl Connections {
    pub fn enter(&self) -> ConnectionGuard {
        self.inner.0.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.inner.0.load(Ordering::SeqCst)
    }

    async fn drained(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.0.fetch_sub(1, Ordering::SeqCst);
        self.0.inner.1.notify_waiters();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] serve::TlsError),
    #[error("--tls-cert and --tls-key go together")]
    TlsFlags,
}

impl AppState {
    /// Opens storage and builds the state for `config`.
    pub async fn new(config: &Config, leptos_options: LeptosOptions) -> Result<Self, ServerError> {
        let store = Arc::new(store::SqliteStore::open(&config.data_dir).await?);
        if config.allow_anonymous {
            tracing::warn!(
                "ANONYMOUS MODE: anyone who can reach this server can read and post in the default room without an account"
            );
        }
        Ok(AppState {
            auth: auth::Auth::new(
                store.clone(),
                config.allow_anonymous,
                config.allowed_origins.clone(),
                config.secure_cookies || config.tls_cert.is_some(),
            )
            .with_trusted_proxies(config.trusted_proxies.clone())
            .with_socket_limits(auth::SocketLimits {
                per_user: config.max_sockets_per_user,
                anonymous_handshakes_per_minute: config.max_anonymous_handshakes,
            }),
            leptos_options,
            chat: chat::Chat::new(store, hub::Hub::new(config.queue_len, config.queue_bytes)),
            shutdown: watch::Sender::new(false),
            connections: Connections::default(),
            ws_limits: ws::Limits {
                ping_interval: config.ping_interval,
                send_timeout: config.send_timeout,
                message_rate: config.message_rate,
            },
        })
    }
}

/// Serves WebSocket upgrades on `/` too, where classic clients connect; plain GETs of `/` go on to
/// the page.
async fn upgrade_on_root(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let is_upgrade = req.uri().path() == "/"
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return next.run(req).await;
    }
    let (mut parts, _body) = req.into_parts();
    match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => {
            let Some(peer) = parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .copied()
            else {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            ws::upgrade(State(state), peer, parts.headers.clone(), upgrade).await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// Gives the page being rendered a fresh nonce and a Content-Security-Policy that lets only the
/// app's own scripts (and the inline hydration script carrying that nonce) and its WASM run.
fn page_security_policy(options: &LeptosOptions) {
    leptos::nonce::provide_nonce();
    let (Some(nonce), Some(response)) = (
        leptos::nonce::use_nonce(),
        leptos::prelude::use_context::<leptos_axum::ResponseOptions>(),
    ) else {
        return;
    };
    // In development the live-reload socket of cargo-leptos listens on another port.
    let reload = match options.env {
        leptos::config::Env::DEV => " ws:",
        _ => "",
    };
    let policy = format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'{reload}; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// Sends a visitor without a session to the log-in page, unless anonymous mode is on.
async fn require_login(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let page = path == "/" || path.starts_with("/r/");
    if page
        && !state.auth.allow_anonymous
        && state.auth.identify(req.headers(), false).await.is_err()
    {
        return (
            axum::http::StatusCode::SEE_OTHER,
            [(header::LOCATION, "/login")],
        )
            .into_response();
    }
    next.run(req).await
}

/// The whole HTTP surface of the server.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let options = state.leptos_options.clone();
    let router = Router::new();
    #[cfg(feature = "autobahn")]
    let router = router.route("/autobahn/echo", get(ws::echo));
    router
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/login", get(pages::login_page))
        .route("/signup", get(pages::signup_page))
        .route("/tokens", get(pages::tokens_page))
        .route("/auth/login", axum::routing::post(pages::login))
        .route("/auth/signup", axum::routing::post(pages::signup))
        .route("/auth/logout", axum::routing::post(pages::logout))
        .route("/auth/tokens", axum::routing::post(pages::create_token))
        .route(
            "/auth/tokens/{id}/revoke",
            axum::routing::post(pages::revoke_token),
        )
        .route(
            "/api/rooms/{room}/messages",
            get(api::history).post(api::post_message),
        )
        .leptos_routes_with_context(
            &state,
            routes,
            {
                let state = state.clone();
                move || {
                    provide_context(state.clone());
                    page_security_policy(&state.leptos_options);
                }
            },
            move || shell(options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(middleware::from_fn_with_state(state.clone(), require_login))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            upgrade_on_root,
        ))
        // Pages set their own policy with a nonce; everything else gets the strictest one.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Not `no-referrer`: with it browsers send `Origin: null` on form posts, which the
        // Origin check must refuse.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .with_state(state)
}

/// Serves hubbub on `listener` until `shutdown` resolves; then every WebSocket gets Close 1001 and
/// the function returns once they are closed (or after a grace period).
pub async fn run(
    listener: TcpListener,
    config: Config,
    leptos_options: LeptosOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState::new(&config, leptos_options).await?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "hubbub listening on {scheme}://{addr}");
    let stop = state.shutdown.clone();
    let stopped = state.shutdown.subscribe();
    let connections = state.connections.clone();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => return Err(ServerError::TlsFlags),
    };
    let mut app = router(state);
    if tls.is_some() {
        app = app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: closing WebSockets with 1001");
        stop.send_replace(true);
    });
    serve::serve(listener, app, tls, stopped).await?;
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.count(),
            "WebSockets still open after the grace period"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
