//! Throwaway PostgreSQL databases, for the tests and benchmarks that run against a real server:
//! each gets a database of its own with a random name, dropped (with any connection still open
//! to it) when it goes.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

/// Where the tests find PostgreSQL: `HUBBUB_TEST_POSTGRES`, or the machine's own server.
pub fn server_url() -> String {
    std::env::var("HUBBUB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test or run; dropped on drop.
pub struct ScratchDb {
    server: String,
    name: String,
    url: String,
}

impl ScratchDb {
    /// Makes an empty database on the server at [`server_url`].
    pub async fn create() -> Result<Self, sqlx::Error> {
        let server = server_url();
        let name = format!("hubbub_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnectOptions::from_str(&server)?.connect().await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = PgConnectOptions::from_str(&server)?
            .database(&name)
            .to_url_lossy()
            .to_string();
        Ok(ScratchDb { server, name, url })
    }

    /// Its URL, for `--database`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block on another: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnectOptions::from_str(&server)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the scratch database {}", self.name);
        }
    }
}
