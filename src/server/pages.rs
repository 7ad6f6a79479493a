//! The account pages: sign up (open, by invite, or closed), log in, log out, personal API tokens
//! and, for admins, invite links. Plain server-rendered HTML forms, so they work before (and
//! without) the WASM client; every form carries a CSRF token that must match the browser's CSRF
//! cookie, and must come from an allowed origin.

use crate::protocol::{normalize_name, DEFAULT_ROOM};
use crate::server::access;
use crate::server::auth::{self, digest, AuthError, Credential};
use crate::server::config::Registration;
use crate::server::store::{StoreError, User};
use crate::server::AppState;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use std::net::SocketAddr;

/// The policy of these pages: the stylesheet and the favicon, and forms to this server.
/// Largest form body the account routes read; a form is a few short fields.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                        base-uri 'none'; frame-ancestors 'none'";

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A whole page, with the CSRF cookie set if the browser had none.
fn page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    body: impl Fn(&str) -> String,
) -> Response {
    page_in(state, headers, status, title, "auth", "", body)
}

/// A whole page whose `main` has `class`, with `head` (more of the head's elements) and the
/// CSRF cookie set if the browser had none.
pub(crate) fn page_in(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    class: &str,
    head: &str,
    body: impl Fn(&str) -> String,
) -> Response {
    let (csrf, new) = state.auth.csrf_token(headers);
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>{title} · hubbub</title><link rel=\"stylesheet\" href=\"/pkg/hubbub.css\"/>\
         <link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\"/>{head}</head>\
         <body><main class=\"{class}\"><h1>hubbub</h1>{}</main></body></html>",
        body(&csrf)
    );
    let mut resp = (status, axum::response::Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if new {
        h.append(header::SET_COOKIE, state.auth.csrf_cookie(&csrf));
    }
    resp
}

pub(crate) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

pub(crate) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\"/>",
        esc(csrf)
    )
}

/// Whether a form post carries the browser's CSRF token and comes from an allowed origin.
pub(crate) fn form_ok(state: &AppState, headers: &HeaderMap, csrf: Option<&str>) -> bool {
    let name = state.auth.csrf_cookie_name();
    let cookie = auth::cookie(headers, &name);
    let token_ok = matches!((cookie, csrf), (Some(c), Some(f)) if !c.is_empty() && c == f);
    token_ok && state.auth.origin_allowed(headers)
}

pub(crate) fn forbidden_form() -> Response {
    (
        StatusCode::FORBIDDEN,
        "This form has expired or came from another site. Go back, reload and try again.",
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct Notice {
    error: Option<String>,
    /// An invite code, carried from the invite link into the sign-up form.
    invite: Option<String>,
}

fn notice(q: &Notice) -> String {
    let text = match q.error.as_deref() {
        Some("invalid") => "Wrong username or password.",
        Some("taken") => "That username is taken.",
        Some("username") => "A username has 3 to 32 characters: a-z, 0-9, '.', '_' or '-'.",
        Some("password") => "A password has 8 to 256 characters.",
        Some("name") => "A display name has at most 64 characters.",
        Some("invite") => "This invite link is unknown, used up or expired. Ask for a new one.",
        Some("busy") => "The server is busy. Try again in a moment.",
        Some("disabled") => "This account has been disabled. Ask an administrator of this server.",
        _ => return String::new(),
    };
    format!("<p class=\"error\" role=\"alert\">{text}</p>")
}

pub async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Notice>,
) -> Response {
    page(&state, &headers, StatusCode::OK, "Log in", |csrf| {
        format!(
            "<h2>Log in</h2>{}<form method=\"post\" action=\"/auth/login\">{}\
             <label>Username <input name=\"username\" autocomplete=\"username\" required/></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required/></label>\
             <button type=\"submit\">Log in</button></form>\
             <p>New here? <a href=\"/signup\">Sign up</a></p>",
            notice(&q),
            csrf_field(csrf)
        )
    })
}

pub async fn signup_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Notice>,
) -> Response {
    let invite = q.invite.as_deref().filter(|c| invite_code_shaped(c));
    let open = match registration_gate(&state).await {
        Gate::Open => true,
        Gate::Invite => false,
        Gate::Closed => return closed_page(&state, &headers),
    };
    if !open && invite.is_none() {
        return page(&state, &headers, StatusCode::OK, "Sign up", |_| {
            "<h2>Sign up</h2><p class=\"notice\">New accounts need an invite link from an admin of \
             this server.</p><p>Have an account? <a href=\"/login\">Log in</a></p>"
                .to_owned()
        });
    }
    let invite_field = invite
        .map(|c| {
            format!(
                "<input type=\"hidden\" name=\"invite\" value=\"{}\"/>",
                esc(c)
            )
        })
        .unwrap_or_default();
    page(&state, &headers, StatusCode::OK, "Sign up", |csrf| {
        format!(
            "<h2>Sign up</h2>{}<form method=\"post\" action=\"/auth/signup\">{}{invite_field}\
             <label>Username <input name=\"username\" autocomplete=\"username\" required minlength=\"3\" maxlength=\"32\"/></label>\
             <label>Display name <input name=\"display_name\" maxlength=\"64\"/></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\"/></label>\
             <button type=\"submit\">Sign up</button></form>\
             <p>Have an account? <a href=\"/login\">Log in</a></p>",
            notice(&q),
            csrf_field(csrf)
        )
    })
}

/// Whether `code` could be an invite code: 1 to 64 URL-safe characters (so it can go into a
/// link and a page as it is).
fn invite_code_shaped(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the registration setting means right now.
enum Gate {
    Open,
    Invite,
    Closed,
}

/// The registration gate. Whatever the setting, an installation without accounts lets its first
/// one (the admin) be made, or nobody could ever make an invite.
async fn registration_gate(state: &AppState) -> Gate {
    if state.registration == Registration::Open {
        return Gate::Open;
    }
    match state.auth.accounts.has_users().await {
        Ok(false) => Gate::Open,
        _ if state.registration == Registration::Invite => Gate::Invite,
        _ => Gate::Closed,
    }
}

fn closed_page(state: &AppState, headers: &HeaderMap) -> Response {
    page(state, headers, StatusCode::FORBIDDEN, "Sign up", |_| {
        "<h2>Sign up</h2><p class=\"notice\">This server does not take new accounts. Ask its \
         operator.</p><p>Have an account? <a href=\"/login\">Log in</a></p>"
            .to_owned()
    })
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "2")],
        "The server is busy. Try again in a moment.",
    )
        .into_response()
}

fn too_many_page(
    state: &AppState,
    headers: &HeaderMap,
    title: &str,
    wait: std::time::Duration,
) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let when = if secs < 90 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    let mut resp = page(state, headers, StatusCode::TOO_MANY_REQUESTS, title, |_| {
        format!("<p class=\"error\" role=\"alert\">Too many attempts. Try again in {when}.</p>")
    });
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: Option<String>,
}

#[derive(Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    invite: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
}

pub fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "account request failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// Starts a new session for `user` (a new id every time: the id changes at log-in), ends the one
/// the browser had, and sends it to the chat.
async fn start_session(state: &AppState, headers: &HeaderMap, user: &User) -> Response {
    if let Some(old) = state.auth.session_id(headers) {
        let old = digest(old);
        if let Ok(Some(owner)) = state.auth.accounts.delete_session(&old).await {
            state.auth.revoke(owner, &Credential::Session(old));
        }
    }
    let sid = auth::random_secret();
    let expires = auth::now_ms()
        .saturating_add(i64::try_from(state.auth.session_ttl.as_millis()).unwrap_or(i64::MAX));
    if let Err(e) = state
        .auth
        .accounts
        .create_session(&digest(&sid), user.id, expires)
        .await
    {
        return internal(e);
    }
    tracing::info!(user = %user.username, "logged in");
    let mut resp = see_other("/");
    resp.headers_mut()
        .append(header::SET_COOKIE, state.auth.session_cookie(Some(&sid)));
    resp
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    let username = f.username.trim().to_lowercase();
    // A name that cannot exist needs no look-up, no hash and no counter.
    if !valid_username(&username) || f.password.len() > 1024 {
        return see_other("/login?error=invalid");
    }
    let ip = state.auth.client_ip(peer.ip(), &headers);
    if let Err(wait) = state.auth.login_reserve(&username, ip) {
        return too_many_page(&state, &headers, "Log in", wait);
    }
    let creds = match state.auth.accounts.credentials(&username).await {
        Ok(c) => c,
        Err(e) => {
            state.auth.login_unreserve(&username, ip);
            return internal(e);
        }
    };
    let hash = creds.as_ref().map(|c| c.password_hash.clone());
    match state.auth.hasher.verify(hash, f.password).await {
        Ok(true) => {}
        Ok(false) => return see_other("/login?error=invalid"),
        Err(_) => {
            // Not checked, so not counted: a full queue must not lock the owner out.
            state.auth.login_unreserve(&username, ip);
            return busy();
        }
    }
    match creds {
        // The right password of a disabled account: told so (it is the owner asking).
        Some(c) if c.disabled => {
            state.auth.login_succeeded(&username, ip);
            see_other("/login?error=disabled")
        }
        Some(c) => {
            state.auth.login_succeeded(&username, ip);
            start_session(&state, &headers, &c.user).await
        }
        None => see_other("/login?error=invalid"),
    }
}

pub async fn signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignupForm>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    // The code as the form carried it, if it could be one (what `random_secret` makes).
    let code = f.invite.as_deref().filter(|c| invite_code_shaped(c));
    let invite = match registration_gate(&state).await {
        Gate::Open => None,
        Gate::Closed => return closed_page(&state, &headers),
        Gate::Invite => match code {
            Some(code) => Some(digest(code)),
            None => return see_other("/signup?error=invite"),
        },
    };
    let again = |error: &str| match code {
        Some(code) if invite.is_some() => {
            see_other(&format!("/signup?error={error}&invite={code}"))
        }
        _ => see_other(&format!("/signup?error={error}")),
    };
    let username = f.username.trim().to_lowercase();
    if !valid_username(&username) {
        return again("username");
    }
    if !(8..=256).contains(&f.password.chars().count()) {
        return again("password");
    }
    let display = if f.display_name.trim().is_empty() {
        username.clone()
    } else {
        match normalize_name(Some(&f.display_name)) {
            Ok(n) => n,
            Err(_) => return again("name"),
        }
    };
    let ip = state.auth.client_ip(peer.ip(), &headers);
    if let Err(wait) = state.auth.signup_allowed(ip) {
        return too_many_page(&state, &headers, "Sign up", wait);
    }
    // Everything that can be refused without hashing is refused first: the hash is the cost.
    match state.auth.accounts.credentials(&username).await {
        Ok(Some(_)) => return again("taken"),
        Ok(None) => {}
        Err(e) => return internal(e),
    }
    let now = auth::now_ms();
    if let Some(code) = &invite {
        match state.auth.accounts.invite_valid(code, now).await {
            Ok(true) => {}
            Ok(false) => return again("invite"),
            Err(e) => return internal(e),
        }
    }
    let hash = match state.auth.hasher.hash(f.password).await {
        Ok(h) => h,
        Err(AuthError::Busy(_)) => return busy(),
        Err(e) => return internal(e),
    };
    match state
        .auth
        .accounts
        .create_user(
            &username,
            &display,
            &hash,
            invite.as_deref().map(|c| (c, now)),
        )
        .await
    {
        Ok(user) => {
            if user.is_admin {
                tracing::info!(user = %user.username, "the first account was made; it is the admin");
            }
            // Everyone starts in the default room, as a member (an event in its stream).
            if let Err(e) = state.chat.join(&user, DEFAULT_ROOM).await {
                tracing::warn!(error = %e, user = %user.username, "could not add a new account to the default room");
            }
            start_session(&state, &headers, &user).await
        }
        Err(StoreError::UserExists) => again("taken"),
        Err(StoreError::InviteInvalid) => again("invite"),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: Option<String>,
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    if let Some(sid) = state.auth.session_id(&headers) {
        let hash = digest(sid);
        // Only a session that existed closes sockets: a made-up cookie wakes nobody.
        match state.auth.accounts.delete_session(&hash).await {
            Ok(Some(owner)) => {
                state.auth.revoke(owner, &Credential::Session(hash));
            }
            Ok(None) => {}
            Err(e) => return internal(e),
        }
    }
    let mut resp = see_other("/login");
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, state.auth.session_cookie(None));
    // The browser forgets what this account left behind, the unsent outbox included.
    h.insert("clear-site-data", HeaderValue::from_static("\"storage\""));
    resp
}

/// The logged-in user of a page request (session cookie only).
pub(crate) async fn session_user(state: &AppState, headers: &HeaderMap) -> Option<User> {
    let sid = state.auth.session_id(headers)?;
    state
        .auth
        .accounts
        .session_user(&digest(sid), auth::now_ms())
        .await
        .ok()
        .flatten()
        .map(|(user, _)| user)
}

async fn tokens_view(
    state: &AppState,
    headers: &HeaderMap,
    user: &User,
    created: Option<(String, String)>,
) -> Response {
    let tokens = match state.auth.accounts.tokens(user.id).await {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    page(state, headers, StatusCode::OK, "API tokens", |csrf| {
        let mut rows = String::new();
        for t in &tokens {
            let state_text = if t.revoked {
                "revoked".to_owned()
            } else if t.expires_at <= auth::now_ms() {
                "expired".to_owned()
            } else {
                format!(
                    "expires in {} days",
                    (t.expires_at - auth::now_ms()) / 86_400_000
                )
            };
            let revoke = if t.revoked {
                String::new()
            } else {
                format!(
                    "<form method=\"post\" action=\"/auth/tokens/{}/revoke\">{}<button type=\"submit\">Revoke</button></form>",
                    t.id,
                    csrf_field(csrf)
                )
            };
            rows.push_str(&format!(
                "<li class=\"token\"><b>{}</b> <span>{state_text}</span> {revoke}</li>",
                esc(&t.name)
            ));
        }
        let shown = created
            .as_ref()
            .map(|(name, token)| {
                format!(
                    "<p class=\"new-token\">Your new token <b>{}</b>, shown only this once:<br/><code>{}</code></p>",
                    esc(name),
                    esc(token)
                )
            })
            .unwrap_or_default();
        format!(
            "<h2>API tokens of {}</h2>{shown}<ul class=\"tokens\">{rows}</ul>\
             <form method=\"post\" action=\"/auth/tokens\">{}\
             <label>Name <input name=\"name\" required maxlength=\"64\"/></label>\
             <label>Valid for (days) <input name=\"days\" type=\"number\" min=\"1\" max=\"365\" value=\"90\"/></label>\
             <button type=\"submit\">Create token</button></form>{}<p><a href=\"/\">Back to the chat</a></p>",
            esc(&user.display_name),
            csrf_field(csrf),
            if user.is_admin {
                "<p>You are an admin: <a href=\"/invites\">make invite links</a>.</p>"
            } else {
                ""
            }
        )
    })
}

pub async fn tokens_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session_user(&state, &headers).await {
        Some(user) => tokens_view(&state, &headers, &user, None).await,
        None => see_other("/login"),
    }
}

#[derive(Deserialize)]
pub struct NewToken {
    #[serde(default)]
    name: String,
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    csrf: Option<String>,
}

pub async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewToken>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    let Some(user) = session_user(&state, &headers).await else {
        return see_other("/login");
    };
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return (
            StatusCode::BAD_REQUEST,
            "a token needs a name of 1 to 64 characters",
        )
            .into_response();
    }
    let days = i64::from(f.days.unwrap_or(90).clamp(1, 365));
    let token = format!("hbt_{}", auth::random_secret());
    let expires = auth::now_ms() + days * 86_400_000;
    if let Err(e) = state
        .auth
        .accounts
        .create_token(user.id, name, &digest(&token), expires)
        .await
    {
        return internal(e);
    }
    tokens_view(&state, &headers, &user, Some((name.to_owned(), token))).await
}

pub async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    let Some(user) = session_user(&state, &headers).await else {
        return see_other("/login");
    };
    match state
        .auth
        .accounts
        .revoke_token(user.id, id, auth::now_ms())
        .await
    {
        Ok(true) => {
            state.auth.revoke(user.id, &Credential::Token(id));
            see_other("/tokens")
        }
        Ok(false) => (StatusCode::NOT_FOUND, "no such token").into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /invites`: an admin's invite links, and a form to make one.
pub async fn invites_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session_user(&state, &headers).await {
        Some(user) => match access::administer(&user) {
            Ok(()) => invites_view(&state, &headers, None).await,
            Err(e) => (StatusCode::FORBIDDEN, e.public_message()).into_response(),
        },
        None => see_other("/login"),
    }
}

async fn invites_view(state: &AppState, headers: &HeaderMap, created: Option<String>) -> Response {
    let invites = match state.auth.accounts.invites().await {
        Ok(i) => i,
        Err(e) => return internal(e),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if state.auth.secure { "https" } else { "http" };
    let mode = match state.registration {
        Registration::Open => "open: anyone can sign up, with or without a link",
        Registration::Invite => "by invite: new accounts need one of these links",
        Registration::Closed => "closed: nobody can sign up, links included",
    };
    page(state, headers, StatusCode::OK, "Invites", |csrf| {
        let now = auth::now_ms();
        let rows: String = invites
            .iter()
            .map(|i| {
                let left = if i.expires_at <= now {
                    "expired".to_owned()
                } else {
                    let days = (i.expires_at - now + 86_399_999) / 86_400_000;
                    let uses = if i.uses_left == 1 { "1 use" } else { "uses" };
                    if i.uses_left == 1 {
                        format!("{uses} left, {days} days to go")
                    } else {
                        format!("{} {uses} left, {days} days to go", i.uses_left)
                    }
                };
                format!(
                    "<li class=\"token\"><b>#{}</b> by {} <span>{left}</span></li>",
                    i.id,
                    esc(&i.created_by)
                )
            })
            .collect();
        let shown = created
            .as_ref()
            .map(|code| {
                format!(
                    "<p class=\"new-token\">Send this link, shown only this once:<br/>\
                     <code>{scheme}://{}/signup?invite={}</code></p>",
                    esc(host),
                    esc(code)
                )
            })
            .unwrap_or_default();
        format!(
            "<h2>Invite links</h2><p>Registration is {mode}.</p>{shown}<ul class=\"tokens\">{rows}</ul>\
             <form method=\"post\" action=\"/auth/invites\">{}\
             <label>Uses <input name=\"uses\" type=\"number\" min=\"1\" max=\"1000\" value=\"1\"/></label>\
             <label>Valid for (days) <input name=\"days\" type=\"number\" min=\"1\" max=\"90\" value=\"7\"/></label>\
             <button type=\"submit\">Make an invite link</button></form><p><a href=\"/\">Back to the chat</a></p>",
            csrf_field(csrf)
        )
    })
}

#[derive(Deserialize)]
pub struct NewInvite {
    #[serde(default)]
    uses: Option<i64>,
    #[serde(default)]
    days: Option<i64>,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /auth/invites`: an admin makes an invite link.
pub async fn create_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewInvite>,
) -> Response {
    if !form_ok(&state, &headers, f.csrf.as_deref()) {
        return forbidden_form();
    }
    let Some(user) = session_user(&state, &headers).await else {
        return see_other("/login");
    };
    if let Err(e) = access::administer(&user) {
        return (StatusCode::FORBIDDEN, e.public_message()).into_response();
    }
    let uses = f.uses.unwrap_or(1).clamp(1, 1000);
    let days = f.days.unwrap_or(7).clamp(1, 90);
    let code = auth::random_secret();
    let expires = auth::now_ms() + days * 86_400_000;
    if let Err(e) = state
        .auth
        .accounts
        .create_invite(&digest(&code), user.id, expires, uses)
        .await
    {
        return internal(e);
    }
    invites_view(&state, &headers, Some(code)).await
}
