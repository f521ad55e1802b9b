//! gRPC and HTTP servers over a pipeline's served views.
//!
//! ```text
//!  pipeline ──▶ served views ──(page reads)──▶ producer task per stream ──▶ bounded buffer ──▶ client
//!                                             (own tokio runtime, 2 workers, own thread)
//! ```
//!
//! Services (each present when configured):
//!
//! * `org.signal.AccountStreamService/StreamAccountData` — the cds directory, wire-compatible
//!   with the original account stream (spec/cds.md).
//! * `sluice.v1.Messages` — the messenger sync feed, `Changes` and `Watch` (spec/messages.md).
//! * `sluice.v1.Views/Subscribe` — any served output: snapshot, then changes.
//! * HTTP: `GET /health`, and the feed's `GET /messages` and `GET /messages/{id}`.
//!
//! **Delivery.** Streams resume by continuation token ([`token`]): a token names the frontier
//! through which every change was delivered, and resuming sends each key changed since at
//! its current state — at least once, never a stale state. A token the view can no longer
//! honour (older than its horizon) restarts the client with a fresh snapshot.
//!
//! **Slow clients** never slow the pipeline: the views are read a page at a time under a
//! short read lock, each stream holds at most `client_buffer` messages, and a stream whose
//! buffer stays full for `stall_timeout` is ended with `RESOURCE_EXHAUSTED`.
//!
//! The server runs on its own runtime and thread, so the dataflow's worker threads never run
//! network code, and [`start`] returns once the listeners are bound.
//!
//! **TLS.** With [`ServerConfig::tls`] both listeners serve TLS only, through
//! [`sluice_auth::tls`]: the certificate is checked before binding and reloaded when its
//! files change, and handshakes run beside the accept loop, so a client that stalls its
//! handshake delays no other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_auth::tls::Listening;
pub use sluice_auth::tls::TlsFiles;
use sluice_served::ServedView;
use tokio::sync::watch;

use crate::listen::TlsConn;

mod account_stream;
mod admin;
mod auth;
mod follow;
mod http;
mod listen;
pub use sluice_auth::jwt;
mod messages;
mod outbox;
pub mod token;
mod views;

pub use account_stream::MAX_RECORDS;
pub use admin::start_admin;
pub use http::MESSAGE_UPDATES;
pub use messages::{DEFAULT_LIMIT, MAX_LIMIT};
pub use outbox::client_counts;

/// The generated protobuf messages, server traits and clients.
pub mod proto {
    /// Package `org.signal`.
    pub mod org {
        /// The account stream service.
        #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
        pub mod signal {
            include!(concat!(env!("OUT_DIR"), "/org.signal.rs"));
        }
    }
    /// Package `sluice.v1`.
    pub mod sluice {
        /// The messages feed and view subscriptions.
        #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
        }
    }
}

/// How long open connections get to finish after [`ServerHandle::stop`] before they are cut.
const DRAIN: Duration = Duration::from_secs(5);
/// The shortest accepted continuation-token key.
pub const MIN_TOKEN_KEY: usize = 16;

/// What to serve and where.
pub struct ServerConfig {
    /// Where the gRPC server listens (`None`: no gRPC server). Port 0 picks a free port.
    pub grpc: Option<SocketAddr>,
    /// Where the HTTP server listens (`None`: no HTTP server). Port 0 picks a free port.
    pub http: Option<SocketAddr>,
    /// The HMAC key continuation tokens are signed with; keep it across restarts so tokens
    /// stay valid. At least [`MIN_TOKEN_KEY`] bytes when a token-issuing service is served.
    pub token_key: Vec<u8>,
    /// The views `Views/Subscribe` serves, by served sink name.
    pub views: BTreeMap<String, ServedView>,
    /// The secret `Views/Subscribe` callers send as `x-sluice-auth-token` (`None`: no auth).
    pub subscribe_token: Option<String>,
    /// The cds account stream, if served.
    pub account_stream: Option<AccountStreamConfig>,
    /// The messages feed, if served.
    pub messages: Option<MessagesConfig>,
    /// Messages buffered per stream (at least 1), e.g. 64.
    pub client_buffer: usize,
    /// A stream whose buffer stays full this long is ended with `RESOURCE_EXHAUSTED`.
    pub stall_timeout: Duration,
    /// Serve TLS on both listeners with this certificate and key (`None`: plain).
    pub tls: Option<TlsFiles>,
}

/// The cds account stream over the `directory` view.
pub struct AccountStreamConfig {
    /// The cds `directory` output.
    pub view: ServedView,
    /// The secret callers send as `x-signal-auth-token` (`None`: no auth, warned at start).
    pub auth_token: Option<String>,
}

/// The messages sync feed over the `feed` view.
pub struct MessagesConfig {
    /// The messages `feed` output (partitioned by `user`, versioned by `timestamp`).
    pub view: ServedView,
    /// The HS256 secret of the callers' bearer tokens.
    pub jwt_secret: Vec<u8>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work (the user's fault).
    #[error("server configuration: {0}")]
    Config(String),
    /// A listener could not be bound (address in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("server: {0}")]
    Tls(#[from] sluice_auth::tls::TlsError),
    /// The runtime or its thread could not be created.
    #[error("cannot start the server runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running server; [`ServerHandle::stop`] (or dropping it) shuts it down.
pub struct ServerHandle {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the gRPC server is bound to.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The address the HTTP server is bound to.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Ends every open stream (`UNAVAILABLE`, resume by token), stops both servers and waits.
    ///
    /// Blocks for up to a few seconds while connections drain: call it off async worker threads
    /// (whose clients would otherwise be unable to answer the server's goodbye).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the server thread panicked");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What every stream needs: the token key, the buffer limits, the shutdown signal.
#[derive(Clone)]
pub(crate) struct Shared {
    pub token_key: Arc<[u8]>,
    pub limits: outbox::Limits,
    pub shutdown: watch::Receiver<bool>,
}

/// Binds the configured listeners and serves on a runtime of its own.
pub fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    check(&config)?;
    // Before binding: a bad certificate is a configuration error, found before anything runs.
    let tls = config
        .tls
        .as_ref()
        .map(|files| sluice_auth::tls::acceptor(files, "server"))
        .transpose()?;
    // Bound here, with std, so a bind error is the caller's to handle and port 0 resolves
    // before `start` returns; the runtime adopts the sockets on its own thread.
    let grpc = config.grpc.map(bind).transpose()?;
    let http = config.http.map(bind).transpose()?;
    let (grpc_addr, http_addr) = (grpc.as_ref().map(|g| g.1), http.as_ref().map(|h| h.1));

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (grpc_router, http_router) = routers(config, shutdown.clone());
    let grpc = grpc.map(|(listener, _)| (listener, grpc_router));
    let http = http.map(|(listener, _)| (listener, http_router));
    let thread = spawn(grpc, http, tls, shutdown)?;
    if let Some(addr) = grpc_addr {
        tracing::info!(%addr, "gRPC server listening");
    }
    if let Some(addr) = http_addr {
        tracing::info!(%addr, "HTTP server listening");
    }
    Ok(ServerHandle {
        grpc_addr,
        http_addr,
        shutdown: shutdown_tx,
        thread: Some(thread),
    })
}

/// A non-blocking listener on `addr`, and the address it got.
fn bind(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), ServerError> {
    let error = |source| ServerError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// The gRPC services and the HTTP routes of a configuration.
fn routers(config: ServerConfig, shutdown: watch::Receiver<bool>) -> (tonic::transport::server::Router, axum::Router) {
    let shared = Shared {
        token_key: config.token_key.into(),
        limits: outbox::Limits {
            buffer: config.client_buffer,
            stall: config.stall_timeout,
        },
        shutdown,
    };
    let feed = config.messages.map(|m| messages::Feed {
        view: m.view,
        jwt_secret: m.jwt_secret.into(),
    });
    let account_stream = config.account_stream.map(|a| {
        proto::org::signal::account_stream_service_server::AccountStreamServiceServer::new(
            account_stream::AccountStream {
                view: a.view,
                auth_token: a.auth_token,
                shared: shared.clone(),
            },
        )
    });
    let messages = feed.clone().map(|feed| {
        proto::sluice::v1::messages_server::MessagesServer::new(messages::MessagesService {
            feed,
            shared: shared.clone(),
        })
    });
    let views = (!config.views.is_empty()).then(|| {
        proto::sluice::v1::views_server::ViewsServer::new(views::ViewsService {
            views: Arc::new(config.views),
            auth_token: config.subscribe_token,
            shared: shared.clone(),
        })
    });
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Pings find dead peers, whose streams would otherwise wait for data forever.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_optional_service(account_stream)
        .add_optional_service(messages)
        .add_optional_service(views);
    (grpc, http::router(feed))
}

/// Starts the server thread and waits until its runtime has adopted the listeners.
fn spawn(
    grpc: Option<(std::net::TcpListener, tonic::transport::server::Router)>,
    http: Option<(std::net::TcpListener, axum::Router)>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ServerError> {
    // The runtime is built, used and dropped on the server thread only: `start` may be called
    // from async code, where blocking on (or dropping) another runtime panics.
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("sluice-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-server")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            // TLS listeners spawn their accept loops, so they are made inside the runtime.
            let adopt = |l, name: &str| Listening::adopt(l, tls.as_ref(), name);
            let adopted = runtime.block_on(async {
                let grpc = grpc.map(|(l, r)| adopt(l, "gRPC server").map(|l| (l, r))).transpose()?;
                let http = http.map(|(l, r)| adopt(l, "HTTP server").map(|l| (l, r))).transpose()?;
                Ok((grpc, http))
            });
            match adopted {
                Ok((grpc, http)) => {
                    let _ = ready_tx.send(Ok(()));
                    runtime.block_on(serve(grpc, http, shutdown));
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                }
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(ServerError::Runtime)?;
    let started = ready
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the server thread died while starting")));
    match started {
        Ok(()) => Ok(thread),
        Err(error) => {
            let _ = thread.join();
            Err(ServerError::Runtime(error))
        }
    }
}

/// Refuses configurations that cannot work, and warns about ones that are open to anyone.
fn check(config: &ServerConfig) -> Result<(), ServerError> {
    if config.grpc.is_none() && config.http.is_none() {
        return Err(ServerError::Config("neither a gRPC nor an HTTP address is set".into()));
    }
    if config.client_buffer == 0 {
        return Err(ServerError::Config("client_buffer must be at least 1".into()));
    }
    let issues_tokens = config.account_stream.is_some() || !config.views.is_empty();
    if issues_tokens && config.token_key.len() < MIN_TOKEN_KEY {
        return Err(ServerError::Config(format!(
            "token_key must be at least {MIN_TOKEN_KEY} bytes: continuation tokens are signed with it"
        )));
    }
    if config.messages.as_ref().is_some_and(|m| m.jwt_secret.is_empty()) {
        return Err(ServerError::Config("the messages feed needs a jwt_secret".into()));
    }
    let grpc_services = config.account_stream.is_some() || !config.views.is_empty();
    if config.grpc.is_none() && grpc_services {
        tracing::warn!("served views are configured for gRPC but no gRPC address is set; they are not served");
    }
    if config.account_stream.as_ref().is_some_and(|a| a.auth_token.is_none()) {
        tracing::warn!("the account stream has no auth token configured: anyone can read it");
    }
    if !config.views.is_empty() && config.subscribe_token.is_none() {
        tracing::warn!("Views/Subscribe has no auth token configured: anyone can read every served view");
    }
    Ok(())
}

/// Serves until `shutdown`, then lets connections drain for at most [`DRAIN`].
async fn serve(
    grpc: Option<(Listening, tonic::transport::server::Router)>,
    http: Option<(Listening, axum::Router)>,
    shutdown: watch::Receiver<bool>,
) {
    let signal = |mut shutdown: watch::Receiver<bool>| async move {
        // A dropped sender (the handle is gone) also means stop.
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let grpc = async {
        let served = match grpc {
            None => Ok(()),
            Some((Listening::Plain(listener), router)) => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, signal(shutdown.clone()))
                    .await
            }
            Some((Listening::Tls(listener), router)) => {
                router
                    .serve_with_incoming_shutdown(TlsConn::incoming(listener), signal(shutdown.clone()))
                    .await
            }
        };
        if let Err(error) = served {
            tracing::error!(%error, "gRPC server failed");
        }
    };
    let http = async {
        let served = match http {
            None => Ok(()),
            Some((Listening::Plain(listener), router)) => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal(shutdown.clone()))
                    .await
            }
            Some((Listening::Tls(listener), router)) => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal(shutdown.clone()))
                    .await
            }
        };
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    };
    let drained = async {
        signal(shutdown.clone()).await;
        // Streams end themselves on shutdown, but a client that does not read cannot be
        // sent its final status; past the grace period its connection is simply cut.
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        _ = async { tokio::join!(grpc, http) } => {}
        () = drained => tracing::warn!("connections still open {DRAIN:?} after shutdown; closing them"),
    }
    tracing::info!("server stopped");
}
