//! Response bodies: whole (every ordinary answer), paced (`drip=`, `rate=`: sent evenly over a
//! duration in timed chunks) and truncated (`fault=truncate`: half the bytes, then an error that
//! makes hyper close the connection short of the promised `content-length`).
//!
//! A body's bytes are [`Content`]: one shared buffer, or, for a `count=N` list, a small prefix
//! of its own (the patched `createdAt`) and the rest shared with every other request for the
//! same list. No body is copied per request, so a thousand slow `count=10000` answers cost
//! their timers, not a thousand copies of 1.9 MB.

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

/// A body's bytes, in at most two shared pieces sent one after the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    first: Bytes,
    rest: Bytes,
}

impl Content {
    /// `first` followed by `rest`.
    pub fn new(first: Bytes, rest: Bytes) -> Content {
        Content { first, rest }
    }

    pub fn len(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.rest.is_empty()
    }

    /// Takes up to `max` bytes from the front, never more than one piece: no copy.
    fn take(&mut self, max: usize) -> Bytes {
        let piece = if self.first.is_empty() {
            &mut self.rest
        } else {
            &mut self.first
        };
        piece.split_to(max.min(piece.len()))
    }

    /// The first `len` bytes.
    fn prefix(mut self, len: usize) -> Content {
        if len <= self.first.len() {
            self.first.truncate(len);
            self.rest = Bytes::new();
        } else {
            self.rest.truncate(len - self.first.len());
        }
        self
    }

    /// The bytes in one buffer (a copy only when there are two pieces), for callers that need
    /// them contiguous.
    pub fn to_bytes(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        if self.first.is_empty() {
            return self.rest.clone();
        }
        let mut joined = Vec::with_capacity(self.len());
        joined.extend_from_slice(&self.first);
        joined.extend_from_slice(&self.rest);
        Bytes::from(joined)
    }
}

impl From<Bytes> for Content {
    fn from(bytes: Bytes) -> Content {
        Content {
            first: bytes,
            rest: Bytes::new(),
        }
    }
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// All of it at once.
    Whole(Content),
    /// In chunks at fixed intervals.
    Paced(Paced),
    /// These bytes, a pause, then an error.
    Truncated(Truncating),
}

/// The state of a truncated body.
#[derive(Debug)]
pub struct Truncating {
    half: Content,
    /// The pause between the last byte and the error: hyper flushes what it has written
    /// while the body is pending, so the half really reaches the client before the close.
    pause: Option<Pin<Box<Sleep>>>,
}

/// Long enough for hyper to flush half of any body this service sends to a local client.
const TRUNCATE_PAUSE: Duration = Duration::from_millis(20);

impl Body {
    pub fn whole(content: impl Into<Content>) -> Body {
        Body::Whole(content.into())
    }

    /// `content` sent evenly so the last byte leaves `over` after the first.
    pub fn paced(content: impl Into<Content>, over: Duration) -> Body {
        Body::Paced(Paced::new(content.into(), over))
    }

    /// The first half of `content`, then an error.
    pub fn truncated(content: impl Into<Content>) -> Body {
        let content = content.into();
        let half = content.len() / 2;
        Body::Truncated(Truncating {
            half: content.prefix(half),
            pause: None,
        })
    }
}

/// The state of a paced body.
#[derive(Debug)]
pub struct Paced {
    rest: Content,
    total: u64,
    chunk: usize,
    /// Bytes of the current chunk still to send before the next pause (a chunk may span the
    /// content's two pieces: then it goes as two frames, back to back).
    due: usize,
    interval: Duration,
    /// When the next chunk may go; `None` for the first, which goes at once.
    next: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    fn new(content: Content, over: Duration) -> Paced {
        let len = content.len().max(1);
        // Chunks at least MIN_INTERVAL apart, at least one byte each, the last one at `over`.
        let steps = (over.as_nanos() / MIN_INTERVAL.as_nanos()).max(1) as usize;
        let chunks = (steps + 1).min(len).max(2);
        let interval = over / u32::try_from(chunks - 1).unwrap_or(u32::MAX);
        let chunk = len.div_ceil(chunks);
        Paced {
            total: content.len() as u64,
            chunk,
            due: chunk,
            rest: content,
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
            Body::Whole(content) => {
                if content.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(content.take(usize::MAX)))))
            }
            Body::Truncated(truncating) => {
                if !truncating.half.is_empty() {
                    let piece = truncating.half.take(usize::MAX);
                    if truncating.half.is_empty() {
                        truncating.pause = Some(Box::pin(tokio::time::sleep(TRUNCATE_PAUSE)));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
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
                if paced.due == 0 {
                    if let Some(next) = paced.next.as_mut() {
                        if next.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    paced.due = paced.chunk;
                }
                let piece = paced.rest.take(paced.due);
                paced.due -= piece.len();
                if paced.due == 0 {
                    let deadline = Instant::now() + paced.interval;
                    match paced.next.as_mut() {
                        Some(next) => next.as_mut().reset(deadline),
                        None => paced.next = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(content) => content.is_empty(),
            Body::Paced(paced) => paced.rest.is_empty(),
            Body::Truncated(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(content) => SizeHint::with_exact(content.len() as u64),
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
        let paced = Paced::new(Bytes::from(vec![b'x'; 3696]).into(), Duration::from_secs(2));
        // 40 steps of 50 ms: 41 chunks, the last at 2 s.
        assert_eq!(paced.interval, Duration::from_millis(50));
        assert_eq!(paced.chunk, 3696usize.div_ceil(41));
        let tiny = Paced::new(Bytes::from_static(b"abc").into(), Duration::from_secs(1));
        assert_eq!(tiny.chunk, 1);
        assert_eq!(tiny.interval, Duration::from_millis(500));
    }

    /// Every frame of `body` (`Err(())` for the truncation error), on a paused clock.
    fn frames(mut body: Body) -> Vec<Result<Bytes, ()>> {
        let mut frames = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            loop {
                let frame = std::future::poll_fn(|cx| {
                    hyper::body::Body::poll_frame(Pin::new(&mut body), cx)
                });
                match frame.await {
                    Some(Ok(frame)) => frames.push(Ok(frame.into_data().expect("data"))),
                    Some(Err(Truncated)) => frames.push(Err(())),
                    None => break,
                }
                if frames.last() == Some(&Err(())) {
                    break;
                }
            }
        });
        frames
    }

    fn two_pieces() -> Content {
        Content::new(Bytes::from_static(b"0123"), Bytes::from_static(b"456789"))
    }

    #[test]
    fn a_body_in_two_pieces_goes_out_whole_in_order_without_a_copy() {
        let rest = Bytes::from_static(b"456789");
        let content = Content::new(Bytes::from_static(b"0123"), rest.clone());
        let sent = frames(Body::whole(content));
        assert_eq!(sent.len(), 2);
        let second = sent[1].clone().expect("data");
        assert_eq!(second.as_ptr(), rest.as_ptr(), "the shared piece itself");
        let joined: Vec<u8> = sent.into_iter().flat_map(|f| f.expect("data")).collect();
        assert_eq!(joined, b"0123456789");
    }

    #[test]
    fn a_paced_body_in_two_pieces_keeps_its_chunks_and_its_bytes() {
        // 10 bytes over 200 ms: 5 chunks of 2 bytes; the one spanning the pieces goes as two
        // frames with no pause between them.
        let paced = Paced::new(two_pieces(), Duration::from_millis(200));
        assert_eq!(
            (paced.chunk, paced.interval),
            (2, Duration::from_millis(50))
        );
        let sent: Vec<Bytes> = frames(Body::Paced(paced))
            .into_iter()
            .map(|f| f.expect("data"))
            .collect();
        let sizes: Vec<usize> = sent.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2]);
        let joined: Vec<u8> = sent.concat();
        assert_eq!(joined, b"0123456789");
        let odd = Paced::new(
            Content::new(Bytes::from_static(b"012"), Bytes::from_static(b"3456789")),
            Duration::from_millis(200),
        );
        let sizes: Vec<usize> = frames(Body::Paced(odd))
            .into_iter()
            .map(|f| f.expect("data").len())
            .collect();
        assert_eq!(sizes, [2, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn a_truncated_body_sends_half_of_both_pieces_then_fails() {
        let sent = frames(Body::truncated(two_pieces()));
        assert_eq!(sent.last(), Some(&Err(())));
        let joined: Vec<u8> = sent[..sent.len() - 1]
            .iter()
            .flat_map(|f| f.clone().expect("data"))
            .collect();
        assert_eq!(joined, b"01234");
        let content = two_pieces();
        assert_eq!(content.clone().prefix(3).to_bytes(), &b"012"[..]);
        assert_eq!(content.prefix(7).to_bytes(), &b"0123456"[..]);
    }
}
