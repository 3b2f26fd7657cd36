//! Requests of the main path that the fast path answers although they are not the plain
//! shape: a query, the behaviour header, a server-wide profile or scenario phase, load
//! shedding, HTTP/1.0, `connection: close` or `keep-alive`. Their plan is drawn here exactly
//! as hyper's path draws it (the same controls in the same order, the same generator), and
//! their answers are the bytes hyper writes for them: the avatars, an injected status, the
//! load-shedding 503, a socket fault, or the head of a body to stream (`count`, `drip`,
//! `rate`, `fault=truncate`). `fail-first` (which reads the attempt header) is left to hyper's
//! path before anything is drawn.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::StatusCode;

use super::admission::{Admission, InflightGuard};
use super::classify::Shape;
use super::{OVERLOADED_BODY, Routes};
use crate::behaviour::body::{Body, Content};
use crate::behaviour::parse::{KEYS, Unknown};
use crate::behaviour::{Controls, Fault, Limits, Plan};
use crate::time;

/// What answers a request on the fast path.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The avatars (status 200).
    Avatars,
    /// An injected error status.
    Injected(u16),
    /// `--max-inflight`'s 503.
    Overloaded,
    /// A socket fault instead of an answer: `reset`, `close` or `hang` (then close).
    Fault(Fault),
    /// A body planned to be streamed: `count`, `drip`, `rate` or `fault=truncate`, with an
    /// injected status or the avatars.
    Streamed(Box<Plan>),
}

/// What the fast path does with a request that is not the plain shape.
#[derive(Debug)]
pub enum Decision {
    /// Answer now.
    Now(Answer),
    /// Answer after `delay`, counted in flight until then.
    Later {
        delay: Duration,
        answer: Answer,
        held: Held,
    },
    /// Hyper's path must plan it: nothing was drawn.
    Hyper,
}

/// A request counted in flight (for `--max-inflight` and `linear(…)` delays) while it lives:
/// the guard is only ever dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Option<InflightGuard>);

impl Routes {
    /// Whether a request of the plain shape gets the plain answer now (`now` reads the
    /// clock): no server-wide profile applies, and no load shedding counts requests.
    #[inline]
    pub fn plain_now(&self, now: impl FnOnce() -> Instant) -> bool {
        self.plain_shape
            && match &self.live {
                None => true,
                Some(cached) => cached.borrow_mut().plain_at(&self.shared.live, now()),
            }
    }

    /// Plans a request the fast path took (`buf` holds it from its first byte) as hyper's
    /// path would: the server-wide profile, then the header, then the query; load shedding;
    /// then the draw.
    pub fn decide(&self, buf: &[u8], request: &Shape, now: Instant) -> Decision {
        let allowed = self.allow_request_behaviour;
        let header = request
            .behaviour
            .filter(|_| allowed)
            .map(|span| span.in_buf(buf));
        let query = match request.query.filter(|_| allowed) {
            // Most queries name no control (a cache-buster): nothing to parse.
            Some(span) if names_a_control(span.in_buf(buf)) => {
                let text = std::str::from_utf8(span.in_buf(buf)).expect("an ASCII query");
                match Controls::parse(text, &self.limits, Unknown::Ignore) {
                    Ok(query) => Some(query).filter(|query| !query.is_empty()),
                    // Hyper's path answers it 400, naming the problem.
                    Err(_) => return Decision::Hyper,
                }
            }
            _ => None,
        };
        let mut parsed = self.header_controls.borrow_mut();
        let header = match header {
            None => None,
            Some(value) => match parsed.get(value, &self.limits) {
                Some(controls) => Some(controls),
                None => return Decision::Hyper,
            },
        };
        match &self.live {
            None => self.decide_with(&self.profile, self.profile_empty, header, query),
            Some(cached) => {
                let mut cached = cached.borrow_mut();
                let empty = cached.plain_at(&self.shared.live, now);
                let current = cached.at(&self.shared.live, now);
                self.decide_with(&current.profile.controls, empty, header, query)
            }
        }
    }

    /// [`Routes::decide`] once the sources are read: `profile` (empty when `profile_empty`),
    /// the header's controls and the query's.
    fn decide_with(
        &self,
        profile: &Controls,
        profile_empty: bool,
        header: Option<&Controls>,
        query: Option<Controls>,
    ) -> Decision {
        let merged;
        let controls = match (header, query) {
            (None, None) => profile,
            (Some(header), None) if profile_empty => header,
            (header, query) => {
                let mut all = profile.clone();
                if let Some(header) = header {
                    all.merge(header.clone());
                }
                if let Some(query) = query {
                    all.merge(query);
                }
                merged = all;
                &merged
            }
        };
        let empty = controls.is_empty();
        if empty && self.max_inflight.is_none() {
            return Decision::Now(Answer::Avatars);
        }
        // `fail-first` needs the attempt header, which only hyper's path reads.
        if controls.fail_first.is_some() {
            return Decision::Hyper;
        }
        // Hyper's path answers it 400, naming the problem.
        if self.check_rate(controls).is_err() {
            return Decision::Hyper;
        }
        let guard = match self.admit(controls, false) {
            Admission::Admitted(guard) => guard,
            Admission::Shed => return Decision::Now(Answer::Overloaded),
        };
        if empty {
            return Decision::Now(Answer::Avatars);
        }
        let plan = self.draw(controls);
        let streamed = plan.fault == Some(Fault::Truncate)
            || plan.count.is_some()
            || plan.drip.is_some()
            || plan.rate.is_some();
        let answer = match plan.fault {
            Some(fault) if fault != Fault::Truncate => Answer::Fault(fault),
            _ if streamed => Answer::Streamed(Box::new(plan.clone())),
            _ => plan.status.map_or(Answer::Avatars, Answer::Injected),
        };
        if plan.delay.is_zero() && !matches!(answer, Answer::Fault(_) | Answer::Streamed(_)) {
            Decision::Now(answer)
        } else {
            Decision::Later {
                delay: plan.delay,
                answer,
                held: Held(guard),
            }
        }
    }

    /// Hands `push` the bytes hyper writes for `answer` to `request` at `now`, in order;
    /// returns the answer's status, and the body still to be sent when it is streamed (a
    /// HEAD request's never is). A fault writes nothing.
    pub fn answer_bytes(
        &self,
        answer: &Answer,
        request: &Shape,
        now: Instant,
        mut push: impl FnMut(Bytes),
    ) -> (u16, Option<Body>) {
        let status = match answer {
            Answer::Avatars => {
                let mut avatars = self.avatars.borrow_mut();
                let (wire, head_len) = match request.variant() {
                    None => {
                        let snapshot = avatars.at(now);
                        (snapshot.wire.clone(), snapshot.head_len)
                    }
                    Some(variant) => avatars.variant(now, variant),
                };
                push(if request.head_only {
                    wire.slice(..head_len)
                } else {
                    wire
                });
                200
            }
            Answer::Injected(code) => {
                let status = injected_status(*code);
                let body = super::act::injected_body(status);
                push(error_answer(status, None, body.as_bytes(), request));
                status.as_u16()
            }
            Answer::Overloaded => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                let retry = Some(&b"retry-after: 1\r\n"[..]);
                push(error_answer(status, retry, OVERLOADED_BODY, request));
                status.as_u16()
            }
            Answer::Fault(_) => 0,
            Answer::Streamed(plan) => return self.streamed(plan, request, now, push),
        };
        (status, None)
    }

    /// A streamed answer: its head now, as hyper writes it for the body `act_out` makes (a
    /// `content-length` the route sets for `truncate` goes before hyper's `connection`
    /// header, one hyper takes from the body's size after it), and the body to send.
    fn streamed(
        &self,
        plan: &Plan,
        request: &Shape,
        now: Instant,
        mut push: impl FnMut(Bytes),
    ) -> (u16, Option<Body>) {
        let truncate = plan.fault == Some(Fault::Truncate);
        let (status, content, mut head) = match plan.status {
            Some(code) => {
                let status = injected_status(code);
                let body = Bytes::from(super::act::injected_body(status));
                let head = status_line(status, request);
                (status, Content::from(body), head)
            }
            None => {
                let content = match plan.count {
                    Some(count) => self.list(count),
                    None => Content::from(self.avatars.borrow_mut().at(now).body.clone()),
                };
                let mut head = status_line(StatusCode::OK, request);
                let mut avatars = self.avatars.borrow_mut();
                let snapshot = avatars.at(now);
                // The avatars' headers as rendered, after their status line.
                head.put_slice(&snapshot.wire[STATUS_LINE..snapshot.length_at]);
                (StatusCode::OK, content, head)
            }
        };
        if plan.status.is_some() {
            head.put_slice(b"content-type: application/json\r\n");
        }
        let length = content.len().to_string();
        let connection = request.connection_header().unwrap_or_default();
        let bodiless = matches!(status.as_u16(), 204 | 304);
        if truncate {
            put_length(&mut head, &length);
            head.put_slice(connection);
        } else {
            head.put_slice(connection);
            if !bodiless {
                put_length(&mut head, &length);
            }
        }
        if plan.status.is_some() {
            put_date(&mut head);
        }
        head.put_slice(b"\r\n");
        push(head.freeze());
        if request.head_only || bodiless {
            return (status.as_u16(), None);
        }
        let body = if truncate {
            Body::truncated(content)
        } else {
            match plan.pace(content.len()) {
                Some(over) => Body::paced(content, over.min(self.limits.max_delay)),
                None => Body::whole(content),
            }
        };
        (status.as_u16(), Some(body))
    }
}

/// `HTTP/1.x CODE REASON\r\n` in the request's version, hyper's `<none>` for a code it has
/// no reason phrase for.
fn status_line(status: StatusCode, request: &Shape) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(if request.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.put_slice(b"\r\n");
    out
}

fn put_length(out: &mut BytesMut, length: &str) {
    out.put_slice(b"content-length: ");
    out.put_slice(length.as_bytes());
    out.put_slice(b"\r\n");
}

/// The `date` header hyper adds to an answer without one: IMF-fixdate, now.
fn put_date(out: &mut BytesMut) {
    out.put_slice(b"date: ");
    out.put_slice(&time::imf_fixdate(time::now()));
    out.put_slice(b"\r\n");
}

/// The `HTTP/1.1 200 OK\r\n` at the front of the rendered avatars.
const STATUS_LINE: usize = 17;

/// Whether a query names a control (or may, through a `%` escape in a key): only then is it
/// parsed. A pair without `=` is skipped by the query's parser, as here.
fn names_a_control(query: &[u8]) -> bool {
    query.split(|&b| b == b'&').any(|pair| {
        pair.iter().position(|&b| b == b'=').is_some_and(|at| {
            let key = &pair[..at];
            key.contains(&b'%') || KEYS.iter().any(|known| key == known.as_bytes())
        })
    })
}

/// A worker's last behaviour header and its controls: load tools send the same header on
/// every request, so it is parsed once, not per request. One entry, at most a head's length.
#[derive(Debug, Default)]
pub(super) struct HeaderControls {
    last: Option<(Box<[u8]>, Controls)>,
}

impl HeaderControls {
    /// The controls `value` asks for, or `None` when hyper's path must answer it (`400`: not
    /// visible ASCII, or not the grammar).
    fn get(&mut self, value: &[u8], limits: &Limits) -> Option<&Controls> {
        let hit = matches!(&self.last, Some((last, _)) if **last == *value);
        if !hit {
            // What `HeaderValue::to_str` accepts: visible ASCII and tabs.
            if !value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return None;
            }
            let text = std::str::from_utf8(value).ok()?;
            let controls = Controls::parse(text, limits, Unknown::Reject).ok()?;
            self.last = Some((value.into(), controls));
        }
        self.last.as_ref().map(|(_, controls)| controls)
    }
}

/// The status an injected code answers with (validation admits 200 to 599).
pub(super) fn injected_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An error answer as hyper writes it: the status line (with hyper's `<none>` for a code it
/// has no reason phrase for), `content-type`, `extra`, the `connection` header it adds, then
/// `content-length` and `date` (neither for 204 and 304, which have no body), then the body.
fn error_answer(status: StatusCode, extra: Option<&[u8]>, body: &[u8], request: &Shape) -> Bytes {
    let bodiless = matches!(status.as_u16(), 204 | 304);
    let mut out = status_line(status, request);
    out.put_slice(b"content-type: application/json\r\n");
    if let Some(extra) = extra {
        out.put_slice(extra);
    }
    if let Some(header) = request.connection_header() {
        out.put_slice(header);
    }
    if !bodiless {
        put_length(&mut out, &body.len().to_string());
    }
    put_date(&mut out);
    out.put_slice(b"\r\n");
    if !request.head_only && !bodiless {
        out.put_slice(body);
    }
    out.freeze()
}
