//! Behaviour injection over real TCP: delays, statuses, faults, payload size, slow bodies,
//! precedence of the three sources, load shedding and every 400 case.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use crate::support::{READ_TIMEOUT, TestServer, config, spawn};

const DELAYED_1S: &[u8] =
    b"GET /v1/avatar?delay=1s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn server(args: &[&str]) -> TestServer {
    spawn(config(args))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON body")
}

#[test]
fn a_fixed_delay_holds_the_answer_that_long() {
    let server = server(&[]);
    let start = Instant::now();
    let response = server.get("/v1/avatar?delay=200ms");
    let elapsed = start.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(600),
        "{elapsed:?}"
    );
}

#[test]
fn injected_statuses_come_at_their_rate_with_a_json_body() {
    let server = server(&["--seed", "1"]);
    let mut client = server.connect();
    let mut injected = 0;
    for _ in 0..1000 {
        client.send(b"GET /v1/avatar?status=503:30 HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = client.read_response(false);
        match response.status {
            503 => {
                injected += 1;
                assert_eq!(response.header("content-type"), Some("application/json"));
                assert_eq!(
                    json(&response.body),
                    serde_json::json!({"error": "injected", "status": 503})
                );
            }
            200 => assert_eq!(response.body.len(), 3696),
            other => panic!("unexpected status {other}"),
        }
    }
    // 30% of 1,000: the binomial standard deviation is 14.5, so ±60 is over four of them.
    assert!((240..=360).contains(&injected), "{injected} of 1000");
    assert_eq!(server.get("/v1/avatar?status=418").status, 418);
    assert_eq!(
        server.get("/v1/avatar?status=200").body.len(),
        3696,
        "200 is the avatars"
    );
}

#[test]
fn a_per_request_seed_replays_the_same_choice() {
    let server = server(&[]);
    let mut seen = std::collections::HashSet::new();
    for seed in 0..40 {
        let path = format!("/v1/avatar?status=503:50&seed={seed}");
        let first = server.get(&path).status;
        assert_eq!(server.get(&path).status, first, "seed {seed}");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "both outcomes occur across seeds: {seen:?}");
}

fn raw_exchange(server: &TestServer, request: &str) -> (std::io::Result<usize>, Vec<u8>) {
    let mut client = server.connect();
    client.send(request.as_bytes());
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match client.stream().read(&mut chunk) {
            Ok(0) => return (Ok(bytes.len()), bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(err) => return (Err(err), bytes),
        }
    }
}

#[test]
fn fault_reset_resets_the_connection() {
    let server = server(&[]);
    let (result, bytes) = raw_exchange(
        &server,
        "GET /v1/avatar?fault=reset HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let err = result.expect_err("a reset, not an orderly close");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(bytes.is_empty());
}

#[test]
fn fault_close_closes_without_a_response() {
    let server = server(&[]);
    let (result, bytes) = raw_exchange(
        &server,
        "GET /v1/avatar?fault=close HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(result.expect("an orderly close"), 0);
    assert!(bytes.is_empty());
}

#[test]
fn fault_truncate_sends_half_the_promised_body() {
    let server = server(&[]);
    let (result, bytes) = raw_exchange(
        &server,
        "GET /v1/avatar?fault=truncate HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let _ = result;
    let text = String::from_utf8_lossy(&bytes);
    let head_end = text.find("\r\n\r\n").expect("headers were sent") + 4;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text[..head_end].contains("content-length: 3696\r\n"),
        "{text}"
    );
    assert_eq!(bytes.len() - head_end, 3696 / 2);
}

#[test]
fn fault_hang_never_answers_until_max_hang_closes_it() {
    let server = server(&["--max-hang", "700ms"]);
    let mut client = server.connect();
    client.send(b"GET /v1/avatar?fault=hang HTTP/1.1\r\nHost: t\r\n\r\n");
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let start = Instant::now();
    let err = client
        .stream()
        .read(&mut byte)
        .expect_err("no answer within 400 ms");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert_eq!(
        client
            .stream()
            .read(&mut byte)
            .expect("closed after max-hang"),
        0
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[test]
fn count_sets_the_number_of_avatars() {
    let server = server(&[]);
    for count in [1usize, 20, 250] {
        let response = server.get(&format!("/v1/avatar?count={count}"));
        assert_eq!(response.status, 200);
        let avatars = json(&response.body);
        let avatars = avatars.as_array().expect("an array");
        assert_eq!(avatars.len(), count);
        assert_eq!(avatars[count - 1]["id"], count.to_string());
        assert_eq!(response.header("content-type"), Some("application/json"));
    }
}

#[test]
fn drip_spreads_the_body_over_the_duration() {
    let server = server(&[]);
    let mut client = server.connect();
    let start = Instant::now();
    client.send(b"GET /v1/avatar?drip=1s HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    let elapsed = start.elapsed();
    assert_eq!(response.body.len(), 3696);
    assert_eq!(&response.body[41..], &microservice2::avatar::TEMPLATE[41..]);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(1600),
        "{elapsed:?}"
    );
}

#[test]
fn rate_caps_the_bytes_per_second() {
    let server = server(&[]);
    let start = Instant::now();
    // 3,696 bytes at 4 KiB/s: about 0.9 s.
    let response = server.get("/v1/avatar?rate=4KiB");
    let elapsed = start.elapsed();
    assert_eq!(response.body.len(), 3696);
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

#[test]
fn query_beats_header_beats_profile_key_by_key() {
    let server = server(&["--behaviour", "count=2&status=500"]);
    assert_eq!(server.get("/v1/avatar").status, 500, "the profile applies");
    let with_header = |controls: &str, path: &str| {
        server.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: {controls}\r\n\r\n"
        ))
    };
    let avatars = |response: &crate::support::RawResponse| {
        assert_eq!(response.status, 200);
        json(&response.body).as_array().expect("an array").len()
    };
    // The header overrides status only; count still comes from the profile.
    assert_eq!(avatars(&with_header("status=200", "/v1/avatar")), 2);
    assert_eq!(avatars(&with_header("count=3&status=200", "/v1/avatar")), 3);
    // The query overrides both, key by key.
    assert_eq!(
        avatars(&with_header("count=3&status=200", "/v1/avatar?count=4")),
        4
    );
    assert_eq!(avatars(&server.get("/v1/avatar?status=200")), 2);
}

#[test]
fn request_behaviour_can_be_switched_off() {
    let server = server(&["--allow-request-behaviour=false", "--behaviour", "count=1"]);
    let response = server.get("/v1/avatar?status=503&count=5");
    assert_eq!(response.status, 200);
    assert_eq!(json(&response.body).as_array().expect("array").len(), 1);
    let response =
        server.request("GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: status=503\r\n\r\n");
    assert_eq!(response.status, 200);
    // Not even parsed: a malformed value is no error when requests cannot set behaviour.
    assert_eq!(server.get("/v1/avatar?delay=abc").status, 200);
}

#[test]
fn max_inflight_sheds_load_with_503_and_retry_after() {
    let server = server(&["--max-inflight", "2", "--workers", "1"]);
    let mut slow: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.connect();
            client.send(b"GET /v1/avatar?delay=1s HTTP/1.1\r\nHost: t\r\n\r\n");
            client
        })
        .collect();
    crate::support::wait_until("both slow requests are in flight", READ_TIMEOUT, || {
        server.scraped("microservice2_inflight_requests", &[]) == 2.0
    });
    let start = Instant::now();
    let shed = server.get("/v1/avatar");
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "answered at once"
    );
    for client in &mut slow {
        assert_eq!(client.read_response(false).status, 200);
    }
    assert_eq!(server.get("/v1/avatar").status, 200, "room again");
}

#[test]
fn bad_controls_get_400_naming_the_parameter() {
    let server = server(&["--max-delay", "2s", "--max-count", "100"]);
    for (query, param) in [
        ("delay=abc", "delay"),
        ("delay=3s", "delay"),
        ("delay=uniform(5ms,1ms)", "delay"),
        ("status=700", "status"),
        ("status=503:60,500:50", "status"),
        ("fault=explode", "fault"),
        ("count=0", "count"),
        ("count=101", "count"),
        ("drip=never", "drip"),
        ("rate=0", "rate"),
        ("seed=minus", "seed"),
    ] {
        let response = server.get(&format!("/v1/avatar?{query}"));
        assert_eq!(response.status, 400, "{query}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = json(&response.body);
        assert_eq!(body["param"], param, "{query}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{query}"
        );
    }
    let response =
        server.request("GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: colour=red\r\n\r\n");
    assert_eq!(response.status, 400);
    assert_eq!(json(&response.body)["param"], "colour");
    // Unknown query parameters are cache-busters, not errors.
    assert_eq!(
        server.get("/v1/avatar?cachebuster=42&colour=red").status,
        200
    );
}

#[test]
fn two_thousand_delayed_requests_wait_concurrently() {
    let server = server(&[]);
    let addr = server.addr;
    let runtime = crate::support::client_runtime();
    let elapsed = runtime.block_on(async move {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            tasks.spawn(crate::support::exchange(addr, DELAYED_1S));
        }
        while let Some(joined) = tasks.join_next().await {
            let response = joined.expect("task").expect("request");
            assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        start.elapsed()
    });
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
}

#[test]
fn a_rate_that_would_outlast_max_delay_is_refused_in_every_source() {
    let server = server(&["--max-delay", "2s"]);
    // The default body (3,696 bytes) needs at least 1,848 bytes a second to end in 2 s; a
    // count=N body is checked at its own length.
    for (request, param) in [
        ("GET /v1/avatar?rate=1 HTTP/1.1\r\nHost: t\r\n\r\n", "rate"),
        (
            "GET /v1/avatar?rate=1000 HTTP/1.1\r\nHost: t\r\n\r\n",
            "rate",
        ),
        (
            "GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: rate=1\r\n\r\n",
            "rate",
        ),
        (
            "GET /v1/avatar?count=1000&rate=64KiB HTTP/1.1\r\nHost: t\r\n\r\n",
            "rate",
        ),
        (
            "GET /v1/avatar?count=1000 HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: rate=64KiB\r\n\r\n",
            "rate",
        ),
    ] {
        let response = server.request(request);
        assert_eq!(response.status, 400, "{request:?}");
        let body = json(&response.body);
        assert_eq!(body["param"], param, "{request:?}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("--max-delay")),
            "{body}"
        );
    }
    // Within the bound: paced as asked.
    let start = Instant::now();
    let response = server.get("/v1/avatar?rate=2000");
    assert_eq!(response.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(server.get("/v1/avatar?count=1&rate=100").status, 200);
}

#[test]
fn a_count_body_is_shared_not_copied_per_request() {
    // 200 requests for 10,000 avatars (1.9 MB each), held by a 20 s drip: each costs its
    // connection and its timers, not a copy of the body.
    use tokio::io::AsyncReadExt;
    let server = crate::support::ChildServer::start(&[]);
    let request =
        b"GET /v1/avatar?count=10000&drip=20s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    // The worker renders the 10,000-avatar list once, on first use.
    let mut first = crate::support::Client::connect(server.addr);
    first.send(b"GET /v1/avatar?count=10000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(first.read_response(false).status, 200);
    // Its answer is not only read but done with: recorded, after its last byte was written.
    let answered = [("route", "avatar"), ("status", "200")];
    crate::support::wait_until("the first answer is recorded", READ_TIMEOUT, || {
        server.metric("microservice2_requests_total", &answered) == 1.0
    });
    let (before, _) = server.memory_kib();
    let runtime = crate::support::client_runtime();
    let held = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..200 {
            let mut stream = tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request)
                .await
                .expect("write");
            held.push(stream);
        }
        // Every answer has begun: its head and first chunk have arrived.
        for stream in &mut held {
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .expect("the answer begins");
        }
        held
    });
    let (during, _) = server.memory_kib();
    let each = during.saturating_sub(before) * 1024 / 200;
    assert!(
        each <= 200 * 1024,
        "{each} bytes per held count=10000 request"
    );
    drop(held);
}

/// The injected and total milliseconds an answer's `server-timing` header gives.
fn timings(response: &crate::support::RawResponse) -> (f64, f64) {
    let value = response.header("server-timing").expect("server-timing");
    let metric = |name: &str| -> f64 {
        value
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{name};dur=")))
            .unwrap_or_else(|| panic!("no {name} in {value:?}"))
            .parse()
            .expect("milliseconds")
    };
    (metric("inject"), metric("total"))
}

#[test]
fn server_timing_says_what_was_injected_and_how_long_it_took() {
    let plain = spawn(config(&[]));
    let mut client = plain.connect();
    client.send(b"GET /v1/avatar?delay=20ms HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.header("server-timing"), None, "off by default");
    assert_eq!(response.header("x-m2-injected"), None);

    let server = spawn(config(&["--server-timing"]));
    let mut client = server.connect();
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    let (inject, total) = timings(&response);
    assert_eq!(inject, 0.0);
    assert!(total >= 0.0, "{total}");
    assert_eq!(response.header("x-m2-injected"), None, "nothing injected");

    client.send(b"GET /v1/avatar?delay=30ms&status=503 HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 503);
    let (inject, total) = timings(&response);
    assert_eq!(inject, 30.0);
    assert!(total >= 30.0, "{total}");
    assert_eq!(
        response.header("x-m2-injected"),
        Some("delay=30.0ms, status=503")
    );

    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: fault=truncate\r\n\r\n");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.stream().read(&mut byte).expect("read"), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.contains("\r\nx-m2-injected: fault=truncate\r\n"),
        "{head}"
    );
}

#[test]
fn the_gateway_says_its_own_timing_too() {
    let upstream = spawn(config(&[]));
    let upstream_url = format!("http://{}/v1/avatar", upstream.addr);
    // The gateway acts out its own profile (--behaviour), then calls the upstream.
    let gateway = spawn(config(&[
        "gateway",
        "--upstream",
        &upstream_url,
        "--server-timing",
        "--behaviour",
        "delay=10ms",
    ]));
    let mut client = gateway.connect();
    client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    let (inject, total) = timings(&response);
    assert_eq!(inject, 10.0);
    assert!(total >= 10.0, "{total}");
    assert_eq!(response.header("x-m2-injected"), Some("delay=10.0ms"));
}
