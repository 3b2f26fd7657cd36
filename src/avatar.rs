//! The seed's payload: the 3,696-byte avatar list as a pre-rendered template, and the per-worker
//! cache that renders the whole `200` response (status line, headers, body) at most once per
//! millisecond. Between refreshes every response hands out clones of the same `Bytes`, so a
//! request costs a clock read and a few reference-count increments: no JSON, no formatting.

use std::cell::OnceCell;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::header::{CONTENT_TYPE, DATE, HeaderName, HeaderValue, LOCATION};

use crate::behaviour::body::Content;
use crate::time;
use crate::time::DateHeader;

/// The seed's response body, byte for byte as its curl output shows it.
pub const TEMPLATE: &[u8; 3696] = include_bytes!("avatar.json");

/// Where the first element's `createdAt` value starts in [`TEMPLATE`].
pub const CREATED_AT_OFFSET: usize = 17;

/// The seed's `engine` header, kept for callers that assert on it.
pub const ENGINE: HeaderName = HeaderName::from_static("engine");
pub const ENGINE_VALUE: HeaderValue = HeaderValue::from_static("Rust/Hype");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The `200` response for one millisecond, in two shapes that share one buffer: the exact bytes
/// hyper would write (for the fast path) and the parts hyper needs to write them itself.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Status line, headers and body, exactly as they go on the wire.
    pub wire: Bytes,
    /// Length of the status line and headers in `wire` (a HEAD answer is `wire[..head_len]`).
    pub head_len: usize,
    /// Where the `content-length` line starts in `wire`: a `connection` header hyper adds
    /// goes just before it.
    pub length_at: usize,
    /// The body: `wire[head_len..]`, without a copy.
    pub body: Bytes,
    /// The response headers except `content-length` (which hyper adds from the body), for
    /// hyper's path: made the first time it asks in the millisecond, not at every render.
    headers: OnceCell<HeaderMap>,
    /// Where the `date` value is in `wire`.
    date: Range<usize>,
    location: HeaderValue,
    /// The wall clock's second it was rendered for.
    second: u64,
}

impl Snapshot {
    /// The response headers except `content-length`, which hyper adds from the body.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.get_or_init(|| {
            let mut headers = HeaderMap::with_capacity(5);
            headers.insert(CONTENT_TYPE, JSON);
            headers.insert(ENGINE, ENGINE_VALUE);
            headers.insert(LOCATION, self.location.clone());
            headers.insert(
                DATE,
                HeaderValue::from_maybe_shared(self.wire.slice(self.date.clone()))
                    .expect("the time formatters write only visible ASCII"),
            );
            headers
        })
    }

    /// The bytes of a HEAD answer: the status line and headers only.
    pub fn head(&self) -> Bytes {
        self.wire.slice(..self.head_len)
    }

    /// Dates the snapshot `now` in its own buffer, as [`render`] would write it, when no
    /// answer still holds the buffer; else leaves it as it was and says so. Within the
    /// second it was rendered for, only the digits under the second change.
    fn redate(&mut self, form: DateHeader, now: Duration) -> bool {
        // The snapshot's own shares of the buffer: the body, and hyper's `date` value.
        self.body = Bytes::new();
        self.headers = OnceCell::new();
        let mut wire = match std::mem::take(&mut self.wire).try_into_mut() {
            Ok(wire) => wire,
            Err(wire) => {
                self.body = wire.slice(self.head_len..);
                self.wire = wire;
                return false;
            }
        };
        let whole = now.as_secs() != self.second;
        time::redate(form, now, &mut wire[self.date.clone()], whole);
        let created_at = self.head_len + CREATED_AT_OFFSET;
        let created_at = &mut wire[created_at..created_at + time::CREATED_AT_LEN];
        time::redate_created_at(now, created_at, whole);
        self.second = now.as_secs();
        self.wire = wire.freeze();
        self.body = self.wire.slice(self.head_len..);
        true
    }
}

/// One worker's cache of the current millisecond's [`Snapshot`].
///
/// Requests ask for it with a monotonic instant, which they read anyway for their durations;
/// the wall clock is read only to render, when the millisecond the snapshot was rendered for
/// has run out. A wall clock stepped by NTP is picked up at the next render (within a
/// millisecond), and no request pays for a second clock read.
#[derive(Debug)]
pub struct AvatarCache {
    date_header: DateHeader,
    location: HeaderValue,
    /// The monotonic instant at which the wall clock's millisecond of `current` ends.
    valid_until: Instant,
    current: Snapshot,
    /// `current` as answers to HTTP/1.0 or `connection: close` requests are written
    /// ([`Variant`]), each rendered the first time it is asked for in the millisecond.
    variants: [Option<Bytes>; 3],
}

/// How hyper writes the avatars for a request that is not plain HTTP/1.1 kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// HTTP/1.0, closed after: the status line says `HTTP/1.0`.
    Http10,
    /// HTTP/1.0 kept alive: `HTTP/1.0` and `connection: keep-alive`.
    Http10KeepAlive,
    /// HTTP/1.1 with `connection: close`.
    Close,
}

impl Variant {
    fn status_line(self) -> &'static [u8] {
        match self {
            Variant::Http10 | Variant::Http10KeepAlive => b"HTTP/1.0 200 OK\r\n",
            Variant::Close => b"HTTP/1.1 200 OK\r\n",
        }
    }

    fn connection(self) -> &'static [u8] {
        match self {
            Variant::Http10 => b"",
            Variant::Http10KeepAlive => b"connection: keep-alive\r\n",
            Variant::Close => b"connection: close\r\n",
        }
    }
}

/// One millisecond in nanoseconds.
const MILLI: u32 = 1_000_000;

impl AvatarCache {
    pub fn new(date_header: DateHeader, location: HeaderValue) -> AvatarCache {
        let now = Instant::now();
        let wall = time::now();
        AvatarCache {
            current: render(date_header, &location, wall),
            variants: [None, None, None],
            date_header,
            location,
            valid_until: millisecond_end(now, wall),
        }
    }

    /// The snapshot for the monotonic instant `now`, re-rendered only once the wall clock's
    /// millisecond has changed.
    #[inline]
    pub fn at(&mut self, now: Instant) -> &Snapshot {
        if now >= self.valid_until {
            self.refresh(now);
        }
        &self.current
    }

    /// [`AvatarCache::at`] as `variant` writes it: the whole answer, and the length of its
    /// status line and headers (a HEAD answer's bytes).
    pub fn variant(&mut self, now: Instant, variant: Variant) -> (Bytes, usize) {
        self.at(now);
        let current = &self.current;
        let line = variant.status_line();
        let header = variant.connection();
        let wire = self.variants[variant as usize].get_or_insert_with(|| {
            let mut out = BytesMut::with_capacity(current.wire.len() + header.len());
            out.put_slice(line);
            out.put_slice(&current.wire[line.len()..current.length_at]);
            out.put_slice(header);
            out.put_slice(&current.wire[current.length_at..]);
            out.freeze()
        });
        (wire.clone(), current.head_len + header.len())
    }

    /// Renders the snapshot for the wall clock's millisecond now: in place, as a rule,
    /// since the answers written from the last one are gone by then.
    #[cold]
    fn refresh(&mut self, now: Instant) {
        let wall = time::now();
        self.variants = [None, None, None];
        if !self.current.redate(self.date_header, wall) {
            self.current = render(self.date_header, &self.location, wall);
        }
        self.valid_until = millisecond_end(now, wall);
    }
}

/// When (on the monotonic clock) the millisecond of the wall-clock reading `wall`, taken at
/// or after `now`, ends. Measured from `now`, so it is never late: at worst a snapshot is
/// rendered twice in one millisecond.
fn millisecond_end(now: Instant, wall: Duration) -> Instant {
    let into = wall.subsec_nanos() % MILLI;
    now + Duration::from_nanos(u64::from(MILLI - into))
}

/// Renders the response for the instant `now`. The body's `createdAt` and the `date` header
/// come from the same clock read, so they always agree.
pub fn render(date_header: DateHeader, location: &HeaderValue, now: Duration) -> Snapshot {
    let created_at = time::created_at(now);
    // The same bytes hyper writes for these headers: lower-case names, in insertion order,
    // content-length last.
    let mut wire = BytesMut::with_capacity(256 + TEMPLATE.len());
    wire.put_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nengine: Rust/Hype\r\nlocation: ",
    );
    wire.put_slice(location.as_bytes());
    wire.put_slice(b"\r\ndate: ");
    let date_start = wire.len();
    time::put_date(date_header, now, &mut wire);
    let date_end = wire.len();
    wire.put_slice(b"\r\n");
    let length_at = wire.len();
    wire.put_slice(b"content-length: 3696\r\n\r\n");
    let head_len = wire.len();
    wire.put_slice(TEMPLATE);
    let created_at_start = head_len + CREATED_AT_OFFSET;
    wire[created_at_start..created_at_start + time::CREATED_AT_LEN].copy_from_slice(&created_at);
    let wire = wire.freeze();

    Snapshot {
        body: wire.slice(head_len..),
        head_len,
        length_at,
        headers: OnceCell::new(),
        date: date_start..date_end,
        location: location.clone(),
        second: now.as_secs(),
        wire,
    }
}

/// Separator between two avatars in the seed's body.
const SEPARATOR: &str = "} , {";

/// The body with `count` avatars (`count=N`), its first `createdAt` still the seed's (patch it
/// with [`created_now`]). The first 20 are the seed's, byte for byte; from 21 on they are
/// generated deterministically in the same shape; `count` of 20 gives [`TEMPLATE`] itself.
pub fn list(count: u32) -> Bytes {
    let seed = std::str::from_utf8(TEMPLATE).expect("the seed body is ASCII");
    let inner = &seed[1..seed.len() - 1];
    let seed_avatars: Vec<&str> = inner.split(SEPARATOR).collect();
    let shown = (count as usize).min(seed_avatars.len());
    let mut out = String::with_capacity(TEMPLATE.len() + count as usize * 200);
    out.push('[');
    out.push_str(&seed_avatars[..shown].join(SEPARATOR));
    if shown < seed_avatars.len() {
        // Every seed avatar but the last ends just before the separator's closing brace.
        out.push('}');
    }
    for id in seed_avatars.len() as u32 + 1..=count {
        out.push_str(" , ");
        out.push_str(&generated(
            id,
            seed_avatars[(id as usize - 1) % seed_avatars.len()],
        ));
    }
    out.push(']');
    Bytes::from(out)
}

/// Avatar number `id` (21 and up), shaped like the seed's: its name is the seed avatar it
/// cycles back to, with the id appended; its time and picture follow from the id.
fn generated(id: u32, seed_avatar: &str) -> String {
    let name = seed_avatar
        .split("\"name\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("Avatar");
    // 2022-11-01T00:00:00Z plus a few minutes per id.
    let created = Duration::from_millis(1_667_260_800_000 + u64::from(id) * 433_789);
    let created = time::created_at(created);
    let created = std::str::from_utf8(&created).expect("ASCII timestamp");
    let picture = (u64::from(id) * 37) % 1250 + 1;
    format!(
        "{{ \"createdAt\":\"{created}\",\"name\":\"{name}{id}\",\"avatar\":\"https://cloudflare-ipfs.com/ipfs/Qmd3W5DuhgHirLHGVixi6V76LhCkZUz6pnFt5AJBiyvHye/avatar/{picture}.jpg\",\"id\":\"{id}\" }}"
    )
}

/// `list` with its first `createdAt` set to `now` (since the epoch): a patched copy of the
/// bytes up to the end of that value, and the rest of `list` shared, not copied.
pub fn created_now(list: &Bytes, now: Duration) -> Content {
    let end = CREATED_AT_OFFSET + time::CREATED_AT_LEN;
    let mut first = BytesMut::from(&list[..end]);
    first[CREATED_AT_OFFSET..].copy_from_slice(&time::created_at(now));
    Content::new(first.freeze(), list.slice(end..))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCATION_VALUE: HeaderValue = HeaderValue::from_static("/v1/avatar");

    #[test]
    fn template_holds_the_seed_timestamp_at_the_offset() {
        assert_eq!(
            &TEMPLATE[CREATED_AT_OFFSET..CREATED_AT_OFFSET + time::CREATED_AT_LEN],
            b"2023-04-21T12:40:19.925Z"
        );
    }

    #[test]
    fn rendering_the_seed_instant_reproduces_the_seed() {
        let seed_instant = Duration::new(1_682_080_819, 925_350_124);
        let snapshot = render(DateHeader::Rfc3339, &LOCATION_VALUE, seed_instant);
        assert_eq!(&snapshot.body[..], &TEMPLATE[..]);
        assert_eq!(
            snapshot.head(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nengine: Rust/Hype\r\n\
             location: /v1/avatar\r\ndate: 2023-04-21T12:40:19.925350124+00:00\r\n\
             content-length: 3696\r\n\r\n"
        );
        assert_eq!(
            snapshot.headers()[DATE],
            "2023-04-21T12:40:19.925350124+00:00"
        );
        let snapshot = render(DateHeader::Http, &LOCATION_VALUE, seed_instant);
        assert_eq!(snapshot.headers()[DATE], "Fri, 21 Apr 2023 12:40:19 GMT");
        assert!(
            snapshot
                .head()
                .ends_with(b"date: Fri, 21 Apr 2023 12:40:19 GMT\r\ncontent-length: 3696\r\n\r\n")
        );
    }

    #[test]
    fn only_the_first_created_at_changes() {
        let snapshot = render(
            DateHeader::Rfc3339,
            &LOCATION_VALUE,
            Duration::new(1_798_761_599, 999_000_000),
        );
        let range = CREATED_AT_OFFSET..CREATED_AT_OFFSET + time::CREATED_AT_LEN;
        assert_eq!(&snapshot.body[range.clone()], b"2026-12-31T23:59:59.999Z");
        assert_eq!(snapshot.body[..range.start], TEMPLATE[..range.start]);
        assert_eq!(snapshot.body[range.end..], TEMPLATE[range.end..]);
    }

    #[test]
    fn twenty_avatars_are_the_seed_itself() {
        assert_eq!(&list(20)[..], &TEMPLATE[..]);
    }

    fn ids(body: &[u8]) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
        value
            .as_array()
            .expect("an array")
            .iter()
            .map(|avatar| avatar["id"].as_str().expect("string id").to_owned())
            .collect()
    }

    #[test]
    fn fewer_avatars_are_a_prefix_of_the_seed() {
        for count in [1, 2, 19] {
            let body = list(count);
            assert_eq!(ids(&body).len(), count as usize);
            let cut = body.len() - 2; // drop the closing " }]" of the shorter list
            assert_eq!(&body[..cut], &TEMPLATE[..cut], "count {count}");
        }
    }

    #[test]
    fn more_avatars_are_generated_deterministically_in_the_same_shape() {
        let body = list(1000);
        let ids = ids(&body);
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids[20], "21");
        assert_eq!(ids[999], "1000");
        assert_eq!(&body[..TEMPLATE.len() - 1], &TEMPLATE[..TEMPLATE.len() - 1]);
        assert_eq!(list(1000), body, "same count, same bytes");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let keys: Vec<&String> = value[500].as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(value[20]["name"], "BillyStoltenberg21");
    }

    #[test]
    fn patching_sets_only_the_first_created_at_and_shares_the_rest() {
        let template = list(3);
        let content = created_now(&template, Duration::new(1_798_761_599, 123_000_000));
        let body = content.to_bytes();
        assert_eq!(&body[17..41], b"2026-12-31T23:59:59.123Z");
        assert_eq!(&body[..17], &template[..17]);
        assert_eq!(&body[41..], &template[41..]);
        assert_eq!(content.len(), template.len());
    }

    #[test]
    fn cache_renders_at_most_once_per_millisecond_and_shows_the_wall_clock() {
        let mut cache = AvatarCache::new(DateHeader::Rfc3339, LOCATION_VALUE);
        let start = Instant::now();
        let before = time::now();
        let first = cache.at(start + Duration::from_millis(1)).clone();
        let after = time::now();
        let same_ms = cache.at(start + Duration::from_millis(1)).wire.clone();
        assert_eq!(
            first.wire.as_ptr(),
            same_ms.as_ptr(),
            "same instant, same buffer"
        );
        // The rendered millisecond is the wall clock's at the render.
        let shown = std::str::from_utf8(&first.body[17..41]).expect("ASCII");
        let (low, high) = (time::created_at(before), time::created_at(after));
        assert!(
            shown.as_bytes() >= &low[..] && shown.as_bytes() <= &high[..],
            "{shown}"
        );
        let next = cache.at(start + Duration::from_millis(3));
        assert_ne!(first.wire.as_ptr(), next.wire.as_ptr());
    }

    #[test]
    fn a_snapshot_dated_again_in_place_is_the_one_rendered_afresh() {
        let start = Duration::new(1_798_761_598, 999_999_999);
        // Within a second, across one, across a day and a year, and back in time.
        let steps = [
            1,
            1_000_000,
            7_654_321,
            1_000_000_000,
            86_399_000_000_000,
            3,
        ];
        for form in [DateHeader::Rfc3339, DateHeader::Http] {
            let mut snapshot = render(form, &LOCATION_VALUE, start);
            let mut wall = start;
            for (index, step) in steps.iter().enumerate() {
                wall = if index == steps.len() - 1 {
                    wall - Duration::from_nanos(*step)
                } else {
                    wall + Duration::from_nanos(*step)
                };
                let before = snapshot.wire.as_ptr();
                assert!(snapshot.redate(form, wall), "no answer holds the buffer");
                assert_eq!(snapshot.wire.as_ptr(), before, "the same buffer");
                let fresh = render(form, &LOCATION_VALUE, wall);
                assert_eq!(snapshot.wire, fresh.wire, "{form:?} at {wall:?}");
                assert_eq!(snapshot.body, fresh.body);
                assert_eq!(snapshot.headers(), fresh.headers());
            }
        }
    }

    #[test]
    fn a_snapshot_an_answer_still_holds_is_rendered_in_a_new_buffer() {
        let mut cache = AvatarCache::new(DateHeader::Rfc3339, LOCATION_VALUE);
        let start = Instant::now() + Duration::from_secs(1);
        let held = cache.at(start).wire.clone();
        let copy = held.to_vec();
        let next = cache.at(start + Duration::from_millis(2)).wire.clone();
        assert_ne!(held.as_ptr(), next.as_ptr());
        assert_eq!(held, copy, "an answer's bytes never change under it");
        drop((held, next));
        let before = cache.at(start + Duration::from_millis(2)).wire.as_ptr();
        let after = cache.at(start + Duration::from_millis(4)).wire.as_ptr();
        assert_eq!(before, after, "nobody held it: dated in place");
    }

    #[test]
    fn a_snapshot_is_good_until_its_wall_clock_millisecond_ends() {
        let now = Instant::now();
        let wall = Duration::new(1_798_761_599, 100_250_000);
        assert_eq!(millisecond_end(now, wall), now + Duration::from_micros(750));
        let on_the_edge = Duration::new(1_798_761_599, 100_000_000);
        assert_eq!(
            millisecond_end(now, on_the_edge),
            now + Duration::from_millis(1)
        );
    }
}
