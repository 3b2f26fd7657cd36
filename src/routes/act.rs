//! Behaviour acted out: the controls a request asks for (profile, header, query), planned
//! (with `fail-first` applied to the request id's attempts) and carried out (delay, fault,
//! injected status, `count=N` bodies, pacing).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};

use super::admission::InflightGuard;
use super::reply::{FaultSignal, Injected, Reply, with_headers};
use super::{JSON, Routes};
use crate::avatar;
use crate::behaviour::body::{Body, Content};
use crate::behaviour::parse::Unknown;
use crate::behaviour::{self, BehaviourError, Controls, Fault, Plan, Rng};
use crate::gateway::Forward;
use crate::time;

/// The body of an injected error status.
pub(super) fn injected_body(status: StatusCode) -> String {
    format!(r#"{{"error":"injected","status":{}}}"#, status.as_u16())
}

/// How many `count=N` bodies each worker keeps rendered.
const LIST_CACHE: usize = 16;

impl Routes {
    /// Plans `controls` and acts them out; the answer comes later. `attempt` is the request id
    /// `fail-first` counts the request under ([`Routes::attempt_id`]).
    pub(super) fn later(
        self: &Rc<Self>,
        controls: &Controls,
        attempt: Option<&[u8]>,
        guard: Option<InflightGuard>,
        faults: &Rc<FaultSignal>,
        forward: Option<Forward>,
    ) -> Reply {
        let mut plan = self.draw(controls);
        if let (Some(times), Some(id)) = (controls.fail_first, attempt) {
            self.shared
                .attempts
                .apply(&mut plan, times, id, Instant::now());
        }
        let routes = Rc::clone(self);
        let faults = Rc::clone(faults);
        Reply::Later(Box::pin(async move {
            let response = routes.act_out(plan, &faults, forward).await;
            drop(guard);
            response
        }))
    }

    /// The request id `fail-first` counts this request's attempts under: the attempt header's
    /// value, when `controls` ask for `fail-first` and have a failure to repeat (else the map
    /// is left alone).
    pub(super) fn attempt_id<'r, B>(
        &self,
        request: &'r Request<B>,
        controls: &Controls,
    ) -> Option<&'r [u8]> {
        let fails = controls.status.is_some() || controls.fault.is_some();
        if controls.fail_first.is_none() || !fails {
            return None;
        }
        let id = request.headers().get(&self.attempt_header)?;
        Some(id.as_bytes())
    }

    /// The controls for this request: the server profile, then the header, then the query.
    pub(super) fn controls<B>(&self, request: &Request<B>) -> Result<Controls, BehaviourError> {
        let mut controls = self.profile_now();
        if !self.allow_request_behaviour {
            return Ok(controls);
        }
        if let Some(header) = request.headers().get(behaviour::HEADER) {
            let text = header.to_str().map_err(|_| {
                BehaviourError::new(behaviour::HEADER, "visible ASCII key=value pairs")
            })?;
            controls.merge(Controls::parse(text, &self.limits, Unknown::Reject)?);
        }
        if let Some(query) = request.uri().query() {
            controls.merge(Controls::parse(query, &self.limits, Unknown::Ignore)?);
        }
        self.check_rate(&controls)?;
        Ok(controls)
    }

    /// Refuses a `rate` at which the longest body `controls` can ask for would outlast
    /// `--max-delay`.
    pub(super) fn check_rate(&self, controls: &Controls) -> Result<(), BehaviourError> {
        if controls.rate.is_none() {
            return Ok(());
        }
        let longest = match controls.count {
            Some(count) => self.list_template(count).len(),
            None => avatar::TEMPLATE.len(),
        };
        controls.check_rate(longest, &self.limits)
    }

    /// Draws a request's plan from `controls`: with their own seed's generator, or the
    /// worker's; `linear` delays see the requests in flight now (this one counted).
    pub(super) fn draw(&self, controls: &Controls) -> Plan {
        let inflight = self.shared.inflight.load(Ordering::Relaxed);
        match controls.seed {
            Some(seed) => controls.plan(&mut Rng::new(seed), inflight, &self.limits),
            None => controls.plan(&mut self.rng.borrow_mut(), inflight, &self.limits),
        }
    }

    /// Carries out a plan: wait, then fault or answer: an injected status, else the upstream's
    /// answer in gateway mode (`forward`), else avatars.
    pub(super) async fn act_out(
        &self,
        plan: Plan,
        faults: &FaultSignal,
        forward: Option<Forward>,
    ) -> Response<Body> {
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        match plan.fault {
            Some(Fault::Hang) => {
                self.fault_injected(Fault::Hang);
                tokio::time::sleep(self.max_hang).await;
                return faults.raise(Fault::Close).await;
            }
            Some(fault @ (Fault::Reset | Fault::Close)) => {
                self.fault_injected(fault);
                return faults.raise(fault).await;
            }
            Some(Fault::Truncate) => self.fault_injected(Fault::Truncate),
            None => {}
        }
        let injected = plan.status.map(super::shaped::injected_status);
        let (status, body, mut headers) = match (injected, forward, &self.gateway) {
            (Some(status), _, _) => {
                let body = injected_body(status);
                let mut headers = HeaderMap::with_capacity(2);
                headers.insert(CONTENT_TYPE, JSON);
                (status, Content::from(Bytes::from(body)), headers)
            }
            (None, Some(forward), Some(gateway)) => {
                let answer = gateway.call(&forward).await;
                (
                    answer.status,
                    Content::from(answer.body),
                    self.gateway_headers(answer.content_type),
                )
            }
            (None, _, _) => {
                let (body, headers) = self.avatar_parts();
                match plan.count {
                    Some(count) => (StatusCode::OK, self.list(count), headers),
                    None => (StatusCode::OK, Content::from(body), headers),
                }
            }
        };
        let body = if plan.fault == Some(Fault::Truncate) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Body::truncated(body)
        } else {
            // Validation keeps every pace within --max-delay; the bound is kept here too, for
            // bodies validation cannot know (the upstream's, in gateway mode).
            match plan.pace(body.len()) {
                Some(over) => Body::paced(body, over.min(self.limits.max_delay)),
                None => Body::whole(body),
            }
        };
        let mut response = with_headers(body, headers);
        *response.status_mut() = status;
        if self.server_timing {
            response.extensions_mut().insert(Injected {
                delay: plan.delay,
                status: plan.status,
                truncated: plan.fault == Some(Fault::Truncate),
            });
        }
        response
    }

    /// Counts an injected socket fault.
    pub fn fault_injected(&self, fault: Fault) {
        if self.record {
            self.metrics.fault(fault);
        }
    }

    /// The body with `count` avatars, its first `createdAt` now: a patched copy of the first
    /// few bytes, and the rest shared with every other request for `count` (no copy).
    pub(super) fn list(&self, count: u32) -> Content {
        let template = self.list_template(count);
        avatar::created_now(&template, time::now())
    }

    /// The rendered body with `count` avatars, from this worker's cache of the last
    /// [`LIST_CACHE`] counts asked for.
    pub(super) fn list_template(&self, count: u32) -> Bytes {
        let mut lists = self.lists.borrow_mut();
        match lists.iter().position(|(n, _)| *n == count) {
            Some(index) => lists[index].1.clone(),
            None => {
                if lists.len() == LIST_CACHE {
                    lists.remove(0);
                }
                let rendered = avatar::list(count);
                lists.push((count, rendered.clone()));
                rendered
            }
        }
    }
}
