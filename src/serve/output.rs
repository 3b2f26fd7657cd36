//! What a fast-path connection writes, and how it hands over: answers waiting to be written
//! as the shared buffers they were made as (one `writev` for a pipelined batch, bounded in
//! parts and bytes), and a stream with the bytes already read in front, for hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::ops::metrics::CloseReason;

/// Answers waiting to be written, as the shared buffers they were made as: pipelined answers
/// are written together (one `writev`) without being copied into a buffer of the
/// connection's, so a burst of them costs a few pointers, and an answer a slow client has
/// not taken yet holds only its share of the worker's rendered response.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// The first (usually the only) answer.
    first: Option<Bytes>,
    /// Answers after the first, in order.
    rest: Vec<Bytes>,
    /// Bytes not yet written.
    pub(super) pending: usize,
}

/// Answers one write may carry (`writev`'s limit is 1,024).
const MAX_PARTS: usize = 64;

/// Bytes after which a batch stops answering and writes: a pipelined burst is answered in
/// writes of at most this much (plus one answer).
pub(super) const MAX_PENDING: usize = 256 * 1024;

/// Slots of `rest` kept between batches; a longer list (after a burst) is given back.
const KEEP_PARTS: usize = 16;

impl Output {
    #[inline]
    pub(super) fn push(&mut self, bytes: Bytes) {
        self.pending += bytes.len();
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(bytes);
        } else {
            self.rest.push(bytes);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending == 0 && self.first.is_none() && self.rest.is_empty()
    }

    #[inline]
    pub(super) fn is_full(&self) -> bool {
        self.rest.len() + 1 >= MAX_PARTS || self.pending >= MAX_PENDING
    }

    /// Writes what the socket takes now, without waiting; true when everything went.
    #[inline]
    pub(super) fn write_now(&mut self, stream: &TcpStream) -> io::Result<bool> {
        loop {
            let written = if self.rest.is_empty() {
                match &self.first {
                    Some(first) => stream.try_write(first),
                    None => return Ok(true),
                }
            } else {
                let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
                let count = self.slices(&mut slices);
                stream.try_write_vectored(&slices[..count])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes until everything went (`Ready(Ok)`), the stream is full (`Pending`, with a
    /// wake-up arranged), or an error.
    pub(super) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
            let count = self.slices(&mut slices);
            match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.consume(n),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// [`Output::poll_write`], then a flush: a TLS session sends the records it made of the
    /// output (a socket holds none back). `Ready(Ok)` once all of it is on the socket.
    pub(super) fn poll_sent<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_write(stream, cx))?;
        Pin::new(stream).poll_flush(cx)
    }

    /// Waits until `stream` takes the rest of the output (and, over TLS, the records made of
    /// it); fails when a write makes no progress for `limit` (a client that stopped
    /// reading). Uses the connection's timer, which the caller re-arms afterwards.
    pub(super) async fn write_stalled<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        mut timer: Pin<&mut Sleep>,
        limit: Duration,
    ) -> Result<(), CloseReason> {
        let mut progress_at = Instant::now();
        timer.as_mut().reset(progress_at + limit);
        std::future::poll_fn(|cx| {
            let before = self.pending;
            if let Poll::Ready(result) = self.poll_sent(stream, cx) {
                return Poll::Ready(result.map_err(|err| CloseReason::of_io(&err)));
            }
            if self.pending < before {
                progress_at = Instant::now();
            }
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = progress_at + limit;
                if Instant::now() >= due {
                    return Poll::Ready(Err(CloseReason::WriteTimeout));
                }
                timer.as_mut().reset(due);
            }
        })
        .await
    }

    /// Fills `slices` with the pending answers in order; returns how many it used.
    fn slices<'b>(&'b self, slices: &mut [io::IoSlice<'b>; MAX_PARTS]) -> usize {
        let parts = self.first.iter().chain(&self.rest).take(MAX_PARTS);
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = io::IoSlice::new(part);
            count += 1;
        }
        count
    }

    /// Drops the first `n` pending bytes, which were written.
    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        if let Some(first) = &mut self.first {
            if n < first.len() {
                first.advance(n);
                return;
            }
            n -= first.len();
            self.first = None;
        }
        let mut done = 0;
        for part in &mut self.rest {
            if n < part.len() {
                part.advance(n);
                break;
            }
            n -= part.len();
            done += 1;
        }
        self.rest.drain(..done);
        if self.first.is_none() && !self.rest.is_empty() {
            self.first = Some(self.rest.remove(0));
        }
    }

    /// Gives back the list a burst grew, once written.
    #[inline]
    pub(super) fn shrink(&mut self) {
        if self.rest.capacity() > KEEP_PARTS {
            self.rest = Vec::new();
        }
    }
}

/// A stream with bytes already read from it in front, for handing a connection to hyper
/// mid-stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, stream: S) -> Prefixed<S> {
        Prefixed { prefix, stream }
    }

    /// The bytes read ahead of hyper.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The stream, for actions hyper knows nothing of (a reset).
    pub fn into_stream(self) -> S {
        self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
