//! The control API (`--control`): read and change the server-wide behaviour while the server
//! runs, on the admin port when there is one, else on the main port.
//!
//! - `GET`, `PUT` (the grammar as the body), `DELETE /admin/behaviour`
//! - `GET`, `PUT` (a scenario's YAML as the body), `DELETE /admin/scenario`,
//!   `POST /admin/scenario/restart`
//!
//! Without `--control` only `GET /admin/scenario` is answered, when a scenario runs: it
//! changes nothing. With `--control-token`, every `/admin/*` request needs
//! `authorization: Bearer TOKEN`. Bodies are bounded in size (64 KiB for a profile, 1 MiB for
//! a scenario) and in time; a bad one is a 4xx with a JSON body naming the problem, and
//! changes nothing.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{ALLOW, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::live::{Current, Profile, ScenarioNow};
use super::reply::{Reply, plain};
use super::{JSON, Routes};
use crate::behaviour::body::Body;
use crate::behaviour::scenario::{Position, Scenario};
use crate::config::Config;

/// The largest scenario a control request may carry (as `--scenario` reads).
const MAX_SCENARIO: usize = 1024 * 1024;

/// The largest behaviour profile a control request may carry: a profile needs well under a
/// kilobyte, and each request copies the one that applies.
const MAX_PROFILE: usize = 64 * 1024;

/// How long a control request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const BEHAVIOUR: &str = "/admin/behaviour";
const SCENARIO: &str = "/admin/scenario";
const RESTART: &str = "/admin/scenario/restart";

/// The control API's settings.
#[derive(Debug)]
pub(super) struct Control {
    /// `--control`: changes are allowed (else only `GET /admin/scenario` is answered).
    changes: bool,
    /// `Bearer TOKEN`, as the `authorization` header must carry it.
    expected: Option<Box<[u8]>>,
}

impl Control {
    /// The control API of `config`: none without `--control` or a scenario.
    pub(super) fn of(config: &Config) -> Option<Control> {
        (config.control || config.scenario.is_some()).then(|| Control {
            changes: config.control,
            expected: config
                .control_token
                .as_ref()
                .map(|token| format!("Bearer {token}").into_bytes().into_boxed_slice()),
        })
    }

    /// Whether the one `authorization` header carries the token (compared in constant
    /// time), or none is needed. Two headers are refused whatever they hold.
    fn authorized(&self, headers: &hyper::HeaderMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let mut given = headers.get_all(AUTHORIZATION).iter();
        match (given.next(), given.next()) {
            (Some(value), None) => constant_time_eq(value.as_bytes(), expected),
            _ => false,
        }
    }
}

/// Whether `a` equals `b`, taking as long whatever their first difference: only the length
/// of the expected value can be learnt from the time taken.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for (index, &expected) in b.iter().enumerate() {
        difference |= a.get(index).copied().unwrap_or(!expected) ^ expected;
    }
    difference == 0
}

/// A JSON answer.
fn answer(status: StatusCode, body: &Value) -> Response<Body> {
    plain(status, JSON, body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    answer(status, &json!({ "error": message }))
}

/// `{"behaviour":…,"source":…}`.
fn behaviour_json(current: &Current) -> Value {
    json!({
        "behaviour": current.profile.text,
        "source": current.source.label(),
    })
}

/// `{"phase":…,"index":…,"elapsed_ms":…,"remaining_ms":…,"state":…,"loop":…}`: the
/// elapsed and remaining time of the phase; before the start, the time left until it.
fn scenario_json(now: &ScenarioNow) -> Value {
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let (state, elapsed, remaining) = match now.position {
        Position::In {
            into, remaining, ..
        } => ("running", ms(into), ms(remaining)),
        Position::Before { remaining } => ("pending", 0.0, ms(remaining)),
        Position::After => ("finished", 0.0, 0.0),
    };
    json!({
        "phase": now.phase.as_ref().map(|(_, name)| name),
        "index": now.phase.as_ref().map(|(index, _)| index),
        "elapsed_ms": elapsed.round() as u64,
        "remaining_ms": remaining.round() as u64,
        "state": state,
        "loop": now.looping,
    })
}

impl Routes {
    /// Whether `method` `path` is the control API's, served here.
    pub(super) fn is_control(&self, method: &Method, path: &str) -> bool {
        match &self.control {
            Some(control) if path.starts_with("/admin/") => {
                control.changes
                    || (path == SCENARIO && matches!(*method, Method::GET | Method::HEAD))
            }
            _ => false,
        }
    }

    /// Answers a control request from `peer`.
    pub(super) fn control<B>(
        self: &Rc<Self>,
        request: Request<B>,
        peer: Option<SocketAddr>,
    ) -> Reply
    where
        B: hyper::body::Body + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(control) = &self.control else {
            return Reply::now(error(StatusCode::NOT_FOUND, "no control API"));
        };
        if !control.authorized(request.headers()) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "send the control token: authorization: Bearer TOKEN",
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Reply::now(response);
        }
        let live = self.shared.live();
        let metrics = self.shared.metrics();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match (path.as_str(), method) {
            (BEHAVIOUR, Method::GET | Method::HEAD) => {
                let (_, current) = live.current(Instant::now());
                Reply::now(answer(StatusCode::OK, &behaviour_json(&current)))
            }
            (BEHAVIOUR, Method::PUT) => Reply::Later(Box::pin(async move {
                let text = match read_text(request.into_body(), MAX_PROFILE).await {
                    Ok(text) => text,
                    Err(response) => return response,
                };
                let text = text.trim().to_owned();
                match live.check(&text) {
                    Ok(controls) => {
                        let current = live.set_control(Profile { text, controls }, peer, &metrics);
                        answer(StatusCode::OK, &behaviour_json(&current))
                    }
                    Err(err) => plain(StatusCode::BAD_REQUEST, JSON, err.to_json()),
                }
            })),
            (BEHAVIOUR, Method::DELETE) => {
                let current = live.clear_control(peer, &metrics);
                Reply::now(answer(StatusCode::OK, &behaviour_json(&current)))
            }
            (SCENARIO, Method::GET | Method::HEAD) => Reply::now(scenario_answer(&live)),
            (SCENARIO, Method::PUT) => Reply::Later(Box::pin(async move {
                let text = match read_text(request.into_body(), MAX_SCENARIO).await {
                    Ok(text) => text,
                    Err(response) => return response,
                };
                match Scenario::parse(&text, &|profile| live.check(profile)) {
                    Ok(scenario) => {
                        let scenario = Some(Arc::new(scenario));
                        live.set_scenario(scenario, "scenario replaced", peer, &metrics);
                        scenario_answer(&live)
                    }
                    Err(err) => error(StatusCode::BAD_REQUEST, &err.to_string()),
                }
            })),
            (SCENARIO, Method::DELETE) => {
                live.set_scenario(None, "scenario stopped", peer, &metrics);
                let (_, current) = live.current(Instant::now());
                Reply::now(answer(StatusCode::OK, &behaviour_json(&current)))
            }
            (RESTART, Method::POST) => match live.scenario() {
                Some(scenario) => {
                    live.set_scenario(Some(scenario), "scenario restarted", peer, &metrics);
                    Reply::now(scenario_answer(&live))
                }
                None => Reply::now(error(StatusCode::NOT_FOUND, "no scenario is loaded")),
            },
            (BEHAVIOUR | SCENARIO | RESTART, _) => {
                let allow = match path.as_str() {
                    RESTART => "POST",
                    _ => "GET, HEAD, PUT, DELETE",
                };
                let mut response = answer(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({ "error": "method not allowed", "allow": allow }),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                Reply::now(response)
            }
            _ => Reply::now(answer(
                StatusCode::NOT_FOUND,
                &json!({
                    "error": "no such control",
                    "controls": [BEHAVIOUR, SCENARIO, RESTART],
                }),
            )),
        }
    }
}

/// `GET /admin/scenario`'s answer: where the scenario is, or 404 when none is loaded.
fn scenario_answer(live: &super::live::Live) -> Response<Body> {
    match live.scenario_now(Instant::now()) {
        Some(now) => answer(StatusCode::OK, &scenario_json(&now)),
        None => error(StatusCode::NOT_FOUND, "no scenario is loaded"),
    }
}

/// A control request's body as UTF-8 text: at most `limit` bytes within [`BODY_TIMEOUT`],
/// else the 4xx that says which limit it broke.
async fn read_text<B>(body: B, limit: usize) -> Result<String, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect());
    let bytes: Bytes = match collected.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            let most = format!("the body is larger than {} KiB", limit / 1024);
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &most));
        }
        Ok(Err(_)) => {
            return Err(error(StatusCode::BAD_REQUEST, "the body could not be read"));
        }
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within 10s",
            ));
        }
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        for given in [
            &b"Bearer abd"[..],
            b"Bearer ab",
            b"Bearer abcd",
            b"",
            b"bearer abc",
        ] {
            assert!(!constant_time_eq(given, b"Bearer abc"), "{given:?}");
        }
    }
}
