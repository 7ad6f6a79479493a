//! Starting the server on port 0 and talking to it.

use futures_util::{SinkExt, StreamExt};
use hubbub::protocol::{Ack, Joined, Welcome};
use hubbub::protocol::{ChatMessage, ClientFrame, ServerFrame, SUBPROTOCOL};
use hubbub::server::store::scratch::ScratchDb;
use hubbub::server::{self, config, Config};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), server::ServerError>>,
    pub dir: tempfile::TempDir,
    /// The database, when the suite runs on PostgreSQL (`HUBBUB_TEST_DATABASE=postgres`).
    _db: Option<ScratchDb>,
    /// The database it was given (`None`: SQLite in `dir`).
    pub database: Option<config::Database>,
    /// Its data directory (`dir` unless the test gave another).
    pub data_dir: std::path::PathBuf,
}

/// The database of a running server, opened beside it as an operator would.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    pub async fn execute(&self, sql: &str) {
        match self {
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .expect(sql);
    }

    pub async fn int(&self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .expect(sql)
    }

    pub async fn strings(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        }
        .expect(sql)
    }
}

/// Whether this run of the suite is on PostgreSQL rather than the default SQLite.
pub fn on_postgres() -> bool {
    std::env::var("HUBBUB_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// The server in anonymous mode, for tests of the protocol itself; `tests/api/auth.rs` tests
/// the secure default.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|c| c.allow_anonymous = true).await
}

/// The server with its default, secure configuration.
pub async fn spawn_secure_app() -> TestApp {
    spawn_app_with(|c| c.allow_anonymous = false).await
}

/// Starts the server with a configuration changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::with_data_dir(dir.path());
    config.allow_anonymous = true;
    // Most tests pipeline thousands of frames and open many sockets from one address; the limit
    // tests set their own values.
    config.message_rate = 1_000_000;
    config.max_anonymous_handshakes = 1_000_000;
    config.max_connections_per_ip = 100_000;
    config.signups_per_hour = 1_000;
    tweak(&mut config);
    let db = if on_postgres() && config.database.is_none() {
        let db = ScratchDb::create().await.expect("a PostgreSQL database");
        config.database = Some(config::Database::Postgres(db.url().to_owned()));
        Some(db)
    } else {
        None
    };
    let database = config.database.clone();
    let data_dir = config.data_dir.clone();
    let options = config::leptos_options(&config.leptos_config).expect("Leptos.toml");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = config.tls_cert.is_some();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run(listener, config, options, async move {
        let _ = stopped.await;
    }));
    let app = TestApp {
        addr,
        http: reqwest::Client::new(),
        stop: Some(stop),
        handle,
        dir,
        _db: db,
        database,
        data_dir,
    };
    // Wait until it answers.
    if tls {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return app;
    }
    for _ in 0..100 {
        if let Ok(r) = app.http.get(app.url("/healthz")).send().await {
            if r.status().is_success() {
                return app;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become healthy");
}

impl TestApp {
    /// Its database, opened beside it.
    pub async fn db(&self) -> Db {
        match &self.database {
            Some(config::Database::Postgres(url)) => {
                Db::Postgres(sqlx::PgPool::connect(url).await.expect("open PostgreSQL"))
            }
            Some(config::Database::Sqlite(path)) => Db::Sqlite(
                sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("open SQLite"),
            ),
            None => Db::Sqlite(
                sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    self.data_dir.join("hubbub.sqlite3").display()
                ))
                .await
                .expect("open SQLite"),
            ),
        }
    }

    /// Whether it keeps its data in PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        matches!(self.database, Some(config::Database::Postgres(_)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the server's shutdown.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// A `hubbub.v1` connection that has said hello and joined `general` from `after`.
    pub async fn rich(&self, after: u64) -> Ws {
        let mut ws = self.rich_raw().await;
        hello(&mut ws, after).await;
        ws
    }

    /// A `hubbub.v1` connection that has said nothing yet.
    pub async fn rich_raw(&self) -> Ws {
        rich_connect(self.addr).await
    }

    /// A classic connection (no subprotocol) on `path`.
    pub async fn classic(&self, path: &str) -> Ws {
        let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}{}", self.addr, path))
            .await
            .expect("connect");
        assert!(resp.headers().get("sec-websocket-protocol").is_none());
        ws
    }

    /// GETs a path and parses its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    pub async fn post(&self, room: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/api/rooms/{room}/messages")))
            .json(&body)
            .send()
            .await
            .expect("post")
    }

    pub async fn history(&self, query: &str) -> Vec<ChatMessage> {
        let r = self
            .http
            .get(self.url(&format!("/api/rooms/general/messages{query}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        serde_json::from_value(v["messages"].clone()).expect("messages")
    }
}

/// Opens a `hubbub.v1` connection to `addr` and checks that the server chose the subprotocol.
pub async fn rich_connect(addr: impl std::fmt::Display) -> Ws {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(SUBPROTOCOL.as_bytes())
    );
    ws
}

/// Sends `n` messages without waiting, then collects their acks.
pub async fn send_many(ws: &mut Ws, prefix: &str, n: usize) -> Vec<u64> {
    for i in 0..n {
        send(
            ws,
            &send_frame(
                "general",
                &format!("{prefix}-{i}"),
                &format!("{prefix} {i}"),
            ),
        )
        .await;
    }
    let mut acks = Vec::new();
    while acks.len() < n {
        if let ServerFrame::Ack(Ack { seq, client_id, .. }) = next(ws).await {
            if !client_id.starts_with(&format!("{prefix}-")) {
                continue;
            }
            acks.push(seq);
        }
    }
    acks
}

/// Says hello with a resume cursor for `general` and waits for `joined`.
pub async fn hello(ws: &mut Ws, after: u64) {
    let mut resume = BTreeMap::new();
    resume.insert("general".to_owned(), after);
    send(
        ws,
        &ClientFrame::Hello {
            resume,
            user: Some("tester".into()),
        },
    )
    .await;
    assert!(matches!(
        next(ws).await,
        ServerFrame::Welcome(Welcome { .. })
    ));
    loop {
        match next(ws).await {
            ServerFrame::Joined(Joined { .. }) => return,
            ServerFrame::Message(m) if after > 0 || !m.is_message() => continue,
            other => panic!("expected joined, got {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("serialize");
    ws.send(Message::text(text)).await.expect("send");
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

pub fn send_frame(room: &str, client_id: &str, body: &str) -> ClientFrame {
    ClientFrame::Send {
        room: room.into(),
        client_id: client_id.into(),
        body: body.into(),
        user: None,
        reply_to: None,
    }
}

/// The next text frame, as raw text.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub async fn next(ws: &mut Ws) -> ServerFrame {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad frame {text}: {e}"))
}

/// The next frame that is not a signal beside the stream (presence, typing).
pub async fn next_durable(ws: &mut Ws) -> ServerFrame {
    loop {
        match next(ws).await {
            ServerFrame::Presence(_) | ServerFrame::Typing(_) => continue,
            other => return other,
        }
    }
}

/// The next `message` frame, skipping acks.
pub async fn next_message(ws: &mut Ws) -> ChatMessage {
    loop {
        match next(ws).await {
            ServerFrame::Message(m) => return m,
            // Acks, and the signals that come and go beside the stream.
            ServerFrame::Ack(Ack { .. }) | ServerFrame::Presence(_) | ServerFrame::Typing(_) => {
                continue
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Asserts nothing arrives for a moment but presence (people sharing a room come and go).
pub async fn quiet(ws: &mut Ws) {
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, ws.next()).await {
        if let Message::Text(t) = &msg {
            if t.starts_with(r#"{"type":"presence""#) {
                continue;
            }
        }
        panic!("expected silence, got {msg:?}");
    }
}

/// Waits for the server's close frame and returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The real `hubbub` binary, started on port 0; killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
    /// What it wrote to stdout after it started listening (the last 10,000 lines).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(data_dir: &std::path::Path, args: &[&str]) -> ServerProcess {
        Self::start_with(data_dir, args, &[], &[])
    }

    /// Starts the binary with extra environment variables, under `wrapper` (a command that runs
    /// the rest, such as `prlimit --nofile=64 --`) when it is not empty.
    pub fn start_with(
        data_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let bin = env!("CARGO_BIN_EXE_hubbub");
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(args)
            .env("HUBBUB_ADDR", "127.0.0.1:0")
            .env("HUBBUB_DATA_DIR", data_dir)
            .env("HUBBUB_ALLOW_ANONYMOUS", "true")
            .env("HUBBUB_MESSAGE_RATE", "1000000")
            .env("HUBBUB_MAX_ANONYMOUS_HANDSHAKES", "1000000")
            .env("HUBBUB_MAX_CONNECTIONS_PER_IP", "100000")
            .env("HUBBUB_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hubbub");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let marker = "listening on http://";
        let addr = loop {
            let line = lines
                .next()
                .expect("hubbub exited before listening")
                .expect("line");
            if let Some(i) = line.find(marker) {
                let rest = &line[i + marker.len()..];
                // The address ends where an address's characters do (text or JSON logs).
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
                    .unwrap_or(rest.len());
                break rest[..end].to_owned();
            }
        };
        // Keep draining its output so it never blocks on a full pipe, keeping the last lines.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() >= 10_000 {
                    kept.remove(0);
                }
                kept.push(line);
            }
        });
        ServerProcess { child, addr, log }
    }

    /// Waits, off the runtime, for the process to exit, and returns how it did.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().expect("true"),
        );
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// CPU time the process has used (user + system), from /proc/PID/stat.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // The fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A value from /proc/PID/status, in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("status value")
    }

    pub async fn rich(&self, after: u64) -> Ws {
        let mut ws = self.rich_raw().await;
        hello(&mut ws, after).await;
        ws
    }

    pub async fn rich_raw(&self) -> Ws {
        rich_connect(&self.addr).await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser-like HTTP client of one person: keeps no cookies by itself, sends them by hand.
pub struct Person {
    pub http: reqwest::Client,
    pub origin: String,
    pub session: String,
    pub csrf: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Reads a cookie's value from a response's Set-Cookie headers.
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.strip_prefix(&format!("{name}="))
                .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
        })
}

impl TestApp {
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Posts a form as a browser on this origin would, with the CSRF cookie and field.
    pub async fn form(
        &self,
        http: &reqwest::Client,
        path: &str,
        csrf: &str,
        session: Option<&str>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut cookie = format!("hubbub_csrf={csrf}");
        if let Some(s) = session {
            cookie.push_str(&format!("; hubbub_session={s}"));
        }
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", csrf));
        http.post(self.url(path))
            .header("Origin", self.origin())
            .header("Cookie", cookie)
            .form(&form)
            .send()
            .await
            .expect("post form")
    }

    /// Signs a new person up through the real pages and returns their session.
    pub async fn sign_up(&self, username: &str, display: &str) -> Person {
        let http = no_redirects();
        let page = http.get(self.url("/signup")).send().await.expect("get");
        let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf cookie");
        let html = page.text().await.expect("body");
        assert!(html.contains(&csrf), "the form carries the cookie's token");
        let resp = self
            .form(
                &http,
                "/auth/signup",
                &csrf,
                None,
                &[
                    ("username", username),
                    ("display_name", display),
                    ("password", "correct horse battery"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 303, "signup redirects");
        let session = set_cookie(&resp, "hubbub_session").expect("session cookie");
        Person {
            http,
            origin: self.origin(),
            session,
            csrf,
        }
    }

    /// Signs up from a configured origin (when the server's own is not allowed).
    pub async fn sign_up_from(&self, username: &str, origin: &str) -> Person {
        let http = no_redirects();
        let page = http.get(self.url("/signup")).send().await.expect("get");
        let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf cookie");
        let resp = http
            .post(self.url("/auth/signup"))
            .header("Origin", origin)
            .header("Cookie", format!("hubbub_csrf={csrf}"))
            .form(&[
                ("username", username),
                ("password", "correct horse battery"),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 303);
        let session = set_cookie(&resp, "hubbub_session").expect("session cookie");
        Person {
            http,
            origin: origin.to_owned(),
            session,
            csrf,
        }
    }

    /// Creates a personal API token for the person and returns it.
    pub async fn token(&self, p: &Person, name: &str) -> String {
        let resp = self
            .form(
                &p.http,
                "/auth/tokens",
                &p.csrf,
                Some(&p.session),
                &[("name", name), ("days", "1")],
            )
            .await;
        assert_eq!(resp.status(), 200);
        let html = resp.text().await.expect("body");
        let i = html.find("<code>").expect("token shown") + 6;
        html[i..].split('<').next().expect("token").to_owned()
    }

    /// A WebSocket upgrade with the given extra headers; the handshake's HTTP status on failure.
    pub async fn upgrade(&self, headers: &[(&str, String)]) -> Result<Ws, u16> {
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected handshake error {e}"),
        }
    }
}

impl Person {
    pub fn cookie_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Cookie", format!("hubbub_session={}", self.session)),
            ("Origin", self.origin.clone()),
        ]
    }
}

impl Person {
    /// A JSON API call with this person's session cookie and origin.
    pub async fn call(
        &self,
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, app.url(path))
            .header("Cookie", format!("hubbub_session={}", self.session))
            .header("Origin", self.origin.clone());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, app: &TestApp, path: &str) -> (u16, Value) {
        self.call(app, reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
        self.call(app, reqwest::Method::POST, path, Some(body))
            .await
    }

    /// A `hubbub.v1` socket, hello said: returns it with the welcome's rooms.
    pub async fn socket(&self, app: &TestApp, resume: &[(&str, u64)]) -> (Ws, Vec<String>) {
        let mut ws = app.upgrade(&self.cookie_headers()).await.expect("upgrade");
        let resume: BTreeMap<String, u64> =
            resume.iter().map(|(r, s)| ((*r).to_owned(), *s)).collect();
        send(&mut ws, &ClientFrame::Hello { resume, user: None }).await;
        let ServerFrame::Welcome(Welcome { rooms, .. }) = next(&mut ws).await else {
            panic!("expected welcome");
        };
        (ws, rooms.into_iter().map(|r| r.name).collect())
    }
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// Reads frames until `want` matches one; panics on a timeout.
pub async fn until(ws: &mut Ws, mut want: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
    loop {
        let f = next(ws).await;
        if want(&f) {
            return f;
        }
    }
}

/// Reads until the `joined` of every room the welcome listed, collecting the messages before.
pub async fn settle(ws: &mut Ws, rooms: usize) {
    for _ in 0..rooms {
        until(ws, |f| matches!(f, ServerFrame::Joined(Joined { .. }))).await;
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (openssl), written into `dir`:
/// (certificate, key).
pub fn self_signed_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl made a certificate");
    (cert, key)
}
