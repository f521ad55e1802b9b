//! The bounded pipe between a stream's producer task and its client.
//!
//! ```text
//!  served view ──(read lock, one page)──▶ producer task ──▶ [ bounded channel ] ──▶ gRPC stream
//!                                              │                                      ▲
//!                                              └── final status (oneshot) ────────────┘
//! ```
//!
//! The producer pages from the shared view and pushes messages into a channel of
//! `client_buffer` messages; the gRPC response stream drains it. A client that stops reading
//! fills the channel (and HTTP/2 flow control stops the transport), so the producer waits —
//! but never longer than `stall_timeout`: then it gives up, and the stream ends with
//! `RESOURCE_EXHAUSTED` after the messages already buffered, the last of which carried the
//! continuation token the client resumes from. The pipeline never waits for a client (the
//! view is only read-locked for one page at a time), and a client costs at most its buffer.
//!
//! The final status travels beside the channel rather than in it, because the channel is
//! full exactly when a stall has to be reported.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::Status;

/// Client streams open now, in this process (every server).
static OPEN: AtomicU64 = AtomicU64::new(0);
/// Client streams ended for falling behind, in this process.
static CUT_OFF: AtomicU64 = AtomicU64::new(0);

/// Client streams open now and streams cut off so far for being too slow, for metrics.
pub fn client_counts() -> (u64, u64) {
    (OPEN.load(Ordering::Relaxed), CUT_OFF.load(Ordering::Relaxed))
}

/// What the client is told when it fell behind.
const TOO_SLOW: &str = "client too slow; resume with the last continuation token";

/// How big a client's buffer is and how long it may stay full.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub buffer: usize,
    pub stall: Duration,
}

/// Why a producer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The client went away (the response stream was dropped).
    Gone,
    /// The buffer stayed full for the stall timeout.
    Stalled,
    /// The server is shutting down.
    Shutdown,
}

/// The producer's end of a client stream.
pub(crate) struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    /// Taken by [`Outbox::finish`] (an `Option` because `Outbox` counts itself out on drop).
    end: Option<oneshot::Sender<Status>>,
    stall: Duration,
    shutdown: watch::Receiver<bool>,
}

/// The client's end: the buffered messages, then the final status, if any.
pub struct ClientStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    end: Option<oneshot::Receiver<Status>>,
}

/// A connected producer/client pair.
pub(crate) fn channel<T>(limits: Limits, shutdown: watch::Receiver<bool>) -> (Outbox<T>, ClientStream<T>) {
    // `max(1)`: a zero-capacity channel panics; the config check refuses 0 before this.
    let (tx, rx) = mpsc::channel(limits.buffer.max(1));
    let (end_tx, end_rx) = oneshot::channel();
    OPEN.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox {
        tx,
        end: Some(end_tx),
        stall: limits.stall,
        shutdown,
    };
    (outbox, ClientStream { rx, end: Some(end_rx) })
}

impl<T> Outbox<T> {
    /// Queues one message, waiting at most the stall timeout for room.
    pub async fn send(&mut self, message: T) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Stop::Shutdown),
            sent = self.tx.send_timeout(Ok(message), self.stall) => match sent {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(Stop::Stalled),
                Err(SendTimeoutError::Closed(_)) => Err(Stop::Gone),
            },
        }
    }

    /// Waits until `changes` moves (new final data may exist), or the client or server stops.
    pub async fn wait(&mut self, changes: &mut watch::Receiver<u64>) -> Result<(), Stop> {
        let changed = tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|stop| *stop) => return Err(Stop::Shutdown),
            () = self.tx.closed() => return Err(Stop::Gone),
            changed = changes.changed() => changed,
        };
        if changed.is_ok() {
            return Ok(());
        }
        // The view is gone (its pipeline stopped): nothing will change any more, but the
        // stream stays open until the client or the server ends it.
        tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Stop::Shutdown),
            () = self.tx.closed() => Err(Stop::Gone),
        }
    }

    /// Ends the stream for `stop`: after the buffered messages, the client gets the status.
    pub fn finish(mut self, stop: Stop) {
        let status = match stop {
            Stop::Gone => return,
            Stop::Stalled => {
                CUT_OFF.fetch_add(1, Ordering::Relaxed);
                Status::resource_exhausted(TOO_SLOW)
            }
            Stop::Shutdown => Status::unavailable("server shutting down; resume with the last continuation token"),
        };
        // The status is set before the sender drops, so the stream sees it when the channel
        // closes. A client already gone does not need it.
        if let Some(end) = self.end.take() {
            let _ = end.send(status);
        }
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Stream for ClientStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                let Some(end) = self.end.as_mut() else {
                    return Poll::Ready(None);
                };
                let status = match Pin::new(end).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(status) => status,
                };
                self.end = None;
                Poll::Ready(status.ok().map(Err))
            }
        }
    }
}
