//! The admin view (`/admin`, administrators only): what the server is doing now (connections,
//! messages per second over the last minutes as a small chart, rooms by activity), its accounts
//! (disable one, which closes its sockets; end all of one's sessions) and its settings with
//! secrets redacted. Plain server-rendered HTML with forms, like the account pages: it works
//! without the WASM client, and every action is a POST with a CSRF token from an allowed origin.

use crate::protocol::RoomKind;
use crate::server::access;
use crate::server::auth;
use crate::server::config::Source;
use crate::server::metrics::metrics;
use crate::server::pages::{
    csrf_field, esc, forbidden_form, form_ok, internal, page_in, see_other, session_user,
};
use crate::server::store::User;
use crate::server::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the messages stored are sampled for the chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes' worth.
const SAMPLES: usize = 120;
/// Accounts listed at once (a filter finds the others).
const USERS_SHOWN: usize = 100;
/// Rooms listed by activity.
const ROOMS_SHOWN: usize = 20;
/// Events looked at for the rooms' activity: the latest ones, so the page's cost is bounded.
const ACTIVITY_SCAN: usize = 50_000;
/// The window of the rooms' activity.
const ACTIVITY_WINDOW_MS: i64 = 86_400_000;

/// Messages stored on this node over the last minutes: a count sampled every
/// [`SAMPLE_EVERY`], for the chart.
#[derive(Clone, Default)]
pub struct Activity {
    /// (when, ms since the epoch; messages stored since start), oldest first.
    samples: Arc<Mutex<VecDeque<(i64, u64)>>>,
}

impl Activity {
    /// Starts sampling in the background; it stops when the last handle is dropped.
    pub fn start() -> Activity {
        let activity = Activity::default();
        let weak = Arc::downgrade(&activity.samples);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(samples) = weak.upgrade() else {
                    return;
                };
                let stored = metrics().messages_stored.get();
                Activity { samples }.record(auth::now_ms(), stored);
            }
        });
        activity
    }

    fn record(&self, at: i64, stored: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((at, stored));
    }

    /// Messages per second between each two samples, oldest first.
    pub fn rates(&self) -> Vec<f64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .zip(s.iter().skip(1))
            .map(|(&(t0, n0), &(t1, n1))| {
                let secs = ((t1 - t0) as f64 / 1000.0).max(0.001);
                n1.saturating_sub(n0) as f64 / secs
            })
            .collect()
    }
}

/// The chart of `rates` (messages per second, oldest first) as an SVG drawing, with a text
/// alternative that says what it shows.
fn chart(rates: &[f64]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let peak = rates.iter().copied().fold(0.0_f64, f64::max);
    let now = rates.last().copied().unwrap_or(0.0);
    let top = if peak <= 1.0 { 1.0 } else { peak * 1.1 };
    let step = W / (SAMPLES as f64 - 1.0);
    let start = SAMPLES.saturating_sub(rates.len() + 1) as f64 * step;
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let x = start + (i + 1) as f64 * step;
            let y = H - (r / top) * (H - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let minutes = SAMPLES as u64 * SAMPLE_EVERY.as_secs() / 60;
    let label = format!(
        "Messages per second on this node over the last {minutes} minutes: {now:.1} now, {peak:.1} at most"
    );
    let line = if points.len() >= 2 {
        format!(
            "<polyline fill=\"none\" class=\"line\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        )
    } else {
        String::new()
    };
    format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"{label}\"><line class=\"axis\" x1=\"0\" y1=\"{H}\" x2=\"{W}\" \
         y2=\"{H}\"/>{line}</svg><figcaption>{label} (top of the chart: {top:.1}/s; \
         {minutes} min ago on the left, now on the right)</figcaption></figure>"
    )
}

/// `HH:MM:SS` of a time in ms since the epoch, in UTC.
fn clock_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    format!(
        "{:02}:{:02}:{:02}",
        secs.div_euclid(3600).rem_euclid(24),
        secs.div_euclid(60).rem_euclid(60),
        secs.rem_euclid(60)
    )
}

fn when(ms: i64) -> String {
    let now = auth::now_ms();
    let ago = (now - ms).max(0) / 1000;
    match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    }
}

#[derive(Deserialize, Default)]
pub struct AdminQuery {
    /// A filter on the accounts listed.
    #[serde(default)]
    q: Option<String>,
    /// What an action just did, to say so.
    #[serde(default)]
    done: Option<String>,
}

/// Who may see the admin view: `Err` is the answer for anyone else (log in, or 403).
async fn admin(state: &AppState, headers: &HeaderMap) -> Result<User, Response> {
    let Some(user) = session_user(state, headers).await else {
        return Err(see_other("/login"));
    };
    match access::administer(&user) {
        Ok(()) => Ok(user),
        Err(e) => Err((StatusCode::FORBIDDEN, e.public_message()).into_response()),
    }
}

/// `GET /admin`.
pub async fn admin_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AdminQuery>,
) -> Response {
    let me = match admin(&state, &headers).await {
        Ok(me) => me,
        Err(answer) => return answer,
    };
    let filter =
        q.q.as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| f.chars().take(64).collect::<String>());
    let now = auth::now_ms();
    let users = match state
        .auth
        .accounts
        .admin_users(filter.as_deref(), USERS_SHOWN, now)
        .await
    {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let rooms = match state
        .chat
        .store
        .room_activity(now - ACTIVITY_WINDOW_MS, ACTIVITY_SCAN, ROOMS_SHOWN)
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let m = metrics();
    let rates = state.activity.rates();
    let last_minute: Vec<f64> = rates.iter().rev().take(12).copied().collect();
    let per_second = if last_minute.is_empty() {
        0.0
    } else {
        last_minute.iter().sum::<f64>() / last_minute.len() as f64
    };
    let bus = state.chat.bus.status();
    let node = bus.as_ref().map_or_else(
        || "one node (no bus)".to_owned(),
        |b| {
            format!(
                "node {}, bus {}",
                esc(&b.node),
                if b.connected { "connected" } else { "down" }
            )
        },
    );
    let done = match q.done.as_deref() {
        Some("disabled") => "The account is disabled and its sockets are closed.",
        Some("enabled") => "The account can log in again.",
        Some("ended") => "The account's sessions are ended and their sockets closed.",
        Some("self") => "You cannot disable your own account.",
        Some("unknown") => "There is no such account.",
        _ => "",
    };
    let done = if done.is_empty() {
        String::new()
    } else {
        format!("<p class=\"notice\" role=\"status\">{done}</p>")
    };
    let room_rows: String = rooms
        .iter()
        .map(|r| {
            let name = match r.kind {
                RoomKind::Dm => "a direct message".to_owned(),
                RoomKind::Room => format!("#{}", esc(&r.name)),
            };
            format!(
                "<tr><td>{name}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                if r.kind == RoomKind::Dm { String::new() } else { esc(&r.title) },
                r.members,
                r.messages,
                when(r.last)
            )
        })
        .collect();
    let rooms_table = if rooms.is_empty() {
        "<p>No messages in the last 24 hours.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Room</th><th scope=\"col\">Title</th>\
             <th scope=\"col\" class=\"n\">Members</th><th scope=\"col\" class=\"n\">Messages, 24 h</th>\
             <th scope=\"col\">Last</th></tr></thead><tbody>{room_rows}</tbody></table>"
        )
    };
    let settings: String = state
        .settings
        .iter()
        .map(|s| {
            let source = match s.source {
                Source::Default => "default",
                Source::File => "file",
                Source::Environment => "environment",
                Source::Flag => "flag",
            };
            format!(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{source}</td></tr>",
                esc(&s.key),
                esc(&s.value)
            )
        })
        .collect();
    page_in(
        &state,
        &headers,
        StatusCode::OK,
        "Admin",
        "admin",
        "<link rel=\"stylesheet\" href=\"/admin.css\"/>",
        |csrf| {
            let user_rows: String = users
                .iter()
                .map(|a| {
                    let u = &a.user;
                    let status = if a.disabled { "disabled" } else { "active" };
                    let role = if u.is_admin { "admin" } else { "member" };
                    let name = esc(&u.username);
                    let toggle = if u.id == me.id {
                        "<span class=\"muted\">you</span>".to_owned()
                    } else if a.disabled {
                        format!(
                            "<form method=\"post\" action=\"/admin/users/{name}/enable\">{}\
                             <button type=\"submit\">Enable</button></form>",
                            csrf_field(csrf)
                        )
                    } else {
                        format!(
                            "<form method=\"post\" action=\"/admin/users/{name}/disable\">{}\
                             <button type=\"submit\" class=\"danger\" aria-label=\"Disable @{name}\">Disable</button></form>",
                            csrf_field(csrf)
                        )
                    };
                    let end = if a.sessions > 0 {
                        format!(
                            "<form method=\"post\" action=\"/admin/users/{name}/sessions/end\">{}\
                             <button type=\"submit\" aria-label=\"End the sessions of @{name}\">End sessions</button></form>",
                            csrf_field(csrf)
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "<tr data-user=\"{name}\"><td>{}<br/><span class=\"muted\">@{name}, joined {}</span></td>\
                         <td>{role}<br/><span class=\"status-{status}\">{status}</span></td>\
                         <td class=\"n\">{}</td><td class=\"actions\">{toggle}{end}</td></tr>",
                        esc(&u.display_name),
                        when(a.created_at),
                        a.sessions
                    )
                })
                .collect();
            let shown = if users.len() == USERS_SHOWN {
                format!("<p class=\"muted\">The first {USERS_SHOWN} accounts; a filter finds the others.</p>")
            } else {
                String::new()
            };
            format!(
                "<nav class=\"admin-nav\"><a href=\"/\">Chat</a> <a href=\"/invites\">Invites</a> \
                 <a href=\"/tokens\">Tokens</a></nav>\
                 <h2>Admin</h2>{done}\
                 <section aria-labelledby=\"now\"><h3 id=\"now\">Now</h3>\
                 <p class=\"muted\">As of {} UTC. <a href=\"/admin\">Refresh</a></p>\
                 <dl class=\"stats\">\
                 <div><dt>WebSockets</dt><dd id=\"websockets\">{}</dd></div>\
                 <div><dt>hubbub.v1 / classic</dt><dd>{} / {}</dd></div>\
                 <div><dt>TCP connections</dt><dd>{}</dd></div>\
                 <div><dt>Messages per second (last minute)</dt><dd id=\"rate\">{per_second:.1}</dd></div>\
                 <div><dt>Messages stored since start</dt><dd>{}</dd></div>\
                 <div><dt>Cluster</dt><dd>{node}</dd></div>\
                 </dl>{}</section>\
                 <section aria-labelledby=\"rooms\"><h3 id=\"rooms\">Rooms by activity</h3>{rooms_table}</section>\
                 <section aria-labelledby=\"users\"><h3 id=\"users\">Accounts</h3>\
                 <form method=\"get\" action=\"/admin\" class=\"filter\" role=\"search\">\
                 <label>Find <input name=\"q\" value=\"{}\" maxlength=\"64\"/></label>\
                 <button type=\"submit\">Find</button></form>\
                 <div class=\"scroll\"><table class=\"accounts\"><thead><tr><th scope=\"col\">Account</th>\
                 <th scope=\"col\">Role, status</th><th scope=\"col\" class=\"n\">Sessions</th>\
                 <th scope=\"col\">Actions</th></tr></thead>\
                 <tbody>{user_rows}</tbody></table></div>{shown}</section>\
                 <section aria-labelledby=\"settings\"><h3 id=\"settings\">Settings</h3>\
                 <p class=\"muted\">As this node runs with them; passwords in URLs are redacted.</p>\
                 <div class=\"scroll\"><table><thead><tr><th scope=\"col\">Setting</th><th scope=\"col\">Value</th>\
                 <th scope=\"col\">From</th></tr></thead><tbody>{settings}</tbody></table></div></section>",
                clock_utc(now),
                state.connections.count(),
                m.rich.get(),
                m.classic.get(),
                state.open.total(),
                m.messages_stored.get(),
                chart(&rates),
                esc(filter.as_deref().unwrap_or_default()),
            )
        },
    )
}

#[derive(Deserialize)]
pub struct AdminForm {
    #[serde(default)]
    csrf: Option<String>,
}

/// What an admin can do to an account.
#[derive(Clone, Copy)]
enum Act {
    Disable,
    Enable,
    EndSessions,
}

async fn act(
    state: AppState,
    headers: HeaderMap,
    username: String,
    form: AdminForm,
    act: Act,
) -> Response {
    if !form_ok(&state, &headers, form.csrf.as_deref()) {
        return forbidden_form();
    }
    let me = match admin(&state, &headers).await {
        Ok(me) => me,
        Err(answer) => return answer,
    };
    let accounts = &state.auth.accounts;
    let done = match act {
        Act::Disable if username == me.username => "self",
        Act::Disable => match accounts.set_disabled(&username, Some(auth::now_ms())).await {
            Ok(Some(id)) => {
                let closed = state.auth.revoke_all(id, false);
                tracing::info!(admin = %me.username, user = %username, closed, "account disabled");
                "disabled"
            }
            Ok(None) => "unknown",
            Err(e) => return internal(e),
        },
        Act::Enable => match accounts.set_disabled(&username, None).await {
            Ok(Some(_)) => {
                tracing::info!(admin = %me.username, user = %username, "account enabled");
                "enabled"
            }
            Ok(None) => "unknown",
            Err(e) => return internal(e),
        },
        Act::EndSessions => match accounts.credentials(&username).await {
            Ok(Some(c)) => match accounts.end_sessions(c.user.id).await {
                Ok(ended) => {
                    let closed = state.auth.revoke_all(c.user.id, true);
                    tracing::info!(admin = %me.username, user = %username, ended, closed, "sessions ended");
                    "ended"
                }
                Err(e) => return internal(e),
            },
            Ok(None) => "unknown",
            Err(e) => return internal(e),
        },
    };
    see_other(&format!("/admin?done={done}"))
}

/// `POST /admin/users/{username}/disable`.
pub async fn disable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    Form(f): Form<AdminForm>,
) -> Response {
    act(state, headers, username, f, Act::Disable).await
}

/// `POST /admin/users/{username}/enable`.
pub async fn enable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    Form(f): Form<AdminForm>,
) -> Response {
    act(state, headers, username, f, Act::Enable).await
}

/// `POST /admin/users/{username}/sessions/end`.
pub async fn end_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    Form(f): Form<AdminForm>,
) -> Response {
    act(state, headers, username, f, Act::EndSessions).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_messages_per_second_between_samples() {
        let a = Activity::default();
        a.record(0, 0);
        a.record(5_000, 50);
        a.record(10_000, 50);
        a.record(15_000, 200);
        assert_eq!(a.rates(), vec![10.0, 0.0, 30.0]);
        for i in 0..(SAMPLES as i64 + 10) {
            a.record(20_000 + i * 5_000, 200);
        }
        assert_eq!(a.rates().len(), SAMPLES - 1, "ten minutes kept");
    }

    #[test]
    fn the_chart_says_what_it_shows_and_scales_to_its_peak() {
        let svg = chart(&[0.0, 10.0, 40.0, 20.0]);
        assert!(svg.contains("20.0 now, 40.0 at most"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        // The peak is drawn below the top edge, the zeros on the axis.
        assert!(svg.contains(",120.0"), "{svg}");
        let empty = chart(&[]);
        assert!(!empty.contains("<polyline"));
        assert!(empty.contains("0.0 now"));
    }
}
