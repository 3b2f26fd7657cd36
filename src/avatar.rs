//! The seed's payload: the 3,696-byte avatar list as a pre-rendered template, and the per-worker
//! cache that renders the whole `200` response (status line, headers, body) at most once per
//! millisecond. Between refreshes every response hands out clones of the same `Bytes`, so a
//! request costs a clock read and a few reference-count increments: no JSON, no formatting.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::header::{CONTENT_TYPE, DATE, HeaderName, HeaderValue, LOCATION};

use crate::config::DateHeader;
use crate::time;

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
    /// The body: `wire[head_len..]`, without a copy.
    pub body: Bytes,
    /// The response headers except `content-length`, which hyper adds from the body.
    pub headers: HeaderMap,
}

impl Snapshot {
    /// The bytes of a HEAD answer: the status line and headers only.
    pub fn head(&self) -> Bytes {
        self.wire.slice(..self.head_len)
    }
}

/// One worker's cache of the current millisecond's [`Snapshot`].
#[derive(Debug)]
pub struct AvatarCache {
    date_header: DateHeader,
    location: HeaderValue,
    /// Milliseconds since the epoch that `current` was rendered for.
    millis: u128,
    current: Snapshot,
}

impl AvatarCache {
    pub fn new(date_header: DateHeader, location: HeaderValue) -> AvatarCache {
        let now = time::now();
        AvatarCache {
            current: render(date_header, &location, now),
            date_header,
            location,
            millis: now.as_millis(),
        }
    }

    /// The snapshot for `now`, re-rendered only when the millisecond has changed.
    pub fn at(&mut self, now: Duration) -> &Snapshot {
        let millis = now.as_millis();
        if millis != self.millis {
            self.millis = millis;
            self.current = render(self.date_header, &self.location, now);
        }
        &self.current
    }
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
    wire.put_slice(b"\r\ncontent-length: ");
    wire.put_slice(TEMPLATE.len().to_string().as_bytes());
    wire.put_slice(b"\r\n\r\n");
    let head_len = wire.len();
    wire.put_slice(TEMPLATE);
    let created_at_start = head_len + CREATED_AT_OFFSET;
    wire[created_at_start..created_at_start + time::CREATED_AT_LEN].copy_from_slice(&created_at);
    let wire = wire.freeze();

    let mut headers = HeaderMap::with_capacity(5);
    headers.insert(CONTENT_TYPE, JSON);
    headers.insert(ENGINE, ENGINE_VALUE);
    headers.insert(LOCATION, location.clone());
    headers.insert(
        DATE,
        HeaderValue::from_maybe_shared(wire.slice(date_start..date_end))
            .expect("the time formatters write only visible ASCII"),
    );
    Snapshot {
        body: wire.slice(head_len..),
        head_len,
        headers,
        wire,
    }
}

/// Separator between two avatars in the seed's body.
const SEPARATOR: &str = "} , {";

/// The body with `count` avatars (`count=N`), its first `createdAt` still the seed's (patch it
/// with [`patch_created_at`]). The first 20 are the seed's, byte for byte; from 21 on they are
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

/// Copies `list` with its first `createdAt` set to `now`.
pub fn patch_created_at(list: &[u8], now: Duration) -> Bytes {
    let mut body = BytesMut::from(list);
    body[CREATED_AT_OFFSET..CREATED_AT_OFFSET + time::CREATED_AT_LEN]
        .copy_from_slice(&time::created_at(now));
    body.freeze()
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
            snapshot.headers[DATE],
            "2023-04-21T12:40:19.925350124+00:00"
        );
        let snapshot = render(DateHeader::Http, &LOCATION_VALUE, seed_instant);
        assert_eq!(snapshot.headers[DATE], "Fri, 21 Apr 2023 12:40:19 GMT");
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
    fn patching_sets_only_the_first_created_at() {
        let body = patch_created_at(&list(3), Duration::new(1_798_761_599, 123_000_000));
        assert_eq!(&body[17..41], b"2026-12-31T23:59:59.123Z");
        assert_eq!(&body[41..], &list(3)[41..]);
    }

    #[test]
    fn cache_renders_once_per_millisecond() {
        let start = Duration::new(1_798_761_599, 100_000_000);
        let mut cache = AvatarCache::new(DateHeader::Rfc3339, LOCATION_VALUE);
        let first = cache.at(start).wire.clone();
        let same_ms = cache.at(start + Duration::from_micros(999)).wire.clone();
        assert_eq!(
            first.as_ptr(),
            same_ms.as_ptr(),
            "same millisecond, same buffer"
        );
        let next = cache.at(start + Duration::from_millis(1)).clone();
        assert_ne!(first.as_ptr(), next.wire.as_ptr());
        assert_eq!(&next.body[17..41], b"2026-12-31T23:59:59.101Z");
        assert_eq!(next.headers[DATE], "2026-12-31T23:59:59.101000000+00:00");
    }
}
