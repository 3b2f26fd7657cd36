//! A new connection's first read, made as it is accepted: before the socket is registered
//! with the runtime or given a task. When that read holds exactly one plain request that
//! ends the connection (`connection: close`, or HTTP/1.0 without keep-alive), the answer is
//! written and the socket closed there and then, as a caller that opens a connection per
//! request (the seed suite's Go caller, with keep-alive off) uses the server. Any other first
//! read goes, with its bytes, to the connection's task, which answers it as the fast path
//! answers every request.
//!
//! Why: a connection answered here costs no task, no registration (two `epoll_ctl` calls)
//! and no wake-up: four system calls (accept4, recvfrom, sendto, close) instead of six.
//! Under callgrind, `connection: close` on every request cost 8,726 instructions a request
//! with a task per connection, 2,953 answered here (bench/RESULTS.md).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{READ_SCRATCH, READ_SIZE};
use crate::ops::metrics::{CloseReason, MethodLabel, Route};
use crate::routes::{Answer, Head, Routes};

/// What became of a connection's first read.
#[derive(Debug)]
pub enum First {
    /// Answered and closed, or ended by the client or an error: why it ended.
    Closed(CloseReason),
    /// Answered, but the socket did not take the whole answer at once: the rest, for the
    /// connection's task to write before it closes.
    Unwritten(Bytes, Answered),
    /// For the connection's task to serve, with the bytes read (none when nothing had
    /// come yet).
    Serve(BytesMut),
}

/// An answer written from the first read, recorded once it is all written.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    head_only: bool,
    /// When its request was taken: its duration counts from then.
    since: Instant,
}

impl Answered {
    /// Counts the answer (and logs it, with access logging on).
    pub fn record(self, routes: &Routes) {
        let elapsed = self.since.elapsed();
        let method = [MethodLabel::Get, MethodLabel::Head][usize::from(self.head_only)];
        routes.record(Route::Avatar, method, 200, elapsed, 1);
        if routes.access_logging() {
            let (method, bytes) = if self.head_only {
                ("HEAD", 0)
            } else {
                ("GET", crate::avatar::TEMPLATE.len() as u64)
            };
            routes.access(method, routes.path(), 200, elapsed, bytes);
        }
    }
}

/// Reads what a just-accepted, non-blocking `stream` has brought, and answers it at once
/// when it is one plain request that ends the connection (see the module's description).
pub fn first_read(stream: &TcpStream, routes: &Routes) -> First {
    READ_SCRATCH.with_borrow_mut(|scratch| {
        let read = match (&mut &*stream).read(&mut scratch[..]) {
            Ok(0) => return First::Closed(CloseReason::Client),
            Ok(read) => &scratch[..read],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return First::Serve(BytesMut::new());
            }
            Err(err) => return First::Closed(CloseReason::of_io(&err)),
        };
        let serve = || First::Serve(BytesMut::from(read));
        // A read that filled the scratch may have left bytes in the socket: closing with
        // them unread would reset the connection before the answer (found by
        // bench/adversarial's accept-flood).
        let whole = read.len() < READ_SIZE;
        let request = match routes.classify_first(read) {
            Head::Avatar(request)
                if whole
                    && request.len == read.len()
                    && request.closes()
                    && request.query.is_none()
                    && request.behaviour.is_none() =>
            {
                request
            }
            _ => return serve(),
        };
        let since = Instant::now();
        // A server-wide profile or load shedding plans every request: the task does that.
        if !routes.plain_now(|| since) {
            return serve();
        }
        let mut answer = Bytes::new();
        routes.answer_bytes(&Answer::Avatars, &request, since, |bytes| answer = bytes);
        let answered = Answered {
            head_only: request.head_only,
            since,
        };
        // Sent at once (no `MSG_MORE` to join it to the FIN): bytes a client sends after its
        // close request make the close a reset, and the answer must have left by then.
        match (&mut &*stream).write(&answer) {
            Ok(written) if written == answer.len() => {
                answered.record(routes);
                First::Closed(CloseReason::Client)
            }
            Ok(written) => First::Unwritten(answer.slice(written..), answered),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                First::Unwritten(answer, answered)
            }
            Err(err) => First::Closed(CloseReason::of_io(&err)),
        }
    })
}
