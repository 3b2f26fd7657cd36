//! The main path in gateway mode: the gateway's own behaviour, then the upstream call, its
//! answer given the gateway's headers: as a hyper response, or as the wire bytes the fast
//! path writes.

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{CONTENT_TYPE, DATE, HeaderValue, LOCATION};
use hyper::{HeaderMap, Request, StatusCode};

use super::Routes;
use super::admission::{Admission, InflightGuard};
use super::reply::{FaultSignal, Reply, overloaded};
use crate::avatar;
use crate::gateway::{Forward, Gateway};
use crate::time;

/// Gateway mode's answer to one fast-path request, as it goes on the wire.
#[derive(Debug)]
pub struct GatewayWire {
    /// Status line and headers.
    pub head: Bytes,
    /// The upstream's body (empty for HEAD and bodiless statuses).
    pub body: Bytes,
    pub status: u16,
}

impl Routes {
    /// Gateway mode: the gateway's own behaviour (`--behaviour` only, its `fail-first` counted
    /// by the caller's attempt header), then the upstream call, carrying the caller's attempt
    /// header on, and its behaviour with `--forward-behaviour`.
    pub(super) fn forward<B>(
        self: &Rc<Self>,
        request: &Request<B>,
        faults: &Rc<FaultSignal>,
    ) -> Reply {
        let profile = self.profile_now();
        let guard = match self.admit(&profile, true) {
            Admission::Admitted(guard) => guard,
            Admission::Shed => return Reply::now(overloaded()),
        };
        let forwards = self
            .gateway
            .as_ref()
            .is_some_and(Gateway::forwards_behaviour);
        let forward = if forwards {
            Forward::of(request)
        } else {
            Forward::default()
        };
        let forward = forward.with_attempt(&self.attempt_header, request);
        let attempt = self.attempt_id(request, &profile);
        self.later(&profile, attempt, guard, faults, Some(forward))
    }

    /// Whether this worker serves gateway mode.
    pub fn is_gateway(&self) -> bool {
        self.gateway.is_some()
    }

    /// Gateway mode's fast path: calls the upstream for a plain GET (or HEAD) and returns the
    /// answer as wire bytes, exactly what hyper would write for it: a head written here and
    /// the upstream's body as it was read (not copied again).
    pub async fn gateway_wire(&self, head_only: bool) -> GatewayWire {
        let gateway = self
            .gateway
            .as_ref()
            .expect("the fast path calls gateway_wire only in gateway mode");
        let _inflight = InflightGuard::new(&self.shared.inflight);
        let answer = gateway.call(&Forward::default()).await;
        let status = answer.status;
        let mut wire = BytesMut::with_capacity(256);
        wire.put_slice(b"HTTP/1.1 ");
        wire.put_slice(status.as_str().as_bytes());
        wire.put_u8(b' ');
        wire.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        // The headers of `gateway_headers`, in its order, written straight out.
        wire.put_slice(b"\r\ncontent-type: ");
        wire.put_slice(answer.content_type.as_bytes());
        wire.put_slice(b"\r\nengine: ");
        wire.put_slice(avatar::ENGINE_VALUE.as_bytes());
        wire.put_slice(b"\r\nlocation: ");
        wire.put_slice(self.location.as_bytes());
        wire.put_slice(b"\r\ndate: ");
        time::put_date(self.date_header, time::now(), &mut wire);
        wire.put_slice(b"\r\n");
        // No body and no length for the statuses that cannot have one, as hyper does.
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if !bodiless {
            wire.put_slice(b"content-length: ");
            wire.put_slice(itoa::Buffer::new().format(answer.body.len()).as_bytes());
            wire.put_slice(b"\r\n");
        }
        wire.put_slice(b"\r\n");
        let body = if head_only || bodiless {
            Bytes::new()
        } else {
            answer.body
        };
        GatewayWire {
            head: wire.freeze(),
            body,
            status: status.as_u16(),
        }
    }

    /// The gateway's answer headers, in the avatar answer's order: the upstream's content type,
    /// `engine`, `location` (the gateway's path) and `date` in the configured form.
    pub(super) fn gateway_headers(&self, content_type: HeaderValue) -> HeaderMap {
        let mut date = BytesMut::with_capacity(40);
        time::put_date(self.date_header, time::now(), &mut date);
        let date = HeaderValue::from_maybe_shared(date.freeze())
            .expect("the time formatters write only visible ASCII");
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(avatar::ENGINE, avatar::ENGINE_VALUE);
        headers.insert(LOCATION, self.location.clone());
        headers.insert(DATE, date);
        headers
    }
}
