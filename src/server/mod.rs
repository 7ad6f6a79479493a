//! Everything that runs only on the server: configuration, storage, the hub, the WebSocket and HTTP
//! endpoints, and [`run`], which serves them all on a listener until told to stop.

pub mod access;
pub mod admin;
pub mod api;
pub mod attachments;
pub mod auth;
pub mod backup;
pub mod bus;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod error;
pub mod faults;
pub mod files;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod page;
pub mod pages;
pub mod presence;
pub mod sequencer;
pub mod serve;
pub mod store;
pub mod tasks;
pub mod ws;

use crate::app::shell;
use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::AppError;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::Config;

/// How long after the stop signal everything is closed: HTTP requests finish (at most
/// [`serve::DRAIN_GRACE`]) while every WebSocket does its close handshake, all within the 5 s
/// promised to supervisors.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(4_500);
/// The largest request body any route takes (a message post); each route has its own limit
/// at or below it.
const MAX_BODY_BYTES: usize = api::MAX_POST_BYTES;
/// How often expired sessions, tokens and invites are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How long an expired or revoked token (or a used-up invite) stays listed before it is deleted.
const KEEP_ENDED: Duration = Duration::from_secs(7 * 86_400);
/// The name `/healthz` gives the purge task.
pub const PURGE_TASK: &str = "purge";

/// Makes the id of a request that came without one: a UUIDv7 (time-ordered, so log lines sort).
#[derive(Clone, Copy)]
struct RequestIds;

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(
        &mut self,
        _request: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

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
    /// Message budgets per account (and per guest address), shared by sockets and the API.
    pub rates: limits::Rates,
    /// Who may sign up.
    pub registration: config::Registration,
    /// How long a request may take to arrive in full.
    pub request_timeout: Duration,
    /// The supervised background tasks, for `/healthz`.
    pub tasks: tasks::Tasks,
    /// Open TCP connections, for `/healthz`.
    pub open: serve::OpenConnections,
    /// What the page is told of the server's settings.
    pub client_settings: crate::session::ClientSettings,
    /// Limits on attachments.
    pub uploads: UploadLimits,
    /// Messages stored over the last minutes, for the admin view's chart.
    pub activity: admin::Activity,
    /// The settings the server runs with (secrets redacted), for the admin view.
    pub settings: Arc<[config::Effective]>,
}

/// How large an attachment may be, and how much of them each account may keep (bytes).
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    pub max: u64,
    pub quota: u64,
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
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

impl AppState {
    /// Opens storage and builds the state for `config`, starting the background tasks.
    pub async fn new(config: &Config, leptos_options: LeptosOptions) -> Result<Self, ServerError> {
        let tasks = tasks::Tasks::default();
        config.validate().map_err(ServerError::Settings)?;
        let (store, accounts, blobs, identity) = open_storage(config, &tasks).await?;
        let cluster = match &config.bus {
            Some(url) => {
                let node = config.node_name.clone().unwrap_or_else(default_node_name);
                let cluster = identity.unwrap_or_default();
                let (bus, notes) = bus::Bus::connect(url, &node, &cluster, &tasks).await?;
                tracing::info!(bus = %redact_url(url), node, "cluster node: commits and signals cross nodes on the bus");
                Some((bus, notes))
            }
            None => None,
        };
        if config.allow_anonymous {
            tracing::warn!(
                "ANONYMOUS MODE: anyone who can reach this server can read and post in the default room without an account"
            );
        }
        let mut auth = auth::Auth::new(
            accounts,
            config.allow_anonymous,
            config.allowed_origins.clone(),
            config.secure_cookies || config.tls_cert.is_some(),
        )
        .with_trusted_proxies(config.trusted_proxies.clone())
        .with_socket_limits(auth::SocketLimits {
            per_user: config.max_sockets_per_user,
            anonymous_handshakes_per_minute: config.max_anonymous_handshakes,
        });
        auth.session_ttl = config.session_ttl;
        auth.signups_per_hour = config.signups_per_hour;
        let mut rates = limits::Rates::new(config.message_rate);
        let hub = hub::Hub::new(config.queue_len, config.queue_bytes);
        let room_limits = chat::RoomLimits {
            max_members: config.max_room_members,
            rooms_per_hour: config.rooms_per_hour,
            edit_window: config.edit_window.0,
            max_reactions: config.max_reactions,
            typing_max_members: config.typing_max_members,
        };
        let chat = match cluster {
            None => chat::Chat::with_limits(store, blobs, hub, tasks.clone(), room_limits),
            Some((bus, notes)) => {
                auth.bus = bus.clone();
                rates = rates.shared();
                let (commits_tx, commits_rx) = tokio::sync::mpsc::channel(65_536);
                let chat = chat::Chat::in_cluster(
                    store,
                    blobs,
                    hub,
                    tasks.clone(),
                    room_limits,
                    bus.clone(),
                    commits_rx,
                );
                let parts = cluster::Parts {
                    chat: chat.clone(),
                    auth: auth.clone(),
                    rates: rates.clone(),
                    commits: commits_tx,
                };
                tokio::spawn(cluster::hand_out(notes, parts));
                tokio::spawn(cluster::tell_usage(bus, auth.clone(), rates.clone()));
                chat
            }
        };
        tokio::spawn(tasks::supervise(tasks.clone(), PURGE_TASK, {
            let accounts = auth.accounts.clone();
            move |_| purge(accounts.clone())
        }));
        Ok(AppState {
            auth,
            leptos_options,
            chat,
            shutdown: watch::Sender::new(false),
            connections: Connections::default(),
            ws_limits: ws::Limits {
                ping_interval: config.ping_interval,
                send_timeout: config.send_timeout,
            },
            rates,
            registration: config.registration,
            request_timeout: config.request_timeout,
            tasks,
            open: serve::OpenConnections::default(),
            client_settings: crate::session::ClientSettings {
                idle_after_ms: u64::try_from(config.idle_after.as_millis()).unwrap_or(u64::MAX),
                max_upload: config.max_upload,
                edit_window_ms: config
                    .edit_window
                    .0
                    .map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            },
            uploads: UploadLimits {
                max: config.max_upload,
                quota: config.upload_quota,
            },
            activity: admin::Activity::start(),
            settings: config.effective.clone().into(),
        })
    }
}

/// The stores `config` names: SQLite (the default, a file in the data directory, files beside
/// it) or PostgreSQL (history, accounts and files all in the database every node shares).
async fn open_storage(
    config: &Config,
    tasks: &tasks::Tasks,
) -> Result<
    (
        store::DynStore,
        store::DynAccounts,
        Arc<dyn files::BlobStore>,
        Option<String>,
    ),
    ServerError,
> {
    use config::Database;
    let sqlite = |store: store::SqliteStore| -> Result<_, ServerError> {
        let store = Arc::new(store);
        let blobs: Arc<dyn files::BlobStore> = Arc::new(files::DirBlobs::new(&config.data_dir)?);
        Ok((
            store.clone() as store::DynStore,
            store as store::DynAccounts,
            blobs,
            None,
        ))
    };
    match &config.database {
        None => sqlite(store::SqliteStore::open_supervised(&config.data_dir, tasks.clone()).await?),
        Some(Database::Sqlite(path)) => {
            sqlite(store::SqliteStore::open_file(path, tasks.clone()).await?)
        }
        Some(Database::Postgres(url)) => {
            let store = Arc::new(store::PgStore::connect(url, tasks.clone()).await?);
            let blobs: Arc<dyn files::BlobStore> =
                Arc::new(files::PgBlobs::new(store.pool(), &config.data_dir)?);
            tracing::info!(database = %redact_url(url), "storage: PostgreSQL");
            let identity = store.identity().await?;
            Ok((
                store.clone() as store::DynStore,
                store as store::DynAccounts,
                blobs,
                Some(identity),
            ))
        }
    }
}

/// The stores `config` names, for the operator's commands (`hubbub admin`, `export`, `import`):
/// opened as the server would open them (migrations included), with nothing served.
pub async fn open_stores(
    config: &Config,
) -> Result<(store::DynStore, store::DynAccounts), ServerError> {
    let (store, accounts, _, _) = open_storage(config, &tasks::Tasks::default()).await?;
    Ok((store, accounts))
}

/// This node's name when none is given: the host's name and the process's id.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Deletes expired sessions, tokens and invites, now and then every [`PURGE_EVERY`].
async fn purge(accounts: store::DynAccounts) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        every.tick().await;
        let now = auth::now_ms();
        let keep = now - i64::try_from(KEEP_ENDED.as_millis()).unwrap_or(0);
        match accounts.purge_expired(now, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged expired sessions, tokens and invites"),
            Err(e) => tracing::warn!(error = %e, "purging expired credentials failed"),
        }
    }
}

/// Cuts off a request that has not arrived in full (and been answered) in time: a body sent a
/// byte now and then cannot hold a connection. WebSocket upgrades answer at once and are not
/// affected; the socket after the 101 has its own heartbeat.
async fn request_deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // A body announced larger than any route takes is refused before a byte of it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // An upload streams to disk with limits of its own (size, quota, a stall); everything else
    // must arrive in full within the request timeout.
    let upload = req.method() == axum::http::Method::POST
        && req.uri().path().starts_with("/api/rooms/")
        && req.uri().path().ends_with("/attachments");
    if upload {
        let limit = state.uploads.max;
        if announced.is_some_and(|n| n > limit) {
            return AppError::Chat(chat::ChatError::TooLarge(format!(
                "the file is over the limit of {} MB",
                limit / 1_000_000
            )))
            .into_response();
        }
        return next.run(req).await;
    }
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            "the request body is too large",
        )
            .into_response();
    }
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the request took too long to arrive",
        )
            .into_response(),
    }
}

/// Counts a request in `hubbub_http_requests_total` and its duration, by the route's pattern
/// (`fallback` for static files and unknown paths) and a known method, so that no request can
/// make a new series.
async fn count_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::metrics().http(
        route.as_deref().unwrap_or("fallback"),
        method,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The metrics listener's routes: `GET /metrics`, which also reads what is a state rather than a
/// count (database pools) when scraped.
fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move {
                let m = metrics::metrics();
                for (pool, idle, in_use) in state.chat.store.pool_use() {
                    m.pool(pool, idle, in_use);
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }),
        )
        .with_state(state)
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
fn page_security_policy() {
    leptos::nonce::provide_nonce();
    let (Some(nonce), Some(response)) = (
        leptos::nonce::use_nonce(),
        leptos::prelude::use_context::<leptos_axum::ResponseOptions>(),
    ) else {
        return;
    };
    // Under `cargo leptos watch` (which sets LEPTOS_WATCH) the live-reload socket listens on
    // another port; everywhere else the page may open only its own origin's socket.
    let reload = if std::env::var_os("LEPTOS_WATCH").is_some() {
        " ws:"
    } else {
        ""
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

/// The whole HTTP surface of the server.
pub fn router(state: AppState) -> Router {
    // Rendering a page spawns tasks on Leptos's executor: tokio's, here. A second call (another
    // router in the same process, as in the tests) finds it set, which is as good.
    let _ = any_spawner::Executor::init_tokio();
    let options = state.leptos_options.clone();
    // The chat's pages: the default room and any other. Everything the page needs is read
    // before it renders (`page::page_data`), and the same `App` hydrates it in the browser.
    let render = leptos_axum::render_app_to_stream_with_context(
        {
            let state = state.clone();
            move || {
                provide_context(state.clone());
                page_security_policy();
            }
        },
        move || shell(options.clone()),
    );
    let page = move |req: Request| {
        let render = render.clone();
        async move { render(req).await }
    };
    let router = Router::new();
    #[cfg(feature = "autobahn")]
    let router = router.route("/autobahn/echo", get(ws::echo));
    router
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/api/search", get(api::search))
        .route("/api/attachments/{id}", get(attachments::download))
        .route("/api/rooms/{room}/attachments", post(attachments::upload))
        .route("/login", get(pages::login_page))
        .route("/signup", get(pages::signup_page))
        .route("/tokens", get(pages::tokens_page))
        .route("/invites", get(pages::invites_page))
        .route("/admin", get(admin::admin_page))
        .merge(
            Router::new()
                .route("/auth/login", axum::routing::post(pages::login))
                .route("/auth/signup", axum::routing::post(pages::signup))
                .route("/auth/logout", axum::routing::post(pages::logout))
                .route("/auth/tokens", axum::routing::post(pages::create_token))
                .route(
                    "/auth/tokens/{id}/revoke",
                    axum::routing::post(pages::revoke_token),
                )
                .route("/auth/invites", axum::routing::post(pages::create_invite))
                .route("/admin/users/{username}/disable", post(admin::disable))
                .route("/admin/users/{username}/enable", post(admin::enable))
                .route(
                    "/admin/users/{username}/sessions/end",
                    post(admin::end_sessions),
                )
                // A form is a few fields: a large body is an attack, refused before it is read.
                .layer(axum::extract::DefaultBodyLimit::max(pages::MAX_FORM_BYTES)),
        )
        .route(
            "/api/rooms/{room}/messages",
            get(api::history)
                .post(api::post_message)
                .layer(axum::extract::DefaultBodyLimit::max(api::MAX_POST_BYTES)),
        )
        .route(
            "/api/rooms/{room}/messages/{seq}",
            axum::routing::patch(api::edit_message)
                .delete(api::delete_message)
                .layer(axum::extract::DefaultBodyLimit::max(api::MAX_POST_BYTES)),
        )
        .merge(
            Router::new()
                .route("/api/rooms", get(api::rooms).post(api::create_room))
                .route("/api/rooms/{room}", get(api::room).patch(api::update_room))
                .route("/api/rooms/{room}/join", post(api::join))
                .route("/api/rooms/{room}/leave", post(api::leave))
                .route("/api/rooms/{room}/members", post(api::invite))
                .route(
                    "/api/rooms/{room}/members/{username}",
                    axum::routing::delete(api::remove_member),
                )
                .route("/api/rooms/{room}/read", axum::routing::put(api::mark_read))
                .route("/api/dms", post(api::open_dm))
                .route(
                    "/api/rooms/{room}/messages/{seq}/reactions/{emoji}",
                    axum::routing::put(api::react).delete(api::react),
                )
                // Room requests are a few short fields.
                .layer(axum::extract::DefaultBodyLimit::max(
                    api::MAX_ROOM_BODY_BYTES,
                )),
        )
        .route("/", get(page.clone()))
        .route("/r/{room}", get(page))
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        // Counted by route pattern (each route is wrapped, so its pattern is known here).
        .layer(middleware::from_fn(count_request))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            page::page_data,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            upgrade_on_root,
        ))
        // One line per request, with its id (the caller's `x-request-id`, or a new one), which
        // every log line of the request carries and the response echoes.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_response(
                    |res: &axum::http::Response<_>, took: Duration, _span: &tracing::Span| {
                        tracing::info!(
                            status = res.status().as_u16(),
                            ms = took.as_secs_f64() * 1000.0,
                            "request"
                        );
                    },
                )
                .on_failure(()),
        )
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            RequestIds,
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
    let open = state.open.clone();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => return Err(ServerError::TlsFlags),
    };
    let limits = serve::ConnLimits {
        max_total: config
            .max_connections
            .unwrap_or_else(config::default_max_connections),
        max_per_ip: config.max_connections_per_ip,
        exempt: Arc::new(config.trusted_proxies.clone()),
    };
    if let Some(metrics_addr) = config.metrics_addr {
        let listener = TcpListener::bind(metrics_addr).await?;
        let at = listener.local_addr()?;
        tracing::info!(%at, "metrics on http://{at}/metrics");
        let routes = metrics_router(state.clone());
        let mut stopped = state.shutdown.subscribe();
        tokio::spawn(async move {
            let served = axum::serve(listener, routes)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
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
    // The WebSockets start their close handshakes at the same moment as the HTTP drain, so one
    // deadline covers both.
    let stopped_at = serve::serve(listener, app, tls, stopped, limits, open).await?;
    let deadline = stopped_at + SHUTDOWN_DEADLINE;
    if tokio::time::timeout_at(deadline, connections.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.count(),
            "WebSockets still open at the shutdown deadline"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
