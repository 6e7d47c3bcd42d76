//! The listener of both ports: accepted connections under one budget of
//! `--max-connections`, each handed on only once it has sent the start of its handshake in
//! time, and holding its place in the budget while it lives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Bytes a new connection must send within the handshake timeout: the length of the
/// HTTP/2 client preface (a TLS ClientHello is longer).
pub(crate) const PREFACE_BYTES: usize = 24;

/// The listener's connections as the server's incoming stream: at most `permits` at once
/// (shared with the metrics listener: one budget of `--max-connections`), each
/// holding a permit until it closes, and each only once it has sent its first
/// [`PREFACE_BYTES`] within `handshake` (one that closes or stalls before is dropped).
pub(crate) fn incoming(
    listener: Arc<TcpListener>,
    permits: Arc<Semaphore>,
    handshake: Duration,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<Counted>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((stream, peer, permit)) = accept(&listener, &permits, &stop).await {
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                match tokio::time::timeout(handshake, preface(&mut stream)).await {
                    Ok(Ok(Some(first))) => {
                        let _ = tx
                            .send(Ok(Counted {
                                first,
                                read: 0,
                                stream,
                                _permit: permit,
                            }))
                            .await;
                    }
                    _ => debug!(%peer, "closed a connection that did not start its handshake in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The next connection on `listener` with its place in the budget `permits` (shared by both
/// ports); `None` once `stop` is cancelled. Past the budget, the connection waits here (and
/// no other is accepted) until one of either port closes: a listener holds no place in
/// reserve. A failed accept (out of descriptors, say) is logged and retried after 50 ms.
pub(crate) async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let (stream, peer) = loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => break conn,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    };
    let permit = tokio::select! {
        p = permits.clone().acquire_owned() => p.ok()?,
        () = stop.cancelled() => return None,
    };
    Some((stream, peer, permit))
}

/// Reads the first [`PREFACE_BYTES`] of `stream` (kept, to be read again by the server);
/// `None` if it closes first.
async fn preface(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut first = vec![0u8; PREFACE_BYTES];
    let mut got = 0;
    while got < PREFACE_BYTES {
        match stream.read(&mut first[got..]).await? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(Some(first))
}

/// An accepted connection that holds its place under the connection cap while it lives.
pub(crate) struct Counted {
    /// The bytes read before it was handed to the server, served first.
    first: Vec<u8>,
    /// How many of `first` the server has read.
    read: usize,
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read < self.first.len() {
            let n = (self.first.len() - self.read).min(buf.remaining());
            let start = self.read;
            buf.put_slice(&self.first[start..start + n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
