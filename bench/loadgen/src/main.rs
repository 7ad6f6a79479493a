//! hubbub-loadgen: opens N WebSocket connections to one room, has S of them send R messages per
//! second each on a fixed schedule (open loop: a slow server cannot slow the offered load), and
//! reports what arrived: deliveries expected and received, gaps, duplicates and reordering,
//! deliveries per second, latency percentiles, handshake times, and, given the server's PID, its
//! memory per connection and CPU time per delivery.
//!
//! Every message carries its sender, its number and its scheduled send time, so latency counts
//! from when the message was due, not from when a backed-up sender got to it.
//!
//! With `--rooms N` (hubbub only) the load spreads over N rooms named `{room}{i}`: each client
//! follows `--rooms-per-client` of them, each message goes to one of its sender's rooms (in turn;
//! with 10 senders, 200 rooms and 20 per client, the senders cover every room), and what is
//! expected is each message times the members of its room; every receiver checks that each room's
//! seqs reach it without a gap.

use clap::{Parser, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// `{"user","message"}` text frames, as any classic broadcast server speaks.
    Classic,
    /// hubbub's `hubbub.v1` subprotocol.
    Hubbub,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// Over the sender's own WebSocket.
    Ws,
    /// By HTTP POST to hubbub's `/api/rooms/{room}/messages` (one keep-alive connection per sender).
    Http,
}

#[derive(Debug, Parser)]
#[command(
    name = "hubbub-loadgen",
    about = "Fan-out load for WebSocket chat servers"
)]
struct Args {
    /// WebSocket URL of the server. Several, comma-separated (the nodes of a cluster): the
    /// senders connect to the first, every other client to the others in turn (so each delivery
    /// crosses from the first node to another).
    #[arg(long, default_value = "ws://127.0.0.1:3000/ws")]
    url: String,
    /// For `wss://` URLs: a PEM file of the certificates to trust (a proxy's own).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "hubbub")]
    protocol: Protocol,
    /// Bearer token for hubbub (see /tokens); not needed in anonymous mode.
    #[arg(long, env = "HUBBUB_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "general")]
    room: String,
    /// Connections, all of them receivers.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// How many of the connections also send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// How senders send their messages.
    #[arg(long, value_enum, default_value = "ws")]
    send_via: Via,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait for stragglers after the last send.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Approximate size of each message body, in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Spread the load over this many rooms, named `{room}0`, `{room}1`, … (hubbub only; the
    /// token's account must be a member of them all, to send). 0: one room, `--room`.
    #[arg(long, default_value_t = 0)]
    rooms: usize,
    /// With `--rooms`: how many rooms each client follows.
    #[arg(long, default_value_t = 20)]
    rooms_per_client: usize,
    /// How many of the connections (the first ones, senders first) are accounts, each signed up
    /// through the server's form before the run and connected with its session cookie (the rest
    /// connect as `--token` or, without one, as guests in anonymous mode).
    #[arg(long, default_value_t = 0)]
    accounts: usize,
    /// With `--rooms` and `--accounts`: each account becomes a member of its rooms over HTTP
    /// before the run, and its socket's `hello` subscribes it to all of them (as a browser's
    /// does), instead of one `join` frame per room.
    #[arg(long)]
    members: bool,
    /// Seconds between the `typing` frames each sender sends while it sends (0: none).
    #[arg(long, default_value_t = 0.0)]
    typing_every: f64,
    /// How many accounts (after the senders) flap their presence, idle and active in turn.
    #[arg(long, default_value_t = 0)]
    flappers: usize,
    /// Seconds between one flapper's changes.
    #[arg(long, default_value_t = 5.0)]
    flap_every: f64,
    /// PID of the server, to report its RSS per connection and CPU per delivery.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

/// What one receiving connection saw.
#[derive(Default)]
struct Seen {
    /// Latency of each delivery, in microseconds.
    latencies: Vec<u32>,
    received: u64,
    gaps: u64,
    duplicates_or_reordered: u64,
    /// Typing and presence frames (the signals beside the stream).
    signals: u64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// RSS in KiB and CPU time in seconds of a process, from /proc.
fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc reports CPU time in USER_HZ, which is 100 on Linux.
    Some((rss, ticks / 100.0))
}

/// The rooms client `c` follows: evenly spread, all distinct.
fn rooms_of(args: &Args, c: usize) -> Vec<String> {
    if args.rooms == 0 {
        return vec![args.room.clone()];
    }
    let k = args.rooms_per_client.clamp(1, args.rooms);
    let step = args.rooms / k;
    (0..k)
        .map(|j| format!("{}{}", args.room, (c + j * step) % args.rooms))
        .collect()
}

/// The room message `n` of `sender` goes to: the sender's own rooms in turn (a socket sends only
/// to rooms it follows).
fn room_for(args: &Args, sender: usize, n: u64) -> String {
    let rooms = rooms_of(args, sender);
    let i = usize::try_from(n).unwrap_or(0) % rooms.len().max(1);
    rooms.get(i).cloned().unwrap_or_else(|| args.room.clone())
}

/// The host and port of the server, from its WebSocket URL.
fn host_of(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("ws://").ok_or("a ws:// URL is needed")?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the `Set-Cookie` values.
async fn exchange(host: &str, request: &str) -> Result<(u16, Vec<String>), String> {
    let io = |e: std::io::Error| e.to_string();
    let conn = TcpStream::connect(host).await.map_err(io)?;
    let mut conn = BufReader::new(conn);
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    conn.read_line(&mut line).await.map_err(io)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut cookies = Vec::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await.map_err(io)? == 0 {
            break;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("set-cookie") {
                cookies.push(value.trim().split(';').next().unwrap_or("").to_owned());
            }
        }
    }
    Ok((status, cookies))
}

/// Signs an account up through the server's own form, as a browser does; its session cookie.
async fn sign_up(host: &str, username: &str) -> Result<String, String> {
    let (_, cookies) = exchange(
        host,
        &format!("GET /signup HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    let csrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("hubbub_csrf="))
        .ok_or("no CSRF cookie")?
        .to_owned();
    let form = format!("username={username}&password=loadgen+password+{username}&csrf={csrf}");
    let (status, cookies) = exchange(
        host,
        &format!(
            "POST /auth/signup HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
             Cookie: hubbub_csrf={csrf}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await?;
    cookies
        .into_iter()
        .find(|c| c.starts_with("hubbub_session="))
        .ok_or_else(|| format!("sign-up of {username} answered {status} without a session"))
}

/// A TLS client that trusts the certificates in the PEM file `ca` (a proxy's own).
fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(Arc::clone(c));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

/// The URL client `c` connects to (see `--url`).
fn url_of(args: &Args, c: usize) -> &str {
    let urls: Vec<&str> = args.url.split(',').collect();
    if urls.len() == 1 || c < args.senders {
        urls[0]
    } else {
        urls[1 + c % (urls.len() - 1)]
    }
}

async fn connect(args: &Args, c: usize, session: Option<&str>) -> Result<Ws, String> {
    let url = url_of(args, c);
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if args.protocol == Protocol::Hubbub {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("hubbub.v1"),
        );
        if let Some(cookie) = session {
            let host = host_of(url)?;
            let origin =
                HeaderValue::from_str(&format!("http://{host}")).map_err(|e| e.to_string())?;
            req.headers_mut().insert("Origin", origin);
            let value = HeaderValue::from_str(cookie).map_err(|e| e.to_string())?;
            req.headers_mut().insert("Cookie", value);
        } else if let Some(token) = &args.token {
            let value =
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
            req.headers_mut().insert("Authorization", value);
        }
    }
    let (mut ws, _) = match &args.ca {
        Some(ca) if url.starts_with("wss://") => {
            let connector = tokio_tungstenite::Connector::Rustls(tls_config(ca)?);
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
                .await
        }
        _ => tokio_tungstenite::connect_async(req).await,
    }
    .map_err(|e| e.to_string())?;
    if args.protocol == Protocol::Hubbub && args.members && session.is_some() {
        // The account's rooms come with the hello; live from the welcome on.
        let hello = json!({"type": "hello", "resume": {}}).to_string();
        ws.send(Message::text(hello))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    match v["type"].as_str() {
                        Some("welcome") => {
                            let want = rooms_of(args, c).len();
                            let have = v["rooms"].as_array().map_or(0, Vec::len);
                            // Its rooms, and general, which every account is in.
                            if have < want {
                                return Err(format!("a welcome with {have} of {want} rooms"));
                            }
                            break;
                        }
                        Some("error") => return Err(format!("hello refused: {t}")),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before the welcome".into()),
            }
        }
    } else if args.protocol == Protocol::Hubbub {
        let rooms = rooms_of(args, c);
        for room in &rooms {
            let join = json!({"type": "join", "room": room}).to_string();
            ws.send(Message::text(join))
                .await
                .map_err(|e| e.to_string())?;
        }
        // Live from here once every `joined` has arrived.
        let mut joined = 0;
        while joined < rooms.len() {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    match v["type"].as_str() {
                        Some("joined") => joined += 1,
                        Some("error") => return Err(format!("join refused: {t}")),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before joining".into()),
            }
        }
    }
    Ok(ws)
}

/// The body of message `n` of `sender`, due `due_us` after the run's start.
fn body(sender: usize, n: u64, due_us: u64, size: usize) -> String {
    let head = format!("{sender}:{n}:{due_us}:");
    let pad = size.saturating_sub(head.len());
    format!("{head}{}", "x".repeat(pad))
}

/// Sender, number and due time of a received body.
fn parse_body(body: &str) -> Option<(usize, u64, u64)> {
    let mut parts = body.splitn(4, ':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// The latest arrival of each message over all receivers, in µs after it was due: when the last
/// member of the room had it. Indexed by sender and message number.
struct LastArrival {
    per_sender: u64,
    slots: Vec<AtomicU32>,
}

impl LastArrival {
    fn new(senders: usize, per_sender: u64) -> Self {
        let len = usize::try_from(per_sender).unwrap_or(0) * senders;
        LastArrival {
            per_sender,
            slots: (0..len).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn record(&self, sender: usize, n: u64, latency_us: u32) {
        if n == 0 || n > self.per_sender {
            return;
        }
        let i = sender as u64 * self.per_sender + (n - 1);
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.slots.get(i)) {
            // Stored plus one, so that zero means "never arrived".
            slot.fetch_max(latency_us.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Sorted latencies, one per message that reached at least one member.
    fn sorted(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&l| l > 0)
            .map(|l| l - 1)
            .collect();
        v.sort_unstable();
        v
    }
}

async fn receive(
    mut stream: SplitStream<Ws>,
    protocol: Protocol,
    many_rooms: bool,
    senders: usize,
    start: Instant,
    last_arrival: Arc<LastArrival>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut last = vec![0u64; senders];
    // With many rooms a receiver has only some of each sender's messages: gaps are counted per
    // room, by seq, from the first one it saw there.
    let mut room_seqs: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = stop.changed() => break,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            if matches!(frame, Some(Ok(_))) {
                continue;
            }
            break;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if matches!(v["type"].as_str(), Some("typing" | "presence")) {
            seen.signals += 1;
            continue;
        }
        let b = match protocol {
            Protocol::Classic => v["message"].as_str(),
            Protocol::Hubbub if v["type"] == "message" => v["body"].as_str(),
            Protocol::Hubbub => None,
        };
        let Some((sender, n, due_us)) = b.and_then(parse_body) else {
            continue;
        };
        if sender >= senders {
            continue;
        }
        let now_us = start.elapsed().as_micros() as u64;
        let latency = u32::try_from(now_us.saturating_sub(due_us)).unwrap_or(u32::MAX);
        seen.latencies.push(latency);
        last_arrival.record(sender, n, latency);
        seen.received += 1;
        if many_rooms {
            let (Some(room), Some(seq)) = (v["room"].as_str(), v["seq"].as_u64()) else {
                continue;
            };
            match room_seqs.get_mut(room) {
                Some(prev) if seq <= *prev => seen.duplicates_or_reordered += 1,
                Some(prev) => {
                    seen.gaps += seq - *prev - 1;
                    *prev = seq;
                }
                None => {
                    room_seqs.insert(room.to_owned(), seq);
                }
            }
            continue;
        }
        let prev = last[sender];
        if n <= prev {
            seen.duplicates_or_reordered += 1;
        } else {
            seen.gaps += n - prev - 1;
            last[sender] = n;
        }
    }
    seen
}

/// A minimal HTTP/1.1 client for one keep-alive connection: enough to POST JSON and read the answer.
struct HttpPoster {
    conn: BufReader<TcpStream>,
    host: String,
    path: String,
    auth: String,
}

impl HttpPoster {
    async fn connect(args: &Args) -> Result<Self, String> {
        let rest = url_of(args, 0)
            .strip_prefix("ws://")
            .ok_or("--send-via http needs a ws:// URL")?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let conn = TcpStream::connect(&host)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let _ = conn.set_nodelay(true);
        let auth = match &args.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        Ok(HttpPoster {
            conn: BufReader::new(conn),
            host,
            path: format!("/api/rooms/{}/messages", args.room),
            auth,
        })
    }

    /// Posts `body` and returns the status code once the whole answer is read.
    async fn post(&mut self, body: &str) -> Result<u16, String> {
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            self.host,
            self.auth,
            body.len()
        );
        let io = |e: std::io::Error| e.to_string();
        self.conn
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        self.conn.read_line(&mut line).await.map_err(io)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.conn.read_line(&mut line).await.map_err(io)? == 0 {
                return Err("connection closed mid-answer".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| "bad content-length")?;
                }
            }
        }
        let mut answer = vec![0u8; length];
        self.conn.read_exact(&mut answer).await.map_err(io)?;
        Ok(status)
    }
}

async fn send(
    mut sink: SplitSink<Ws, Message>,
    args: Arc<Args>,
    sender: usize,
    start: Instant,
    sent: Arc<AtomicU64>,
    expected: Arc<AtomicU64>,
    members: Arc<std::collections::HashMap<String, u64>>,
) {
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let total = messages_per_sender(&args);
    let mut http = match args.send_via {
        Via::Ws => None,
        Via::Http => match HttpPoster::connect(&args).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("sender {sender}: {e}");
                return;
            }
        },
    };
    // Spread the senders over one period so they do not all fire at once.
    let offset = period.mul_f64(sender as f64 / args.senders.max(1) as f64);
    let run = std::process::id();
    let mut typed_at: Option<Instant> = None;
    for n in 1..=total {
        let due = start + offset + period.mul_f64((n - 1) as f64);
        tokio::time::sleep_until(due.into()).await;
        // Typing, as a person would while writing: every few seconds.
        if args.typing_every > 0.0
            && typed_at.is_none_or(|t| t.elapsed().as_secs_f64() >= args.typing_every)
        {
            typed_at = Some(Instant::now());
            let typing = json!({"type": "typing", "room": room_for(&args, sender, n)});
            if sink.send(Message::text(typing.to_string())).await.is_err() {
                return;
            }
        }
        let due_us = due.duration_since(start).as_micros() as u64;
        let text = body(sender, n, due_us, args.size);
        if let Some(poster) = http.as_mut() {
            let post = json!({"body": text, "user": format!("lg{sender}"), "client_id": format!("lg-{run}-{sender}-{n}")});
            match poster.post(&post.to_string()).await {
                Ok(status) if (200..300).contains(&status) => {}
                Ok(status) => {
                    eprintln!("sender {sender}: POST answered {status}");
                    return;
                }
                Err(e) => {
                    eprintln!("sender {sender}: POST failed: {e}");
                    return;
                }
            }
            sent.fetch_add(1, Ordering::Relaxed);
            expected.fetch_add(
                members.get(&args.room).copied().unwrap_or(0),
                Ordering::Relaxed,
            );
            continue;
        }
        let room = room_for(&args, sender, n);
        let frame = match args.protocol {
            Protocol::Classic => json!({"user": format!("lg{sender}"), "message": text}),
            Protocol::Hubbub => json!({
                "type": "send",
                "room": room,
                "client_id": format!("lg-{run}-{sender}-{n}"),
                "body": text,
            }),
        };
        if sink.send(Message::text(frame.to_string())).await.is_err() {
            eprintln!("sender {sender}: connection lost after {n} messages");
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        expected.fetch_add(members.get(&room).copied().unwrap_or(0), Ordering::Relaxed);
    }
}

fn messages_per_sender(args: &Args) -> u64 {
    (args.duration * args.rate).floor() as u64
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Arc::new(Args::parse());
    if args.senders > args.clients || args.rate <= 0.0 {
        eprintln!("hubbub-loadgen: need senders <= clients and a positive rate");
        return std::process::ExitCode::FAILURE;
    }
    if args.send_via == Via::Http && args.protocol != Protocol::Hubbub {
        eprintln!("hubbub-loadgen: --send-via http is for hubbub's HTTP API (--protocol hubbub)");
        return std::process::ExitCode::FAILURE;
    }
    let last_arrival = Arc::new(LastArrival::new(args.senders, messages_per_sender(&args)));
    let before = args.server_pid.and_then(proc_stats);

    // The accounts, signed up before anything is timed (a few at a time: each is a password
    // hash on the server).
    let mut sessions = Vec::with_capacity(args.accounts);
    if args.accounts > 0 {
        let host = match host_of(url_of(&args, 0)) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("hubbub-loadgen: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let run = std::process::id();
        for chunk in (0..args.accounts).collect::<Vec<_>>().chunks(4) {
            let batch = chunk.iter().map(|i| {
                let (host, name) = (host.clone(), format!("lg{run}x{i}"));
                async move { sign_up(&host, &name).await }
            });
            for r in futures_util::future::join_all(batch).await {
                match r {
                    Ok(s) => sessions.push(s),
                    Err(e) => {
                        eprintln!("hubbub-loadgen: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
    }

    // With --members: every account joins its rooms (over HTTP, as a person would), a few
    // accounts at a time.
    if args.members && args.rooms > 0 {
        let host = host_of(url_of(&args, 0)).unwrap_or_default();
        let joined_started = Instant::now();
        let mut joins = 0usize;
        for chunk in (0..sessions.len()).collect::<Vec<_>>().chunks(8) {
            let batch = chunk.iter().map(|&c| {
                let (host, cookie, rooms) = (host.clone(), sessions[c].clone(), rooms_of(&args, c));
                async move {
                    for room in rooms {
                        let request = format!(
                            "POST /api/rooms/{room}/join HTTP/1.1\r\nHost: {host}\r\n\
                             Origin: http://{host}\r\nCookie: {cookie}\r\n\
                             Content-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let (status, _) = exchange(&host, &request).await?;
                        if status != 200 {
                            return Err(format!("joining {room} answered {status}"));
                        }
                    }
                    Ok::<usize, String>(1)
                }
            });
            for r in futures_util::future::join_all(batch).await {
                match r {
                    Ok(_) => joins += rooms_of(&args, 0).len(),
                    Err(e) => {
                        eprintln!("hubbub-loadgen: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
        eprintln!(
            "{joins} memberships made over HTTP in {:.1} s",
            joined_started.elapsed().as_secs_f64()
        );
    }

    // Connect everyone, a batch at a time.
    let mut sockets = Vec::with_capacity(args.clients);
    let mut handshakes = Vec::with_capacity(args.clients);
    let connect_started = Instant::now();
    let mut failures = 0usize;
    for chunk_start in (0..args.clients).step_by(args.connect_concurrency.max(1)) {
        let n = args.connect_concurrency.min(args.clients - chunk_start);
        let batch = (0..n).map(|i| {
            let args = Arc::clone(&args);
            let c = chunk_start + i;
            let session = sessions.get(c).cloned();
            async move {
                let t = Instant::now();
                let ws = connect(&args, c, session.as_deref()).await;
                (ws, t.elapsed())
            }
        });
        for (ws, took) in futures_util::future::join_all(batch).await {
            match ws {
                Ok(ws) => {
                    sockets.push(ws);
                    handshakes.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                }
                Err(e) => {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("connect failed: {e}");
                    }
                }
            }
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    if sockets.len() < args.senders {
        eprintln!("hubbub-loadgen: only {} connections opened", sockets.len());
        return std::process::ExitCode::FAILURE;
    }
    // Read what the server sent while the others connected (with accounts: the presence of
    // everyone who came online, flushed once a second) until every socket has been quiet for
    // longer than a presence flush: the run then measures the steady state, as a browser that
    // reads all along would see it, and the connect storm is reported apart.
    let settle_started = Instant::now();
    let quiet = Duration::from_millis(1500);
    let settled = futures_util::future::join_all(sockets.iter_mut().map(|ws| async move {
        let (mut frames, mut bytes) = (0u64, 0u64);
        while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, ws.next()).await {
            frames += 1;
            bytes += m.len() as u64;
        }
        (frames, bytes)
    }))
    .await;
    // Less the quiet wait that ended it.
    let settle_secs = (settle_started.elapsed().as_secs_f64() - quiet.as_secs_f64()).max(0.0);
    let settle_frames = settled.iter().map(|s| s.0).sum::<u64>() as f64 / sockets.len() as f64;
    let settle_bytes = settled.iter().map(|s| s.1).sum::<u64>() as f64 / sockets.len() as f64;
    let idle = args.server_pid.and_then(proc_stats);

    let start = Instant::now();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sent = Arc::new(AtomicU64::new(0));
    let clients = sockets.len();
    // Who follows each room (the clients that connected are the first `clients`).
    let mut members: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for c in 0..clients {
        for room in rooms_of(&args, c) {
            *members.entry(room).or_default() += 1;
        }
    }
    let members = Arc::new(members);
    let expected_count = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(clients);
    let mut writers = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        readers.push(tokio::spawn(receive(
            stream,
            args.protocol,
            args.rooms > 0,
            args.senders,
            start,
            Arc::clone(&last_arrival),
            stop.clone(),
        )));
        if i < args.senders {
            writers.push(tokio::spawn(send(
                sink,
                Arc::clone(&args),
                i,
                start,
                Arc::clone(&sent),
                Arc::clone(&expected_count),
                Arc::clone(&members),
            )));
        } else if i < args.senders + args.flappers && i < args.accounts {
            // A flapper: idle, active, idle, … as a person leaving and coming back to the tab.
            let every = Duration::from_secs_f64(args.flap_every.max(0.1));
            let offset = every.mul_f64((i % 97) as f64 / 97.0);
            writers.push(tokio::spawn(async move {
                let mut sink = sink;
                let mut idle = true;
                tokio::time::sleep(offset).await;
                loop {
                    let status = if idle { "idle" } else { "active" };
                    let frame = json!({"type": "presence", "status": status}).to_string();
                    if sink.send(Message::text(frame)).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    idle = !idle;
                    tokio::time::sleep(every).await;
                }
            }));
        } else {
            // Receivers keep their sink so the connection stays open.
            writers.push(tokio::spawn(async move {
                let _keep = sink;
                std::future::pending::<()>().await;
            }));
        }
    }
    // Senders finish on schedule, or are cut off at the end of the drain time if the server (or
    // this machine) cannot keep up: an overloaded run still ends and says so.
    let deadline = start + Duration::from_secs_f64(args.duration + args.drain);
    let senders_done = async {
        for w in writers.iter_mut().take(args.senders) {
            let _ = w.await;
        }
    };
    let on_time = tokio::time::timeout_at(deadline.into(), senders_done)
        .await
        .is_ok();
    if !on_time {
        eprintln!("hubbub-loadgen: senders could not keep the schedule; cut off at the deadline");
    }
    let sent = sent.load(Ordering::Relaxed);
    let expected = if args.protocol == Protocol::Hubbub {
        expected_count.load(Ordering::Relaxed)
    } else {
        sent * clients as u64
    };
    let sending_secs = start.elapsed().as_secs_f64();
    // Wait for the deliveries to come in, or the drain time to pass.
    let drain_until = Instant::now().max(deadline) + Duration::from_secs_f64(args.drain.min(1.0));
    tokio::time::sleep_until(drain_until.into()).await;
    stop_tx.send_replace(true);
    let after = args.server_pid.and_then(proc_stats);
    let mut latencies = Vec::new();
    let (mut received, mut gaps, mut dups, mut signals) = (0u64, 0u64, 0u64, 0u64);
    for r in readers {
        if let Ok(seen) = r.await {
            received += seen.received;
            gaps += seen.gaps;
            dups += seen.duplicates_or_reordered;
            signals += seen.signals;
            latencies.extend(seen.latencies);
        }
    }
    for w in writers {
        w.abort();
    }
    latencies.sort_unstable();
    handshakes.sort_unstable();
    let last = last_arrival.sorted();
    let handshakes_per_sec = clients as f64 / connect_secs.max(1e-9);

    let deliveries_per_sec = received as f64 / sending_secs;
    let p = |q| percentile(&latencies, q);
    println!(
        "hubbub-loadgen: {:?} protocol, {} → {}",
        args.protocol, args.url, args.room
    );
    println!(
        "  connected        {clients} of {} in {connect_secs:.2} s ({failures} failed)",
        args.clients
    );
    println!(
        "  settling         {settle_secs:.2} s after the last connect; {settle_frames:.0} frames ({:.1} KiB) per client before the run",
        settle_bytes / 1024.0
    );
    println!(
        "  handshake ms     p50 {:.2}  p99 {:.2}  max {:.2}  ({handshakes_per_sec:.0} handshakes/s, {} at a time)",
        percentile(&handshakes, 0.5),
        percentile(&handshakes, 0.99),
        percentile(&handshakes, 1.0),
        args.connect_concurrency
    );
    let fanout_per_message = expected as f64 / sent.max(1) as f64;
    let offered = args.senders as f64 * args.rate * fanout_per_message;
    println!(
        "  offered          {} senders × {} msg/s for {} s = {offered:.0} deliveries/s ({} rooms, {fanout_per_message:.0} members per message)",
        args.senders,
        args.rate,
        args.duration,
        args.rooms.max(1)
    );
    println!("  messages sent    {sent}");
    println!(
        "  deliveries       {received} of {expected} expected ({:.3}%)",
        100.0 * received as f64 / expected.max(1) as f64
    );
    println!("  gaps / dup+reord {gaps} / {dups}");
    println!("  signals received {signals} typing and presence frames during the run");
    println!("  deliveries/s     {deliveries_per_sec:.0}");
    println!(
        "  latency ms       p50 {:.2}  p90 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        p(1.0)
    );
    println!(
        "  last member ms   p50 {:.2}  p99 {:.2}  max {:.2}  (until every member had the message)",
        percentile(&last, 0.5),
        percentile(&last, 0.99),
        percentile(&last, 1.0)
    );
    let mut rss_per_conn_kib = None;
    let mut cpu_us_per_delivery = None;
    if let (Some(b), Some(i), Some(a)) = (before, idle, after) {
        let per_conn = (i.0 as f64 - b.0 as f64) / clients as f64;
        let cpu = (a.1 - i.1) * 1e6 / received.max(1) as f64;
        rss_per_conn_kib = Some(per_conn);
        cpu_us_per_delivery = Some(cpu);
        println!("  server RSS       {} KiB before, {} KiB idle with all connected, {} KiB after: {per_conn:.2} KiB per idle connection", b.0, i.0, a.0);
        println!(
            "  server CPU       {:.2} s while sending: {cpu:.2} µs per delivery",
            a.1 - i.1
        );
    }
    if args.json {
        let report = json!({
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "clients": clients,
            "senders": args.senders,
            "rate": args.rate,
            "offered_deliveries_per_sec": offered,
            "rooms": args.rooms.max(1),
            "rooms_per_client": if args.rooms > 0 { args.rooms_per_client } else { 1 },
            "sent": sent,
            "expected": expected,
            "received": received,
            "gaps": gaps,
            "duplicates_or_reordered": dups,
            "signals_received": signals,
            "deliveries_per_sec": deliveries_per_sec,
            "latency_ms": {"p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": p(1.0)},
            "send_via": format!("{:?}", args.send_via).to_lowercase(),
            "handshake_ms": {"p50": percentile(&handshakes, 0.5), "p99": percentile(&handshakes, 0.99)},
            "handshakes_per_sec": handshakes_per_sec,
            "settle": {"secs": settle_secs, "frames_per_client": settle_frames, "bytes_per_client": settle_bytes},
            "last_member_ms": {"p50": percentile(&last, 0.5), "p99": percentile(&last, 0.99), "max": percentile(&last, 1.0)},
            "rss_per_connection_kib": rss_per_conn_kib,
            "server_rss_kib": {"before": before.map(|b| b.0), "idle": idle.map(|i| i.0), "after": after.map(|x| x.0)},
            "cpu_us_per_delivery": cpu_us_per_delivery,
            "accounts": args.accounts,
            "typing_every": args.typing_every,
            "flappers": args.flappers,
            "flap_every": args.flap_every,
        });
        println!("{report}");
    }
    std::process::ExitCode::SUCCESS
}
