//! Property-based fuzzing of the request-to-response path: the fast path's classifier, the
//! routes with arbitrary methods, paths, queries and behaviour headers, and raw bytes sent to
//! a live server. `cargo test` runs a few cases; `bench/fuzz` runs many for a fixed time
//! (PROPTEST_CASES). proptest keeps every failing input in `proptest-regressions/`, so a
//! finding is replayed by every later run.

use std::io::{Read, Write};
use std::rc::Rc;

use microservice2::behaviour::Controls;
use microservice2::behaviour::parse::Unknown;
use microservice2::routes::{FaultSignal, Routes, Shared};
use microservice2::routes::{Head, classify};
use proptest::prelude::*;

use crate::support::{config, spawn};

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
        if let Head::Avatar { len, .. } = classify(&bytes, "/v1/avatar") {
            prop_assert!(len <= bytes.len());
            prop_assert!(bytes.starts_with(b"GET /v1/avatar ") || bytes.starts_with(b"HEAD /v1/avatar "));
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
    fn fuzz_routes_answer_any_request_without_panicking(
        method in "(GET|HEAD|POST|DELETE|OPTIONS|BREW)",
        path in "(/v1/avatar|/healthz|/readyz|/metrics|/x)",
        query in "[a-z=&(),:0-9%.]{0,40}",
        header in proptest::option::of("[ -~]{0,40}"),
    ) {
        let routes = Rc::new(Routes::new(&config(&[]), &Shared::new(1), 0));
        let faults = Rc::new(FaultSignal::default());
        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut request = hyper::Request::builder().method(method.as_str()).uri(uri.as_str());
        if let Some(header) = &header {
            request = request.header("x-m2-behaviour", header.as_str());
        }
        if let Ok(request) = request.body(()) {
            // Parsing, routing and planning happen in the call; a behaviour future is built
            // but not run (its delays would only slow the fuzzer down).
            drop(routes.call(&request, &faults, false));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

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
