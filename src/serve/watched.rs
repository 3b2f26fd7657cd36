//! The socket as hyper sees it on connections it serves: writes held to `--write-timeout`
//! (hyper has no write deadline of its own), and a note of whether bytes arrived since the
//! last answer went out, so that a header timeout can be told apart from an idle one when
//! the connection's end is counted.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a connection's socket saw, shared between the wrapper (inside hyper) and the task
/// that counts why the connection ended.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes arrived since the last write made progress: a request head is under way.
    read_since_write: Cell<bool>,
    /// A write made no progress for the write timeout.
    write_timed_out: Cell<bool>,
    /// HTTP/2 only, which has no header or idle deadline of hyper's: when bytes last moved
    /// either way, and whether any ever arrived (one clock read per read or write, so HTTP/1
    /// connections do without it).
    moves: Option<Moves>,
}

#[derive(Debug)]
struct Moves {
    last: Cell<Instant>,
    read_any: Cell<bool>,
}

impl Activity {
    /// An activity that also notes when bytes last moved, from `start`.
    pub fn timed(start: Instant) -> Activity {
        Activity {
            moves: Some(Moves {
                last: Cell::new(start),
                read_any: Cell::new(false),
            }),
            ..Activity::default()
        }
    }

    /// When bytes last moved (the start, if none has), and whether any arrived; `None` for an
    /// activity that is not [`Activity::timed`].
    pub fn last_moved(&self) -> Option<(Instant, bool)> {
        let moves = self.moves.as_ref()?;
        Some((moves.last.get(), moves.read_any.get()))
    }

    fn moved(&self, read: bool) {
        if let Some(moves) = &self.moves {
            moves.last.set(Instant::now());
            if read {
                moves.read_any.set(true);
            }
        }
    }

    /// Whether a request head had begun when the connection was last looked at.
    pub fn mid_head(&self) -> bool {
        self.read_since_write.get()
    }

    /// Whether the connection ended on the write timeout.
    pub fn write_timed_out(&self) -> bool {
        self.write_timed_out.get()
    }
}

/// `io` with its writes held to `timeout`: a write that stays pending, with no byte taken,
/// for that long fails with [`io::ErrorKind::TimedOut`], which ends hyper's connection.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    timeout: Duration,
    /// When the write now waiting began waiting (reset by any progress).
    waiting_since: Option<Instant>,
    /// Armed only once a write has had to wait: connections that never stall never allocate it.
    stall: Option<Pin<Box<Sleep>>>,
    activity: Rc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(io: T, timeout: Duration, activity: Rc<Activity>) -> Watched<T> {
        Watched {
            io,
            timeout,
            waiting_since: None,
            stall: None,
            activity,
        }
    }

    pub fn into_inner(self) -> T {
        self.io
    }

    /// After a write returned `Pending`: `Pending` still, or the timeout's error once the
    /// write has waited too long.
    fn poll_stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let due = since + self.timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if stall.deadline() != due {
            stall.as_mut().reset(due);
        }
        if stall.as_mut().poll(cx).is_ready() {
            self.activity.write_timed_out.set(true);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write timeout: the client took nothing",
            )));
        }
        Poll::Pending
    }

    /// After a flush or a shutdown: done (no write waits any more), or still waiting, held to
    /// the timeout like a write.
    fn settled(
        &mut self,
        result: Poll<io::Result<()>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if result.is_pending() {
            return self.poll_stalled(cx);
        }
        self.waiting_since = None;
        result
    }

    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.waiting_since = None;
                    self.activity.read_since_write.set(false);
                    self.activity.moved(false);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => self.poll_stalled(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_since_write.set(true);
            self.activity.moved(true);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// A TLS session holds records it has made until the socket takes them: a flush that
    /// waits is a stalled write too.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.settled(result, cx)
    }

    /// A TLS session's goodbye (`close_notify`) waits for room in the socket like any write.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        this.settled(result, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_at_the_timeout_and_one_that_moves_does_not() {
        // A pipe that holds 64 bytes: the writer stalls once it is full.
        let (near, mut far) = tokio::io::duplex(64);
        let activity = Rc::new(Activity::default());
        let mut watched = Watched::new(near, Duration::from_secs(3), Rc::clone(&activity));
        // Reading slowly keeps it going: each read makes room within the timeout.
        let writer = async {
            watched.write_all(&[7u8; 256]).await?;
            Ok::<_, io::Error>(watched)
        };
        let reader = async {
            let mut got = vec![0u8; 256];
            for chunk in got.chunks_mut(64) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                far.read_exact(chunk).await.expect("read");
            }
            far
        };
        let (written, far) = tokio::join!(writer, reader);
        let mut watched = written.expect("a reader that keeps up, however slowly");
        assert!(!activity.write_timed_out());
        // Nobody reads now: the write fails three seconds after it stalled.
        let start = Instant::now();
        let err = watched
            .write_all(&[7u8; 256])
            .await
            .expect_err("a stalled write fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(activity.write_timed_out());
        drop(far);
    }

    /// A stream whose flush and shutdown never finish: a TLS session whose last records the
    /// client never takes.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_or_a_shutdown_that_never_finishes_fails_at_the_timeout() {
        let activity = Rc::new(Activity::default());
        let mut watched = Watched::new(Stuck, Duration::from_secs(3), Rc::clone(&activity));
        let start = Instant::now();
        let err = watched.flush().await.expect_err("a stalled flush fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        let mut watched = Watched::new(Stuck, Duration::from_secs(3), Rc::clone(&activity));
        let start = Instant::now();
        let err = watched
            .shutdown()
            .await
            .expect_err("a stalled shutdown fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(activity.write_timed_out());
    }

    #[tokio::test]
    async fn bytes_read_mark_a_head_under_way_until_the_next_write() {
        let (near, mut far) = tokio::io::duplex(64);
        let activity = Rc::new(Activity::default());
        let mut watched = Watched::new(near, Duration::from_secs(3), Rc::clone(&activity));
        assert!(!activity.mid_head());
        far.write_all(b"GET").await.expect("write");
        let mut byte = [0u8; 3];
        watched.read_exact(&mut byte).await.expect("read");
        assert!(activity.mid_head());
        watched.write_all(b"answer").await.expect("write");
        assert!(!activity.mid_head());
    }
}
