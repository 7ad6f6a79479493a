//! `hubbub backup DEST` and `hubbub restore SRC`: an online, consistent copy of the SQLite
//! database (SQLite's `VACUUM INTO`, which reads one snapshot while the server goes on writing)
//! and of the attachments, and the way back into an empty data directory. PostgreSQL is backed
//! up with its own tools (`docs/deploy.md`).

use crate::server::config::{Config, Database};
use crate::server::store::DB_FILE;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The attachments' directory under a data directory (see `files.rs`).
const BLOBS: &str = "blobs";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a PostgreSQL database is backed up with pg_dump (see docs/deploy.md), not by hubbub")]
    Postgres,
    #[error("{0} exists already: a backup goes to a new directory")]
    DestinationExists(PathBuf),
    #[error("{0} holds a database already: restore into an empty data directory")]
    NotEmpty(PathBuf),
    #[error("{0} is not a hubbub backup (no {DB_FILE} in it)")]
    NotABackup(PathBuf),
    #[error("the backup's database is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a backup wrote.
#[derive(Debug)]
pub struct Report {
    pub database_bytes: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub took: Duration,
}

/// The SQLite file the settings name.
fn database_file(config: &Config) -> Result<PathBuf, BackupError> {
    match &config.database {
        None => Ok(config.data_dir.join(DB_FILE)),
        Some(Database::Sqlite(path)) => Ok(path.clone()),
        Some(Database::Postgres(_)) => Err(BackupError::Postgres),
    }
}

/// Copies the database (one consistent snapshot, taken while the server may be writing) and
/// then the attachments into the new directory `dest`. Attachments are content-addressed and
/// never change, and each is on disk before the message that refers to it commits, so every
/// file the snapshot refers to is there to copy.
pub async fn backup(config: &Config, dest: &Path) -> Result<Report, BackupError> {
    let started = Instant::now();
    let source = database_file(config)?;
    if dest.exists() {
        return Err(BackupError::DestinationExists(dest.to_owned()));
    }
    std::fs::create_dir_all(dest)?;
    let target = dest.join(DB_FILE);
    let mut conn = SqliteConnectOptions::new()
        .filename(&source)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    sqlx::query("VACUUM INTO ?")
        .bind(target.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (files, file_bytes) = copy_tree(&config.data_dir.join(BLOBS), &dest.join(BLOBS))?;
    Ok(Report {
        database_bytes: std::fs::metadata(&target)?.len(),
        files,
        file_bytes,
        took: started.elapsed(),
    })
}

/// Checks the backup in `src` and copies it into the settings' data directory, which must hold
/// no database yet.
pub async fn restore(config: &Config, src: &Path) -> Result<(), BackupError> {
    let target = database_file(config)?;
    let backup = src.join(DB_FILE);
    if !backup.is_file() {
        return Err(BackupError::NotABackup(src.to_owned()));
    }
    if target.exists() {
        return Err(BackupError::NotEmpty(config.data_dir.clone()));
    }
    integrity(&backup).await?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Into a temporary name first: a restore cut short leaves no half database to start on.
    let partial = target.with_extension("restoring");
    std::fs::copy(&backup, &partial)?;
    copy_tree(&src.join(BLOBS), &config.data_dir.join(BLOBS))?;
    std::fs::rename(&partial, &target)?;
    Ok(())
}

/// `PRAGMA integrity_check` of the database file at `path`.
pub async fn integrity(path: &Path) -> Result<(), BackupError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await?;
    let (answer,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    if answer == "ok" {
        Ok(())
    } else {
        Err(BackupError::Damaged(answer))
    }
}

/// Copies the files under `from` (if it exists) to `to`; returns (files, bytes). Files being
/// written (`incoming/`) are not attachments yet and are left out.
fn copy_tree(from: &Path, to: &Path) -> Result<(u64, u64), BackupError> {
    let (mut files, mut bytes) = (0, 0);
    if !from.is_dir() {
        return Ok((0, 0));
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name == "incoming" {
                continue;
            }
            let (f, b) = copy_tree(&entry.path(), &to.join(&name))?;
            files += f;
            bytes += b;
        } else if kind.is_file() {
            bytes += std::fs::copy(entry.path(), to.join(&name))?;
            files += 1;
        }
    }
    Ok((files, bytes))
}
