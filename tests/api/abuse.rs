//! Attacks from outside, as a hostile client would make them, against the real binary where the
//! cost matters: each test measures what the server spends (RSS, CPU) as well as what it answers.
//! The figures are printed (`cargo test -- --nocapture` shows them).

use crate::helpers::*;
use hubbub::protocol::ServerFrame;
use hubbub::protocol::{Ack, ErrorReply};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The secure default, with the limits under test left at their defaults.
fn secure<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("HUBBUB_ALLOW_ANONYMOUS", "false")];
    env.extend_from_slice(extra);
    env
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// A CSRF token as a browser gets it, from the sign-up page.
async fn csrf(http: &reqwest::Client, base: &str) -> String {
    let page = http
        .get(format!("{base}/signup"))
        .send()
        .await
        .expect("get");
    set_cookie(&page, "hubbub_csrf").expect("csrf cookie")
}

async fn form(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    csrf: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut c = format!("hubbub_csrf={csrf}");
    if let Some(extra) = cookie {
        c.push_str("; ");
        c.push_str(extra);
    }
    let mut f = fields.to_vec();
    f.push(("csrf", csrf));
    http.post(format!("{base}{path}"))
        .header("Origin", base)
        .header("Cookie", c)
        .form(&f)
        .send()
        .await
        .expect("post")
}

/// Signs `username` up through the form and returns the session cookie's value.
async fn signup_session(http: &reqwest::Client, base: &str, csrf: &str, username: &str) -> String {
    let r = form(
        http,
        base,
        "/auth/signup",
        csrf,
        None,
        &[
            ("username", username),
            ("password", "correct horse battery"),
        ],
    )
    .await;
    set_cookie(&r, "hubbub_session").expect("session")
}

/// A WebSocket upgrade with a session cookie from `origin` (`hubbub.v1` when `rich`).
async fn session_socket(addr: &str, origin: &str, session: &str, rich: bool) -> Ws {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/ws"),
    )
    .expect("request");
    let h = req.headers_mut();
    h.insert(
        "Cookie",
        format!("hubbub_session={session}").parse().expect("h"),
    );
    h.insert("Origin", origin.parse().expect("h"));
    if rich {
        h.insert("Sec-WebSocket-Protocol", "hubbub.v1".parse().expect("h"));
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("socket")
        .0
}

/// Polls `/healthz` every 50 ms until `stop`, from a thread and runtime of its own (so the
/// attack's tasks do not delay the measurement), returning the slowest answer.
fn slowest_health(
    base: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let http = client();
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = http
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .expect("health");
                assert_eq!(r.status(), 200);
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            worst
        })
    })
}

#[tokio::test]
async fn a_signup_flood_from_one_address_is_refused_before_hashing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let rss_before = server.status_kib("VmRSS");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = slowest_health(base.clone(), stop.clone());
    let started = Instant::now();
    // 400 sign-ups, 64 at a time.
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (http, base, token, gate) = (http.clone(), base.clone(), token.clone(), gate.clone());
        tasks.spawn(async move {
            let _p = gate.acquire_owned().await.expect("permit");
            let name = format!("flood{i}");
            let r = form(
                &http,
                &base,
                "/auth/signup",
                &token,
                None,
                &[("username", &name), ("password", "correct horse battery")],
            )
            .await;
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (status, retry_after) = r.expect("task");
        if status == 429 {
            assert!(retry_after, "a 429 says when to come back");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = health.join().expect("health thread");
    let peak = server.status_kib("VmHWM");
    println!(
        "sign-up flood: {statuses:?} in {took:?}; slowest /healthz {worst:?}; RSS {rss_before} KiB before, peak {peak} KiB"
    );
    // The address's 20 an hour get through the limit; of those, what did not fit the hashing
    // queue (16 waiting besides the ones hashing) is told to come back (503).
    let made = statuses.get(&303).copied().unwrap_or(0);
    let busy = statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(made + busy, 20, "{statuses:?}");
    assert!(made >= 16, "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&380));
    // Hashing runs off the async threads: other requests are answered meanwhile. The bound only
    // catches a stall (a runtime blocked by hashing takes seconds); the figure is printed above,
    // and a shared 2-core machine under load has shown 15 to 180 ms.
    assert!(worst < Duration::from_secs(1), "slowest /healthz {worst:?}");
    assert!(
        peak.saturating_sub(rss_before) < 100 * 1024,
        "RSS grew {} KiB",
        peak - rss_before
    );
}

#[tokio::test]
async fn log_ins_with_huge_usernames_retain_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let rss_before = server.status_kib("VmRSS");
    let huge = "a".repeat(1024 * 1024);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let r = form(
            &http,
            &base,
            "/auth/login",
            &token,
            None,
            &[("username", &huge), ("password", "x")],
        )
        .await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    // Just under the form limit: read, found invalid, and not counted anywhere.
    let long = "b".repeat(15 * 1024);
    for _ in 0..60 {
        let r = form(
            &http,
            &base,
            "/auth/login",
            &token,
            None,
            &[("username", &long), ("password", "x")],
        )
        .await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.status_kib("VmRSS");
    println!("huge log-ins: {statuses:?}; RSS {rss_before} KiB before, {rss_after} KiB after");
    assert_eq!(
        statuses.get(&413),
        Some(&60),
        "1 MB forms are refused unread"
    );
    assert_eq!(
        statuses.get(&303),
        Some(&60),
        "invalid names fail like wrong passwords"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
}

/// Posts `n` log-outs with made-up session cookies, `concurrency` at a time.
async fn fake_logouts(base: &str, token: &str, n: usize) {
    let http = client();
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, base, token, gate) = (
            http.clone(),
            base.to_owned(),
            token.to_owned(),
            gate.clone(),
        );
        tasks.spawn(async move {
            let _p = gate.acquire_owned().await.expect("permit");
            let cookie = format!("hubbub_session=made-up-{i}");
            let r = form(&http, &base, "/auth/logout", &token, Some(&cookie), &[]).await;
            assert_eq!(r.status(), 303);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
}

#[tokio::test]
async fn logouts_of_unknown_sessions_cost_the_same_with_5000_sockets_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(
        dir.path(),
        &[],
        &secure(&[
            ("HUBBUB_MAX_SOCKETS_PER_USER", "6000"),
            ("HUBBUB_MAX_CONNECTIONS_PER_IP", "10000"),
        ]),
        &[],
    );
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let session = signup_session(&http, &base, &token, "ann").await;

    let cpu = server.cpu();
    fake_logouts(&base, &token, 2000).await;
    let without = server.cpu() - cpu;

    let mut sockets = Vec::new();
    for _ in 0..5000 {
        sockets.push(session_socket(&server.addr, &base, &session, false).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = server.cpu();
    fake_logouts(&base, &token, 2000).await;
    let with = server.cpu() - cpu;
    println!(
        "2,000 log-outs of unknown sessions: {without:?} of server CPU with no socket open, {with:?} with 5,000 open ({:.2} ms and {:.2} ms each)",
        without.as_secs_f64() * 1000.0 / 2000.0,
        with.as_secs_f64() * 1000.0 / 2000.0
    );
    assert!(
        with <= without * 3 / 2 + Duration::from_millis(300),
        "with sockets {with:?}, without {without:?}"
    );
    // A real log-out of somebody else wakes none of them either.
    let bob = signup_session(&http, &base, &token, "bob").await;
    let cpu = server.cpu();
    let r = form(
        &http,
        &base,
        "/auth/logout",
        &token,
        Some(&format!("hubbub_session={bob}")),
        &[],
    )
    .await;
    assert_eq!(r.status(), 303);
    println!(
        "a real log-out of another account with 5,000 sockets open: {:?}",
        server.cpu() - cpu
    );
    for ws in sockets.iter_mut().take(20) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await
        {
            assert!(
                !matches!(msg, Ok(Message::Close(_)) | Err(_)),
                "closed by another account's log-out: {msg:?}"
            );
        }
    }
    // None of the sockets was closed by them: a real log-out closes every socket of that session, and only costs that.
    let r = form(
        &http,
        &base,
        "/auth/logout",
        &token,
        Some(&format!("hubbub_session={session}")),
        &[],
    )
    .await;
    assert_eq!(r.status(), 303);
    for ws in sockets.iter_mut() {
        assert_eq!(close_code(ws).await, 4001);
    }
}

#[tokio::test]
async fn trickling_bodies_are_cut_off_and_others_are_served_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(
        dir.path(),
        &[],
        &secure(&[("HUBBUB_MAX_CONNECTIONS_PER_IP", "256")]),
        &[],
    );
    let addr: std::net::SocketAddr = server.addr.parse().expect("addr");
    // A body announced larger than the route takes is refused before a byte of it is read.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut answer))
        .await
        .expect("answered at once")
        .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 413");
    drop(s);
    let rss_before = server.status_kib("VmRSS");
    let started = Instant::now();
    // 300 requests that announce a body the route takes and send a byte of it now and then.
    let mut trickles = tokio::task::JoinSet::new();
    for _ in 0..300 {
        trickles.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return (true, Duration::ZERO, String::new());
            };
            let head = "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                return (true, started.elapsed(), String::new());
            }
            let mut answer = Vec::new();
            loop {
                let mut buf = [0u8; 512];
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return (true, started.elapsed(), String::from_utf8_lossy(&answer).into_owned()),
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        if s.write_all(b"a").await.is_err() {
                            return (true, started.elapsed(), String::from_utf8_lossy(&answer).into_owned());
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(40) {
                    return (false, started.elapsed(), String::new());
                }
            }
        });
    }
    // Meanwhile, from another address, the server answers.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let mut worst = Duration::ZERO;
    while !trickles.is_empty() && started.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let r = other
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = server.status_kib("VmHWM");
    let (mut cut, mut timed_out, mut latest, mut refused_503) = (0, 0, Duration::ZERO, 0);
    while let Some(r) = trickles.join_next().await {
        let (closed, at, answer) = r.expect("task");
        if closed {
            cut += 1;
            latest = latest.max(at);
            if answer.starts_with("HTTP/1.1 503") {
                refused_503 += 1;
            } else if answer.starts_with("HTTP/1.1 408") {
                timed_out += 1;
            }
        }
    }
    println!(
        "300 trickling bodies: {cut} cut off, the last after {latest:?} ({timed_out} with 408, {refused_503} refused at connect with 503); slowest /healthz meanwhile {worst:?}; RSS {rss_before} KiB before, peak {peak} KiB"
    );
    assert_eq!(cut, 300, "every trickling body was cut off");
    assert!(latest < Duration::from_secs(30), "{latest:?}");
    assert_eq!(
        refused_503,
        300 - 256,
        "past 256 from one address, refused at once"
    );
    assert_eq!(timed_out, 256);
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

#[tokio::test]
async fn connections_are_capped_in_all_and_per_address() {
    let app = spawn_app_with(|c| {
        c.max_connections = Some(40);
        c.max_connections_per_ip = 30;
    })
    .await;
    let addr = app.addr;
    let connect = |from: &'static str| async move {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(format!("{from}:0").parse().expect("addr"))
            .expect("bind");
        s.connect(addr).await.expect("connect")
    };
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connect("127.0.0.1").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The 31st from the same address is told why, and closed.
    let mut extra = connect("127.0.0.1").await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, extra.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("Retry-After: 5"));
    // Another address still gets in, up to the total.
    for _ in 0..10 {
        held.push(connect("127.0.0.3").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect("127.0.0.4").await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, over.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Closing some frees their places.
    held.truncate(20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::Client::builder()
        .local_address("127.0.0.5".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(
        dir.path(),
        &[],
        &[("HUBBUB_MAX_CONNECTIONS", "100000")],
        &["prlimit", "--nofile=64:64", "--"],
    );
    let addr: std::net::SocketAddr = server.addr.parse().expect("addr");
    // More connections than the server has descriptors: the backlog fills, accept fails.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = server.cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = server.cpu() - cpu;
    println!("out of descriptors for 2 s: {spent:?} of server CPU");
    assert!(spent < Duration::from_millis(200), "it spins: {spent:?}");
    drop(held);
    let http = client();
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = http.get(server.url("/healthz")).send().await {
            ok = r.status() == 200;
            if ok {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "serves again once descriptors are free");
}

/// Sends `n` messages one after another and returns each ack's latency, sorted.
async fn ack_latencies(ws: &mut Ws, prefix: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        send(ws, &send_frame("general", &format!("{prefix}{i}"), "hi")).await;
        loop {
            if let ServerFrame::Ack(Ack { .. }) = next(ws).await {
                break;
            }
        }
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.sort();
    out
}

fn p99(v: &[Duration]) -> Duration {
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// 1,500 requests with made-up bearer tokens, alternating the API and `/ws`, from a thread and
/// runtime of their own; returns how they were answered.
fn bad_token_flood(
    addr: String,
) -> std::thread::JoinHandle<std::collections::BTreeMap<u16, usize>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            let mut statuses = std::collections::BTreeMap::new();
            for i in 0..1500 {
                let status = if i % 2 == 0 {
                    http.get(format!("http://{addr}/api/rooms/general/messages"))
                        .bearer_auth(format!("hbt_madeup{i}"))
                        .send()
                        .await
                        .expect("get")
                        .status()
                        .as_u16()
                } else {
                    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                        format!("ws://{addr}/ws"),
                    )
                    .expect("request");
                    req.headers_mut().insert(
                        "Authorization",
                        format!("Bearer hbt_madeup{i}").parse().expect("h"),
                    );
                    match tokio_tungstenite::connect_async(req).await {
                        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                        other => panic!("a bad token got {other:?}"),
                    }
                };
                *statuses.entry(status).or_insert(0) += 1;
            }
            statuses
        })
    })
}

#[tokio::test]
async fn a_flood_of_bad_tokens_is_refused_before_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let session = signup_session(&http, &base, &token, "ann").await;
    let mut ws = session_socket(&server.addr, &base, &session, true).await;
    hello(&mut ws, 0).await;
    let baseline = ack_latencies(&mut ws, "a", 200).await;
    let flood = bad_token_flood(server.addr.clone());
    let during = ack_latencies(&mut ws, "b", 200).await;
    let statuses = flood.join().expect("flood");
    println!(
        "bad-token flood: {statuses:?}; another client's ack p99 {:?} before, {:?} during",
        p99(&baseline),
        p99(&during)
    );
    assert_eq!(statuses.get(&401), Some(&60), "60 a minute are looked up");
    assert_eq!(
        statuses.get(&429),
        Some(&1440),
        "the rest never reach the database"
    );
    // The flood's own client and the other tests share this 2-core machine, so acks slow with
    // the CPU they take; the bound only catches a server that stalls on the flood (the figures
    // are printed; bench/run is where latency is measured).
    assert!(
        p99(&during) < Duration::from_secs(2),
        "ack p99 {:?} before, {:?} during",
        p99(&baseline),
        p99(&during)
    );
    // A credential found valid before is not held to the address's budget: the account can
    // still connect from there.
    session_socket(&server.addr, &base, &session, true).await;
}

#[tokio::test]
async fn a_classic_burst_of_200_arrives_whole_and_in_order_at_the_rate() {
    let app = spawn_app_with(|c| c.message_rate = 50).await;
    let mut sender = app.classic("/").await;
    let mut watcher = app.classic("/").await;
    let started = Instant::now();
    for i in 0..200 {
        let frame = serde_json::json!({"user": "script", "message": format!("burst {i}")});
        send_text(&mut sender, &frame.to_string()).await;
    }
    // Everything that comes back is a classic frame, and all 200 come, in order.
    for i in 0..200 {
        let v: serde_json::Value =
            serde_json::from_str(&next_text(&mut watcher).await).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"user": "script", "message": format!("burst {i}")})
        );
    }
    let took = started.elapsed();
    for i in 0..200 {
        let v: serde_json::Value =
            serde_json::from_str(&next_text(&mut sender).await).expect("json");
        assert_eq!(
            v["message"],
            format!("burst {i}"),
            "the sender sees classic frames only"
        );
    }
    println!("a classic burst of 200 at 50/s (bursts of 100): all delivered in {took:?}");
    // A burst of 100, then 50 a second.
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test]
async fn sockets_and_http_posts_of_one_account_share_one_budget() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.message_rate = 5;
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let post = |i: usize| {
        let (http, url, ann) = (&ann.http, app.url("/api/rooms/general/messages"), &ann);
        async move {
            http.post(url)
                .header("Cookie", format!("hubbub_session={}", ann.session))
                .header("Origin", &ann.origin)
                .json(&serde_json::json!({"body": format!("post {i}")}))
                .send()
                .await
                .expect("post")
        }
    };
    // Connect, say hello, send, close, again and again: a new socket brings no new burst (each
    // loop spends two: the hello's room and the message).
    let started = Instant::now();
    for i in 0..5 {
        let mut ws = app.upgrade(&ann.cookie_headers()).await.expect("socket");
        hello(&mut ws, i).await;
        send(&mut ws, &send_frame("general", &format!("loop{i}"), "hi")).await;
        loop {
            if let ServerFrame::Ack(Ack { .. }) = next(&mut ws).await {
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the burst of 10 is spent at once"
    );
    // The budget is gone, for the HTTP API too.
    let r = post(0).await;
    assert_eq!(r.status(), 429);
    let wait: f64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(wait >= 1.0);
    // After a while it refills, for both.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 1..=4 {
        assert_eq!(post(i).await.status(), 201);
    }
    // Spend what refilled meanwhile (a loaded machine is slow), so the budget is empty again.
    let mut spent = false;
    let mut stored = 5 + 4;
    for i in 5..40 {
        match post(i).await.status().as_u16() {
            429 => {
                spent = true;
                break;
            }
            201 => stored += 1,
            other => panic!("post answered {other}"),
        }
    }
    assert!(spent, "the budget ran out again");
    // And a new socket's send now waits its turn instead of being refused.
    let mut ws = app.upgrade(&ann.cookie_headers()).await.expect("socket");
    hello(&mut ws, stored).await;
    let t = Instant::now();
    for i in 0..3 {
        send(&mut ws, &send_frame("general", &format!("late{i}"), "hi")).await;
    }
    let mut acks = 0;
    while acks < 3 {
        match next(&mut ws).await {
            ServerFrame::Ack(Ack { .. }) => acks += 1,
            ServerFrame::Error(ErrorReply { message, .. }) => panic!("refused: {message}"),
            _ => {}
        }
    }
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_socket_closes_when_its_credential_ends_without_a_notice() {
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.ping_interval = Duration::from_millis(200);
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let token = app.token(&ann, "bot").await;
    let mut ws = app
        .upgrade(&[("Authorization", format!("Bearer {token}"))])
        .await
        .expect("token socket");
    hello(&mut ws, 0).await;
    // The token is revoked behind the server's back: no notice reaches the socket.
    app.db()
        .await
        .execute("UPDATE api_tokens SET revoked_at = 1")
        .await;
    let t = Instant::now();
    assert_eq!(close_code(&mut ws).await, 4001);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn sockets_close_when_their_session_expires_and_expired_sessions_are_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(|c| {
        c.data_dir = dir.path().to_owned();
        c.allow_anonymous = false;
        c.ping_interval = Duration::from_millis(200);
        c.session_ttl = Duration::from_secs(2);
    })
    .await;
    let ann = app.sign_up("ann", "Ann").await;
    let mut ws = app.upgrade(&ann.cookie_headers()).await.expect("socket");
    hello(&mut ws, 0).await;
    let t = Instant::now();
    assert_eq!(close_code(&mut ws).await, 4001);
    let after = t.elapsed();
    assert!(
        after > Duration::from_millis(1000) && after < Duration::from_secs(3),
        "{after:?}"
    );
    assert_eq!(app.upgrade(&ann.cookie_headers()).await.err(), Some(401));
    let mut app = app;
    app.stop();
    let _ = tokio::time::timeout(WAIT, &mut app.handle).await;
    let db = app.db().await;
    let before = db.int("SELECT COUNT(*) FROM sessions").await;
    assert_eq!(before, 1, "expired, still stored");
    // The next start purges it.
    let database = app.database.clone();
    let again = spawn_app_with(|c| {
        c.data_dir = dir.path().to_owned();
        c.database = database;
    })
    .await;
    let mut purged = false;
    for _ in 0..50 {
        let n = db.int("SELECT COUNT(*) FROM sessions").await;
        if n == 0 {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged);
    drop(again);
}

#[tokio::test]
async fn registration_can_be_closed_or_by_invite_from_an_admin() {
    use hubbub::server::config::Registration;
    let app = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.registration = Registration::Invite;
    })
    .await;
    // The first account can always be made: it is the admin.
    let admin = app.sign_up("admin", "Admin").await;
    let http = client();
    let base = app.origin();
    let token = csrf(&http, &base).await;
    let signup = |name: &'static str, invite: Option<String>| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let mut fields = vec![
                ("username", name.to_owned()),
                ("password", "correct horse battery".to_owned()),
            ];
            if let Some(i) = invite {
                fields.push(("invite", i));
            }
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            form(&http, &base, "/auth/signup", &token, None, &f).await
        }
    };
    let r = signup("bob", None).await;
    assert_eq!(r.headers()["location"], "/signup?error=invite");
    let page = http
        .get(format!("{base}/signup"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(page.contains("need an invite link"));
    // A non-admin cannot make invites; the admin can.
    let r = app
        .form(
            &admin.http,
            "/auth/invites",
            &admin.csrf,
            Some(&admin.session),
            &[("uses", "1"), ("days", "1")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.expect("body");
    let code = html
        .split("signup?invite=")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the link is shown")
        .to_owned();
    let r = signup("bob", Some(code.clone())).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let bob_session = set_cookie(&r, "hubbub_session").expect("bob is in");
    let r = signup("carol", Some(code)).await;
    assert!(
        r.headers()["location"]
            .to_str()
            .expect("ascii")
            .starts_with("/signup?error=invite"),
        "used up"
    );
    let r = app
        .form(
            &admin.http,
            "/auth/invites",
            &admin.csrf,
            Some(&bob_session),
            &[("uses", "1")],
        )
        .await;
    assert_eq!(r.status(), 403, "bob is no admin");

    let closed = spawn_app_with(|c| {
        c.allow_anonymous = false;
        c.registration = Registration::Closed;
    })
    .await;
    closed.sign_up("first", "First").await;
    let http = client();
    let base = closed.origin();
    let token = csrf(&http, &base).await;
    let r = form(
        &http,
        &base,
        "/auth/signup",
        &token,
        None,
        &[
            ("username", "second"),
            ("password", "correct horse battery"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_invite_endpoints_hold_against_strangers_huge_fields_and_slow_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(
        dir.path(),
        &[],
        &secure(&[("HUBBUB_REGISTRATION", "invite")]),
        &[],
    );
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    signup_session(&http, &base, &token, "admin").await;
    let rss_before = server.status_kib("VmRSS");
    // 500 tries to make an invite without a session, from one address.
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..500 {
        let r = form(
            &http,
            &base,
            "/auth/invites",
            &token,
            None,
            &[("uses", "1000")],
        )
        .await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&303),
        Some(&500),
        "sent to log in: {statuses:?}"
    );
    // Huge fields: a 1 MB form is refused unread; a 60 KB invite code in a link is not echoed.
    let huge = "x".repeat(1024 * 1024);
    for path in ["/auth/invites", "/auth/signup"] {
        let r = form(
            &http,
            &base,
            path,
            &token,
            None,
            &[("invite", &huge), ("uses", &huge)],
        )
        .await;
        assert_eq!(r.status(), 413, "{path}");
    }
    let long = "y".repeat(60 * 1024);
    let page = http
        .get(format!("{base}/signup?invite={long}"))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("body");
    assert!(
        !html.contains(&long[..100]),
        "an invalid code is not put in the page"
    );
    assert!(html.contains("need an invite link"));
    // A made-up code that looks right is refused after the form, without an account.
    let r = form(
        &http,
        &base,
        "/auth/signup",
        &token,
        None,
        &[
            ("username", "mallory"),
            ("password", "correct horse battery"),
            ("invite", "made-up-code"),
        ],
    )
    .await;
    assert_eq!(
        r.headers()["location"],
        "/signup?error=invite&invite=made-up-code"
    );
    // A body sent a byte now and then is cut off.
    let addr: std::net::SocketAddr = server.addr.parse().expect("addr");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /auth/invites HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\nuses=1")
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = [0u8; 12];
    let read = async {
        loop {
            tokio::select! {
                r = s.read_exact(&mut answer) => return r.map(|_| ()),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    let _ = s.write_all(b"1").await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("cut off in time")
        .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 408");
    let cut_after = started.elapsed();
    let rss_after = server.status_kib("VmRSS");
    println!(
        "invite endpoints: 500 stranger posts {statuses:?}; slow body cut after {cut_after:?}; RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(cut_after < Duration::from_secs(17), "{cut_after:?}");
    assert!(
        rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
}

#[tokio::test]
async fn the_room_endpoints_hold_against_floods_huge_fields_and_slow_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let session = signup_session(&http, &base, &token, "ann").await;
    let call = |method: reqwest::Method, path: &str, body: String| {
        http.request(method, format!("{base}{path}"))
            .header("Cookie", format!("hubbub_session={session}"))
            .header("Origin", base.trim_end_matches('/'))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let rss_before = server.status_kib("VmRSS");
    let cpu_before = server.cpu();
    let mut statuses = std::collections::BTreeMap::new();
    let mut count = |s: reqwest::StatusCode| *statuses.entry(s.as_u16()).or_insert(0u32) += 1;
    // 300 rooms asked for from one account: its hourly budget, then 429 with nothing made.
    for i in 0..300 {
        let r = call(
            reqwest::Method::POST,
            "/api/rooms",
            format!("{{\"name\":\"r{i}\"}}"),
        )
        .await
        .expect("post");
        count(r.status());
    }
    // 300 posts of a 1 MB body to each room endpoint: refused unread.
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(1024 * 1024));
    for (method, path) in [
        (reqwest::Method::POST, "/api/rooms"),
        (reqwest::Method::POST, "/api/dms"),
        (reqwest::Method::POST, "/api/rooms/general/members"),
        (reqwest::Method::PUT, "/api/rooms/general/read"),
        (reqwest::Method::PATCH, "/api/rooms/general"),
    ] {
        for _ in 0..60 {
            let r = call(method.clone(), path, huge.clone())
                .await
                .expect("post");
            count(r.status());
        }
    }
    // 300 DMs naming 64 unknown people of 100 characters each (7 KB, under the body limit).
    let people: Vec<String> = (0..64).map(|i| format!("{i}{}", "p".repeat(98))).collect();
    let dm = serde_json::json!({ "usernames": people }).to_string();
    for _ in 0..300 {
        let r = call(reqwest::Method::POST, "/api/dms", dm.clone())
            .await
            .expect("post");
        count(r.status());
    }
    // A room request sent a byte now and then is cut off.
    let addr: std::net::SocketAddr = server.addr.parse().expect("addr");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"name\":")
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = [0u8; 12];
    let read = async {
        loop {
            tokio::select! {
                r = s.read_exact(&mut answer) => return r.map(|_| ()),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    let _ = s.write_all(b"x").await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("cut off in time")
        .expect("read");
    let cut_after = started.elapsed();
    let rss_after = server.status_kib("VmRSS");
    let cpu = server.cpu().saturating_sub(cpu_before);
    println!(
        "room endpoints: {statuses:?}; slow body cut after {cut_after:?}; RSS {rss_before} KiB before, {rss_after} KiB after; server CPU {cpu:?}"
    );
    assert_eq!(&answer, b"HTTP/1.1 408");
    assert_eq!(statuses.get(&201), Some(&10), "the hourly budget of rooms");
    assert_eq!(statuses.get(&429), Some(&290));
    assert_eq!(statuses.get(&413), Some(&300), "huge bodies refused unread");
    assert_eq!(statuses.get(&422), Some(&300), "too many people for a DM");
    assert!(cut_after < Duration::from_secs(17), "{cut_after:?}");
    assert!(
        rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
}

/// Uploads from one account: 40 files announced at 11 MB, 40 sent without a length running past
/// the limit, 8 files of 9.5 MB at once, a thousand reactions and edits of someone else's
/// message, and 2,000 searches; the server keeps none of the refused bytes and its memory does
/// not grow with the file sizes (uploads stream to disk).
#[tokio::test]
async fn uploads_reactions_edits_and_searches_hold_against_one_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let session = signup_session(&http, &base, &token, "ann").await;
    let origin = base.trim_end_matches('/').to_owned();
    let rss_before = server.status_kib("VmRSS");
    let cpu_before = server.cpu();
    let mut statuses = std::collections::BTreeMap::new();
    let mut count = |s: reqwest::StatusCode| *statuses.entry(s.as_u16()).or_insert(0u32) += 1;
    let upload = |name: &str, body: reqwest::Body, length: Option<u64>| {
        let mut req = http
            .post(format!("{base}/api/rooms/general/attachments?name={name}"))
            .header("Cookie", format!("hubbub_session={session}"))
            .header("Origin", origin.clone());
        if let Some(n) = length {
            req = req.header("Content-Length", n);
        }
        req.body(body).send()
    };
    // Announced too large: refused before a byte is read (the client sends nothing more).
    for i in 0..40 {
        let r = upload(
            &format!("big{i}"),
            reqwest::Body::from(Vec::<u8>::new()),
            Some(11_000_000),
        )
        .await;
        match r {
            Ok(r) => count(r.status()),
            Err(_) => count(reqwest::StatusCode::PAYLOAD_TOO_LARGE),
        }
    }
    // Sent without a length, each 11 MB: cut off at 10 MB.
    for i in 0..40 {
        let chunks = (0..176).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let r = upload(&format!("over{i}"), body, None).await.expect("post");
        count(r.status());
    }
    // Eight files of 9.5 MB at once: stored, streamed.
    let files: Vec<_> = (0..8)
        .map(|i| {
            let mut bytes = vec![0u8; 9_500_000];
            bytes[0] = i as u8;
            upload(&format!("ok{i}.bin"), reqwest::Body::from(bytes), None)
        })
        .collect();
    for r in futures_util::future::join_all(files).await {
        count(r.expect("post").status());
    }
    let peak = server.status_kib("VmHWM");
    let call = |method: reqwest::Method, path: String| {
        http.request(method, format!("{base}{path}"))
            .header("Cookie", format!("hubbub_session={session}"))
            .header("Origin", origin.clone())
            .send()
    };
    // 1,000 distinct reactions to one message, and 2,000 searches.
    for i in 0..1_000u32 {
        let emoji: String = char::from_u32(0x1F300 + i).expect("emoji").to_string();
        let e: String = emoji.bytes().map(|b| format!("%{b:02X}")).collect();
        let r = call(
            reqwest::Method::PUT,
            format!("/api/rooms/general/messages/2/reactions/{e}"),
        )
        .await
        .expect("react");
        count(r.status());
    }
    for i in 0..2_000 {
        let r = call(
            reqwest::Method::GET,
            format!("/api/search?q=x{i}%20%22a%20b%22%20*"),
        )
        .await
        .expect("search");
        count(r.status());
    }
    let rss_after = server.status_kib("VmRSS");
    let cpu = server.cpu().saturating_sub(cpu_before);
    let incoming = std::fs::read_dir(dir.path().join("blobs/incoming"))
        .expect("incoming")
        .count();
    println!(
        "uploads and friends: {statuses:?}; RSS {rss_before} KiB before, peak {peak} KiB, {rss_after} KiB after; server CPU {cpu:?}; {incoming} scratch files left"
    );
    assert_eq!(
        statuses.get(&413),
        Some(&80),
        "every oversized upload refused"
    );
    assert_eq!(incoming, 0, "nothing refused is kept");
    assert_eq!(statuses.get(&201), Some(&8), "the files within the limit");
    assert_eq!(
        statuses.get(&204),
        Some(&20),
        "reactions, up to the 20 kinds"
    );
    assert_eq!(
        statuses.get(&422),
        Some(&(1_000 - 20)),
        "20 kinds of reaction at most"
    );
    assert_eq!(statuses.get(&200), Some(&2_000), "searches answered");
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "the peak grew {} KiB for 76 MB of uploads",
        peak - rss_before
    );
}

#[tokio::test]
async fn the_admin_endpoints_hold_against_members_strangers_and_huge_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(dir.path(), &[], &secure(&[]), &[]);
    let base = server.url("");
    let http = client();
    let token = csrf(&http, &base).await;
    let admin = signup_session(&http, &base, &token, "admin").await;
    let member = signup_session(&http, &base, &token, "member").await;
    let rss_before = server.status_kib("VmRSS");
    let cpu_before = server.cpu();
    // 500 tries each by a stranger and by a member to disable the admin, from one address.
    let mut statuses = std::collections::BTreeMap::new();
    for session in [None, Some(format!("hubbub_session={member}"))] {
        for _ in 0..500 {
            let r = form(
                &http,
                &base,
                "/admin/users/admin/disable",
                &token,
                session.as_deref(),
                &[],
            )
            .await;
            *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        statuses.get(&303),
        Some(&500),
        "strangers to log in: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&403),
        Some(&500),
        "members refused: {statuses:?}"
    );
    // A 1 MB form is refused unread; a 60 KB filter is cut to 64 characters.
    let huge = "x".repeat(1024 * 1024);
    let r = form(
        &http,
        &base,
        "/admin/users/member/disable",
        &token,
        Some(&format!("hubbub_session={admin}")),
        &[("pad", &huge)],
    )
    .await;
    assert_eq!(r.status(), 413);
    let long = "q".repeat(60 * 1024);
    let page = http
        .get(format!("{base}/admin?q={long}"))
        .header("Cookie", format!("hubbub_session={admin}"))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(!html.contains(&long[..65]), "the filter is cut");
    // 200 views of the admin page: what each costs the server.
    let cpu_pages = server.cpu();
    for _ in 0..200 {
        let r = http
            .get(format!("{base}/admin"))
            .header("Cookie", format!("hubbub_session={admin}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
    }
    let per_page = (server.cpu() - cpu_pages) / 200;
    let (rss_after, cpu) = (server.status_kib("VmRSS"), server.cpu() - cpu_before);
    println!(
        "admin endpoints: 1,000 refused posts {statuses:?}; 200 admin pages at {per_page:?} of server CPU each; {cpu:?} of CPU in all; RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
    // Nothing changed: the member is still active, and the admin too.
    let r = http
        .get(format!("{base}/admin?q=member"))
        .header("Cookie", format!("hubbub_session={admin}"))
        .send()
        .await
        .expect("get");
    assert!(r.text().await.expect("page").contains("status-active"));
}
