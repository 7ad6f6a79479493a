//! Files attached to messages: where their bytes live ([`BlobStore`], content-addressed by
//! SHA-256), and what they are, read from their first bytes (never from what the uploader
//! claimed).

use async_trait::async_trait;
use axum::body::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

/// A blob's bytes as they are read, in pieces.
pub type BlobBytes = BoxStream<'static, std::io::Result<Bytes>>;

/// Where attachments' bytes are kept, each under its SHA-256 (hex).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A place for an upload to be written before its digest is known.
    fn scratch(&self) -> PathBuf;
    /// Keeps the file at `written` (a [`BlobStore::scratch`] path) as blob `sha256`; a blob
    /// with that digest already kept is the same bytes, and the new copy is dropped.
    async fn keep(&self, written: &Path, sha256: &str) -> std::io::Result<()>;
    /// The blob, to read.
    async fn open(&self, sha256: &str) -> std::io::Result<Option<BlobBytes>>;
    /// Forgets the blob (nothing refers to it any more).
    async fn delete(&self, sha256: &str) -> std::io::Result<()>;
}

/// The default blob store: a directory under the data directory, one file per blob in a
/// folder named by its first two hex digits.
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    pub fn new(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(dir.join("incoming"))?;
        Ok(DirBlobs { dir })
    }

    fn path(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(&sha256[..2]).join(sha256))
    }
}

#[async_trait]
impl BlobStore for DirBlobs {
    fn scratch(&self) -> PathBuf {
        self.dir
            .join("incoming")
            .join(uuid::Uuid::now_v7().to_string())
    }

    async fn keep(&self, written: &Path, sha256: &str) -> std::io::Result<()> {
        let Some(path) = self.path(sha256) else {
            return Err(std::io::Error::other("not a SHA-256"));
        };
        if tokio::fs::try_exists(&path).await? {
            return tokio::fs::remove_file(written).await;
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(written, &path).await
    }

    async fn open(&self, sha256: &str) -> std::io::Result<Option<BlobBytes>> {
        let Some(path) = self.path(sha256) else {
            return Ok(None);
        };
        match tokio::fs::File::open(path).await {
            Ok(f) => Ok(Some(tokio_util::io::ReaderStream::new(f).boxed())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, sha256: &str) -> std::io::Result<()> {
        let Some(path) = self.path(sha256) else {
            return Ok(());
        };
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Bytes of one row of a blob kept in PostgreSQL.
const CHUNK: usize = 1 << 20;

/// The blob store of a cluster: blobs in the shared PostgreSQL database, in rows of
/// [`CHUNK`] bytes, so that every node serves every file with nothing shared but the database
/// (and a backup of it holds the files). Uploads are still streamed to a local scratch file
/// first, while their digest is worked out.
pub struct PgBlobs {
    pool: PgPool,
    scratch: PathBuf,
}

impl PgBlobs {
    pub fn new(pool: PgPool, data_dir: &Path) -> std::io::Result<Self> {
        let scratch = data_dir.join("blobs").join("incoming");
        std::fs::create_dir_all(&scratch)?;
        Ok(PgBlobs { pool, scratch })
    }
}

fn db_error(e: sqlx::Error) -> std::io::Error {
    std::io::Error::other(e)
}

#[async_trait]
impl BlobStore for PgBlobs {
    fn scratch(&self) -> PathBuf {
        self.scratch.join(uuid::Uuid::now_v7().to_string())
    }

    async fn keep(&self, written: &Path, sha256: &str) -> std::io::Result<()> {
        let kept = async {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            // One writer per digest at a time; a blob already kept is the same bytes.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(sha256)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            let known: Option<i32> =
                sqlx::query_scalar("SELECT n FROM blob_chunks WHERE sha256 = $1 AND n = 0")
                    .bind(sha256)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
            if known.is_none() {
                let mut file = tokio::fs::File::open(written).await?;
                let mut n = 0i32;
                loop {
                    let mut buf = Vec::with_capacity(CHUNK);
                    (&mut file).take(CHUNK as u64).read_to_end(&mut buf).await?;
                    if buf.is_empty() && n > 0 {
                        break;
                    }
                    sqlx::query("INSERT INTO blob_chunks (sha256, n, data) VALUES ($1, $2, $3)")
                        .bind(sha256)
                        .bind(n)
                        .bind(&buf)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    if buf.len() < CHUNK {
                        break;
                    }
                    n += 1;
                }
            }
            tx.commit().await.map_err(db_error)
        }
        .await;
        let _ = tokio::fs::remove_file(written).await;
        kept
    }

    async fn open(&self, sha256: &str) -> std::io::Result<Option<BlobBytes>> {
        let first: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM blob_chunks WHERE sha256 = $1 AND n = 0")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        let Some(first) = first else {
            return Ok(None);
        };
        // The rest one row at a time, as the response is written: a large file is never
        // held whole.
        let (pool, sha) = (self.pool.clone(), sha256.to_owned());
        let rest = futures_util::stream::try_unfold(1i32, move |n| {
            let (pool, sha) = (pool.clone(), sha.clone());
            async move {
                let data: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT data FROM blob_chunks WHERE sha256 = $1 AND n = $2")
                        .bind(&sha)
                        .bind(n)
                        .fetch_optional(&pool)
                        .await
                        .map_err(db_error)?;
                Ok(data.map(|d| (Bytes::from(d), n + 1)))
            }
        });
        Ok(Some(
            futures_util::stream::once(async move { Ok(Bytes::from(first)) })
                .chain(rest)
                .boxed(),
        ))
    }

    async fn delete(&self, sha256: &str) -> std::io::Result<()> {
        sqlx::query("DELETE FROM blob_chunks WHERE sha256 = $1")
            .bind(sha256)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// What a file is, from its first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub mime: &'static str,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// How many of a file's first bytes [`sniff`] looks at.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// Reads what a file is from its first bytes: the image types shown inline (PNG, JPEG, GIF,
/// WebP, with their size in pixels), PDF, and otherwise UTF-8 text or bytes. HTML and SVG are
/// text: they are never served as anything a browser would run.
pub fn sniff(head: &[u8]) -> Kind {
    let kind = |mime, dims: Option<(u32, u32)>| Kind {
        mime,
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
    };
    let be16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let le16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.starts_with(b"\x89PNG\r\n\x1a\n") && head.get(12..16) == Some(b"IHDR") {
        return kind("image/png", be32(16).zip(be32(20)));
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return kind("image/gif", le16(6).zip(le16(8)));
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return kind("image/jpeg", jpeg_size(head));
    }
    if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        return kind("image/webp", webp_size(head));
    }
    if head.starts_with(b"%PDF-") {
        return kind("application/pdf", None);
    }
    let _ = be16;
    // Text if what was read is UTF-8 (a character cut at the end of the sample does not count)
    // with no NUL.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() >= SNIFF_BYTES,
    };
    if text && !head.contains(&0) {
        kind("text/plain", None)
    } else {
        kind("application/octet-stream", None)
    }
}

/// A JPEG's size from its start-of-frame segment.
fn jpeg_size(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if sof {
            let h = u32::from(u16::from_be_bytes([b[i + 5], b[i + 6]]));
            let w = u32::from(u16::from_be_bytes([b[i + 7], b[i + 8]]));
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// A WebP's size from its VP8, VP8L or VP8X chunk.
fn webp_size(b: &[u8]) -> Option<(u32, u32)> {
    let chunk = b.get(12..16)?;
    let u24 = |at: usize| -> Option<u32> {
        let x = b.get(at..at + 3)?;
        Some(u32::from(x[0]) | u32::from(x[1]) << 8 | u32::from(x[2]) << 16)
    };
    match chunk {
        b"VP8X" => Some((u24(24)? + 1, u24(27)? + 1)),
        b"VP8 " => {
            let x = b.get(26..30)?;
            let w = u32::from(u16::from_le_bytes([x[0], x[1]]) & 0x3FFF);
            let h = u32::from(u16::from_le_bytes([x[2], x[3]]) & 0x3FFF);
            Some((w, h))
        }
        b"VP8L" => {
            let x = b.get(21..25)?;
            let v = u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            Some(((v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1))
        }
        _ => None,
    }
}

/// Makes a file name safe to keep and to send back in a header: no path, no control or
/// invisible characters, at most 120 characters; `file` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !crate::protocol::hidden_char(*c) && *c != '"')
        .take(120)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend(w.to_be_bytes());
        b.extend(h.to_be_bytes());
        b.extend([8, 6, 0, 0, 0]);
        b
    }

    #[test]
    fn images_are_known_by_their_bytes_with_their_size() {
        let k = sniff(&png(640, 480));
        assert_eq!(
            (k.mime, k.width, k.height),
            ("image/png", Some(640), Some(480))
        );
        let gif = b"GIF89a\x20\x03\x58\x02rest";
        assert_eq!(sniff(gif).width, Some(800));
        assert_eq!(sniff(gif).height, Some(600));
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0];
        jpeg.extend([0xFF, 0xC0, 0, 17, 8, 0x01, 0xE0, 0x02, 0x80, 3]);
        assert_eq!(
            sniff(&jpeg),
            Kind {
                mime: "image/jpeg",
                width: Some(640),
                height: Some(480)
            }
        );
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        webp.extend([0x7F, 0x02, 0, 0xDF, 0x01, 0]);
        let k = sniff(&webp);
        assert_eq!(
            (k.mime, k.width, k.height),
            ("image/webp", Some(640), Some(480))
        );
    }

    #[test]
    fn what_a_browser_could_run_is_text_or_bytes() {
        assert_eq!(
            sniff(b"<!doctype html><script>alert(1)</script>").mime,
            "text/plain"
        );
        assert_eq!(
            sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>").mime,
            "text/plain"
        );
        assert_eq!(sniff(b"\0\x01\x02binary").mime, "application/octet-stream");
        assert_eq!(sniff(b"%PDF-1.7").mime, "application/pdf");
        // Claims to be a PNG by name, is HTML: the bytes decide.
        assert_eq!(sniff(b"<html>not a png</html>").mime, "text/plain");
    }

    #[test]
    fn names_lose_paths_and_tricks() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\a\\photo.jpg"), "photo.jpg");
        assert_eq!(clean_name("evil\u{202E}gpj.exe"), "evilgpj.exe");
        assert_eq!(clean_name("a\"b\r\n.png"), "ab.png");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(clean_name(&"x".repeat(500)).len(), 120);
    }
}
