//! Typed server configuration: the defaults, then the TOML file (`--config`, `HUBBUB_CONFIG`),
//! then environment variables, then command-line flags; each overrides the one before.

use clap::Parser;
use leptos::config::LeptosOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Parser)]
#[command(name = "hubbub", version, about = "A real-time team chat server")]
pub struct Config {
    /// A TOML file of settings (the names of these flags with `_` for `-`, as in
    /// hubbub.example.toml); flags and environment variables override it.
    #[arg(long, env = "HUBBUB_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: Leptos.toml's site-addr, 127.0.0.1:3000].
    #[arg(long, env = "HUBBUB_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Directory for the database; created if missing.
    #[arg(long, env = "HUBBUB_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Where history, accounts and files are kept: `sqlite://PATH` (one file; the default is
    /// `hubbub.sqlite3` in --data-dir) or `postgres://USER@HOST[:PORT]/DATABASE`, one database
    /// that every node of a cluster shares (files are kept in it too).
    #[arg(long, env = "HUBBUB_DATABASE_URL", value_parser = parse_database)]
    pub database: Option<Database>,

    /// The bus between the nodes of a cluster: `nats://HOST[:PORT]`. Every node of a cluster
    /// needs it (and the same --database); one node needs neither.
    #[arg(long, env = "HUBBUB_BUS_URL", value_parser = parse_bus)]
    pub bus: Option<String>,

    /// Where Prometheus metrics are served (`GET /metrics`), on a listener of their own: never
    /// the public address. Off by default.
    #[arg(long, env = "HUBBUB_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// This node's name in logs and on the bus [default: the host name and process id].
    #[arg(long, env = "HUBBUB_NODE_NAME")]
    pub node_name: Option<String>,

    /// Log filter, in `tracing` syntax (for example `info` or `hubbub=debug,info`).
    #[arg(long, env = "HUBBUB_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "HUBBUB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The Leptos site settings the server reads at run time.
    #[arg(long, env = "HUBBUB_LEPTOS_CONFIG", default_value = "Leptos.toml")]
    pub leptos_config: PathBuf,

    /// Messages each connection may have queued before it is resynced from storage.
    #[arg(long, env = "HUBBUB_QUEUE_LEN", default_value_t = 1024)]
    pub queue_len: usize,

    /// Bytes each connection may have queued before it is resynced from storage.
    #[arg(long, env = "HUBBUB_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub queue_bytes: usize,

    /// How often the server pings each WebSocket; one that has not answered by the next ping is
    /// closed (4002). Accepts `20s`, `500ms`, `1m`.
    #[arg(long, env = "HUBBUB_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Let clients without an account into the default room, naming themselves (demos and the
    /// classic `{"user","message"}` clients). Off by default.
    #[arg(long, env = "HUBBUB_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// An origin (`scheme://host[:port]`) allowed to use a session cookie for WebSocket upgrades
    /// and form posts; repeat for several. Default: the server's own origin.
    #[arg(
        long = "allowed-origin",
        env = "HUBBUB_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// PEM certificate chain: serve HTTPS and WSS (TLS 1.2+) with it. Needs --tls-key.
    #[arg(long, env = "HUBBUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "HUBBUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Address of a reverse proxy whose `X-Forwarded-For` is believed (for per-IP limits);
    /// repeat for several. Forwarded headers from anyone else are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "HUBBUB_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Mark cookies `Secure` and treat the own origin as https: set this when a TLS-terminating
    /// proxy serves hubbub over HTTPS (implied by --tls-cert).
    #[arg(long, env = "HUBBUB_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// Frames (and HTTP posts) each account may send per second, shared by all its sockets and
    /// the API; guests share one budget per address. Bursts of twice as many. Over it a socket
    /// is read more slowly (the client's sends wait); one that stays over it for 10 s is closed
    /// with 1008; an HTTP post gets 429.
    #[arg(long, env = "HUBBUB_MESSAGE_RATE", default_value_t = 20)]
    pub message_rate: u32,

    /// Who may create an account: `open` (anyone), `invite` (with an invite link from an admin;
    /// the first account is the admin and may always be made) or `closed`.
    #[arg(long, env = "HUBBUB_REGISTRATION", value_enum, default_value = "open")]
    pub registration: Registration,

    /// Sign-ups per address (IPv6: per /64) per hour; more get 429.
    #[arg(long, env = "HUBBUB_SIGNUPS_PER_HOUR", default_value_t = 20)]
    pub signups_per_hour: u32,

    /// How long a browser session lasts; its open sockets close (4001) when it ends.
    #[arg(long, env = "HUBBUB_SESSION_TTL", default_value = "30d", value_parser = parse_duration)]
    pub session_ttl: Duration,

    /// How long a request may take to arrive in full once its head is in (slow bodies are cut
    /// off with 408).
    #[arg(long, env = "HUBBUB_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Open connections (HTTP and WebSocket) the server accepts in all [default: the process's
    /// file descriptor limit less a reserve, at most 50000]. More are refused at once.
    #[arg(long, env = "HUBBUB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open connections per client address (IPv6: per /64); more are refused at once with 503.
    /// Connections from a --trusted-proxy are not counted.
    #[arg(long, env = "HUBBUB_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Open WebSockets per account; more get 429.
    #[arg(long, env = "HUBBUB_MAX_SOCKETS_PER_USER", default_value_t = 20)]
    pub max_sockets_per_user: usize,

    /// Unauthenticated (anonymous or refused) WebSocket handshakes per IP per minute; more get 429.
    #[arg(long, env = "HUBBUB_MAX_ANONYMOUS_HANDSHAKES", default_value_t = 60)]
    pub max_anonymous_handshakes: u32,

    /// How long a write to a WebSocket may stall before the client is closed as a slow
    /// consumer (4000: resume from your last seq).
    #[arg(long, env = "HUBBUB_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// Members a room may have; joins and invitations past it are refused (`limit_reached`).
    #[arg(long, env = "HUBBUB_MAX_ROOM_MEMBERS", default_value_t = 10_000)]
    pub max_room_members: u64,

    /// Rooms one account may make per hour; more are refused with 429.
    #[arg(long, env = "HUBBUB_ROOMS_PER_HOUR", default_value_t = 10)]
    pub rooms_per_hour: u64,

    /// How long after sending a message its author may edit it; `0` for no limit.
    #[arg(long, env = "HUBBUB_EDIT_WINDOW", default_value = "15m", value_parser = parse_window)]
    pub edit_window: Window,

    /// Different emoji one message may collect as reactions.
    #[arg(long, env = "HUBBUB_MAX_REACTIONS", default_value_t = 20)]
    pub max_reactions: u64,

    /// Typing indicators are not relayed in rooms with more members than this.
    #[arg(long, env = "HUBBUB_TYPING_MAX_MEMBERS", default_value_t = 100)]
    pub typing_max_members: u64,

    /// Largest file that may be attached to a message, in bytes; larger uploads get 413.
    #[arg(long, env = "HUBBUB_MAX_UPLOAD", default_value_t = 10 * 1000 * 1000)]
    pub max_upload: u64,

    /// Bytes of attachments each account may keep; uploads past it are refused.
    #[arg(long, env = "HUBBUB_UPLOAD_QUOTA", default_value_t = 1 << 30)]
    pub upload_quota: u64,

    /// How long without input (or with the tab hidden) before the browser reports its user idle.
    #[arg(long, env = "HUBBUB_IDLE_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub idle_after: Duration,

    /// Every setting, its value (passwords in URLs redacted) and where it came from, as
    /// `load_from` found them: the admin view shows them.
    #[arg(skip)]
    pub effective: Vec<Effective>,
}

/// Where the data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL.
    Postgres(String),
}

/// Parses `sqlite://PATH` (also `sqlite:PATH`) or `postgres://…` (also `postgresql://…`).
pub fn parse_database(s: &str) -> Result<Database, String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Ok(Database::Postgres(s.to_owned()));
    }
    if let Some(path) = s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err("sqlite:// needs a file path, as in sqlite://data/hubbub.sqlite3".into());
        }
        return Ok(Database::Sqlite(PathBuf::from(path)));
    }
    Err(format!(
        "{s:?}: a database URL starts with sqlite:// or postgres://"
    ))
}

/// Checks a bus URL: `nats://HOST[:PORT]`.
pub fn parse_bus(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.strip_prefix("nats://") {
        Some(rest) if !rest.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?}: the bus URL must be nats://HOST[:PORT]")),
    }
}

/// A time limit that may be switched off with `0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(pub Option<Duration>);

/// Parses a duration as [`parse_duration`] does, or `0` for none.
pub fn parse_window(s: &str) -> Result<Window, String> {
    if s.trim() == "0" {
        return Ok(Window(None));
    }
    parse_duration(s).map(|d| Window(Some(d)))
}

/// Parses `250ms`, `20s`, `2m`, `12h`, `30d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 20s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h or d")),
    };
    if d.is_zero() {
        return Err("a duration must be more than zero".to_owned());
    }
    Ok(d)
}

/// Who may sign up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Registration {
    Open,
    Invite,
    Closed,
}

/// The default cap on open connections: the soft limit on file descriptors less a reserve for
/// the database and logs, at most 50,000.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(50_064);
    soft.saturating_sub(64).clamp(16, 50_000)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The configuration with every default (and any `HUBBUB_*` variable) but the data directory,
    /// as tests and embedders start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["hubbub"]);
        config.data_dir = data_dir.into();
        config
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the Leptos site settings from {path}: {message}")]
    Leptos { path: String, message: String },
    #[error("cannot read the settings in {path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: unknown setting `{key}` (settings are the flags' names with `_`, see hubbub.example.toml)")]
    UnknownKey { path: String, key: String },
    /// A flag, variable or file value clap refused: printed with the usage by [`clap::Error::exit`].
    #[error("{0}")]
    Invalid(#[from] clap::Error),
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Environment,
    Flag,
}

/// One setting as the server will use it, for `hubbub config check`.
#[derive(Clone, Debug)]
pub struct Effective {
    pub key: String,
    /// The value as given (secrets in URLs redacted).
    pub value: String,
    pub source: Source,
}

/// The file named by `--config PATH`, `--config=PATH` or `HUBBUB_CONFIG`.
fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("HUBBUB_CONFIG").map(PathBuf::from)
}

/// The settings in the TOML file at `path`, as (setting, value as a flag would give it).
fn file_settings(path: &std::path::Path) -> Result<Vec<(String, String)>, ConfigError> {
    use clap::CommandFactory;
    let err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let command = Config::command();
    let known: std::collections::HashSet<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "config")
        .collect();
    let mut out = Vec::new();
    for (key, value) in table {
        if !known.contains(&key) {
            return Err(ConfigError::UnknownKey {
                path: path.display().to_string(),
                key,
            });
        }
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                _ => Err(err(format!(
                    "`{key}` must be a string, a number, a boolean or a list of them"
                ))),
            }
        };
        let value = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => scalar(other)?,
        };
        out.push((key, value));
    }
    Ok(out)
}

impl Config {
    /// Refuses settings that parse but cannot go together.
    pub fn validate(&self) -> Result<(), String> {
        if let (Some(metrics), Some(addr)) = (self.metrics_addr, self.addr) {
            if metrics.port() != 0 && metrics == addr {
                return Err(
                    "--metrics-addr must differ from --addr: metrics are never served on the public port"
                        .to_owned(),
                );
            }
        }
        if self.bus.is_some() && !matches!(self.database, Some(Database::Postgres(_))) {
            return Err(
                "--bus joins nodes that share one database: it needs --database postgres://…"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The settings of this process: its flags, environment and file (see the module).
    pub fn load() -> Result<(Config, Vec<Effective>), ConfigError> {
        Self::load_from(std::env::args_os().collect())
    }

    /// Like [`Config::load`], with these arguments (the first is the program's name).
    pub fn load_from(
        args: Vec<std::ffi::OsString>,
    ) -> Result<(Config, Vec<Effective>), ConfigError> {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = Config::command();
        let mut from_file = std::collections::HashSet::new();
        if let Some(path) = config_path(&args) {
            for (key, value) in file_settings(&path)? {
                // The file's value becomes the default: the environment and flags still win.
                let value: &'static str = Box::leak(value.into_boxed_str());
                command = command.mut_arg(key.as_str(), |a| a.default_value(value));
                from_file.insert(key);
            }
        }
        let matches = command.clone().try_get_matches_from(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        let mut effective = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(raw) = matches.get_raw(id) else {
                continue;
            };
            let value = raw
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let source = match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Source::Environment,
                _ if from_file.contains(id) => Source::File,
                _ => Source::Default,
            };
            let value = if matches!(id, "database" | "bus") {
                crate::server::redact_url(&value)
            } else {
                value
            };
            effective.push(Effective {
                key: id.to_owned(),
                value,
                source,
            });
        }
        effective.sort_by(|a, b| a.key.cmp(&b.key));
        config.effective = effective.clone();
        Ok((config, effective))
    }
}

/// The project's own Leptos site settings, built in: a server started where there is no
/// `Leptos.toml` (a release binary copied to a server) uses these.
const BUILT_IN_LEPTOS: &str = include_str!("../../Leptos.toml");

/// Reads the Leptos site settings from `path`; `LEPTOS_*` environment variables (which cargo-leptos
/// sets when it runs the server) override single keys.
pub fn leptos_options(path: &std::path::Path) -> Result<LeptosOptions, ConfigError> {
    let err = |message: String| ConfigError::Leptos {
        path: path.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // Only the default file may be missing: one named on purpose must be there.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path == std::path::Path::new("Leptos.toml") =>
        {
            BUILT_IN_LEPTOS.to_owned()
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let options = leptos::config::get_config_from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn windows_may_be_switched_off() {
        assert_eq!(parse_window("0"), Ok(Window(None)));
        assert_eq!(
            parse_window("15m"),
            Ok(Window(Some(Duration::from_secs(900))))
        );
        assert!(parse_window("-1").is_err());
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            parse_database("sqlite://data/x.db"),
            Ok(Database::Sqlite("data/x.db".into()))
        );
        assert_eq!(
            parse_database("sqlite:///var/lib/hubbub/x.db"),
            Ok(Database::Sqlite("/var/lib/hubbub/x.db".into()))
        );
        assert_eq!(
            parse_database("postgres://hubbub@db/hubbub"),
            Ok(Database::Postgres("postgres://hubbub@db/hubbub".into()))
        );
        assert!(parse_database("mysql://x").is_err());
        assert!(parse_database("sqlite://").is_err());
        assert!(parse_bus("nats://127.0.0.1:4222").is_ok());
        assert!(parse_bus("redis://127.0.0.1").is_err());
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::try_parse_from(["hubbub"]).expect("parse");
        assert_eq!(c.ping_interval, Duration::from_secs(20));
        assert_eq!(c.queue_len, 1024);
    }
}
