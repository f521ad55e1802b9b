//! TLS for sluice's endpoints (the publish endpoint, the gRPC and HTTP servers): a
//! certificate reloaded when its files change, and a listener whose handshakes run beside
//! each other, so one slow client delays no one.
//!
//! rustls with the aws-lc-rs provider (TLS 1.2 and 1.3), ALPN offering HTTP/2 and HTTP/1.1,
//! no client certificates (callers authenticate with their tokens). [`acceptor`] loads the
//! pair before anything listens, so a bad file is a start error; a thread then checks the
//! files' modification times and sizes every [`TlsFiles::reload_every`] and swaps in a
//! changed pair, keeping the previous one if it does not load (a rotation caught half-way).
//! Handshakes run on tasks of their own: at most 512 at once, 16 from one client address
//! (its connections past that are closed), 10 s each.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file cannot be read or used.
    #[error("tls.{key} {}: {reason}", path.display())]
    File {
        /// Which of the two, as the pipeline key names it: `cert` or `key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Setup(String),
}

/// How long a client may take to finish its handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, accepting waits, so a flood of connections that
/// never finish their handshake holds a bounded amount of memory.
const MAX_HANDSHAKES: usize = 512;
/// Handshakes in progress from one client address; its connections past it are closed.
const MAX_HANDSHAKES_PER_PEER: usize = 16;
/// Failed handshakes are logged at most this often, with their count.
const HANDSHAKE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the endpoint's certificate chain and private key are, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change; a changed pair is used for the
    /// handshakes after it, and a pair that does not load keeps the previous one in use.
    pub reload_every: Duration,
}

impl TlsFiles {
    /// The files at `cert` and `key`, checked for changes every 10 seconds.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            reload_every: Duration::from_secs(10),
        }
    }
}

/// The files' modification times and sizes: what a reload compares.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let of = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    [of(&files.cert), of(&files.key)]
}

/// Loads the certificate chain and key, checking that they belong together.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let problem = |key: &'static str, reason: String| TlsError::File {
        key,
        path: if key == "cert" { &files.cert } else { &files.key }.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| problem("cert", pem_reason(e)))?;
    if chain.is_empty() {
        return Err(problem("cert", "holds no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| problem("key", pem_reason(e)))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| problem("key", format!("cannot be used: {e}")))?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        // Some key types cannot tell; the handshake then shows it.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(problem("cert", format!("cannot be used with the key: {e}"))),
    }
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "holds no usable PEM block".into(),
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// The certificate handshakes are answered with. A thread of its own loads it again when
/// its files change, so a handshake never waits for the filesystem (a hung NFS mount would
/// otherwise hold every handshake, and the endpoint's runtime, behind a lock).
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloading")
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// Checks `files` every `reload_every` and swaps a changed pair into `resolver`, until the
/// resolver is gone (its endpoint stopped). `loaded` is the stamp of the pair in use.
fn watch_files(
    resolver: Weak<Reloading>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    endpoint: String,
    mut loaded: Stamp,
) {
    loop {
        std::thread::sleep(files.reload_every.max(Duration::from_millis(10)));
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let before = stamp(&files);
        if before == loaded {
            continue;
        }
        match load(&files, &provider) {
            // Files that changed while they were read may have been read half-written: the
            // pair is used, but the stamp is not kept, so the next check reads them again.
            Ok(pair) => {
                *resolver.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                if stamp(&files) == before {
                    loaded = before;
                }
                tracing::info!(%endpoint, cert = %files.cert.display(), "TLS certificate reloaded");
            }
            // Often a rotation caught half-way (the certificate written, the key not yet):
            // the next check tries again, the old pair serves meanwhile.
            Err(error) => {
                tracing::warn!(%endpoint, %error, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

/// The TLS configuration of an endpoint serving `files`, loaded once now so a missing or
/// bad file stops the endpoint before it starts; `endpoint` names it in log lines. A thread
/// watches the files for as long as the configuration is in use.
pub fn acceptor(files: &TlsFiles, endpoint: &str) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Stamped before reading: a change made meanwhile is loaded at the first check.
    let stamped = stamp(files);
    let pair = load(files, &provider)?;
    let resolver = Arc::new(Reloading {
        current: RwLock::new(Arc::new(pair)),
    });
    let watcher = {
        let (resolver, files, provider) = (Arc::downgrade(&resolver), files.clone(), Arc::clone(&provider));
        let endpoint = endpoint.to_owned();
        move || watch_files(resolver, files, provider, endpoint, stamped)
    };
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(watcher)
        .map_err(|e| TlsError::Setup(format!("cannot start the certificate watcher: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // What axum serves: HTTP/2 when the client offers it, else HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An endpoint's listener once a runtime has adopted it: plain TCP, or TLS with the
/// handshake done first.
pub enum Listening {
    /// Plain TCP.
    Plain(TcpListener),
    /// TLS: connections arrive with their handshake done.
    Tls(TlsListener),
}

impl Listening {
    /// Adopts the non-blocking `listener` on the current runtime, behind `tls` if set. Must
    /// run inside the runtime: a TLS listener spawns its accept loop there.
    pub fn adopt(listener: std::net::TcpListener, tls: Option<&TlsAcceptor>, endpoint: &str) -> io::Result<Listening> {
        let listener = TcpListener::from_std(listener)?;
        match tls {
            Some(acceptor) => TlsListener::new(listener, acceptor.clone(), endpoint.to_owned()).map(Listening::Tls),
            None => Ok(Listening::Plain(listener)),
        }
    }
}

/// Connections whose TLS handshake is done, for axum (an [`axum::serve::Listener`]) or, as
/// a channel, for tonic. Handshakes run on tasks of their own: accepting goes on while a
/// client is slow to finish its handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` with `acceptor`, on a task of the current runtime;
    /// `endpoint` names it in log lines.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, endpoint: String) -> io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, acceptor, sender, endpoint));
        Ok(TlsListener { ready, addr })
    }

    /// The connections as they become ready, with their peers' addresses.
    pub fn into_receiver(self) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        self.ready
    }
}

/// Handshakes in progress per client address: what one client may hold of the endpoint.
#[derive(Default)]
struct PerPeer(Mutex<HashMap<IpAddr, usize>>);

/// One handshake of a client address, given back on drop.
struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    /// A slot for `ip`, unless it has [`MAX_HANDSHAKES_PER_PEER`] in progress already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    endpoint: String,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let peers = Arc::new(PerPeer::default());
    let limit = || {
        Arc::new(Mutex::new(sluice_runtime::log_limit::LogLimit::new(
            HANDSHAKE_LOG_EVERY,
        )))
    };
    let (failures, accept_errors, crowded) = (limit(), limit(), limit());
    let allow = |limit: &Mutex<sluice_runtime::log_limit::LogLimit>| {
        limit.lock().unwrap_or_else(PoisonError::into_inner).allow()
    };
    loop {
        // Both waits watch for the listener being dropped (its server stopped), so the port
        // is freed at once even while every handshake slot is taken.
        let permit = tokio::select! {
            biased;
            () = ready.closed() => return,
            permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most often: wait instead of spinning.
                if let Some(held_back) = allow(&accept_errors) {
                    tracing::warn!(%endpoint, %error, failed = held_back + 1, "cannot accept connections");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One client cannot take every slot with connections that never handshake: past
        // its share its new connections are closed at once, and others are still accepted.
        let Some(slot) = peers.take(peer.ip()) else {
            if let Some(held_back) = allow(&crowded) {
                tracing::warn!(%endpoint, %peer, closed = held_back + 1, "connections closed: the client has {MAX_HANDSHAKES_PER_PEER} TLS handshakes in progress");
            }
            continue;
        };
        let (acceptor, ready, failures, endpoint) =
            (acceptor.clone(), ready.clone(), Arc::clone(&failures), endpoint.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    drop(slot);
                    // The handshake slot is kept until the server has taken the connection,
                    // so a server slow to take them slows accepting instead of piling them
                    // up. Fails only when the server stops: the connection goes with it.
                    let _ = ready.send((stream, peer)).await;
                    drop(permit);
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            drop((slot, permit));
            if let Some(held_back) = allow(&failures) {
                tracing::warn!(%endpoint, %peer, %error, failed = held_back + 1, "TLS handshakes failed (plain HTTP to an HTTPS port, an untrusted certificate, a client that stalls)");
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (the runtime is going away): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
