//! The seed's payload: the 3,696-byte avatar list as a pre-rendered template, and the per-worker
//! cache that patches the first `createdAt` (and renders the `date` header) at most once per
//! millisecond. Between refreshes every response hands out clones of the same `Bytes`, so a
//! request costs a clock read and two reference-count increments: no JSON, no formatting.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::HeaderValue;

use crate::config::DateHeader;
use crate::time;

/// The seed's response body, byte for byte as its curl output shows it.
pub const TEMPLATE: &[u8; 3696] = include_bytes!("avatar.json");

/// Where the first element's `createdAt` value starts in [`TEMPLATE`].
pub const CREATED_AT_OFFSET: usize = 17;

/// The body and `date` header for one millisecond.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub body: Bytes,
    pub date: HeaderValue,
}

/// One worker's cache of the current millisecond's [`Snapshot`].
#[derive(Debug)]
pub struct AvatarCache {
    date_header: DateHeader,
    /// Milliseconds since the epoch that `current` was rendered for.
    millis: u128,
    current: Snapshot,
}

impl AvatarCache {
    pub fn new(date_header: DateHeader) -> AvatarCache {
        let now = time::now();
        AvatarCache {
            date_header,
            millis: now.as_millis(),
            current: render(date_header, now),
        }
    }

    /// The snapshot for `now`, re-rendered only when the millisecond has changed.
    pub fn at(&mut self, now: Duration) -> &Snapshot {
        let millis = now.as_millis();
        if millis != self.millis {
            self.millis = millis;
            self.current = render(self.date_header, now);
        }
        &self.current
    }
}

/// Renders the body and the `date` header for the instant `now`, both from the same clock read
/// so they always agree.
pub fn render(date_header: DateHeader, now: Duration) -> Snapshot {
    let mut body = BytesMut::with_capacity(TEMPLATE.len());
    body.extend_from_slice(TEMPLATE);
    body[CREATED_AT_OFFSET..CREATED_AT_OFFSET + time::CREATED_AT_LEN]
        .copy_from_slice(&time::created_at(now));
    let date = match date_header {
        DateHeader::Rfc3339 => Bytes::copy_from_slice(&time::rfc3339_nanos(now)),
        DateHeader::Http => Bytes::copy_from_slice(&time::imf_fixdate(now)),
    };
    Snapshot {
        body: body.freeze(),
        date: HeaderValue::from_maybe_shared(date)
            .expect("the time formatters write only visible ASCII"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let snapshot = render(DateHeader::Rfc3339, seed_instant);
        assert_eq!(&snapshot.body[..], &TEMPLATE[..]);
        assert_eq!(snapshot.date, "2023-04-21T12:40:19.925350124+00:00");
        let snapshot = render(DateHeader::Http, seed_instant);
        assert_eq!(snapshot.date, "Fri, 21 Apr 2023 12:40:19 GMT");
    }

    #[test]
    fn only_the_first_created_at_changes() {
        let snapshot = render(
            DateHeader::Rfc3339,
            Duration::new(1_798_761_599, 999_000_000),
        );
        let range = CREATED_AT_OFFSET..CREATED_AT_OFFSET + time::CREATED_AT_LEN;
        assert_eq!(&snapshot.body[range.clone()], b"2026-12-31T23:59:59.999Z");
        assert_eq!(snapshot.body[..range.start], TEMPLATE[..range.start]);
        assert_eq!(snapshot.body[range.end..], TEMPLATE[range.end..]);
    }

    #[test]
    fn cache_renders_once_per_millisecond() {
        let start = Duration::new(1_798_761_599, 100_000_000);
        let mut cache = AvatarCache::new(DateHeader::Rfc3339);
        let first = cache.at(start).body.clone();
        let same_ms = cache.at(start + Duration::from_micros(999)).body.clone();
        assert_eq!(
            first.as_ptr(),
            same_ms.as_ptr(),
            "same millisecond, same buffer"
        );
        let next = cache.at(start + Duration::from_millis(1)).clone();
        assert_ne!(first.as_ptr(), next.body.as_ptr());
        assert_eq!(&next.body[17..41], b"2026-12-31T23:59:59.101Z");
        assert_eq!(next.date, "2026-12-31T23:59:59.101000000+00:00");
    }
}
