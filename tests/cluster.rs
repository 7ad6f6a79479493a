//! Several nodes of one cluster, each the real binary, sharing a PostgreSQL database (a fresh one
//! per test) and a NATS bus, some behind nginx started with `deploy/nginx.conf`. Messages cross
//! nodes in order and once; a node killed with SIGKILL, a bus killed and restarted, and a rolling
//! restart lose and repeat nothing; revocations, removals and per-account limits hold on every
//! node. Tests that kill the bus start their own nats-server on a spare port.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use futures_util::{SinkExt, StreamExt};
use helpers::*;
use hubbub::protocol::{Ack, ClientFrame, ErrorCode, ServerFrame, SUBPROTOCOL};
use hubbub::server::store::scratch::ScratchDb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The bus the tests share unless they kill it: the machine's, or the one `scripts/services`
/// started.
fn shared_nats() -> String {
    std::env::var("HUBBUB_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One node: the binary on a fixed port (so it can be restarted where nginx expects it).
struct Node {
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    process: Option<ServerProcess>,
}

impl Node {
    fn start(name: &str, db: &str, bus: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let port = free_port();
        let mut args: Vec<String> = [
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--database",
            db,
            "--bus",
            bus,
            "--node-name",
            name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut node = Node {
            name: name.to_owned(),
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            process: None,
        };
        node.up();
        node
    }

    fn up(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.process = Some(ServerProcess::start_with(self.dir.path(), &args, &env, &[]));
    }

    fn process(&self) -> &ServerProcess {
        self.process.as_ref().expect("running")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill9(&mut self) {
        if let Some(p) = self.process.take() {
            p.signal("-KILL");
            drop(p);
        }
    }

    /// SIGTERM, and waits for the process to finish its shutdown.
    async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal("-TERM");
            let status = tokio::time::timeout(Duration::from_secs(10), p.wait_exit())
                .await
                .expect("stopped in time");
            assert!(
                status.success(),
                "{} stopped cleanly: {status:?}",
                self.name
            );
        }
    }

    async fn health(&self) -> Value {
        reqwest::get(self.url("/healthz"))
            .await
            .expect("health")
            .json()
            .await
            .expect("json")
    }

    async fn post(&self, body: &str, client_id: &str) -> u16 {
        reqwest::Client::new()
            .post(self.url("/api/rooms/general/messages"))
            .json(&json!({ "body": body, "user": "poster", "client_id": client_id }))
            .send()
            .await
            .expect("post")
            .status()
            .as_u16()
    }
}

/// A nats-server of the test's own, on a spare port, to kill and restart.
struct OwnNats {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> OwnNats {
        let mut n = OwnNats {
            port: free_port(),
            child: None,
        };
        n.up();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (scripts/services installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server of the test's own (a fresh cluster in a temporary directory, on a spare
/// port), to stop and start again; never the machine's.
struct OwnPostgres {
    port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries (scripts/services installs them)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("pg_ctl").exists())
            .expect("pg_ctl");
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = OwnPostgres {
            port: free_port(),
            bin,
            dir,
        };
        // PostgreSQL refuses to run as root: its files belong to the postgres user then.
        if OwnPostgres::as_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(pg.dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown to postgres");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        pg.up();
        pg
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs (as the postgres user when we are root); its output
    /// when it fails.
    fn try_run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if Self::as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = command.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        if let Err(e) = self.try_run(program, args) {
            panic!("{program}: {e}");
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) {
        let data = self.data();
        let log = format!("{data}/log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
        );
    }

    /// Stops it at once, as a crash would (no checkpoint, connections cut).
    fn kill(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.try_run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// nginx with `deploy/nginx.conf`, only its ports, certificate and log paths changed.
struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Nginx {
    fn start(nodes: &[&Node]) -> Nginx {
        assert_eq!(nodes.len(), 3, "the file names three nodes");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_cert(dir.path());
        let port = free_port();
        let conf =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
                .expect("deploy/nginx.conf");
        let d = dir.path().display();
        let mut conf = conf
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
            .replace("listen [::]:443 ssl;", "")
            .replace("/etc/hubbub/tls/cert.pem", &cert.display().to_string())
            .replace("/etc/hubbub/tls/key.pem", &key.display().to_string())
            .replace("/var/log/nginx/", &format!("{d}/"));
        for (i, node) in nodes.iter().enumerate() {
            let from = format!("127.0.0.1:300{}", i + 1);
            assert!(conf.contains(&from), "the file names {from}");
            conf = conf.replace(&from, &node.addr());
        }
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write conf");
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|c| std::process::Command::new(c).arg("-v").output().is_ok())
            .expect("nginx (scripts/services installs it)");
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", &format!("daemon off; pid {d}/nginx.pid;")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { port, dir, child }
    }

    fn tls(&self) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(self.dir.path().join("cert.pem"))
            .expect("pem")
        {
            roots.add(c.expect("cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What nginx saw, to tell a node's fault from the proxy's.
            let log = std::fs::read_to_string(self.dir.path().join("hubbub-error.log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("nginx error log, last lines first:\n{}", tail.join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `hubbub.v1` socket through nginx (TLS), or the reason there is none now.
async fn through_nginx(port: u16, tls: &tokio_rustls::TlsConnector) -> Result<TlsWs, String> {
    through_nginx_as(port, tls, upgrade_request("wss://localhost/ws", &[])).await
}

/// The same with the upgrade request `req` (credentials, an origin).
async fn through_nginx_as(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    req: Request,
) -> Result<TlsWs, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// One HTTP/1.1 request through nginx (TLS), answered in full: (status, headers, body).
async fn https(
    nginx: &Nginx,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(("127.0.0.1", nginx.port))
        .await
        .expect("connect to nginx");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = nginx.tls().connect(name, tcp).await.expect("TLS");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        nginx.port,
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of cookie `name` set by an answer, with the attributes it was set with.
fn set_cookie_line(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find(|(_, v)| v.starts_with(&format!("{name}=")))
        .map(|(_, v)| v.clone())
}

fn cookie_value(line: &str) -> String {
    line.split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// What one chatting client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Every seq delivered to it, in the order delivered (across reconnects).
    seqs: Vec<u64>,
    /// Its client_id → the seq its ack gave.
    acked: HashMap<String, u64>,
    reconnects: u32,
}

/// Sends `n` messages to `general` through nginx, at most a few unacked at once; whenever its
/// socket is cut it reconnects (to whichever node nginx picks), resumes from its cursor and
/// resends what was not acked, with the same client_ids. Then it reads until it has seen every
/// seq up to `until()` (the last seq any client was acked). Every seq must arrive once, in order.
async fn chatter(
    me: usize,
    n: usize,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    last_acked: Arc<std::sync::atomic::AtomicU64>,
    all_sent: Arc<std::sync::atomic::AtomicUsize>,
    clients: usize,
) -> Seen {
    use std::sync::atomic::Ordering;
    const WINDOW: usize = 4;
    const PACE: Duration = Duration::from_millis(15);
    let mut seen = Seen::default();
    let mut cursor = 0u64;
    let mut next_id = 0usize;
    let mut unacked: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut done_sending = false;
    'connection: loop {
        assert!(
            Instant::now() < deadline,
            "client {me} ran out of time: {seen:?}"
        );
        let mut ws = match through_nginx(port, &tls).await {
            Ok(ws) => ws,
            Err(e) => {
                if Instant::now() + Duration::from_secs(85) > deadline {
                    eprintln!("client {me}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hello = ClientFrame::Hello {
            resume: BTreeMap::from([("general".to_owned(), cursor)]),
            user: Some(format!("client{me}")),
        };
        if ws
            .send(Message::text(serde_json::to_string(&hello).expect("json")))
            .await
            .is_err()
        {
            seen.reconnects += 1;
            continue;
        }
        // What was sent and not acked goes again, under the same client_id.
        for (id, body) in &unacked {
            let frame = send_frame("general", id, body);
            if ws
                .send(Message::text(serde_json::to_string(&frame).expect("json")))
                .await
                .is_err()
            {
                seen.reconnects += 1;
                continue 'connection;
            }
        }
        loop {
            while !done_sending && unacked.len() < WINDOW && next_id < n {
                // A steady load, so that the disruption falls in the middle of it.
                tokio::time::sleep(PACE).await;
                let id = format!("c{me}-{next_id}");
                let body = format!("client {me} message {next_id}");
                next_id += 1;
                unacked.insert(id.clone(), body.clone());
                let frame = send_frame("general", &id, &body);
                if ws
                    .send(Message::text(serde_json::to_string(&frame).expect("json")))
                    .await
                    .is_err()
                {
                    seen.reconnects += 1;
                    continue 'connection;
                }
            }
            if !done_sending && next_id == n && unacked.is_empty() {
                done_sending = true;
                all_sent.fetch_add(1, Ordering::SeqCst);
            }
            if done_sending
                && all_sent.load(Ordering::SeqCst) == clients
                && cursor >= last_acked.load(Ordering::SeqCst)
            {
                let _ = ws.close(None).await;
                return seen;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Err(_) => continue, // nothing for a while: look at the counters again
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => {
                    seen.reconnects += 1;
                    continue 'connection;
                }
            };
            match serde_json::from_str::<ServerFrame>(&frame) {
                Ok(ServerFrame::Message(m)) if m.room == "general" => {
                    assert_eq!(
                        m.seq,
                        cursor + 1,
                        "client {me}: seq {} after {cursor} (a gap or a repeat)",
                        m.seq
                    );
                    cursor = m.seq;
                    seen.seqs.push(m.seq);
                }
                Ok(ServerFrame::Ack(Ack { client_id, seq, .. }))
                    if unacked.remove(&client_id).is_some() =>
                {
                    seen.acked.insert(client_id, seq);
                    last_acked.fetch_max(seq, Ordering::SeqCst);
                }
                Ok(ServerFrame::Error(e)) if e.code == ErrorCode::Internal => {
                    seen.reconnects += 1;
                    continue 'connection;
                }
                Ok(ServerFrame::Error(e)) => panic!("client {me}: {e:?}"),
                _ => {}
            }
        }
    }
}

/// Runs `clients` chatters through nginx while `disrupt` runs, then checks that every client saw
/// every acked message exactly once, in order, and that the database holds each message once.
async fn chat_through<F, Fut>(
    db: &ScratchDb,
    nginx: &Nginx,
    clients: usize,
    n: usize,
    disrupt: F,
) -> Vec<Seen>
where
    F: FnOnce(Progress) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let last_acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let all_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|me| {
            tokio::spawn(chatter(
                me,
                n,
                nginx.port,
                nginx.tls(),
                Arc::clone(&last_acked),
                Arc::clone(&all_sent),
                clients,
            ))
        })
        .collect();
    disrupt(Progress {
        acked: Arc::clone(&last_acked),
        total: (clients * n) as u64,
    })
    .await;
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("client"));
    }
    let head = last_acked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(head as usize, clients * n, "one seq per message sent");
    for (me, s) in seen.iter().enumerate() {
        assert_eq!(s.acked.len(), n, "client {me} had every message acked");
        // Each client saw 1..=head, once each and in order (the chatter asserted the order).
        assert_eq!(s.seqs.len() as u64, head, "client {me}");
    }
    let pool = sqlx::PgPool::connect(db.url()).await.expect("db");
    let (stored, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT client_id) FROM messages m JOIN rooms r ON r.id = m.room_id \
         WHERE r.name = 'general' AND m.kind = 'message'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        (stored, distinct),
        ((clients * n) as i64, (clients * n) as i64)
    );
    let reconnects: u32 = seen.iter().map(|s| s.reconnects).sum();
    eprintln!("{clients} clients, {n} messages each, {reconnects} reconnects");
    assert!(reconnects >= 1, "the disruption cut some clients off");
    seen
}

/// How far the chatters got: the highest seq acked so far, of `total`.
struct Progress {
    acked: Arc<std::sync::atomic::AtomicU64>,
    total: u64,
}

impl Progress {
    /// Waits until `part` of the messages were acked.
    async fn at(&self, part: f64) {
        let want = (self.total as f64 * part) as u64;
        while self.acked.load(std::sync::atomic::Ordering::SeqCst) < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads `count` messages of `general` from a socket and returns their seqs.
async fn collect(ws: &mut Ws, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        if let ServerFrame::Message(m) = next_durable(ws).await {
            if m.room == "general" && m.is_message() {
                seqs.push(m.seq);
            }
        }
    }
    seqs
}

/// Nothing more arrives on `ws` for a while (no repeats).
async fn nothing_more(ws: &mut Ws) {
    let more = tokio::time::timeout(Duration::from_millis(1_500), async {
        loop {
            match next(ws).await {
                ServerFrame::Message(m) => return m,
                _ => continue,
            }
        }
    })
    .await;
    assert!(more.is_err(), "a message arrived twice: {more:?}");
}

fn consecutive(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test]
async fn a_message_posted_on_one_node_reaches_the_others_in_order_once() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let a = Node::start("a", db.url(), &bus, &[], &[]);
    let b = Node::start("b", db.url(), &bus, &[], &[]);
    let c = Node::start("c", db.url(), &bus, &[], &[]);
    let mut on_b = b.process().rich(0).await;
    let mut on_c = c.process().rich(0).await;
    // By socket on A, then by HTTP on A, then by HTTP on C (C's clients see their own node's).
    let mut on_a = a.process().rich(0).await;
    let acks = send_many(&mut on_a, "sock", 50).await;
    assert!(consecutive(&acks));
    for i in 0..10 {
        assert_eq!(
            a.post(&format!("http {i}"), &format!("http-{i}")).await,
            201
        );
    }
    assert_eq!(c.post("from c", "c-1").await, 201);
    for ws in [&mut on_b, &mut on_c] {
        let seqs = collect(ws, 61).await;
        assert_eq!(seqs, (1..=61).collect::<Vec<u64>>());
        nothing_more(ws).await;
    }
    for node in [&a, &b, &c] {
        let h = node.health().await;
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["bus"]["connected"], true, "{h}");
    }
}

#[tokio::test]
async fn a_node_killed_mid_load_loses_and_repeats_nothing_through_nginx() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let proxy = ["--secure-cookies", "--trusted-proxy", "127.0.0.1"];
    let a = Node::start("a", db.url(), &bus, &proxy, &[]);
    let mut b = Node::start("b", db.url(), &bus, &proxy, &[]);
    let c = Node::start("c", db.url(), &bus, &proxy, &[]);
    let nginx = Nginx::start(&[&a, &b, &c]);
    let seen = chat_through(&db, &nginx, 5, 100, |progress| async move {
        progress.at(0.3).await;
        b.kill9();
    })
    .await;
    // A resend, after the kill, of what was acked before it stores nothing new: the same seq
    // comes back, whichever node takes it.
    for _ in 0..3 {
        let mut ws = through_nginx(nginx.port, &nginx.tls())
            .await
            .expect("socket");
        let hello = ClientFrame::Hello {
            resume: BTreeMap::from([("general".to_owned(), 500)]),
            user: Some("client0".into()),
        };
        ws.send(Message::text(serde_json::to_string(&hello).expect("json")))
            .await
            .expect("hello");
        let frame = send_frame("general", "c0-0", "client 0 message 0");
        ws.send(Message::text(serde_json::to_string(&frame).expect("json")))
            .await
            .expect("send");
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("socket ended");
            };
            if let Ok(ServerFrame::Ack(ack)) = serde_json::from_str::<ServerFrame>(&t) {
                assert_eq!(Some(&ack.seq), seen[0].acked.get("c0-0"));
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_person_signs_up_posts_and_reads_through_nginx_on_any_node() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let proxy = ["--secure-cookies", "--trusted-proxy", "127.0.0.1"];
    // No guests: everything below is a signed-in person's.
    let secure = [("HUBBUB_ALLOW_ANONYMOUS", "false")];
    let a = Node::start("a", db.url(), &bus, &proxy, &secure);
    let b = Node::start("b", db.url(), &bus, &proxy, &secure);
    let c = Node::start("c", db.url(), &bus, &proxy, &secure);
    let nginx = Nginx::start(&[&a, &b, &c]);
    let origin = format!("https://localhost:{}", nginx.port);

    // The sign-up form and its post land on different nodes (round-robin): the CSRF token and
    // the session are the shared database's, and the cookies are Secure with the __Host- prefix.
    let (status, headers, _) = https(&nginx, "GET", "/signup", &[], "").await;
    assert_eq!(status, 200);
    let csrf_line = set_cookie_line(&headers, "__Host-hubbub_csrf").expect("a CSRF cookie");
    assert!(csrf_line.contains("Secure"), "{csrf_line}");
    let csrf = cookie_value(&csrf_line);
    let form = format!("username=ann&password=correct+horse+battery&csrf={csrf}");
    let (status, headers, _) = https(
        &nginx,
        "POST",
        "/auth/signup",
        &[
            ("Origin", origin.clone()),
            ("Cookie", format!("__Host-hubbub_csrf={csrf}")),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        &form,
    )
    .await;
    assert_eq!(status, 303, "signed up through nginx");
    let session_line =
        set_cookie_line(&headers, "__Host-hubbub_session").expect("a session cookie");
    for attribute in ["Secure", "HttpOnly", "Path=/"] {
        assert!(session_line.contains(attribute), "{session_line}");
    }
    let session = cookie_value(&session_line);
    let cookie = format!("__Host-hubbub_session={session}");

    // Three sockets through nginx land on the three nodes in turn.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let req = upgrade_request(
            &format!("wss://localhost:{}/ws", nginx.port),
            &[("Cookie", cookie.clone()), ("Origin", origin.clone())],
        );
        let mut ws = through_nginx_as(nginx.port, &nginx.tls(), req)
            .await
            .expect("a signed-in socket through nginx");
        let hello = ClientFrame::Hello {
            resume: BTreeMap::from([("general".to_owned(), 0)]),
            user: None,
        };
        ws.send(Message::text(serde_json::to_string(&hello).expect("json")))
            .await
            .expect("hello");
        sockets.push(ws);
    }
    // Posts over HTTP through nginx (each may land on any node) reach every socket, in order, once.
    for i in 0..6 {
        let body = json!({ "body": format!("over https {i}"), "client_id": format!("h-{i}") });
        let (status, _, answer) = https(
            &nginx,
            "POST",
            "/api/rooms/general/messages",
            &[
                ("Origin", origin.clone()),
                ("Cookie", cookie.clone()),
                ("Content-Type", "application/json".into()),
            ],
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        // The server names the author from the session, whatever node took the post.
        let stored: Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(stored["message"]["username"], "ann", "{stored}");
    }
    for ws in sockets.iter_mut() {
        let mut bodies = Vec::new();
        while bodies.len() < 6 {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Ok(ServerFrame::Message(m)) = serde_json::from_str::<ServerFrame>(&t) {
                        if m.room == "general" && m.is_message() {
                            bodies.push(m.body.clone());
                        }
                    }
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
        let want: Vec<String> = (0..6).map(|i| format!("over https {i}")).collect();
        assert_eq!(bodies, want);
    }
    // A page from another origin cannot use the session through the proxy.
    let (status, _, _) = https(
        &nginx,
        "POST",
        "/api/rooms/general/messages",
        &[
            ("Origin", "https://evil.example".into()),
            ("Cookie", cookie.clone()),
            ("Content-Type", "application/json".into()),
        ],
        r#"{"body":"forged"}"#,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_rolling_restart_of_every_node_loses_and_repeats_nothing() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let proxy = ["--secure-cookies", "--trusted-proxy", "127.0.0.1"];
    let mut nodes = [
        Node::start("a", db.url(), &bus, &proxy, &[]),
        Node::start("b", db.url(), &bus, &proxy, &[]),
        Node::start("c", db.url(), &bus, &proxy, &[]),
    ];
    let nginx = Nginx::start(&[&nodes[0], &nodes[1], &nodes[2]]);
    // Borrowed, not moved: the nodes must outlive the restarts (dropping one kills it).
    let restarting = &mut nodes;
    chat_through(&db, &nginx, 3, 150, |progress| async move {
        for (i, node) in restarting.iter_mut().enumerate() {
            progress.at(0.2 + 0.2 * i as f64).await;
            node.stop().await;
            node.up();
        }
    })
    .await;
}

/// Sends `n` messages to `general` on `ws`, one every few milliseconds, each waiting for its
/// ack (so one is always in flight), counting the acks in `acked`; returns their seqs.
async fn steady_sender(
    mut ws: Ws,
    n: usize,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.extend(send_many(&mut ws, &format!("load{i}"), 1).await);
        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    seqs
}

/// Waits until `counter` reaches `want`.
async fn reached(counter: &std::sync::atomic::AtomicUsize, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(std::sync::atomic::Ordering::SeqCst) < want {
        assert!(Instant::now() < deadline, "the load stalled before {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the node's log has a line containing `text`.
fn logged(node: &Node, text: &str) -> bool {
    node.process()
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|l| l.contains(text))
}

#[tokio::test]
async fn the_bus_killed_and_restarted_mid_load_costs_reads_not_messages() {
    const N: usize = 300;
    let db = ScratchDb::create().await.expect("scratch database");
    let mut nats = OwnNats::start();
    let a = Node::start("a", db.url(), &nats.url(), &[], &[]);
    let b = Node::start("b", db.url(), &nats.url(), &[], &[]);
    let mut on_b = b.process().rich(0).await;
    // A steady stream of sends on A while the bus goes away and comes back.
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = tokio::spawn(steady_sender(
        a.process().rich(0).await,
        N,
        Arc::clone(&acked),
    ));
    // B reads all along, so that what it receives while the bus is down is checked as it comes.
    let reader = tokio::spawn(async move {
        let seqs = collect(&mut on_b, N).await;
        (seqs, on_b)
    });
    reached(&acked, N / 5).await;
    nats.kill();
    reached(&acked, N / 2).await;
    let h = b.health().await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["bus"]["connected"], false, "{h}");
    assert_eq!(h["database"], "ok", "{h}");
    nats.up();
    let deadline = Instant::now() + WAIT;
    loop {
        let h = b.health().await;
        if h["bus"]["connected"] == true && a.health().await["bus"]["connected"] == true {
            assert_eq!(h["status"], "ok");
            assert!(h["bus"]["disconnects"].as_u64() >= Some(1), "{h}");
            assert!(h["bus"]["last_down"].as_i64().is_some(), "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "the bus did not come back: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = load.await.expect("sender");
    let (seen, mut on_b) = reader.await.expect("reader");
    // Every acked message reached B once, in seq order, with no gap: those sent while the bus
    // was away came from the database.
    assert_eq!(sent, (1..=N as u64).collect::<Vec<u64>>());
    assert_eq!(seen, sent);
    nothing_more(&mut on_b).await;
    let reads = b.health().await["gap_reads"].as_u64().expect("gap_reads");
    assert!(reads >= 1, "B read what the bus missed: {reads} gap reads");
    // And the operator was told, on both sides of the outage.
    assert!(logged(&b, "bus connection lost"), "B logged the outage");
    assert!(logged(&b, "bus connection back"), "B logged the return");
}

#[tokio::test]
async fn the_database_gone_refuses_sends_without_acking_and_loses_nothing_when_back() {
    let pg = OwnPostgres::start();
    let node = Node::start("a", &pg.url(), &shared_nats(), &[], &[]);
    let mut ws = node.process().rich(0).await;
    let before = send_many(&mut ws, "before", 10).await;
    assert_eq!(before, (1..=10).collect::<Vec<u64>>());

    pg.kill();
    // The health check says so, with 503, so that a supervisor or a balancer can tell.
    let r = reqwest::get(node.url("/healthz")).await.expect("health");
    assert_eq!(r.status(), 503);
    let h: Value = r.json().await.expect("json");
    assert_eq!(h["database"], "unavailable", "{h}");
    assert_eq!(h["status"], "failing", "{h}");
    // A send is answered with an error, never an ack: the client keeps it to send again.
    send(
        &mut ws,
        &send_frame("general", "during-0", "while the database is away"),
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Ack(a)) => return format!("ack {}", a.seq),
                    Ok(ServerFrame::Error(e)) => return format!("error {:?}", e.code),
                    _ => continue,
                },
                Some(Ok(Message::Close(c))) => return format!("closed {c:?}"),
                Some(Ok(_)) => continue,
                other => return format!("ended {other:?}"),
            }
        }
    })
    .await
    .expect("an answer within the pool's timeout");
    assert_eq!(
        answer, "error Internal",
        "refused, not acked, and the socket stays"
    );
    assert!(
        logged(&node, "database unavailable"),
        "the log says what is wrong"
    );

    pg.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(node.url("/healthz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The client resends what was not acked, with the same client_id: stored once, after the rest.
    let mut ws = node.process().rich(10).await;
    send(
        &mut ws,
        &send_frame("general", "during-0", "while the database is away"),
    )
    .await;
    let ServerFrame::Ack(first) = until(&mut ws, |f| matches!(f, ServerFrame::Ack(_))).await else {
        unreachable!()
    };
    assert_eq!(first.seq, 11);
    send(
        &mut ws,
        &send_frame("general", "during-0", "while the database is away"),
    )
    .await;
    let ServerFrame::Ack(again) = until(&mut ws, |f| matches!(f, ServerFrame::Ack(_))).await else {
        unreachable!()
    };
    assert_eq!(again.seq, 11, "a resend is not stored twice");
    let after = send_many(&mut ws, "after", 5).await;
    assert_eq!(after, (12..=16).collect::<Vec<u64>>());
    // A reader from the start sees everything acked, once, in order.
    let mut reader = node.process().rich_raw().await;
    send(
        &mut reader,
        &ClientFrame::Hello {
            resume: BTreeMap::from([("general".to_owned(), 0)]),
            user: Some("reader".into()),
        },
    )
    .await;
    assert_eq!(
        collect(&mut reader, 16).await,
        (1..=16).collect::<Vec<u64>>()
    );
    nothing_more(&mut reader).await;
}

/// Signs up on `node` and returns (session, csrf).
async fn sign_up(node: &Node, username: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(node.url("/signup")).send().await.expect("get");
    let csrf = set_cookie(&page, "hubbub_csrf").expect("csrf");
    let resp = http
        .post(node.url("/auth/signup"))
        .header("Origin", format!("http://{}", node.addr()))
        .header("Cookie", format!("hubbub_csrf={csrf}"))
        .form(&[
            ("username", username),
            ("password", "correct horse battery"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .expect("sign up");
    assert_eq!(resp.status(), 303);
    (set_cookie(&resp, "hubbub_session").expect("session"), csrf)
}

type Request = tokio_tungstenite::tungstenite::handshake::client::Request;

/// The upgrade request of a `hubbub.v1` socket to `url`, with more headers.
fn upgrade_request(url: &str, headers: &[(&'static str, String)]) -> Request {
    let mut req = url.into_client_request().expect("request");
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    for (name, value) in headers {
        h.insert(*name, HeaderValue::from_str(value).expect("header"));
    }
    req
}

/// The upgrade request of a `hubbub.v1` socket to `node` with a session cookie and the node's
/// own origin.
fn session_request(node: &Node, session: &str) -> Request {
    upgrade_request(
        &format!("ws://{}/ws", node.addr()),
        &[
            ("Cookie", format!("hubbub_session={session}")),
            ("Origin", format!("http://{}", node.addr())),
        ],
    )
}

/// A socket to `node` with a session cookie, hello said with `rooms` resumed from 0.
async fn socket(node: &Node, session: &str, rooms: &[&str]) -> Ws {
    let req = session_request(node, session);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("socket");
    let resume = rooms.iter().map(|r| ((*r).to_owned(), 0)).collect();
    send(&mut ws, &ClientFrame::Hello { resume, user: None }).await;
    ws
}

/// A form posted to `node` as a signed-in browser would (session, CSRF token, the node's origin).
async fn form_on(
    node: &Node,
    path: &str,
    session: &str,
    csrf: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut fields = fields.to_vec();
    fields.push(("csrf", csrf));
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(node.url(path))
        .header("Origin", format!("http://{}", node.addr()))
        .header(
            "Cookie",
            format!("hubbub_session={session}; hubbub_csrf={csrf}"),
        )
        .form(&fields)
        .send()
        .await
        .expect("form")
}

async fn api(node: &Node, session: &str, method: reqwest::Method, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .request(method, node.url(path))
        .header("Cookie", format!("hubbub_session={session}"))
        .header("Origin", format!("http://{}", node.addr()))
        .json(&body)
        .send()
        .await
        .expect("api")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_removal_a_revoked_token_and_a_log_out_on_one_node_reach_the_sockets_on_another() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let a = Node::start("a", db.url(), &bus, &[], &[]);
    let b = Node::start("b", db.url(), &bus, &[], &[]);
    let (ann, ann_csrf) = sign_up(&a, "ann").await;
    let (bob, _) = sign_up(&b, "bob").await;

    // Ann makes a private room on A and invites Bob, whose socket is on B.
    let mut bobs = socket(&b, &bob, &[]).await;
    until(&mut bobs, |f| matches!(f, ServerFrame::Welcome(_))).await;
    let post = reqwest::Method::POST;
    let made = api(
        &a,
        &ann,
        post.clone(),
        "/api/rooms",
        json!({"name": "plans", "visibility": "private"}),
    )
    .await;
    assert_eq!(made, 201);
    let invited = api(
        &a,
        &ann,
        post.clone(),
        "/api/rooms/plans/members",
        json!({"username": "bob"}),
    )
    .await;
    assert!(invited < 300, "{invited}");
    until(
        &mut bobs,
        |f| matches!(f, ServerFrame::Joined(j) if j.room == "plans"),
    )
    .await;
    // Removed on A: Bob's socket on B leaves the room at once.
    let removed = api(
        &a,
        &ann,
        reqwest::Method::DELETE,
        "/api/rooms/plans/members/bob",
        json!({}),
    )
    .await;
    assert!(removed < 300, "{removed}");
    until(
        &mut bobs,
        |f| matches!(f, ServerFrame::Left(l) if l.room == "plans"),
    )
    .await;
    // What is said there afterwards, on A, never reaches him on B, and B no longer lets him read it.
    let said = api(
        &a,
        &ann,
        post.clone(),
        "/api/rooms/plans/messages",
        json!({"body": "after bob left", "client_id": "after-1"}),
    )
    .await;
    assert_eq!(said, 201);
    let heard = tokio::time::timeout(Duration::from_millis(1_500), async {
        loop {
            if let ServerFrame::Message(m) = next(&mut bobs).await {
                if m.room == "plans" {
                    return m;
                }
            }
        }
    })
    .await;
    assert!(heard.is_err(), "a removed member heard {heard:?}");
    let history = api(
        &b,
        &bob,
        reqwest::Method::GET,
        "/api/rooms/plans/messages",
        json!({}),
    )
    .await;
    assert_eq!(
        history, 404,
        "the room is as unknown to him as any private room"
    );

    // A token revoked on A closes its socket on B with 4001, and B refuses it from then on.
    let tokens = form_on(
        &a,
        "/auth/tokens",
        &ann,
        &ann_csrf,
        &[("name", "bot"), ("days", "1")],
    )
    .await;
    assert_eq!(tokens.status(), 200);
    let html = tokens.text().await.expect("page");
    let start = html.find("<code>").expect("the token is shown once") + 6;
    let token = html[start..].split('<').next().expect("token").to_owned();
    let bearer = |node: &Node| {
        upgrade_request(
            &format!("ws://{}/ws", node.addr()),
            &[("Authorization", format!("Bearer {token}"))],
        )
    };
    let (mut bot, _) = tokio_tungstenite::connect_async(bearer(&b))
        .await
        .expect("a socket with the token on B");
    send(
        &mut bot,
        &ClientFrame::Hello {
            resume: BTreeMap::new(),
            user: None,
        },
    )
    .await;
    until(&mut bot, |f| matches!(f, ServerFrame::Welcome(_))).await;
    let pool = sqlx::PgPool::connect(db.url()).await.expect("db");
    let id: i64 = sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'bot'")
        .fetch_one(&pool)
        .await
        .expect("token id");
    let started = Instant::now();
    let revoked = form_on(
        &a,
        &format!("/auth/tokens/{id}/revoke"),
        &ann,
        &ann_csrf,
        &[],
    )
    .await;
    assert_eq!(revoked.status(), 303);
    assert_eq!(close_code(&mut bot).await, 4001);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    match tokio_tungstenite::connect_async(bearer(&b)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("a revoked token was let in: {:?}", other.map(|_| ())),
    }

    // Ann's socket on B closes with 4001 when she logs out on A, long before B would recheck.
    let mut anns = socket(&b, &ann, &[]).await;
    until(&mut anns, |f| matches!(f, ServerFrame::Welcome(_))).await;
    let started = Instant::now();
    let out = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(a.url("/auth/logout"))
        .header("Origin", format!("http://{}", a.addr()))
        .header(
            "Cookie",
            format!("hubbub_session={ann}; hubbub_csrf={ann_csrf}"),
        )
        .form(&[("csrf", ann_csrf.as_str())])
        .send()
        .await
        .expect("log out");
    assert_eq!(out.status(), 303);
    assert_eq!(close_code(&mut anns).await, 4001);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn typing_presence_and_read_positions_cross_nodes() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let a = Node::start("a", db.url(), &bus, &[], &[]);
    let b = Node::start("b", db.url(), &bus, &[], &[]);
    let (ann, _) = sign_up(&a, "ann").await;
    let (bob, _) = sign_up(&b, "bob").await;
    let mut bobs = socket(&b, &bob, &["general"]).await;
    until(
        &mut bobs,
        |f| matches!(f, ServerFrame::Joined(j) if j.room == "general"),
    )
    .await;
    // Ann comes online on A: Bob, on B, sees her active.
    let mut anns = socket(&a, &ann, &["general"]).await;
    until(
        &mut anns,
        |f| matches!(f, ServerFrame::Joined(j) if j.room == "general"),
    )
    .await;
    until(&mut bobs, |f| {
        matches!(f, ServerFrame::Presence(p) if p.users.iter().any(|u| u.username == "ann"
            && u.status == hubbub::protocol::Status::Active))
    })
    .await;
    // She types on A: Bob sees it on B.
    send(
        &mut anns,
        &ClientFrame::Typing {
            room: "general".into(),
            stop: false,
        },
    )
    .await;
    until(
        &mut bobs,
        |f| matches!(f, ServerFrame::Typing(t) if t.username == "ann" && !t.stop),
    )
    .await;
    // Ann's second tab, on B, learns of what she read on A.
    let acks = send_many(&mut anns, "read", 1).await;
    let mut anns_b = socket(&b, &ann, &["general"]).await;
    until(
        &mut anns_b,
        |f| matches!(f, ServerFrame::Joined(j) if j.room == "general"),
    )
    .await;
    send(
        &mut anns,
        &ClientFrame::Read {
            room: "general".into(),
            seq: acks[0],
        },
    )
    .await;
    until(
        &mut anns_b,
        |f| matches!(f, ServerFrame::Read(r) if r.room == "general" && r.seq == acks[0]),
    )
    .await;
    // Her sockets close: Bob sees her offline within a flush.
    drop(anns);
    drop(anns_b);
    until(&mut bobs, |f| {
        matches!(f, ServerFrame::Presence(p) if p.users.iter().any(|u| u.username == "ann"
            && u.status == hubbub::protocol::Status::Offline))
    })
    .await;
}

#[tokio::test]
async fn an_accounts_limits_hold_across_nodes() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let limits = ["--max-sockets-per-user", "2"];
    // One a second, bursts of two.
    let rate = [("HUBBUB_MESSAGE_RATE", "1")];
    let a = Node::start("a", db.url(), &bus, &limits, &rate);
    let b = Node::start("b", db.url(), &bus, &limits, &rate);
    let (ann, _) = sign_up(&a, "ann").await;
    // The burst spent on A leaves nothing to spend on B.
    let post = |node: &Node, i: usize| {
        let url = node.url("/api/rooms/general/messages");
        let origin = format!("http://{}", node.addr());
        let ann = ann.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("Cookie", format!("hubbub_session={ann}"))
                .header("Origin", origin)
                .json(&json!({ "body": format!("m{i}") }))
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    let mut spent = 0;
    while post(&a, spent).await == 201 {
        spent += 1;
        assert!(spent < 20, "A never refused");
    }
    assert_eq!(spent, 2, "A let the burst through");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&b, spent).await,
        429,
        "the budget spent on A counts on B"
    );

    // The budget back; one socket on each node: the account's two.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut one = socket(&a, &ann, &[]).await;
    until(&mut one, |f| matches!(f, ServerFrame::Welcome(_))).await;
    let mut two = socket(&b, &ann, &[]).await;
    until(&mut two, |f| matches!(f, ServerFrame::Welcome(_))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    match tokio_tungstenite::connect_async(session_request(&a, &ann)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(
                resp.status(),
                429,
                "a third socket, on either node, is refused"
            )
        }
        other => panic!("a third socket was let in: {:?}", other.map(|_| ())),
    }
}

#[cfg(feature = "faults")]
#[tokio::test]
async fn a_lossy_bus_costs_one_read_per_node_never_a_message() {
    let db = ScratchDb::create().await.expect("scratch database");
    let bus = shared_nats();
    let a = Node::start("a", db.url(), &bus, &[], &[]);
    // B drops every third commit it hears of.
    let b = Node::start("b", db.url(), &bus, &[], &[("HUBBUB_FAULTS", "bus-drop=3")]);
    let mut on_b: Vec<Ws> = Vec::new();
    for _ in 0..3 {
        on_b.push(b.process().rich(0).await);
    }
    let mut on_a = a.process().rich(0).await;
    let acks = send_many(&mut on_a, "lossy", 90).await;
    let last = send_many(&mut on_a, "last", 1).await;
    for ws in on_b.iter_mut() {
        let seqs = collect(ws, 91).await;
        assert_eq!(seqs, (1..=91).collect::<Vec<u64>>());
        assert_eq!(seqs[..90], acks[..]);
        assert_eq!(seqs[90], last[0]);
        nothing_more(ws).await;
    }
    // About 30 of the 91 were dropped: each gap was read once for the node, not once for
    // each of its three sockets.
    let reads = b.health().await["gap_reads"].as_u64().expect("gap_reads");
    assert!((1..=31).contains(&reads), "{reads} gap reads");
    assert_eq!(
        a.health().await["gap_reads"],
        0,
        "A's own commits need no reads"
    );
}

#[tokio::test]
async fn a_bus_without_a_shared_database_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["--addr", "127.0.0.1:0", "--bus", &shared_nats()])
        .env("HUBBUB_DATA_DIR", dir.path())
        .output()
        .expect("run hubbub");
    assert!(!out.status.success(), "it started on SQLite with a bus");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("needs --database postgres"), "{said}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["--addr", "127.0.0.1:0", "--bus", "redis://127.0.0.1:6379"])
        .env("HUBBUB_DATA_DIR", dir.path())
        .output()
        .expect("run hubbub");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nats://"),
        "{:?}",
        bad
    );
}
