//! Property-based fuzzing of the request-to-response path: the fast path's classifier, the
//! routes with arbitrary methods, paths, queries and behaviour headers, and raw bytes sent to
//! a live server. `cargo test` runs a few cases; `bench/fuzz` runs many for a fixed time
//! (PROPTEST_CASES). proptest keeps every failing input in `proptest-regressions/`, so a
//! finding is replayed by every later run.

use std::io::{Read, Write};
use std::rc::Rc;

use microservice2::avatar::TEMPLATE;
use microservice2::behaviour::parse::{KEYS, Unknown};
use microservice2::behaviour::{Controls, Fault};
use microservice2::routes::{FaultSignal, Routes, Shared};
use microservice2::routes::{Head, classify};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::support::{config, masked, spawn};

/// Bytes shaped like HTTP requests more often than not.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (
            "(GET|HEAD|POST|PRI|G|)",
            "(/v1/avatar|/|\\*|/healthz|/metrics|/v1/avatar\\?[a-z=&(),:0-9%.]{0,40})",
            "(HTTP/1\\.1|HTTP/1\\.0|HTTP/2\\.0|HTTP/9|)",
            proptest::collection::vec("[A-Za-z-]{0,12}: [ -~]{0,30}", 0..6),
            "(\r\n|\n|)",
        )
            .prop_map(|(method, path, version, headers, end)| {
                let mut text = format!("{method} {path} {version}\r\n");
                for header in headers {
                    text.push_str(&header);
                    text.push_str("\r\n");
                }
                text.push_str(&end);
                text.into_bytes()
            }),
    ]
}

proptest! {
    #[test]
    fn fuzz_classify_never_panics_and_stays_in_bounds(bytes in request_bytes()) {
        if let Head::Avatar(request) = classify(&bytes, "/v1/avatar") {
            prop_assert!(request.len <= bytes.len());
            prop_assert!(bytes.starts_with(b"GET /v1/avatar") || bytes.starts_with(b"HEAD /v1/avatar"));
            for span in [request.query, request.behaviour].into_iter().flatten() {
                prop_assert!(span.start <= span.end && span.end <= request.len);
            }
        }
    }

    #[test]
    fn fuzz_behaviour_parser_never_panics(text in "[ -~]{0,80}") {
        for unknown in [Unknown::Reject, Unknown::Ignore] {
            if let Ok(controls) = Controls::parse(&text, &microservice2::Config::default().limits(), unknown) {
                // Whatever parses can be planned.
                let mut rng = microservice2::behaviour::Rng::new(1);
                let plan = controls.plan(&mut rng, 3, &microservice2::Config::default().limits());
                prop_assert!(plan.delay <= microservice2::Config::default().limits().max_delay);
            }
        }
    }

    #[test]
    fn fuzz_routes_answer_every_request_as_promised(
        method in prop_oneof![3 => "(GET|HEAD)", 1 => "(POST|DELETE|OPTIONS|BREW)"],
        path in prop_oneof![3 => "/v1/avatar", 1 => "(/healthz|/readyz|/metrics|/x)"],
        query in prop_oneof!["[a-z=&(),:0-9%.]{0,40}", controls_text()],
        header in proptest::option::of(prop_oneof!["[ -~]{0,40}", controls_text()]),
    ) {
        let routes = Rc::new(Routes::new(&config(&[]), &Shared::new(1), 0));
        let faults = Rc::new(FaultSignal::default());
        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut request = hyper::Request::builder().method(method.as_str()).uri(uri.as_str());
        if let Some(header) = &header {
            request = request.header("x-m2-behaviour", header.as_str());
        }
        if let Ok(request) = request.body(http_body_util::Empty::<bytes::Bytes>::new()) {
            let asked = Asked { method: &method, path: &path, query: &query, header: header.as_deref() };
            check(&asked, answer(&routes, request, &faults))?;
        }
    }
}

/// Behaviour controls shaped like real ones: mostly valid pairs of every key, some with a
/// broken value or an unknown key, so that every behaviour the routes act out is reached.
fn controls_text() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        "delay=([0-9]{1,3}ms|[0-9]{1,3}us|uniform\\([0-9]ms,[1-9][0-9]ms\\)|normal\\([0-9]{1,2}ms,[0-9]ms\\)|lognormal\\(1ms,[1-9][0-9]ms\\)|exp\\([0-9]{1,2}ms\\)|linear\\(1ms,[0-9]{1,3}us\\)|[0-9]ms:[0-9]{1,2},[0-9]{2}ms:[0-9])",
        "status=[2-5][0-9]{2}(:[0-9]{1,2})?",
        "fault=(reset|close|hang|truncate)(:[0-9]{1,2})?",
        "count=[1-9][0-9]{0,2}",
        "drip=[0-9]{1,4}ms",
        "rate=[1-9][0-9]{0,2}(KiB|KB)",
        "seed=[0-9]{1,5}",
    ];
    let broken = (
        "(delay|status|fault|count|drip|rate|seed|colour)",
        "[a-z0-9!%.:,()]{0,8}",
    )
        .prop_map(|(key, value)| format!("{key}={value}"));
    let pair = prop_oneof![4 => valid, 1 => broken];
    proptest::collection::vec(pair, 1..4).prop_map(|pairs| pairs.join("&"))
}

/// What the routes made of one request: a response, its body read to the end, or a fault
/// raised on the connection instead of any response.
enum Answer {
    Response {
        status: u16,
        headers: hyper::HeaderMap,
        body: Vec<u8>,
        /// The body ended in an error (`fault=truncate`) rather than at its end.
        cut_short: bool,
    },
    Fault(Fault),
}

/// Answers `request` on a paused clock: delays, pacing and hangs pass at once, so every
/// reply, behaviour included, is read whole.
fn answer(
    routes: &Rc<Routes>,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
    faults: &Rc<FaultSignal>,
) -> Answer {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a paused runtime");
    runtime.block_on(async {
        let recorded = routes.call(request, faults, false, None);
        let Ok(response) = tokio::select! {
            biased;
            fault = faults.raised() => return Answer::Fault(fault),
            response = recorded => response,
        };
        let (parts, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        let mut cut_short = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Err(_) => {
                    cut_short = true;
                    break;
                }
            }
        }
        Answer::Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: bytes,
            cut_short,
        }
    })
}

/// The request the fuzzer sent.
struct Asked<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    header: Option<&'a str>,
}

impl Asked<'_> {
    /// Whether the request may have set control `key` (written plainly, or escaped).
    fn may_set(&self, key: &str) -> bool {
        let says = |text: &str| text.contains(key) || text.contains('%');
        says(self.query) || self.header.is_some_and(says)
    }
}

fn json(body: &[u8]) -> Result<serde_json::Value, TestCaseError> {
    serde_json::from_slice(body)
        .map_err(|err| TestCaseError::fail(format!("{err}: {}", String::from_utf8_lossy(body))))
}

/// What every reply must say, from `src/routes/`: `/x` is the seed's 404, any method but
/// GET and HEAD a 405 naming them, the ops paths their fixed answers, and the avatar path
/// the avatars, a 400 naming the parameter, or what the request's controls asked for.
fn check(asked: &Asked<'_>, answer: Answer) -> Result<(), TestCaseError> {
    let avatar_get = asked.path == "/v1/avatar" && matches!(asked.method, "GET" | "HEAD");
    let (status, headers, body, cut_short) = match answer {
        Answer::Fault(fault) => {
            prop_assert!(avatar_get && asked.may_set("fault"), "unasked {fault:?}");
            // A hang ends in a close at --max-hang; truncation answers.
            prop_assert!(matches!(fault, Fault::Reset | Fault::Close), "{fault:?}");
            return Ok(());
        }
        Answer::Response {
            status,
            headers,
            body,
            cut_short,
        } => (status, headers, body, cut_short),
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let Some(content_type) = header("content-type") else {
        return Err(TestCaseError::fail(format!(
            "{status} without a content-type"
        )));
    };
    if asked.path == "/x" {
        prop_assert_eq!(status, 404);
        prop_assert_eq!(content_type, "text/plain; charset=utf-8");
        prop_assert_eq!(&body[..], b"Not found");
        return Ok(());
    }
    if !matches!(asked.method, "GET" | "HEAD") {
        prop_assert_eq!(status, 405);
        prop_assert_eq!(header("allow"), Some("GET, HEAD"));
        prop_assert_eq!(content_type, "application/json");
        prop_assert_eq!(
            json(&body)?,
            serde_json::json!({"error": "method not allowed", "allow": ["GET", "HEAD"]})
        );
        return Ok(());
    }
    match asked.path {
        "/healthz" | "/readyz" => {
            let expected = if asked.path == "/healthz" {
                "ok"
            } else {
                "ready"
            };
            prop_assert_eq!(status, 200);
            prop_assert_eq!(content_type, "application/json");
            prop_assert_eq!(json(&body)?, serde_json::json!({"status": expected}));
            return Ok(());
        }
        "/metrics" => {
            prop_assert_eq!(status, 200);
            prop_assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{content_type}"
            );
            let text = String::from_utf8_lossy(&body);
            prop_assert_eq!(
                crate::support::sample(&text, "microservice2_inflight_requests", &[]),
                0.0
            );
            return Ok(());
        }
        _ => {}
    }
    // The avatar path: what the controls asked for first (a truncated body, an injected
    // status, 400 included), then a 400 naming a parameter, then the avatars.
    if cut_short {
        // fault=truncate: the full length promised, half of it sent.
        prop_assert!(asked.may_set("fault"));
        let promised: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        prop_assert!(promised > 0, "a truncated body promises its full length");
        prop_assert_eq!(body.len(), promised / 2);
        return Ok(());
    }
    let injected = format!(r#"{{"error":"injected","status":{status}}}"#);
    if body.starts_with(br#"{"error":"injected""#) {
        prop_assert!(asked.may_set("status"));
        prop_assert!((200..=599).contains(&status), "{status}");
        prop_assert_eq!(content_type, "application/json");
        prop_assert_eq!(String::from_utf8_lossy(&body), injected);
        return Ok(());
    }
    // A control the request set wrongly.
    if status == 400 {
        prop_assert!(
            !asked.query.is_empty() || asked.header.is_some(),
            "400 for no controls"
        );
        prop_assert_eq!(content_type, "application/json");
        let body = json(&body)?;
        let (Some(param), Some(error)) = (body["param"].as_str(), body["error"].as_str()) else {
            return Err(TestCaseError::fail(format!("no param or error: {body}")));
        };
        prop_assert!(!error.is_empty(), "{body}");
        // A known control, or what the header (strict about unknown keys) said.
        prop_assert!(
            KEYS.contains(&param)
                || param == "x-m2-behaviour"
                || asked
                    .header
                    .is_some_and(|h| h.contains(param) || h.contains('%')),
            "param {param:?} for {:?} / {:?}",
            asked.query,
            asked.header
        );
        return Ok(());
    }
    // The avatars, as the seed answers them, or a `count=N` list.
    prop_assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    prop_assert_eq!(content_type, "application/json");
    prop_assert_eq!(header("engine"), Some("Rust/Hype"));
    prop_assert_eq!(header("location"), Some("/v1/avatar"));
    prop_assert!(header("date").is_some());
    if masked(&body) != masked(TEMPLATE) {
        prop_assert!(
            asked.may_set("count"),
            "not the seed's body: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let list = json(&body)?;
        let avatars = list.as_array().map_or(&[][..], Vec::as_slice);
        prop_assert!(!avatars.is_empty(), "a count=N list of avatars");
        prop_assert!(avatars.iter().all(|avatar| avatar["createdAt"].is_string()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::support::fuzz_config())]

    #[test]
    fn fuzz_live_server_survives_raw_bytes(bytes in request_bytes()) {
        thread_local! {
            static SERVER: crate::support::TestServer = spawn(config(&[
                "--header-timeout", "200ms", "--idle-timeout", "200ms", "--workers", "1",
            ]));
        }
        SERVER.with(|server| {
            let mut client = server.connect();
            let _ = client.stream().write_all(&bytes);
            let _ = client.stream().shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = client.stream().read_to_end(&mut sink);
            let response = server.get("/v1/avatar");
            assert_eq!(response.status, 200, "after {:?}", String::from_utf8_lossy(&bytes));
        });
    }
}
