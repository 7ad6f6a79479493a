//! Secure by default: accounts, sessions, tokens, Origin checks and CSRF, over real HTTP and sockets.

use crate::helpers::*;
use hubbub::protocol::ServerFrame;
use hubbub::protocol::{Joined, Welcome};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn without_credentials_there_is_no_socket_and_no_api() {
    let app = spawn_secure_app().await;
    assert_eq!(app.upgrade(&[]).await.err(), Some(401));
    // The classic path on / too.
    let classic = tokio_tungstenite::connect_async(format!("ws://{}/", app.addr)).await;
    assert!(
        matches!(classic, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401)
    );
    assert_eq!(
        app.http
            .get(app.url("/api/rooms/general/messages"))
            .send()
            .await
            .expect("get")
            .status(),
        401
    );
    assert_eq!(
        app.post("general", json!({"body": "x"})).await.status(),
        401
    );
    // A logged-out visitor of the chat is sent to the log-in page.
    let page = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(app.url("/"))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    assert_eq!(app.get_json("/healthz").await["websockets"], 0);
}

#[tokio::test]
async fn a_session_opens_a_socket_and_the_identity_comes_from_it() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann A.").await;
    let mut ws = app.upgrade(&ann.cookie_headers()).await.expect("upgrade");
    send_text(
        &mut ws,
        r#"{"type":"hello","user":"mallory","resume":{"general":0}}"#,
    )
    .await;
    match next(&mut ws).await {
        ServerFrame::Welcome(Welcome { user, .. }) => assert_eq!(user, "Ann A."),
        other => panic!("{other:?}"),
    }
    // Her sign-up put her in general: that event comes first.
    let joined = next_message(&mut ws).await;
    assert_eq!(joined.member.as_deref(), Some("ann"));
    assert!(matches!(
        next(&mut ws).await,
        ServerFrame::Joined(Joined { .. })
    ));
    send_text(
        &mut ws,
        r#"{"type":"send","room":"general","client_id":"a1","body":"hi","user":"mallory"}"#,
    )
    .await;
    let m = next_message(&mut ws).await;
    assert_eq!(m.user, "Ann A.", "a user field in the payload is ignored");
}

#[tokio::test]
async fn foreign_origins_get_403_for_cookie_upgrades() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.allowed_origins = vec!["https://hubbub.example".into()];
    })
    .await;
    let ann = app.sign_up_from("ann", "https://hubbub.example").await;
    let cookie = format!("hubbub_session={}", ann.session);
    for origin in [
        "https://evil.example",
        "https://hubbub.example.evil.com",
        "https://hubbub.example:8443",
        "http://hubbub.example",
        "null",
    ] {
        let got = app
            .upgrade(&[("Cookie", cookie.clone()), ("Origin", origin.to_owned())])
            .await
            .err();
        assert_eq!(got, Some(403), "{origin}");
    }
    assert_eq!(
        app.upgrade(&[("Cookie", cookie.clone())]).await.err(),
        Some(403),
        "no Origin"
    );
    assert!(app
        .upgrade(&[
            ("Cookie", cookie),
            ("Origin", "https://hubbub.example".into())
        ])
        .await
        .is_ok());
}

#[tokio::test]
async fn tokens_authenticate_without_origin_and_bad_ones_get_401() {
    let app = spawn_secure_app().await;
    let bob = app.sign_up("bob", "Bob").await;
    let token = app.token(&bob, "cli").await;
    assert!(token.starts_with("hbt_"));
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];
    let mut ws = app.upgrade(&bearer(&token)).await.expect("token upgrade");
    hello(&mut ws, 0).await;
    // The HTTP API too, and the message is Bob's.
    let r = app
        .http
        .post(app.url("/api/rooms/general/messages"))
        .bearer_auth(&token)
        .json(&json!({"body": "via token", "user": "mallory"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(next_message(&mut ws).await.user, "Bob");
    // Tampered.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(app.upgrade(&bearer(&tampered)).await.err(), Some(401));
    assert_eq!(app.upgrade(&bearer("")).await.err(), Some(401));
    assert_eq!(
        app.upgrade(&[("Authorization", "Basic abc".into())])
            .await
            .err(),
        Some(401)
    );
    // Expired.
    let expired = app.token(&bob, "old").await;
    app.db()
        .await
        .execute("UPDATE api_tokens SET expires_at = 0 WHERE name = 'old'")
        .await;
    assert_eq!(app.upgrade(&bearer(&expired)).await.err(), Some(401));
    // Stored only as a digest.
    let stored = app
        .db()
        .await
        .strings("SELECT token_hash FROM api_tokens")
        .await;
    assert!(stored.iter().all(|h| h.len() == 64 && !h.contains(&token)));
}

#[tokio::test]
async fn revoking_a_token_closes_its_open_socket() {
    let app = spawn_secure_app().await;
    let bob = app.sign_up("bob", "Bob").await;
    let token = app.token(&bob, "bot").await;
    let mut ws = app
        .upgrade(&[("Authorization", format!("Bearer {token}"))])
        .await
        .expect("upgrade");
    hello(&mut ws, 0).await;
    let id = app
        .db()
        .await
        .int("SELECT id FROM api_tokens WHERE name = 'bot'")
        .await;
    let resp = app
        .form(
            &bob.http,
            &format!("/auth/tokens/{id}/revoke"),
            &bob.csrf,
            Some(&bob.session),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(close_code(&mut ws).await, 4001);
    assert_eq!(
        app.upgrade(&[("Authorization", format!("Bearer {token}"))])
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn logging_out_closes_the_sessions_sockets_and_ends_the_session() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let mut a = app.upgrade(&ann.cookie_headers()).await.expect("upgrade");
    hello(&mut a, 0).await;
    let mut b = app.upgrade(&ann.cookie_headers()).await.expect("upgrade");
    hello(&mut b, 0).await;
    let resp = app
        .form(
            &ann.http,
            "/auth/logout",
            &ann.csrf,
            Some(&ann.session),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    assert!(
        set_cookie(&resp, "hubbub_session").is_some_and(|v| v.is_empty()),
        "cookie cleared"
    );
    assert_eq!(close_code(&mut a).await, 4001);
    assert_eq!(close_code(&mut b).await, 4001);
    assert_eq!(app.upgrade(&ann.cookie_headers()).await.err(), Some(401));
}

#[tokio::test]
async fn passwords_are_argon2id_and_cookies_carry_the_right_flags() {
    let app = spawn_secure_app().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(app.url("/signup")).send().await.expect("get");
    let csrf_cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("csrf cookie")
        .to_owned();
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Strict"));
    let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf");
    let resp = app
        .form(
            &http,
            "/auth/signup",
            &csrf,
            None,
            &[("username", "cleo"), ("password", "a long password")],
        )
        .await;
    let flags = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("hubbub_session="))
        .expect("session cookie")
        .to_owned();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(flags.contains(flag), "{flag} in {flags}");
    }
    assert!(!flags.contains("Secure"), "not Secure without TLS: {flags}");
    let hash = app
        .db()
        .await
        .strings("SELECT password_hash FROM users WHERE username = 'cleo'")
        .await
        .remove(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );

    let secure = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.secure_cookies = true;
    })
    .await;
    let page = http.get(secure.url("/login")).send().await.expect("get");
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn forms_without_csrf_or_from_elsewhere_are_rejected() {
    let app = spawn_secure_app().await;
    app.sign_up("ann", "Ann").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // No CSRF token at all (login CSRF).
    let r = http
        .post(app.url("/auth/login"))
        .header("Origin", app.origin())
        .form(&[("username", "ann"), ("password", "correct horse battery")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "hubbub_session").is_none());
    // A token that does not match the cookie.
    let r = http
        .post(app.url("/auth/login"))
        .header("Origin", app.origin())
        .header(
            "Cookie",
            "hubbub_csrf=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        )
        .form(&[
            ("username", "ann"),
            ("password", "correct horse battery"),
            ("csrf", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    // A matching token from another origin.
    let csrf = "c".repeat(43);
    let r = http
        .post(app.url("/auth/login"))
        .header("Origin", "https://evil.example")
        .header("Cookie", format!("hubbub_csrf={csrf}"))
        .form(&[
            ("username", "ann"),
            ("password", "correct horse battery"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn log_in_rotates_the_session_and_fails_the_same_way_for_unknown_users() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    let login = |username: &'static str, password: &'static str, session: Option<String>| {
        let app = &app;
        let ann = &ann;
        async move {
            app.form(
                &ann.http,
                "/auth/login",
                &ann.csrf,
                session.as_deref(),
                &[("username", username), ("password", password)],
            )
            .await
        }
    };
    let ok = login("ann", "correct horse battery", Some(ann.session.clone())).await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/");
    let new_session = set_cookie(&ok, "hubbub_session").expect("new session");
    assert_ne!(new_session, ann.session, "the session id changes at log-in");
    assert_eq!(
        app.upgrade(&ann.cookie_headers()).await.err(),
        Some(401),
        "the old one is gone"
    );
    let wrong = login("ann", "wrong password", None).await;
    let unknown = login("nobody", "wrong password", None).await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/login?error=invalid");
        assert!(set_cookie(r, "hubbub_session").is_none());
    }
}

/// A log-in form post from `address` (through a trusted proxy that names it).
async fn login_from(
    app: &TestApp,
    p: &Person,
    address: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    p.http
        .post(app.url("/auth/login"))
        .header("Origin", app.origin())
        .header("Cookie", format!("hubbub_csrf={}", p.csrf))
        .header("X-Forwarded-For", address)
        .form(&[
            ("username", username),
            ("password", password),
            ("csrf", p.csrf.as_str()),
        ])
        .send()
        .await
        .expect("post")
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs")
}

#[tokio::test]
async fn wrong_passwords_slow_down_one_address_while_the_owner_still_logs_in() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let attacker = "203.0.113.9";
    // Three free tries, then each try must wait, longer each time.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            login_from(&app, &ann, attacker, "ann", "nope")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![303, 303, 303, 303]);
    let r = login_from(&app, &ann, attacker, "ann", "nope").await;
    assert_eq!(r.status(), 429);
    assert_eq!(retry_after(&r), 1);
    // Even the right password waits, from that address.
    let r = login_from(&app, &ann, attacker, "ann", "correct horse battery").await;
    assert_eq!(r.status(), 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        login_from(&app, &ann, attacker, "ann", "nope")
            .await
            .status(),
        303
    );
    let r = login_from(&app, &ann, attacker, "ann", "nope").await;
    assert_eq!(r.status(), 429);
    assert_eq!(retry_after(&r), 2, "the wait doubles");
    // The owner, from their own address, is not locked out by the stranger.
    let r = login_from(&app, &ann, "198.51.100.7", "ann", "correct horse battery").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    // An IPv6 attacker counts by its /64: another address in it is the same attacker.
    for i in 0..4 {
        let r = login_from(&app, &ann, &format!("2001:db8:7:7::{i}"), "ann", "x").await;
        assert_eq!(r.status(), 303);
    }
    let r = login_from(&app, &ann, "2001:db8:7:7::ffff", "ann", "x").await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn log_in_attempts_in_flight_cannot_pass_the_count() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    // Twenty guesses at once from one address: each is counted before its hash, so only the
    // three free ones (and the one that opened the first wait) are checked.
    let tries = (0..20).map(|_| login_from(&app, &ann, "203.0.113.20", "ann", "guess"));
    let statuses: Vec<u16> = futures_util::future::join_all(tries)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 303).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, refused), (4, 16), "{statuses:?}");
}
