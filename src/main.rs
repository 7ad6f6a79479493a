//! The hubbub server binary: parse the configuration, bind the address, run until a signal.

use hubbub::server::{self, config, Config};
use std::ffi::OsString;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "config") {
        return config_command(&args);
    }
    if args.get(1).is_some_and(|a| a == "backup" || a == "restore") {
        return backup_command(&args).await;
    }
    if args
        .get(1)
        .is_some_and(|a| a == "admin" || a == "export" || a == "import")
    {
        return ops_command(&args).await;
    }
    let Some(config) = settings(args) else {
        return ExitCode::FAILURE;
    };
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        config::LogFormat::Json => logs.json().init(),
        config::LogFormat::Text => logs.init(),
    }
    match start(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hubbub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The settings of these arguments, or `None` once what is wrong is said (clap's own errors,
/// `--help` and `--version` exit with clap's status).
fn settings(args: Vec<OsString>) -> Option<Config> {
    match Config::load_from(args) {
        Ok((config, _)) => Some(config),
        Err(config::ConfigError::Invalid(e)) => e.exit(),
        Err(e) => {
            eprintln!("hubbub: {e}");
            None
        }
    }
}

/// `hubbub config check [FILE] [FLAGS…]`: reads the settings as the server would (FILE as
/// `--config`), says what is wrong, or prints every effective setting and where it came from,
/// secrets redacted.
fn config_command(args: &[OsString]) -> ExitCode {
    if args.get(2).is_none_or(|a| a != "check") {
        eprintln!("usage: hubbub config check [FILE] [FLAGS…]");
        return ExitCode::from(2);
    }
    let mut flags: Vec<OsString> = vec![args[0].clone()];
    let mut rest = args[3..].iter();
    if let Some(first) = args
        .get(3)
        .filter(|a| !a.to_string_lossy().starts_with('-'))
    {
        flags.push("--config".into());
        flags.push(first.clone());
        rest.next();
    }
    flags.extend(rest.cloned());
    let (config, effective) = match Config::load_from(flags) {
        Ok(loaded) => loaded,
        Err(config::ConfigError::Invalid(e)) => {
            eprintln!("hubbub: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("hubbub: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("hubbub: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = config::leptos_options(&config.leptos_config) {
        eprintln!("hubbub: {e}");
        return ExitCode::FAILURE;
    }
    println!("# the settings hubbub would run with, and where each came from");
    for setting in effective {
        let source = match setting.source {
            config::Source::Default => "default",
            config::Source::File => "file",
            config::Source::Environment => "environment",
            config::Source::Flag => "flag",
        };
        println!("{} = {:?}  # {source}", setting.key, setting.value);
    }
    ExitCode::SUCCESS
}

/// `hubbub backup DEST [FLAGS…]` and `hubbub restore SRC [FLAGS…]`, with the data directory (or
/// `--database`) of the settings.
async fn backup_command(args: &[OsString]) -> ExitCode {
    let Some(path) = args
        .get(2)
        .filter(|a| !a.to_string_lossy().starts_with('-'))
    else {
        eprintln!("usage: hubbub backup DEST [FLAGS…] | hubbub restore SRC [FLAGS…]");
        return ExitCode::from(2);
    };
    let mut flags = vec![args[0].clone()];
    flags.extend(args[3..].iter().cloned());
    let Some(config) = settings(flags) else {
        return ExitCode::FAILURE;
    };
    let path = std::path::PathBuf::from(path);
    if args[1] == "backup" {
        match server::backup::backup(&config, &path).await {
            Ok(r) => {
                println!(
                    "backed up to {}: database {} bytes, {} files ({} bytes), in {:.2} s",
                    path.display(),
                    r.database_bytes,
                    r.files,
                    r.file_bytes,
                    r.took.as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hubbub: backup failed: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        match server::backup::restore(&config, &path).await {
            Ok(()) => {
                println!(
                    "restored {} into {}",
                    path.display(),
                    config.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hubbub: restore failed: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

const OPS_USAGE: &str = "usage: hubbub admin grant|revoke USER [FLAGS…]
       hubbub export --room ROOM [--out FILE] [FLAGS…]
       hubbub import FILE|- [--as ROOM] [--private|--public] [FLAGS…]";

/// `hubbub admin grant|revoke USER`, `hubbub export --room ROOM [--out FILE]` and
/// `hubbub import FILE [--as ROOM] [--private|--public]`, on the storage of the settings (the
/// data directory or `--database`); the other flags are the server's.
async fn ops_command(args: &[OsString]) -> ExitCode {
    let usage = || {
        eprintln!("{OPS_USAGE}");
        ExitCode::from(2)
    };
    let command = args[1].to_string_lossy().into_owned();
    // The command's own words and options; everything else goes to the settings.
    let mut words: Vec<String> = Vec::new();
    let mut options: std::collections::HashMap<&str, String> = Default::default();
    let mut flags: Vec<OsString> = vec![args[0].clone()];
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        let text = a.to_string_lossy();
        match text.as_ref() {
            "--room" | "--out" | "--as" => {
                let key = match text.as_ref() {
                    "--room" => "room",
                    "--out" => "out",
                    _ => "as",
                };
                match rest.next() {
                    Some(v) => {
                        options.insert(key, v.to_string_lossy().into_owned());
                    }
                    None => return usage(),
                }
            }
            "--private" | "--public" => {
                options.insert("visibility", text.trim_start_matches('-').to_owned());
            }
            _ if !text.starts_with('-') && flags.len() == 1 => words.push(text.into_owned()),
            _ => {
                flags.push(a.clone());
                // A flag's value follows it (unless given as --flag=value or a switch).
                if !text.contains('=') && !SWITCHES.contains(&text.as_ref()) {
                    if let Some(v) = rest.next() {
                        flags.push(v.clone());
                    }
                }
            }
        }
    }
    let Some(config) = settings(flags) else {
        return ExitCode::FAILURE;
    };
    let (store, accounts) = match server::open_stores(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hubbub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match (command.as_str(), words.as_slice()) {
        ("admin", [verb, user]) if verb == "grant" || verb == "revoke" => {
            server::ops::set_admin(&accounts, user, verb == "grant")
                .await
                .map(|()| {
                    let what = if verb == "grant" { "now" } else { "no longer" };
                    format!("@{user} is {what} an admin")
                })
        }
        ("export", []) => {
            let Some(room) = options.get("room") else {
                return usage();
            };
            let written = match options.get("out") {
                Some(path) => match std::fs::File::create(path) {
                    Ok(file) => {
                        let mut out = std::io::BufWriter::new(file);
                        server::ops::export(&store, room, &mut out).await
                    }
                    Err(e) => Err(e.into()),
                },
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    server::ops::export(&store, room, &mut out).await
                }
            };
            written.map(|n| format!("exported {n} events of #{room}"))
        }
        ("import", [path]) => {
            let visibility = options.get("visibility").map(|v| {
                if v == "private" {
                    hubbub::protocol::Visibility::Private
                } else {
                    hubbub::protocol::Visibility::Public
                }
            });
            let rename = options.get("as").map(String::as_str);
            let imported = if path == "-" {
                let input = std::io::BufReader::new(std::io::stdin().lock());
                server::ops::import(&store, input, rename, visibility).await
            } else {
                match std::fs::File::open(path) {
                    Ok(file) => {
                        let input = std::io::BufReader::new(file);
                        server::ops::import(&store, input, rename, visibility).await
                    }
                    Err(e) => Err(e.into()),
                }
            };
            imported.map(|(room, n)| format!("imported {n} events into #{room}"))
        }
        _ => return usage(),
    };
    match outcome {
        Ok(said) => {
            // The export itself may be on standard output: what happened goes to standard error.
            eprintln!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hubbub: {command} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server's flags that take no value.
const SWITCHES: &[&str] = &["--allow-anonymous", "--secure-cookies"];

async fn start(config: Config) -> Result<(), server::ServerError> {
    let leptos_options = config::leptos_options(&config.leptos_config)?;
    let addr = config.addr.unwrap_or(leptos_options.site_addr);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    server::run(listener, config, leptos_options, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
