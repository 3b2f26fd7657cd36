//! Response bodies: whole (every ordinary answer), paced (`drip=`, `rate=`: sent evenly over a
//! duration in timed chunks) and truncated (`fault=truncate`: half the bytes, then an error that
//! makes hyper close the connection short of the promised `content-length`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error that cuts a truncated body short.
#[derive(Debug, thiserror::Error)]
#[error("body truncated on purpose (fault=truncate)")]
pub struct Truncated;

/// Chunks smaller than this interval apart would cost more in timers than they simulate.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// All of it at once.
    Whole(Option<Bytes>),
    /// In chunks at fixed intervals.
    Paced(Paced),
    /// These bytes, a pause, then an error.
    Truncated(Truncating),
}

/// The state of a truncated body.
#[derive(Debug)]
pub struct Truncating {
    half: Option<Bytes>,
    /// The pause between the last byte and the error: hyper flushes what it has written
    /// while the body is pending, so the half really reaches the client before the close.
    pause: Option<Pin<Box<Sleep>>>,
}

/// Long enough for hyper to flush half of any body this service sends to a local client.
const TRUNCATE_PAUSE: Duration = Duration::from_millis(20);

impl Body {
    pub fn whole(bytes: Bytes) -> Body {
        Body::Whole(Some(bytes))
    }

    /// `bytes` sent evenly so the last byte leaves `over` after the first.
    pub fn paced(bytes: Bytes, over: Duration) -> Body {
        Body::Paced(Paced::new(bytes, over))
    }

    /// The first half of `bytes`, then an error.
    pub fn truncated(bytes: Bytes) -> Body {
        Body::Truncated(Truncating {
            half: Some(bytes.slice(..bytes.len() / 2)),
            pause: None,
        })
    }
}

/// The state of a paced body.
#[derive(Debug)]
pub struct Paced {
    rest: Bytes,
    total: u64,
    chunk: usize,
    interval: Duration,
    /// When the next chunk may go; `None` for the first, which goes at once.
    next: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    fn new(bytes: Bytes, over: Duration) -> Paced {
        let len = bytes.len().max(1);
        // Chunks at least MIN_INTERVAL apart, at least one byte each, the last one at `over`.
        let steps = (over.as_nanos() / MIN_INTERVAL.as_nanos()).max(1) as usize;
        let chunks = (steps + 1).min(len).max(2);
        let interval = over / u32::try_from(chunks - 1).unwrap_or(u32::MAX);
        Paced {
            total: bytes.len() as u64,
            chunk: len.div_ceil(chunks),
            rest: bytes,
            interval,
            next: None,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Truncated;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Truncated>>> {
        match self.get_mut() {
            Body::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Truncated(truncating) => {
                if let Some(half) = truncating.half.take() {
                    truncating.pause = Some(Box::pin(tokio::time::sleep(TRUNCATE_PAUSE)));
                    return Poll::Ready(Some(Ok(Frame::data(half))));
                }
                if let Some(pause) = truncating.pause.as_mut() {
                    if pause.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Some(Err(Truncated)))
            }
            Body::Paced(paced) => {
                if paced.rest.is_empty() {
                    return Poll::Ready(None);
                }
                if let Some(next) = paced.next.as_mut() {
                    if next.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                let take = paced.chunk.min(paced.rest.len());
                let chunk = paced.rest.split_to(take);
                let deadline = Instant::now() + paced.interval;
                match paced.next.as_mut() {
                    Some(next) => next.as_mut().reset(deadline),
                    None => paced.next = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(bytes) => bytes.is_none(),
            Body::Paced(paced) => paced.rest.is_empty(),
            Body::Truncated(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Paced(paced) => SizeHint::with_exact(paced.total),
            // Unknown, so hyper sends the content-length header the route set (the full length).
            Body::Truncated(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spreads_chunks_over_the_duration() {
        let paced = Paced::new(Bytes::from(vec![b'x'; 3696]), Duration::from_secs(2));
        // 40 steps of 50 ms: 41 chunks, the last at 2 s.
        assert_eq!(paced.interval, Duration::from_millis(50));
        assert_eq!(paced.chunk, 3696usize.div_ceil(41));
        let tiny = Paced::new(Bytes::from_static(b"abc"), Duration::from_secs(1));
        assert_eq!(tiny.chunk, 1);
        assert_eq!(tiny.interval, Duration::from_millis(500));
    }
}
