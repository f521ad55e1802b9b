//! HTTPS for the publish endpoint: a certificate that is reloaded when its files change, and
//! a listener whose handshakes run beside each other, so one slow client delays no other.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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

/// The files' modification times: what a reload compares.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(files: &TlsFiles) -> Stamp {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&files.cert), modified(&files.key))
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
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        // A key that parses but is not the certificate's: the pair is wrong, said of the
        // certificate; anything else is about the key itself.
        let which = match e {
            rustls::Error::InconsistentKeys(_) => "cert",
            _ => "key",
        };
        problem(which, format!("cannot be used: {e}"))
    })
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "holds no usable PEM block".into(),
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// The certificate handshakes are answered with, loaded again when its files change.
struct Reloading {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    endpoint: String,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    current: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl Reloading {
    /// The current certificate, after loading the files again if they changed and the last
    /// check is `reload_every` old. Checking costs two `stat` calls; it runs on the handshake
    /// that finds the last check old, so an idle endpoint does no work.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.files.reload_every {
            state.checked = Instant::now();
            let now = stamp(&self.files);
            if now != state.stamp {
                match load(&self.files, &self.provider) {
                    Ok(key) => {
                        state.current = Arc::new(key);
                        state.stamp = now;
                        tracing::info!(endpoint = %self.endpoint, cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    // Often a rotation caught half-way (the certificate written, the key not
                    // yet): the next check tries again, the old pair serves meanwhile.
                    Err(error) => {
                        tracing::warn!(endpoint = %self.endpoint, %error, "TLS certificate not reloaded; the previous one stays in use")
                    }
                }
            }
        }
        Arc::clone(&state.current)
    }
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS configuration of an endpoint serving `files`, loaded once now so a missing or
/// bad file stops the endpoint before it starts; `endpoint` names it in log lines.
pub fn acceptor(files: &TlsFiles, endpoint: &str) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = load(files, &provider)?;
    let resolver = Reloading {
        files: files.clone(),
        provider: Arc::clone(&provider),
        endpoint: endpoint.to_owned(),
        state: Mutex::new(ReloadState {
            current: Arc::new(key),
            stamp: stamp(files),
            checked: Instant::now(),
        }),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // What axum serves: HTTP/2 when the client offers it, else HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    endpoint: String,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let failures = Arc::new(Mutex::new(sluice_runtime::log_limit::LogLimit::new(
        HANDSHAKE_LOG_EVERY,
    )));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            // The listener was dropped (its server stopped): stop accepting, free the port.
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most often: wait instead of spinning.
                tracing::warn!(%endpoint, %error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, ready, failures, endpoint) =
            (acceptor.clone(), ready.clone(), Arc::clone(&failures), endpoint.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    drop(permit);
                    // Only fails when the server stops: the connection is dropped with it.
                    let _ = ready.send((stream, peer)).await;
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            let logged = failures.lock().unwrap_or_else(PoisonError::into_inner).allow();
            if let Some(held_back) = logged {
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
