//! Who is asking: password hashing, sessions, personal API tokens, the CSRF and Origin checks, the
//! log-in rate limits, and the signal that closes the sockets of a revoked credential.

use crate::server::store::{DynAccounts, StoreError, User};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

pub const SESSION_COOKIE: &str = "hubbub_session";
pub const CSRF_COOKIE: &str = "hubbub_csrf";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Failed log-ins allowed per account, and attempts per IP, in one window.
pub const LOGIN_FAILURES_PER_ACCOUNT: u32 = 10;
pub const LOGIN_ATTEMPTS_PER_IP: u32 = 50;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// 256 random bits, URL-safe: session ids, tokens, CSRF tokens.
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

/// Hashes a password off the async runtime.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hash(e.to_string()))?
}

/// Checks a password off the async runtime. Without a stored hash (unknown user) it checks
/// against a dummy one, so both failures take the same time.
pub async fn verify_password(stored: Option<String>, password: String) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut rand::rngs::OsRng);
                    argon()
                        .hash_password(b"not a password anyone has", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let ok = PasswordHash::new(&hash)
            .is_ok_and(|h| argon().verify_password(password.as_bytes(), &h).is_ok());
        ok && known
    })
    .await
    .unwrap_or(false)
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

/// How a request proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Identity {
    /// The name a message is shown under: the account's, or in anonymous mode the one the client
    /// gave.
    pub fn author(&self, claimed: Option<&str>) -> Result<String, crate::protocol::Invalid> {
        match &self.user {
            Some(u) => Ok(u.display_name.clone()),
            None => crate::protocol::normalize_name(claimed),
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A credential that stopped being valid; the sockets opened with it close with 4001.
#[derive(Clone, Debug)]
pub struct Revoked(pub Credential);

/// Authentication settings and state, behind one cheap handle.
#[derive(Clone)]
pub struct Auth {
    pub accounts: DynAccounts,
    pub allow_anonymous: bool,
    /// Exact origins (`scheme://host:port`) allowed to use a session; empty means the server's own.
    allowed_origins: Arc<Vec<String>>,
    /// Whether cookies get `Secure` and the own origin is `https`.
    pub secure: bool,
    revoked: broadcast::Sender<Revoked>,
    limiter: Arc<Mutex<Limiter>>,
    /// Proxies whose `X-Forwarded-For` names the real client.
    trusted_proxies: Arc<Vec<IpAddr>>,
    pub socket_limits: SocketLimits,
}

#[derive(Default)]
struct Limiter {
    accounts: HashMap<String, (Instant, u32)>,
    ips: HashMap<IpAddr, (Instant, u32)>,
    /// Unauthenticated WebSocket handshakes per IP, in one-minute windows.
    handshakes: HashMap<IpAddr, (Instant, u32)>,
    /// Open WebSockets per account.
    sockets: HashMap<i64, usize>,
}

/// Limits on WebSockets, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct SocketLimits {
    pub per_user: usize,
    pub anonymous_handshakes_per_minute: u32,
}

/// One of an account's open sockets; the count goes down when it is dropped.
pub struct SocketSlot {
    limiter: Arc<Mutex<Limiter>>,
    user: i64,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = l.sockets.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                l.sockets.remove(&self.user);
            }
        }
    }
}

/// Counts events in a fixed window; returns the wait until the window ends once at `max`.
fn over<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, (Instant, u32)>,
    key: K,
    max: u32,
    add: bool,
) -> Option<Duration> {
    over_in(map, key, max, add, LOGIN_WINDOW)
}

fn over_in<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, (Instant, u32)>,
    key: K,
    max: u32,
    add: bool,
    window: Duration,
) -> Option<Duration> {
    let now = Instant::now();
    if map.len() > 100_000 {
        map.retain(|_, (start, _)| now.duration_since(*start) < window);
    }
    let entry = map.entry(key).or_insert((now, 0));
    if now.duration_since(entry.0) >= window {
        *entry = (now, 0);
    }
    let full = entry.1 >= max;
    if add && !full {
        entry.1 += 1;
    }
    full.then(|| window.saturating_sub(now.duration_since(entry.0)))
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
            revoked: broadcast::channel(256).0,
            limiter: Arc::default(),
            trusted_proxies: Arc::default(),
            socket_limits: SocketLimits {
                per_user: 20,
                anonymous_handshakes_per_minute: 60,
            },
        }
    }

    pub fn with_socket_limits(mut self, limits: SocketLimits) -> Self {
        self.socket_limits = limits;
        self
    }

    /// Takes one of the account's socket slots, or `None` when it has all of them open.
    pub fn socket_slot(&self, user: i64) -> Option<SocketSlot> {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let n = l.sockets.entry(user).or_insert(0);
        if *n >= self.socket_limits.per_user {
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            limiter: Arc::clone(&self.limiter),
            user,
        })
    }

    /// Counts an unauthenticated handshake from `ip`; `Err` carries the `Retry-After` once the
    /// IP has used up its minute.
    pub fn unauthenticated_handshake(&self, ip: IpAddr) -> Result<(), Duration> {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.socket_limits.anonymous_handshakes_per_minute;
        match over_in(&mut l.handshakes, ip, max, true, Duration::from_secs(60)) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> Self {
        self.trusted_proxies = Arc::new(proxies);
        self
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the last address
    /// its `X-Forwarded-For` names.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .next_back()
            .unwrap_or(peer)
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

    /// Identifies a request by bearer token, then session cookie, then (in anonymous mode)
    /// nobody. With `check_origin`, a cookie-authenticated request must come from an allowed
    /// origin: WebSocket upgrades and anything that changes state.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        check_origin: bool,
    ) -> Result<Identity, Denied> {
        let now = now_ms();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(Denied::Unauthorized)?;
            return match self.accounts.token_user(&digest(token.trim()), now).await {
                Ok(Some((id, user))) => Ok(Identity {
                    user: Some(user),
                    credential: Credential::Token(id),
                }),
                Ok(None) => Err(Denied::Unauthorized),
                Err(e) => {
                    tracing::error!(error = %e, "token lookup failed");
                    Err(Denied::Unauthorized)
                }
            };
        }
        if let Some(sid) = cookie(headers, SESSION_COOKIE) {
            if check_origin && !self.origin_allowed(headers) {
                return Err(Denied::ForeignOrigin);
            }
            let hash = digest(sid);
            match self.accounts.session_user(&hash, now).await {
                Ok(Some(user)) => {
                    return Ok(Identity {
                        user: Some(user),
                        credential: Credential::Session(hash),
                    })
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "session lookup failed"),
            }
        }
        if self.allow_anonymous {
            return Ok(Identity {
                user: None,
                credential: Credential::Anonymous,
            });
        }
        Err(Denied::Unauthorized)
    }

    /// Whether a credential is still valid (after a missed revocation notice).
    pub async fn still_valid(&self, credential: &Credential) -> bool {
        match credential {
            Credential::Anonymous => true,
            Credential::Session(hash) => matches!(
                self.accounts.session_user(hash, now_ms()).await,
                Ok(Some(_))
            ),
            // Tokens are looked up by digest, which the connection does not keep; a revocation
            // notice is what closes them.
            Credential::Token(_) => true,
        }
    }

    /// Announces that a credential is no longer valid.
    pub fn revoke(&self, credential: Credential) {
        let _ = self.revoked.send(Revoked(credential));
    }

    pub fn revocations(&self) -> broadcast::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    /// Checks the log-in limits before an attempt; `Err` carries the `Retry-After`.
    pub fn login_allowed(&self, username: &str, ip: IpAddr) -> Result<(), Duration> {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = over(&mut l.ips, ip, LOGIN_ATTEMPTS_PER_IP, true) {
            return Err(wait);
        }
        if let Some(wait) = over(
            &mut l.accounts,
            username.to_owned(),
            LOGIN_FAILURES_PER_ACCOUNT,
            false,
        ) {
            return Err(wait);
        }
        Ok(())
    }

    /// Counts a failed log-in against the account.
    pub fn login_failed(&self, username: &str) {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        over(
            &mut l.accounts,
            username.to_owned(),
            LOGIN_FAILURES_PER_ACCOUNT,
            true,
        );
    }

    /// A `Set-Cookie` value for the session cookie (`None` clears it).
    pub fn session_cookie(&self, sid: Option<&str>) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let value = match sid {
            Some(sid) => format!(
                "{SESSION_COOKIE}={sid}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
                SESSION_TTL.as_secs()
            ),
            None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"),
        };
        HeaderValue::from_str(&value).expect("BUG: cookie values are URL-safe")
    }

    /// A `Set-Cookie` value for the CSRF cookie.
    pub fn csrf_cookie(&self, token: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"
        ))
        .expect("BUG: cookie values are URL-safe")
    }
}

/// The CSRF token of this browser: the one in its cookie, or a new one to set.
pub fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE) {
        Some(t) if t.len() >= 32 && t.len() <= 64 => (t.to_owned(), false),
        _ => (random_secret(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(Some(hash.clone()), "correct horse".into()).await);
        assert!(!verify_password(Some(hash), "wrong".into()).await);
        assert!(!verify_password(None, "correct horse".into()).await);
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
