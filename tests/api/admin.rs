//! The admin view: only admins see it; disabling an account closes its sockets and keeps it out;
//! ending its sessions closes its browser sockets only; forged and foreign requests change
//! nothing; the settings are shown with secrets redacted.

use crate::helpers::*;
use hubbub::server::Config;
use std::ffi::OsString;

async fn page(app: &TestApp, who: Option<&Person>, path: &str) -> (u16, String) {
    let mut req = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(app.url(path));
    if let Some(p) = who {
        req = req.header("Cookie", format!("hubbub_session={}", p.session));
    }
    let r = req.send().await.expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn act(app: &TestApp, who: &Person, username: &str, what: &str) -> reqwest::Response {
    app.form(
        &who.http,
        &format!("/admin/users/{username}/{what}"),
        &who.csrf,
        Some(&who.session),
        &[],
    )
    .await
}

async fn log_in(app: &TestApp, username: &str) -> reqwest::Response {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(app.url("/login")).send().await.expect("get");
    let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf");
    app.form(
        &http,
        "/auth/login",
        &csrf,
        None,
        &[
            ("username", username),
            ("password", "correct horse battery"),
        ],
    )
    .await
}

#[tokio::test]
async fn only_admins_see_the_admin_view_and_its_settings_are_redacted() {
    // The settings as the binary would read them, with a password in a URL.
    let (_, effective) = Config::load_from(
        [
            "hubbub",
            "--database",
            "postgres://hubbub:s3cret-pw@db.example/hubbub",
        ]
        .map(OsString::from)
        .to_vec(),
    )
    .expect("settings");
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.effective = effective;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await; // the first account: the admin
    let bob = app.sign_up("bob", "Bob").await;
    let (ws, _) = ann.socket(&app, &[("general", 0)]).await;
    drop(ws);
    let (s, _) = ann
        .post(
            &app,
            "/api/rooms/general/messages",
            serde_json::json!({"body": "hello"}),
        )
        .await;
    assert_eq!(s, 201);

    let (status, html) = page(&app, Some(&ann), "/admin").await;
    assert_eq!(status, 200);
    for shown in [
        "Rooms by activity",
        "#general",
        "@bob",
        "Accounts",
        "Messages per second",
        "<svg",
        "postgres://hubbub:***@db.example/hubbub",
    ] {
        assert!(html.contains(shown), "{shown} missing");
    }
    assert!(!html.contains("s3cret-pw"), "a password on the page");
    // A filter lists who matches.
    let (_, found) = page(&app, Some(&ann), "/admin?q=bo").await;
    assert!(found.contains("data-user=\"bob\""));
    assert!(!found.contains("data-user=\"ann\""));

    // A member is refused, a visitor sent to log in, and neither can act.
    assert_eq!(page(&app, Some(&bob), "/admin").await.0, 403);
    assert_eq!(page(&app, None, "/admin").await.0, 303);
    assert_eq!(act(&app, &bob, "ann", "disable").await.status(), 403);
    let (status, _) = page(&app, Some(&ann), "/admin").await;
    assert_eq!(status, 200, "ann is still in");
    // Without the CSRF token, or from another origin, nothing happens.
    let forged = bob
        .http
        .post(app.url("/admin/users/bob/disable"))
        .header("Origin", app.origin())
        .header("Cookie", format!("hubbub_session={}", ann.session))
        .form(&[("csrf", "made-up")])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    let foreign = bob
        .http
        .post(app.url("/admin/users/bob/disable"))
        .header("Origin", "http://evil.example")
        .header(
            "Cookie",
            format!("hubbub_session={}; hubbub_csrf={}", ann.session, ann.csrf),
        )
        .form(&[("csrf", ann.csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(foreign.status(), 403);
    assert_eq!(bob.get(&app, "/api/rooms").await.0, 200, "bob is untouched");
    // An admin cannot lock themself out.
    let r = act(&app, &ann, "ann", "disable").await;
    assert_eq!(r.status(), 303);
    assert_eq!(page(&app, Some(&ann), "/admin").await.0, 200);
}

#[tokio::test]
async fn disabling_an_account_closes_its_sockets_and_keeps_it_out() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let bob = app.sign_up("bob", "Bob").await;
    let token = app.token(&bob, "bot").await;
    let (mut in_browser, _) = bob.socket(&app, &[("general", 0)]).await;
    let mut with_token = app
        .upgrade(&[("Authorization", format!("Bearer {token}"))])
        .await
        .expect("token socket");
    hello(&mut with_token, 0).await;

    // Ending his sessions closes the browser's socket, not the token's.
    let r = act(&app, &ann, "bob", "sessions/end").await;
    assert_eq!(r.status(), 303);
    assert_eq!(close_code(&mut in_browser).await, 4001);
    assert_eq!(bob.get(&app, "/api/rooms").await.0, 401);
    send(&mut with_token, &send_frame("general", "t1", "still here")).await;
    assert!(matches!(
        until(&mut with_token, |f| matches!(
            f,
            hubbub::protocol::ServerFrame::Ack(_)
        ))
        .await,
        hubbub::protocol::ServerFrame::Ack(_)
    ));

    // Disabled: every socket closes, the token is refused, the right password is told why.
    let again = log_in(&app, "bob").await;
    assert_eq!(again.status(), 303);
    let session = set_cookie(&again, "hubbub_session").expect("a new session");
    let bob = Person { session, ..bob };
    let (mut in_browser, _) = bob.socket(&app, &[("general", 0)]).await;
    let r = act(&app, &ann, "bob", "disable").await;
    assert_eq!(r.status(), 303);
    assert_eq!(close_code(&mut in_browser).await, 4001);
    assert_eq!(close_code(&mut with_token).await, 4001);
    assert_eq!(bob.get(&app, "/api/rooms").await.0, 401);
    assert_eq!(
        app.upgrade(&[("Authorization", format!("Bearer {token}"))])
            .await
            .err(),
        Some(401)
    );
    let refused = log_in(&app, "bob").await;
    assert_eq!(
        refused.headers()["location"].to_str().expect("location"),
        "/login?error=disabled"
    );
    assert!(set_cookie(&refused, "hubbub_session").is_none());
    let (_, html) = page(&app, Some(&ann), "/admin?q=bob").await;
    assert!(html.contains("status-disabled"));

    // Enabled: he logs in again (his old token stays revoked).
    assert_eq!(act(&app, &ann, "bob", "enable").await.status(), 303);
    let back = log_in(&app, "bob").await;
    assert!(set_cookie(&back, "hubbub_session").is_some());
    assert_eq!(
        app.upgrade(&[("Authorization", format!("Bearer {token}"))])
            .await
            .err(),
        Some(401)
    );
    // Unknown accounts are said to be so, and change nothing.
    let r = act(&app, &ann, "nobody", "disable").await;
    assert_eq!(
        r.headers()["location"].to_str().expect("location"),
        "/admin?done=unknown"
    );
}
