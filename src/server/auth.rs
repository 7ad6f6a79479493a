//! Who is asking: password hashing (bounded), sessions, personal API tokens, the CSRF and Origin
//! checks, the limits on log-ins, sign-ups and bad credentials, and the registry of open sockets
//! per account, through which a log-out or a revoked token closes exactly its own sockets.

use crate::server::limits::{CappedMap, Expiring, IpKey, Window, MAX_KEYS};
use crate::server::store::{DynAccounts, StoreError, User};
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Cookie names without TLS; under TLS they carry the `__Host-` prefix (see [`Auth::session_cookie_name`]).
pub const SESSION_COOKIE: &str = "hubbub_session";
pub const CSRF_COOKIE: &str = "hubbub_csrf";
/// How long a browser session lasts by default.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Log-in attempts per address in one window, whatever the account.
pub const LOGIN_ATTEMPTS_PER_IP: u32 = 50;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Wrong passwords for one account from one address before each further try must wait.
pub const FREE_LOGIN_FAILURES: u32 = 3;
/// The longest such wait.
pub const MAX_LOGIN_DELAY: Duration = Duration::from_secs(15 * 60);
/// Sign-ups per address in one window.
pub const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);
/// Requests with a wrong session cookie or token per address per minute before the address is
/// refused without a database look-up.
pub const BAD_CREDENTIALS_PER_MINUTE: u32 = 60;
/// Password hashes waiting for a core beyond the ones being computed; more get 503.
pub const HASH_QUEUE: usize = 16;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// 256 random bits, URL-safe: session ids, tokens, CSRF tokens, invite codes.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored instead of a secret.
pub fn digest(secret: &str) -> String {
    let hash = Sha256::digest(secret.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane).
fn argon() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("BUG: constant Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Runs password hashes on a few threads of its own (one per core but one), with a short queue: each
/// hash takes 19 MiB and tens of milliseconds of a core, so a flood of sign-ups or log-ins waits
/// its turn or is turned away (503), never piling up memory. Own threads rather than the
/// runtime's blocking pool: each thread's allocator keeps the 19 MiB it last used, so the number
/// of threads that ever hash is what bounds the memory.
#[derive(Clone)]
pub struct Hasher {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Every core is hashing and the queue is full.
#[derive(Debug, thiserror::Error)]
#[error("the server is busy hashing passwords")]
pub struct Busy;

impl Hasher {
    /// `threads` hashing threads and room for `queue` hashes waiting.
    pub fn new(threads: usize, queue: usize) -> Self {
        let (jobs, waiting) = std::sync::mpsc::sync_channel::<Job>(queue);
        let waiting = Arc::new(Mutex::new(waiting));
        for i in 0..threads.max(1) {
            let waiting = Arc::clone(&waiting);
            let spawned = std::thread::Builder::new()
                .name(format!("hubbub-hash-{i}"))
                .spawn(move || loop {
                    let job = {
                        let queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
                        queue.recv()
                    };
                    match job {
                        // A panic in one hash must not take the thread with it.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return, // every Hasher is gone
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Hasher { jobs }
    }

    /// Sized to the machine: every core but one (and at least one), so that hashing never
    /// takes the whole machine from the chat.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Hasher::new(cores.saturating_sub(1).max(1), HASH_QUEUE)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs.try_send(job).map_err(|_| Busy)?;
        result.await.map_err(|_| Busy)
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || hash_phc(password.as_bytes()).map_err(|e| AuthError::Hash(e.to_string())))
            .await?
    }

    /// Checks a password. Without a stored hash (unknown user) it checks against a dummy one, so
    /// both failures take the same time.
    pub async fn verify(&self, stored: Option<String>, password: String) -> Result<bool, Busy> {
        static DUMMY: OnceLock<String> = OnceLock::new();
        self.run(move || {
            let known = stored.is_some();
            let hash = stored.unwrap_or_else(|| {
                DUMMY
                    .get_or_init(|| hash_phc(b"not a password anyone has").unwrap_or_default())
                    .clone()
            });
            verify_phc(password.as_bytes(), &hash) && known
        })
        .await
    }
}

thread_local! {
    /// The hashing thread's Argon2 memory, allocated once and reused: with the allocator, a
    /// fresh 19 MiB for every hash was kept as RSS, about 19 MiB more per hash.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs Argon2 with this thread's reused memory.
fn argon_raw(
    a: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let n = a.params().block_count();
        if blocks.len() != n {
            *blocks = vec![argon2::Block::default(); n];
        }
        a.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
    })
}

/// A new password's hash in the PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
fn hash_phc(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{Output, ParamsString};
    let a = argon();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let mut out = [0u8; 32];
    argon_raw(&a, password, salt_bytes, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(a.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches a stored PHC hash, compared in constant time.
fn verify_phc(password: &[u8], stored: &str) -> bool {
    use argon2::password_hash::Output;
    let check = || -> Result<bool, argon2::password_hash::Error> {
        let parsed = PasswordHash::new(stored)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Ok(false);
        };
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&parsed)?;
        let a = Argon2::new(algorithm, version, params);
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf)?;
        let mut out = vec![0u8; expected.len()];
        argon_raw(&a, password, salt_bytes, &mut out)?;
        Ok(Output::new(&out)? == expected)
    };
    check().unwrap_or(false)
}

/// Reads one cookie from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Credential {
    /// A browser session, by the digest of its id.
    Session(String),
    /// A personal API token, by id.
    Token(i64),
    /// Nobody: anonymous mode.
    Anonymous,
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub user: Option<User>,
    pub credential: Credential,
    /// When the session or token ends (ms since the epoch); open sockets close then.
    pub expires_at: Option<i64>,
}

impl Identity {
    /// The name a message is shown under: the account's, or in anonymous mode the one the client
    /// gave.
    pub fn author(
        &self,
        claimed: Option<&str>,
    ) -> Result<crate::server::store::Author, crate::protocol::Invalid> {
        use crate::server::store::Author;
        match &self.user {
            Some(u) => Ok(Author::of(u)),
            None => crate::protocol::normalize_name(claimed).map(Author::guest),
        }
    }
}

/// Why a request was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or bad, expired or revoked ones: 401.
    Unauthorized,
    /// A cookie-authenticated request from an origin that is not allowed: 403.
    ForeignOrigin,
    /// Too many bad credentials from this address: 429 with `Retry-After`.
    TooMany(Duration),
}

/// A `429` with `Retry-After` and a JSON error.
pub fn too_many(wait: Duration, message: &str) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(secs))],
        axum::Json(serde_json::json!({"error": {"code": "rate_limited", "message": message}})),
    )
        .into_response()
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                axum::Json(serde_json::json!({"error": {"code": "unauthorized", "message": "log in or send a bearer token"}})),
            )
                .into_response(),
            Denied::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({"error": {"code": "forbidden_origin", "message": "this origin may not use your session"}})),
            )
                .into_response(),
            Denied::TooMany(wait) => too_many(wait, "too many bad credentials from this address"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Authentication settings and state, behind one cheap handle.
#[derive(Clone)]
pub struct Auth {
    pub accounts: DynAccounts,
    pub allow_anonymous: bool,
    /// Exact origins (`scheme://host:port`) allowed to use a session; empty means the server's own.
    allowed_origins: Arc<Vec<String>>,
    /// Whether cookies get `Secure` (and the `__Host-` prefix) and the own origin is `https`.
    pub secure: bool,
    limiter: Arc<Mutex<Limiter>>,
    sockets: Arc<Mutex<Sockets>>,
    /// Counts the credentials that ended, so an upgrade can tell whether one ended while it
    /// was registering its socket.
    ended: Arc<AtomicU64>,
    /// Proxies whose `X-Forwarded-For` names the real client.
    trusted_proxies: Arc<Vec<IpAddr>>,
    pub socket_limits: SocketLimits,
    pub hasher: Hasher,
    /// How long a new browser session lasts.
    pub session_ttl: Duration,
    /// Sign-ups per address per hour.
    pub signups_per_hour: u32,
    /// Where ended credentials are told to the other nodes of a cluster.
    pub bus: crate::server::bus::Bus,
}

/// The in-memory limiters; every map is capped.
struct Limiter {
    /// Log-in attempts per address.
    login_ips: CappedMap<IpKey, Window>,
    /// Wrong passwords per (account, address), with the wait they impose.
    lockouts: CappedMap<(String, IpKey), Lockout>,
    /// Sign-ups per address.
    signups: CappedMap<IpKey, Window>,
    /// Unauthenticated WebSocket handshakes per address, in one-minute windows.
    handshakes: CappedMap<IpKey, Window>,
    /// Requests with a wrong session cookie or token per address, in one-minute windows.
    bad_credentials: CappedMap<IpKey, Window>,
    /// Digests of credentials found valid lately: they skip the bad-credential budget (never the
    /// look-up), so a flood of made-up tokens from an address does not lock out the real users
    /// behind it.
    known_good: CappedMap<String, KnownGood>,
}

/// When a credential digest was last found valid.
struct KnownGood(Instant);

impl Expiring for KnownGood {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.0) >= KNOWN_GOOD_FOR
    }
}

/// How long a credential found valid skips the bad-credential budget.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(3600);

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            login_ips: CappedMap::new(MAX_KEYS),
            lockouts: CappedMap::new(MAX_KEYS),
            signups: CappedMap::new(MAX_KEYS),
            handshakes: CappedMap::new(MAX_KEYS),
            bad_credentials: CappedMap::new(MAX_KEYS),
            known_good: CappedMap::new(MAX_KEYS),
        }
    }
}

/// Wrong passwords for one account from one address.
struct Lockout {
    /// Attempts counted (each is counted before the password is checked, and forgotten on success).
    failures: u32,
    /// No attempt before this.
    blocked_until: Instant,
    last: Instant,
}

impl Expiring for Lockout {
    fn expired(&self, now: Instant) -> bool {
        now >= self.blocked_until && now.duration_since(self.last) >= LOGIN_WINDOW
    }
}

/// Open sockets by account, each with its credential and the signal that closes it.
#[derive(Default)]
struct Sockets {
    by_user: HashMap<i64, Vec<SocketEntry>>,
    /// Accounts whose count changed since the other nodes were last told.
    changed: std::collections::HashSet<i64>,
    /// The other nodes' open sockets per account, with when each node last sent its list.
    remote: HashMap<String, (HashMap<i64, u32>, Instant)>,
}

/// A node whose socket counts were not heard of this long is taken to have none.
const REMOTE_SOCKETS_EXPIRE: Duration = Duration::from_secs(30);

impl Sockets {
    fn remote_count(&self, user: i64) -> usize {
        self.remote
            .values()
            .filter(|(_, heard)| heard.elapsed() < REMOTE_SOCKETS_EXPIRE)
            .filter_map(|(counts, _)| counts.get(&user))
            .map(|n| *n as usize)
            .sum()
    }
}

struct SocketEntry {
    id: u64,
    credential: Credential,
    signal: Arc<Notify>,
}

/// Limits on WebSockets, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct SocketLimits {
    pub per_user: usize,
    pub anonymous_handshakes_per_minute: u32,
}

/// One of an account's open sockets: counts against its limit, and is signalled when its
/// credential ends. Dropping it frees the slot.
pub struct SocketSlot {
    sockets: Arc<Mutex<Sockets>>,
    user: i64,
    id: u64,
    /// Notified (once, with a stored permit, so it cannot be missed) when the credential ends.
    pub revoked: Arc<Notify>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = s.by_user.get_mut(&self.user) {
            list.retain(|e| e.id != self.id);
            if list.is_empty() {
                s.by_user.remove(&self.user);
            }
        }
        s.changed.insert(self.user);
    }
}

/// The wait after the `n`th counted failure: none for the first few, then 1 s, 2 s, 4 s, … up to
/// [`MAX_LOGIN_DELAY`].
fn login_delay(n: u32) -> Duration {
    if n <= FREE_LOGIN_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_LOGIN_FAILURES - 1).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_LOGIN_DELAY)
}

impl Auth {
    pub fn new(
        accounts: DynAccounts,
        allow_anonymous: bool,
        allowed_origins: Vec<String>,
        secure: bool,
    ) -> Self {
        Auth {
            accounts,
            allow_anonymous,
            allowed_origins: Arc::new(allowed_origins),
            secure,
            limiter: Arc::default(),
            sockets: Arc::default(),
            ended: Arc::default(),
            trusted_proxies: Arc::default(),
            socket_limits: SocketLimits {
                per_user: 20,
                anonymous_handshakes_per_minute: 60,
            },
            hasher: Hasher::for_this_machine(),
            session_ttl: SESSION_TTL,
            signups_per_hour: 20,
            bus: crate::server::bus::Bus::none(),
        }
    }

    pub fn with_socket_limits(mut self, limits: SocketLimits) -> Self {
        self.socket_limits = limits;
        self
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        // Every update is a counter bump: a panic cannot leave it half-done.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a socket of `user` opened with `credential`, or `None` when the account has all
    /// of its sockets open.
    pub fn socket_slot(&self, user: i64, credential: &Credential) -> Option<SocketSlot> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        // The account's sockets on the other nodes of a cluster count too.
        let elsewhere = s.remote_count(user);
        s.changed.insert(user);
        let list = s.by_user.entry(user).or_default();
        if list.len() + elsewhere >= self.socket_limits.per_user {
            return None;
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        list.push(SocketEntry {
            id,
            credential: credential.clone(),
            signal: Arc::clone(&revoked),
        });
        Some(SocketSlot {
            sockets: Arc::clone(&self.sockets),
            user,
            id,
            revoked,
        })
    }

    /// Closes (4001) the open sockets of `user` that were opened with `credential`, here and
    /// on the other nodes of a cluster; nobody else's socket is woken.
    pub fn revoke(&self, user: i64, credential: &Credential) -> usize {
        self.bus.publish(crate::server::bus::Note::Revoke {
            user,
            credential: credential.clone(),
        });
        self.revoke_here(user, credential)
    }

    /// Takes what another node says of its open sockets per account (`full`: every account
    /// with any; the others have none there).
    pub fn sockets_elsewhere(&self, node: &str, counts: Vec<(i64, u32)>, full: bool) {
        let mut s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.remote
            .retain(|_, (_, heard)| heard.elapsed() < REMOTE_SOCKETS_EXPIRE);
        let entry = s
            .remote
            .entry(node.to_owned())
            .or_insert_with(|| (HashMap::new(), now));
        entry.1 = now;
        if full {
            entry.0.clear();
        }
        for (user, n) in counts {
            if n == 0 {
                entry.0.remove(&user);
            } else {
                entry.0.insert(user, n);
            }
        }
    }

    /// The open sockets here of the accounts whose count changed since the last call (or of
    /// every account with any, when `all`), for the other nodes.
    pub fn socket_counts(&self, all: bool) -> Vec<(i64, u32)> {
        let mut s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let changed = std::mem::take(&mut s.changed);
        let count = |u: &i64| s.by_user.get(u).map_or(0, |l| l.len() as u32);
        if all {
            s.by_user
                .iter()
                .map(|(u, l)| (*u, l.len() as u32))
                .collect()
        } else {
            changed.iter().map(|u| (*u, count(u))).collect()
        }
    }

    /// Closes (4001) the sockets here of `user` that were opened with `credential`.
    pub fn revoke_here(&self, user: i64, credential: &Credential) -> usize {
        self.ended.fetch_add(1, Ordering::AcqRel);
        let s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for e in s.by_user.get(&user).into_iter().flatten() {
            if &e.credential == credential {
                e.signal.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Closes (4001) the open sockets of `user` opened with any session (and with any token,
    /// unless `sessions_only`), here and on the other nodes of a cluster.
    pub fn revoke_all(&self, user: i64, sessions_only: bool) -> usize {
        self.bus.publish(crate::server::bus::Note::RevokeAll {
            user,
            sessions_only,
        });
        self.revoke_all_here(user, sessions_only)
    }

    /// Closes (4001) the sockets here of `user` opened with a session (or a token, unless
    /// `sessions_only`).
    pub fn revoke_all_here(&self, user: i64, sessions_only: bool) -> usize {
        self.ended.fetch_add(1, Ordering::AcqRel);
        let s = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for e in s.by_user.get(&user).into_iter().flatten() {
            let ends = match e.credential {
                Credential::Session(_) => true,
                Credential::Token(_) => !sessions_only,
                Credential::Anonymous => false,
            };
            if ends {
                e.signal.notify_one();
                n += 1;
            }
        }
        n
    }

    /// A mark to give [`Auth::revocations_since`].
    pub fn revocation_epoch(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether any credential ended since `epoch` was read.
    pub fn revocations_since(&self, epoch: u64) -> bool {
        self.ended.load(Ordering::Acquire) != epoch
    }

    /// Counts an unauthenticated handshake from `ip`; `Err` carries the `Retry-After` once the
    /// address has used up its minute.
    pub fn unauthenticated_handshake(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let max = self.socket_limits.anonymous_handshakes_per_minute;
        self.limiter()
            .handshakes
            .entry(IpKey::of(ip), now, || {
                Window::new(now, Duration::from_secs(60))
            })
            .hit(now, max)
    }

    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> Self {
        self.trusted_proxies = Arc::new(proxies);
        self
    }

    /// Whether connections from `ip` are a trusted proxy's (so per-address caps do not apply to
    /// the connection itself).
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|p| p.to_canonical() == ip)
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (walking from the right,
    /// since each proxy appends the address it saw).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        // From the right: each entry was written by the hop after it. Stop at the first entry
        // that is not an address (or `address:port`): nothing left of it can be believed.
        for entry in entries.into_iter().rev() {
            let entry = entry.trim();
            let Some(ip) = entry
                .parse::<IpAddr>()
                .ok()
                .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            else {
                break;
            };
            client = ip.to_canonical();
            if !self.is_trusted_proxy(client) {
                break;
            }
        }
        client
    }

    /// Whether the request's `Origin` may use a session: one of the configured origins exactly,
    /// or by default the server's own (`scheme://Host`). A missing or `null` origin is not.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        if self.allowed_origins.is_empty() {
            let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let scheme = if self.secure { "https" } else { "http" };
            origin == format!("{scheme}://{host}")
        } else {
            self.allowed_origins.iter().any(|o| o == origin)
        }
    }

    /// Whether `ip` has sent too many wrong credentials lately; checked before any look-up, so
    /// a flood of made-up tokens never reaches the database. A credential found valid lately
    /// (`digest`) is not held to it.
    fn bad_credentials_check(&self, ip: IpAddr, digest: &str) -> Result<(), Denied> {
        let now = Instant::now();
        let mut l = self.limiter();
        if l.known_good
            .get_mut(&digest.to_owned())
            .is_some_and(|k| !k.expired(now))
        {
            return Ok(());
        }
        match l.bad_credentials.get_mut(&IpKey::of(ip)) {
            Some(w) => w
                .check(now, BAD_CREDENTIALS_PER_MINUTE)
                .map_err(Denied::TooMany),
            None => Ok(()),
        }
    }

    fn known_good(&self, digest: &str) {
        let now = Instant::now();
        self.limiter()
            .known_good
            .entry(digest.to_owned(), now, || KnownGood(now))
            .0 = now;
    }

    fn bad_credentials_count(&self, ip: IpAddr) {
        let now = Instant::now();
        self.limiter()
            .bad_credentials
            .entry(IpKey::of(ip), now, || {
                Window::new(now, Duration::from_secs(60))
            })
            .add(now);
    }

    /// Identifies a request from `ip` (the client's address, see [`Auth::client_ip`]) by bearer
    /// token, then session cookie, then (in anonymous mode) nobody. With `check_origin`, a
    /// cookie-authenticated request must come from an allowed origin: WebSocket upgrades and
    /// anything that changes state. Look-ups use the store's readers, never its writer.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
        check_origin: bool,
    ) -> Result<Identity, Denied> {
        let now = now_ms();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 128);
            let hash = digest(token.unwrap_or_default());
            self.bad_credentials_check(ip, &hash)?;
            let found = match token {
                Some(_) => match self.accounts.token_user(&hash, now).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(error = %e, "token lookup failed");
                        return Err(Denied::Unauthorized);
                    }
                },
                None => None,
            };
            return match found {
                Some((id, user, expires_at)) => {
                    self.known_good(&hash);
                    Ok(Identity {
                        user: Some(user),
                        credential: Credential::Token(id),
                        expires_at: Some(expires_at),
                    })
                }
                None => {
                    self.bad_credentials_count(ip);
                    Err(Denied::Unauthorized)
                }
            };
        }
        if let Some(sid) = cookie(headers, &self.session_cookie_name()) {
            if check_origin && !self.origin_allowed(headers) {
                return Err(Denied::ForeignOrigin);
            }
            let hash = digest(sid);
            self.bad_credentials_check(ip, &hash)?;
            match self.accounts.session_user(&hash, now).await {
                Ok(Some((user, expires_at))) => {
                    self.known_good(&hash);
                    return Ok(Identity {
                        user: Some(user),
                        credential: Credential::Session(hash),
                        expires_at: Some(expires_at),
                    });
                }
                Ok(None) => self.bad_credentials_count(ip),
                Err(e) => tracing::error!(error = %e, "session lookup failed"),
            }
        }
        if self.allow_anonymous {
            return Ok(Identity {
                user: None,
                credential: Credential::Anonymous,
                expires_at: None,
            });
        }
        Err(Denied::Unauthorized)
    }

    /// Whether a credential is still valid: for an open socket, on its heartbeat, in case its
    /// end was not announced here (it expired, or ended by another way than this process).
    pub async fn still_valid(&self, identity: &Identity) -> bool {
        let now = now_ms();
        if identity.expires_at.is_some_and(|t| t <= now) {
            return false;
        }
        let answer = match &identity.credential {
            Credential::Anonymous => return true,
            Credential::Session(hash) => self
                .accounts
                .session_user(hash, now)
                .await
                .map(|s| s.is_some()),
            Credential::Token(id) => self.accounts.token_valid(*id, now).await,
        };
        // A failed look-up is no proof of revocation: keep the socket, check again next time.
        answer.unwrap_or(true)
    }

    /// Counts a log-in attempt from `ip` for `username` before the password is checked, so
    /// attempts in flight cannot get past the limits; `Err` carries the `Retry-After`. Each
    /// (account, address) gets a few free failures, then waits that double with each one, so
    /// guessing stays slow while the owner, from their own address, can still log in.
    pub fn login_reserve(&self, username: &str, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let key = IpKey::of(ip);
        let mut l = self.limiter();
        l.login_ips
            .entry(key, now, || Window::new(now, LOGIN_WINDOW))
            .hit(now, LOGIN_ATTEMPTS_PER_IP)?;
        let lock = l
            .lockouts
            .entry((username.to_owned(), key), now, || Lockout {
                failures: 0,
                blocked_until: now,
                last: now,
            });
        if lock.expired(now) {
            lock.failures = 0;
        }
        if now < lock.blocked_until {
            return Err(lock.blocked_until - now);
        }
        lock.failures += 1;
        lock.last = now;
        lock.blocked_until = now + login_delay(lock.failures);
        Ok(())
    }

    /// The attempt could not be checked (the server was busy or failed): it does not count.
    pub fn login_unreserve(&self, username: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut l = self.limiter();
        if let Some(lock) = l.lockouts.get_mut(&(username.to_owned(), IpKey::of(ip))) {
            lock.failures = lock.failures.saturating_sub(1);
            lock.blocked_until = now;
        }
    }

    /// The password was right: forget the failures of this account from this address.
    pub fn login_succeeded(&self, username: &str, ip: IpAddr) {
        self.limiter()
            .lockouts
            .remove(&(username.to_owned(), IpKey::of(ip)));
    }

    /// Counts a sign-up attempt from `ip`; `Err` carries the `Retry-After`.
    pub fn signup_allowed(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let max = self.signups_per_hour;
        self.limiter()
            .signups
            .entry(IpKey::of(ip), now, || Window::new(now, SIGNUP_WINDOW))
            .hit(now, max)
    }

    /// The session cookie's name: `__Host-` prefixed under TLS, so that no subdomain or plain
    /// HTTP page can set or shadow it.
    pub fn session_cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{SESSION_COOKIE}")
        } else {
            SESSION_COOKIE.to_owned()
        }
    }

    pub fn csrf_cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{CSRF_COOKIE}")
        } else {
            CSRF_COOKIE.to_owned()
        }
    }

    /// A `Set-Cookie` value for the session cookie (`None` clears it).
    pub fn session_cookie(&self, sid: Option<&str>) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let name = self.session_cookie_name();
        let value = match sid {
            Some(sid) => format!(
                "{name}={sid}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
                self.session_ttl.as_secs()
            ),
            None => format!("{name}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"),
        };
        HeaderValue::from_str(&value).expect("BUG: cookie values are URL-safe")
    }

    /// A `Set-Cookie` value for the CSRF cookie.
    pub fn csrf_cookie(&self, token: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={token}; HttpOnly; SameSite=Strict; Path=/{secure}",
            self.csrf_cookie_name()
        ))
        .expect("BUG: cookie values are URL-safe")
    }

    /// The CSRF token of this browser: the one in its cookie, or a new one to set.
    pub fn csrf_token(&self, headers: &HeaderMap) -> (String, bool) {
        match cookie(headers, &self.csrf_cookie_name()) {
            Some(t) if t.len() >= 32 && t.len() <= 64 => (t.to_owned(), false),
            _ => (random_secret(), true),
        }
    }

    /// The session cookie the request carries, if any.
    pub fn session_id<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, &self.session_cookie_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hasher = Hasher::new(2, 4);
        let hash = hasher.hash("correct horse".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher
            .verify(Some(hash.clone()), "correct horse".into())
            .await
            .expect("verify"));
        assert!(!hasher
            .verify(Some(hash), "wrong".into())
            .await
            .expect("verify"));
        assert!(!hasher
            .verify(None, "correct horse".into())
            .await
            .expect("verify"));
    }

    #[test]
    fn our_hashes_and_the_argon2_crates_check_each_other() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash_phc(b"pw").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(
            argon().verify_password(b"pw", &parsed).is_ok(),
            "the crate accepts ours"
        );
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = argon()
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_phc(b"pw", &theirs), "we accept the crate's");
        assert!(!verify_phc(b"nope", &theirs));
        assert!(!verify_phc(b"pw", "not a hash"));
    }

    #[tokio::test]
    async fn a_full_hash_queue_turns_work_away_instead_of_growing() {
        let hasher = Hasher::new(1, 2);
        let jobs = (0..20).map(|_| hasher.hash("pw".into()));
        let results = futures_util::future::join_all(jobs).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(AuthError::Busy(_))))
            .count();
        // Two wait, and the thread may have taken one already: the rest are refused.
        assert!((17..=18).contains(&busy), "{busy} refused");
        // Once they are done there is room again.
        assert!(hasher.hash("pw".into()).await.is_ok());
    }

    #[test]
    fn login_delays_grow_after_the_free_failures() {
        let d: Vec<u64> = (1..=10).map(|n| login_delay(n).as_secs()).collect();
        assert_eq!(d, vec![0, 0, 0, 1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(login_delay(40), MAX_LOGIN_DELAY);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hubbub_session_x=2; hubbub_session=abc"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
