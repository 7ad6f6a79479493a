//! The hubbub server binary: parse the configuration, bind the address, run until a signal.

use clap::Parser;
use hubbub::server::{self, config, Config};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
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
