//! `fail-first=N`: the injected status or fault of a request's plan applies only to the first N
//! attempts of each request id (the attempt header), in serve mode from the profile, the
//! header or the query; the settings that bound its memory; and a gateway's retries getting
//! past it, with both clients, the gateway passing the caller's attempt header on.

use std::time::{Duration, Instant};

use crate::observability::{scrape, value};
use crate::support::{TestServer, config, exits_2_naming, spawn, wait_until};

/// How long a test waits for a state before it fails.
const WAIT: Duration = Duration::from_secs(5);

crate::gateway::with_each_client!(
    a_gateways_retries_get_past_an_upstream_failing_each_ids_first_attempts,
);

/// The status of `GET target` with `headers` (each ending in CRLF), on a connection of its own.
fn status(server: &TestServer, target: &str, headers: &str) -> u16 {
    server
        .request(&format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
        ))
        .status
}

/// The statuses of `times` requests in a row carrying `x-request-id: id`.
fn attempts(server: &TestServer, target: &str, id: &str, times: usize) -> Vec<u16> {
    let header = format!("x-request-id: {id}\r\n");
    (0..times)
        .map(|_| status(server, target, &header))
        .collect()
}

#[test]
fn fail_first_fails_the_first_attempts_of_each_request_id_then_answers() {
    let server = spawn(config(&["--behaviour", "status=503&fail-first=2"]));
    assert_eq!(
        attempts(&server, "/v1/avatar", "r1", 4),
        [503, 503, 200, 200]
    );
    assert_eq!(attempts(&server, "/v1/avatar", "r2", 3), [503, 503, 200]);
    assert_eq!(attempts(&server, "/v1/avatar", "r1", 1), [200]);
    let answer = server.request("GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-request-id: r1\r\n\r\n");
    assert_eq!(answer.body.len(), 3696, "the avatars, whole");
}

#[test]
fn requests_without_the_attempt_header_follow_the_ordinary_rates() {
    let server = spawn(config(&["--behaviour", "status=503&fail-first=2"]));
    for _ in 0..3 {
        assert_eq!(status(&server, "/v1/avatar", ""), 503);
    }
    assert_eq!(attempts(&server, "/v1/avatar", "r1", 3), [503, 503, 200]);
    for _ in 0..3 {
        assert_eq!(status(&server, "/v1/avatar", ""), 503);
    }
}

#[test]
fn a_fault_drawn_on_a_first_attempt_is_repeated_like_a_status() {
    let faulty = spawn(config(&["--behaviour", "fault=close&fail-first=2"]));
    let header = "x-request-id: f1\r\n";
    let raw = format!("GET /v1/avatar HTTP/1.1\r\nHost: t\r\n{header}\r\n");
    for attempt in 1..=2 {
        let mut caller = faulty.connect();
        caller.send(raw.as_bytes());
        let answer = caller.try_read_response(false);
        assert!(answer.is_none(), "attempt {attempt} closed unanswered");
    }
    assert_eq!(status(&faulty, "/v1/avatar", header), 200);
}

#[test]
fn fail_first_comes_from_the_behaviour_header_or_the_query_too() {
    let server = spawn(config(&[]));
    let by_query = "x-m2-behaviour: status=503\r\nx-request-id: q1\r\n";
    let statuses: Vec<u16> = (0..3)
        .map(|_| status(&server, "/v1/avatar?fail-first=2", by_query))
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    let by_header = "x-m2-behaviour: status=503&fail-first=1\r\nx-request-id: h1\r\n";
    let statuses: Vec<u16> = (0..3)
        .map(|_| status(&server, "/v1/avatar", by_header))
        .collect();
    assert_eq!(statuses, [503, 200, 200]);
    // fail-first alone injects nothing.
    assert_eq!(
        status(&server, "/v1/avatar?fail-first=3", "x-request-id: a1\r\n"),
        200
    );
}

#[test]
fn the_attempt_header_is_the_one_configured() {
    let server = spawn(config(&[
        "--behaviour",
        "status=503&fail-first=2",
        "--attempt-header",
        "x-attempt-id",
    ]));
    let header = "x-attempt-id: a1\r\n";
    let statuses: Vec<u16> = (0..3)
        .map(|_| status(&server, "/v1/avatar", header))
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    // x-request-id names nothing here: every request is a first.
    assert_eq!(attempts(&server, "/v1/avatar", "r1", 3), [503, 503, 503]);
}

#[test]
fn at_the_key_limit_a_new_request_id_drops_the_oldest() {
    let server = spawn(config(&[
        "--behaviour",
        "status=503&fail-first=1",
        "--attempt-keys",
        "2",
    ]));
    let next = |id: &str| attempts(&server, "/v1/avatar", id, 1)[0];
    assert_eq!((next("k1"), next("k2")), (503, 503));
    assert_eq!(next("k1"), 200, "k1 is remembered");
    assert_eq!(next("k3"), 503, "a third id drops k1, the oldest");
    assert_eq!(
        next("k1"),
        503,
        "k1 is a first attempt again (and drops k2)"
    );
    assert_eq!((next("k3"), next("k1")), (200, 200));
    assert_eq!(next("k2"), 503);
}

#[test]
fn a_request_id_starts_over_once_its_ttl_has_passed() {
    let server = spawn(config(&[
        "--behaviour",
        "status=503&fail-first=1",
        "--attempt-ttl",
        "300ms",
    ]));
    let start = Instant::now();
    assert_eq!(attempts(&server, "/v1/avatar", "t1", 2), [503, 200]);
    // Each look is an attempt: answered until the entry expires, then a first attempt again.
    wait_until("t1's entry expires", WAIT, || {
        attempts(&server, "/v1/avatar", "t1", 1) == [503]
    });
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(attempts(&server, "/v1/avatar", "t1", 1), [200]);
}

/// The attempts `gateway` counts for `upstream` with `outcome` (`2xx`, `5xx`, …).
fn upstream_attempts(gateway: &TestServer, upstream: &str, outcome: &str) -> f64 {
    value(
        &scrape(&mut gateway.connect()),
        "microservice2_upstream_request_duration_seconds_count",
        &[("upstream", upstream), ("outcome", outcome)],
    )
}

fn a_gateways_retries_get_past_an_upstream_failing_each_ids_first_attempts(client: &str) {
    let upstream = spawn(config(&["--behaviour", "status=503&fail-first=2"]));
    let target = format!("http://{}/v1/avatar", upstream.addr);
    let gateway = spawn(config(&[
        "gateway",
        "--client",
        client,
        "--upstream",
        &target,
        "--retries",
        "2",
        "--retry-backoff",
        "1ms",
    ]));
    let retries = || {
        gateway.scraped(
            "microservice2_upstream_retries_total",
            &[("upstream", target.as_str())],
        )
    };
    // A plain request first, on the same connection: the gateway's fast path answers it
    // (the upstream's three 503s, no id to count them under); the next request carries the
    // attempt header, which only hyper's path passes on.
    let mut caller = gateway.connect();
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(caller.read_response(false).status, 503);
    assert_eq!(retries(), 2.0);
    assert_eq!(upstream_attempts(&gateway, &target, "5xx"), 3.0);
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nx-request-id: g1\r\n\r\n");
    let answer = caller.read_response(false);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 3696);
    assert_eq!(
        retries(),
        4.0,
        "two more: 503, 503, then 200 on the third attempt"
    );
    assert_eq!(upstream_attempts(&gateway, &target, "5xx"), 5.0);
    assert_eq!(upstream_attempts(&gateway, &target, "2xx"), 1.0);
    // The same id again is past its failures at once.
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nx-request-id: g1\r\n\r\n");
    assert_eq!(caller.read_response(false).status, 200);
    assert_eq!(retries(), 4.0);
}

#[test]
fn the_gateways_own_fail_first_counts_the_callers_attempt_header() {
    let upstream = spawn(config(&[]));
    let target = format!("http://{}/v1/avatar", upstream.addr);
    let gateway = spawn(config(&[
        "gateway",
        "--upstream",
        &target,
        "--behaviour",
        "status=503&fail-first=1",
    ]));
    assert_eq!(attempts(&gateway, "/v1/user", "c1", 3), [503, 200, 200]);
    assert_eq!(status(&gateway, "/v1/user", ""), 503);
}

#[test]
fn bad_fail_first_settings_exit_2_naming_their_flag() {
    // "invalid value '…' for '--flag <…>'", not clap's word on a flag it does not know.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 6] = [
        (
            &["--attempt-header", "X-Request-Id"],
            &[],
            "for '--attempt-header",
        ),
        (&[], &[("M2_ATTEMPT_HEADER", "x id")], "M2_ATTEMPT_HEADER"),
        (&["--attempt-keys", "0"], &[], "for '--attempt-keys"),
        (
            &["gateway"],
            &[("M1_ATTEMPT_KEYS", "10000001")],
            "M1_ATTEMPT_KEYS",
        ),
        (&["--attempt-ttl", "0s"], &[], "for '--attempt-ttl"),
        (
            &["gateway"],
            &[("M1_ATTEMPT_TTL", "soon")],
            "M1_ATTEMPT_TTL",
        ),
    ];
    for (args, env, needle) in cases {
        exits_2_naming(args, env, needle);
    }
}
