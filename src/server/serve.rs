//! The accept loop: plain TCP or TLS (rustls), HTTP/1.1 with upgrades, a header read timeout and
//! header limits, caps on open connections (in all and per address), the peer address for the
//! handlers, and graceful shutdown of every connection.

use crate::server::limits::IpKey;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most header lines in one request; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// Largest request head, in bytes; more gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long shutdown waits for HTTP connections to finish their current request.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Longest pause of the accept loop when accepting fails (out of file descriptors): it backs off
/// from 10 ms, doubling, instead of spinning on an error that persists.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// What a refused connection is told.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";
/// A TLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection keeps reading (and discarding) what the peer still sends.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("invalid certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls acceptor for TLS 1.2 and 1.3 from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Caps on open connections, from the configuration.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// Addresses whose connections count only against the total (trusted proxies carry many
    /// clients each).
    pub exempt: Arc<Vec<IpAddr>>,
}

impl ConnLimits {
    /// No caps (tests and embedders that do their own).
    pub fn unlimited() -> Self {
        ConnLimits {
            max_total: usize::MAX,
            max_per_ip: usize::MAX,
            exempt: Arc::default(),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpKey, usize>,
}

/// The open connections, counted; shared by the accept loop and every connection's slot.
#[derive(Clone, Default)]
pub struct OpenConnections {
    counts: Arc<Mutex<Counts>>,
}

/// One open connection's place in the counts; freed when the connection's socket is dropped.
struct ConnSlot {
    counts: Arc<Mutex<Counts>>,
    key: Option<IpKey>,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, or `None` when a cap is reached.
    fn admit(&self, ip: IpAddr, limits: &ConnLimits) -> Option<ConnSlot> {
        let mut c = self.lock();
        if c.total >= limits.max_total {
            return None;
        }
        let key = (!limits.exempt.contains(&ip)).then(|| IpKey::of(ip));
        if let Some(key) = key {
            let n = c.per_ip.entry(key).or_insert(0);
            if *n >= limits.max_per_ip {
                return None;
            }
            *n += 1;
        }
        c.total += 1;
        Some(ConnSlot {
            counts: Arc::clone(&self.counts),
            key,
        })
    }

    /// Open connections in all.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(key) = self.key {
            if let Some(n) = c.per_ip.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_ip.remove(&key);
                }
            }
        }
    }
}

/// Refused connections being told why at one time; past it they are closed at once.
const MAX_REFUSING: usize = 256;

/// Tells a refused client why, without waiting on it, then closes. At most [`MAX_REFUSING`] at
/// a time, so refusing cannot itself hold descriptors without bound.
fn refuse(stream: TcpStream, tls: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    if tls || REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        if !tls {
            REFUSING.fetch_sub(1, Ordering::AcqRel);
        }
        drop(stream);
        return;
    }
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSAL)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if stream.shutdown().await.is_ok() {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        })
        .await;
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    });
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` until `stop` turns true; then stops accepting, lets each
/// connection finish its current request (for at most [`DRAIN_GRACE`]), and returns when it
/// started to stop.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    open: OpenConnections,
) -> std::io::Result<tokio::time::Instant> {
    let mut connections = tokio::task::JoinSet::new();
    let mut stop_accepting = stop.clone();
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = Duration::ZERO;
                    pair
                }
                Err(e) => {
                    // Out of file descriptors and the like: the error lasts until connections
                    // close, so wait longer each time instead of spinning on it.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    if backoff == MAX_ACCEPT_BACKOFF || backoff == Duration::from_millis(10) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopping(&mut stop_accepting) => break,
                    }
                    continue;
                }
            },
            _ = stopping(&mut stop_accepting) => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(slot) = open.admit(peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection refused: too many open");
            refuse(stream, tls.is_some());
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let stream = Lingering::new(stream, Some(slot));
            match tls {
                None => connection(stream, peer, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => connection(tls_stream, peer, app, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let stopped_at = tokio::time::Instant::now();
    drop(listener);
    // Each connection finishes its current request; one that is still sending its head (or is
    // stuck) does not hold up the shutdown past the grace period.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        tracing::debug!("closing the HTTP connections that did not finish in time");
    }
    Ok(stopped_at)
}

async fn connection<IO>(io: IO, peer: SocketAddr, app: Router, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TCP stream that closes gracefully when dropped: it sends FIN after whatever was written,
/// then reads and discards what the peer still sends, for up to [`LINGER`], before closing.
///
/// Closing a socket that has unread data makes the kernel send a reset, and a reset can destroy
/// the last frames written before it (a WebSocket Close 1009 to a client that is still sending
/// an oversized message, an HTTP error to a client still uploading). Lingering lets the peer read
/// them first.
///
/// It also holds the connection's place in the open-connection counts, so the place is freed
/// when the socket is, whether it served HTTP or was upgraded to a WebSocket.
struct Lingering {
    stream: Option<TcpStream>,
    _slot: Option<ConnSlot>,
}

impl Lingering {
    fn new(stream: TcpStream, slot: Option<ConnSlot>) -> Self {
        Self {
            stream: Some(stream),
            _slot: slot,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("stream taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        // The connection keeps its place in the counts until its descriptor is closed.
        runtime.spawn(linger(stream, self._slot.take()));
    }
}

async fn linger(mut stream: TcpStream, _slot: Option<ConnSlot>) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 8 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
