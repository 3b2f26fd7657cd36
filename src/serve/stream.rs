//! What a connection is carried on: a TCP socket, or a TLS session over one
//! ([`TlsStream`], boxed so that a connection's task stays small until it has one). The fast
//! path, hyper's paths and the socket faults are written once, over [`Stream`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::output::Output;
use crate::behaviour::Fault;

/// A TLS session over a TCP socket, as the server accepted it (boxed: rustls's state is
/// kilobytes). Records rustls makes while it reads (an alert refusing a renegotiation, a key
/// update's answer) are sent at once: left queued, they would wait for the next answer, and a
/// client waiting for them sends no request.
pub struct TlsStream(pub Box<tokio_rustls::server::TlsStream<TcpStream>>);

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let session = self.0.as_mut();
        let read = Pin::new(&mut *session).poll_read(cx, buf);
        if session.get_ref().1.wants_write() {
            // Whatever the flush says, the read's outcome stands; a failed flush shows again
            // at the next write.
            let _ = Pin::new(session).poll_flush(cx);
        }
        read
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

/// A connection's byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + 'static {
    /// Writes what the connection takes now, without waiting: true when everything went,
    /// onto the socket (a TLS session's records included).
    fn write_now(&mut self, output: &mut Output) -> io::Result<bool>;

    /// The TCP socket underneath, for what only it can do (a reset); a TLS session is
    /// dropped without a `close_notify`, as a crashed peer would leave it.
    fn into_tcp(self) -> TcpStream;

    /// Ends the connection cleanly: a TLS session sends its `close_notify` first, given at
    /// most `limit` to go out.
    fn close(&mut self, limit: Duration) -> impl Future<Output = ()>;

    /// Whether the handshake chose HTTP/2 (ALPN `h2`).
    fn chose_h2(&self) -> bool;

    /// Whether the client opens with the HTTP/2 preface (h2c with prior knowledge), read
    /// ahead without consuming it. Over TLS, ALPN says it instead.
    fn opens_with_preface(&self) -> impl Future<Output = bool>;
}

impl Stream for TcpStream {
    #[inline]
    fn write_now(&mut self, output: &mut Output) -> io::Result<bool> {
        output.write_now(self)
    }

    fn into_tcp(self) -> TcpStream {
        self
    }

    async fn close(&mut self, _limit: Duration) {}

    fn chose_h2(&self) -> bool {
        false
    }

    async fn opens_with_preface(&self) -> bool {
        let mut buf = [0u8; H2_PREFACE_START.len()];
        // A client that sends the preface in pieces gets a second; then it is taken as HTTP/1.
        for _ in 0..1000 {
            match self.peek(&mut buf).await {
                Ok(n) if n == buf.len() => return buf[..] == *H2_PREFACE_START,
                Ok(n) if n > 0 && H2_PREFACE_START.starts_with(&buf[..n]) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ => return false,
            }
        }
        false
    }
}

impl Stream for TlsStream {
    fn write_now(&mut self, output: &mut Output) -> io::Result<bool> {
        // A TLS session takes plaintext and holds the records it makes until the socket
        // takes them: written means flushed too. A waker that does nothing: whoever waits
        // afterwards polls again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match output.poll_sent(self, &mut cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    fn into_tcp(self) -> TcpStream {
        self.0.into_inner().0
    }

    async fn close(&mut self, limit: Duration) {
        // `shutdown` sends close_notify, flushes, then shuts the socket's sending side.
        let _ = tokio::time::timeout(limit, self.shutdown()).await;
    }

    fn chose_h2(&self) -> bool {
        crate::tls::server::chose_h2(self.0.get_ref().1)
    }

    async fn opens_with_preface(&self) -> bool {
        false
    }
}

/// The start of the HTTP/2 connection preface (RFC 9113, section 3.4).
pub(super) const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Closes `stream` for a socket fault: `reset` sends a TCP RST (`SO_LINGER` 0, then close),
/// `close` a plain FIN.
pub(super) fn fault_close(stream: TcpStream, fault: Fault) {
    if fault == Fault::Reset {
        if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            tracing::warn!("cannot arm a reset: {err}");
        }
    }
    drop(stream);
}
