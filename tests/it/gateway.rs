//! Gateway mode against real serve-mode upstreams, all on port 0: pass-through, the suite's
//! environment variables, the failure policy, retries, keep-alive reuse, fan-out, forwarding.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_parse::Value;

use crate::observability::{scrape, value};
use crate::support::{
    ChildServer, Client, ClosedPort, RawResponse, TestServer, binary, config, masked,
    masked_response, spawn,
};

/// How long a test waits for a state (an upstream's close or write reaching the gateway).
const WAIT: Duration = Duration::from_secs(5);

/// Tests of what does not depend on the HTTP client run with the default one.
const DEFAULT_CLIENT: &str = "hyper-util";

/// Tests of calls to the upstream, run once per `--client`: each becomes `hyper_util::NAME`
/// and `lean::NAME`.
macro_rules! with_each_client {
    ($($test:ident),* $(,)?) => {
        mod hyper_util {
            $(#[test] fn $test() { super::$test("hyper-util") })*
        }
        mod lean {
            $(#[test] fn $test() { super::$test("lean") })*
        }
    };
}

pub(crate) use with_each_client;

with_each_client!(
    the_upstream_answer_passes_through_byte_for_byte_with_the_gateways_headers,
    the_suites_environment_variables_name_the_gateway_and_its_upstream,
    a_refused_connection_is_a_502_naming_the_cause_within_100_ms,
    an_upstream_slower_than_the_timeout_is_a_504_at_the_timeout,
    retries_recover_from_an_upstream_answering_503_half_the_time,
    retries_stop_at_the_overall_timeout,
    keep_alive_connections_to_the_upstream_are_reused,
    fan_out_calls_every_upstream_and_gathers_their_answers,
    forward_behaviour_passes_the_callers_controls_one_hop_down,
    malformed_and_cut_off_answers_are_502s_naming_the_kind,
    health_readiness_and_metrics_are_served_in_gateway_mode,
    chunked_close_delimited_and_informational_answers_are_read_whole,
    a_connection_the_upstream_closed_while_idle_is_replaced_unseen,
    a_connection_closed_after_the_request_is_an_error_not_a_silent_retry,
    an_answer_saying_connection_close_is_not_reused,
    an_answer_nobody_asked_for_is_never_handed_to_a_caller,
    lengths_and_chunk_sizes_are_digits_only,
    an_upstream_body_over_the_limit_is_refused_whatever_its_framing,
    a_2_gb_upstream_body_is_refused_within_2_s_in_bounded_memory,
);

/// A gateway on port 0 using `client` in front of `upstreams` (URLs), with extra flags.
fn gateway(client: &str, upstreams: &[String], extra: &[&str]) -> TestServer {
    let mut args = vec!["gateway", "--client", client];
    for url in upstreams {
        args.extend(["--upstream", url.as_str()]);
    }
    args.extend_from_slice(extra);
    spawn(config(&args))
}

fn url(server: &TestServer, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}

#[test]
fn a_closed_port_refuses_connections_and_cannot_be_taken_while_held() {
    let closed = ClosedPort::new();
    let refused = std::net::TcpStream::connect(closed.addr).expect_err("nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        TcpListener::bind(closed.addr).is_err(),
        "the port was taken"
    );
    let addr = closed.addr;
    drop(closed);
    assert!(
        TcpListener::bind(addr).is_ok(),
        "the port is free once let go"
    );
}

fn json(response: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|err| panic!("{err}: {}", response.body_text()))
}

/// One sample of `server`'s metrics, scraped now.
fn metric(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(&mut server.connect()), name, labels)
}

/// The upstream's count of accepted connections, scraped now (this scrape's included).
fn upstream_connections(upstream: &TestServer) -> f64 {
    metric(upstream, "microservice2_connections_accepted_total", &[])
}

/// Asserts that `upstream` answered exactly `expected` GETs on `route`. An upstream records
/// an answer just after writing it, so the gateway may have passed it on before: the count
/// is awaited up to `expected`, then must be exactly that.
fn assert_upstream_answered(upstream: &TestServer, route: &str, expected: f64) {
    let answered = || {
        upstream.metric(
            "microservice2_requests_total",
            &[("route", route), ("method", "GET")],
        )
    };
    crate::support::wait_until(
        &format!("the upstream records {expected} answers on {route}"),
        WAIT,
        || answered() >= expected,
    );
    assert_eq!(answered(), expected, "answers the upstream recorded");
}

fn the_upstream_answer_passes_through_byte_for_byte_with_the_gateways_headers(client: &str) {
    let upstream = spawn(config(&[]));
    let gateway = gateway(client, &[url(&upstream, "/v1/avatar")], &[]);
    let direct = upstream.get("/v1/avatar");
    let through = gateway.get("/v1/user");
    assert_eq!(through.status, 200);
    assert_eq!(masked(&through.body), masked(&direct.body));
    through.assert_seed_headers("/v1/user");
    // The seed's RFC 3339 date, as in serve mode: 2023-04-21T12:40:19.925350124+00:00.
    let date = through.header("date").expect("date");
    assert_eq!(date.len(), 35, "{date}");
    assert!(date.ends_with("+00:00"), "{date}");

    // Whatever the upstream says passes on: its status, body and content type.
    let missing = self::gateway(client, &[url(&upstream, "/nothing")], &[]);
    let response = missing.get("/v1/user");
    assert_eq!(response.status, 404);
    assert_eq!(response.body, b"Not found");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    // Only the gateway's own path calls the upstream.
    assert_eq!(gateway.get("/v1/avatar").status, 404);
    let post = gateway.request("POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405);
}

#[test]
fn the_date_header_option_applies_to_the_gateway_too() {
    let client = DEFAULT_CLIENT;
    let upstream = spawn(config(&[]));
    let gateway = gateway(
        client,
        &[url(&upstream, "/v1/avatar")],
        &["--date-header", "http"],
    );
    let date = gateway.get("/v1/user").header("date").map(str::to_owned);
    let date = date.expect("date");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
}

fn the_suites_environment_variables_name_the_gateway_and_its_upstream(client: &str) {
    let upstream = spawn(config(&[]));
    let mut command = binary(&["gateway", "--workers", "1"]);
    command
        .env("M1_CLIENT", client)
        .env("M1_DOMAIN", "127.0.0.1")
        .env("M1_PORT", "0")
        .env("M1_PATH", "/v1/user")
        .env("M2_DOMAIN", "http://127.0.0.1")
        .env("M2_PORT", upstream.addr.port().to_string())
        .env("M2_PATH", "/v1/avatar");
    let child = ChildServer::start_command(command, Stdio::inherit());
    let mut client = Client::connect(child.addr);
    client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
    assert_upstream_answered(&upstream, "avatar", 1.0);
}

fn a_refused_connection_is_a_502_naming_the_cause_within_100_ms(client: &str) {
    let closed = ClosedPort::new();
    let down = closed.url("/v1/avatar");
    let gateway = gateway(client, std::slice::from_ref(&down), &[]);
    let mut client = gateway.connect();
    for _ in 0..3 {
        let start = Instant::now();
        client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = client.read_response(false);
        let elapsed = start.elapsed();
        assert_eq!(response.status, 502);
        assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
        let body = json(&response);
        assert_eq!(body["error"], "upstream connection failed");
        assert_eq!(body["kind"], "connect");
        assert_eq!(body["upstream"], down.as_str());
        assert!(
            body["cause"]
                .as_str()
                .is_some_and(|c| c.contains("refused")),
            "{body}"
        );
    }
    assert_eq!(
        metric(
            &gateway,
            "microservice2_upstream_errors_total",
            &[("kind", "connect")]
        ),
        3.0
    );
}

fn an_upstream_slower_than_the_timeout_is_a_504_at_the_timeout(client: &str) {
    let upstream = spawn(config(&[
        "--behaviour",
        "delay=2s",
        "--shutdown-timeout",
        "100ms",
    ]));
    let target = url(&upstream, "/v1/avatar");
    let gateway = gateway(
        client,
        std::slice::from_ref(&target),
        &["--timeout", "300ms"],
    );
    let start = Instant::now();
    let response = gateway.get("/v1/user");
    let elapsed = start.elapsed();
    assert_eq!(response.status, 504);
    assert_eq!(
        response.body_text(),
        format!(r#"{{"error":"upstream timeout","upstream":"{target}"}}"#)
    );
    assert!(
        elapsed >= Duration::from_millis(295) && elapsed < Duration::from_millis(600),
        "{elapsed:?}"
    );
    // The attempt is in the histogram under its outcome.
    let scrape = scrape(&mut gateway.connect());
    let timeouts = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "microservice2_upstream_request_duration_seconds"
                && s.labels.get("outcome") == Some("timeout")
                && s.labels.get("upstream") == Some(target.as_str())
        })
        .expect("a timeout series");
    match &timeouts.value {
        Value::Histogram(buckets) => {
            let count = |le: f64| {
                buckets
                    .iter()
                    .find(|b| b.less_than == le)
                    .map_or(-1.0, |b| b.count)
            };
            assert_eq!(count(0.25), 0.0);
            assert_eq!(count(0.5), 1.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

/// Answers of a gateway in front of an upstream failing half its requests with 503.
fn statuses_behind_flaky_upstream(
    client: &str,
    retries: &str,
    requests: usize,
) -> (usize, TestServer) {
    let upstream = spawn(config(&["--behaviour", "status=503:50", "--seed", "7"]));
    let gateway = gateway(
        client,
        &[url(&upstream, "/v1/avatar")],
        &["--retries", retries, "--retry-backoff", "1ms"],
    );
    let mut client = gateway.connect();
    let mut ok = 0;
    for _ in 0..requests {
        client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = client.read_response(false);
        match response.status {
            200 => ok += 1,
            503 => assert_eq!(response.body_text(), r#"{"error":"injected","status":503}"#),
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, gateway)
}

fn retries_recover_from_an_upstream_answering_503_half_the_time(client: &str) {
    let (without, _) = statuses_behind_flaky_upstream(client, "0", 200);
    assert!(
        (60..=140).contains(&without),
        "{without} of 200 without retries"
    );
    // Six retries fail only when seven tries in a row do: 1 in 128.
    let (with, gateway) = statuses_behind_flaky_upstream(client, "6", 200);
    assert!(with >= 192, "{with} of 200 with retries");
    let unavailable = metric(
        &gateway,
        "microservice2_upstream_errors_total",
        &[("kind", "unavailable")],
    );
    assert!(
        (120.0..=280.0).contains(&unavailable),
        "{unavailable} retried 503s"
    );
}

fn retries_stop_at_the_overall_timeout(client: &str) {
    let closed = ClosedPort::new();
    let down = closed.url("/");
    let gateway = gateway(
        client,
        &[down],
        &[
            "--retries",
            "100",
            "--retry-backoff",
            "20ms",
            "--timeout",
            "200ms",
        ],
    );
    let start = Instant::now();
    let response = gateway.get("/v1/user");
    let elapsed = start.elapsed();
    assert_eq!(response.status, 502);
    assert!(elapsed < Duration::from_millis(260), "{elapsed:?}");
    // 20, 40, 80 ms pauses fit in 200 ms (with jitter, at least 10 + 20 + 40): 3 or 4 tries.
    let tries = metric(
        &gateway,
        "microservice2_upstream_errors_total",
        &[("kind", "connect")],
    );
    assert!((2.0..=5.0).contains(&tries), "{tries} tries");
}

fn keep_alive_connections_to_the_upstream_are_reused(client: &str) {
    let upstream = spawn(config(&[]));
    let gateway = gateway(client, &[url(&upstream, "/v1/avatar")], &[]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = gateway.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for _ in 0..100 {
                    client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
                    assert_eq!(client.read_response(false).status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    assert_upstream_answered(&upstream, "avatar", 400.0);
    let connections = upstream_connections(&upstream);
    // At most one per concurrent caller and worker, plus this scrape's.
    assert!(
        connections <= 9.0,
        "{connections} connections for 400 requests"
    );
}

fn fan_out_calls_every_upstream_and_gathers_their_answers(client: &str) {
    let healthy = spawn(config(&[]));
    let failing = spawn(config(&["--behaviour", "status=500"]));
    let closed = ClosedPort::new();
    let down = closed.url("/v1/avatar");
    let upstreams = [
        url(&healthy, "/v1/avatar"),
        url(&failing, "/v1/avatar"),
        down.clone(),
    ];
    let gateway = gateway(client, &upstreams, &[]);
    let response = gateway.get("/v1/user");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = json(&response);
    let entries = body["upstreams"].as_array().expect("an array");
    assert_eq!(entries.len(), 3);
    for (entry, url) in entries.iter().zip(&upstreams) {
        assert_eq!(entry["url"], url.as_str());
        assert!(
            entry["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{entry}"
        );
    }
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[0]["body"].as_array().map(Vec::len), Some(20));
    assert_eq!(entries[1]["status"], 500);
    assert_eq!(entries[1]["body"]["error"], "injected");
    assert!(entries[2]["status"].is_null() && entries[2]["body"].is_null());
    assert_eq!(entries[2]["error"], "upstream connection failed");

    // Concurrently, not one after the other: two 300 ms upstreams take about 300 ms.
    let slow_a = spawn(config(&["--behaviour", "delay=300ms"]));
    let slow_b = spawn(config(&["--behaviour", "delay=300ms"]));
    let gateway = self::gateway(
        client,
        &[url(&slow_a, "/v1/avatar"), url(&slow_b, "/v1/avatar")],
        &[],
    );
    let start = Instant::now();
    assert_eq!(gateway.get("/v1/user").status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );

    // All down: the failure policy's 502.
    let dead = self::gateway(client, &[down.clone(), down], &[]);
    let response = dead.get("/v1/user");
    assert_eq!(response.status, 502);
    assert_eq!(json(&response)["error"], "all upstreams failed");
}

fn forward_behaviour_passes_the_callers_controls_one_hop_down(client: &str) {
    let upstream = spawn(config(&[]));
    let target = url(&upstream, "/v1/avatar");
    let forwarding = gateway(
        client,
        std::slice::from_ref(&target),
        &["--forward-behaviour"],
    );
    let by_header = forwarding
        .request("GET /v1/user HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: status=418\r\n\r\n");
    assert_eq!(by_header.status, 418);
    assert_eq!(
        by_header.body_text(),
        r#"{"error":"injected","status":418}"#
    );
    let by_query = forwarding.get("/v1/user?page=3&status=429&count=2");
    assert_eq!(by_query.status, 429);
    let count = forwarding.get("/v1/user?count=2");
    assert_eq!(json(&count).as_array().map(Vec::len), Some(2));
    // A control the upstream rejects comes back as its 400.
    let bad = forwarding.get("/v1/user?delay=soon");
    assert_eq!(bad.status, 400);
    assert_eq!(json(&bad)["param"], "delay");

    // Without the flag, the caller's controls go nowhere.
    let plain = gateway(client, std::slice::from_ref(&target), &[]);
    let response = plain.request(
        "GET /v1/user?status=429 HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: status=418\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
}

#[test]
fn the_gateways_own_behaviour_is_acted_out_before_the_upstream_call() {
    let client = DEFAULT_CLIENT;
    let upstream = spawn(config(&[]));
    let target = url(&upstream, "/v1/avatar");
    let failing = gateway(
        client,
        std::slice::from_ref(&target),
        &["--behaviour", "status=503"],
    );
    assert_eq!(failing.get("/v1/user").status, 503);
    assert_upstream_answered(&upstream, "avatar", 0.0);

    let slow = gateway(
        client,
        std::slice::from_ref(&target),
        &["--behaviour", "delay=200ms"],
    );
    let start = Instant::now();
    assert_eq!(slow.get("/v1/user").status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_upstream_answered(&upstream, "avatar", 1.0);
}

/// What a fake upstream does with a connection once it has answered.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    Close,
    /// Keeps it open, reading nothing more.
    Hold,
    /// Closes it, having written the answer three bytes at a time, so that every line and
    /// chunk of it arrives in pieces.
    Trickle,
}

/// A fake upstream on port 0 that answers the first read of every connection with `reply`,
/// then closes or holds it; counts the connections it accepted.
fn scripted_upstream(reply: &'static [u8], then: Then) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            if then == Then::Trickle {
                let _ = stream.set_nodelay(true);
                for piece in reply.chunks(3) {
                    let _ = stream.write_all(piece);
                    // The trickle itself: a pause so that each piece arrives on its own.
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else {
                let _ = stream.write_all(reply);
            }
            if then == Then::Hold {
                held.push(stream);
            }
        }
    });
    (addr, accepted)
}

/// A fake upstream on port 0 that answers every connection with `reply` and closes.
fn fake_upstream(reply: &'static [u8]) -> SocketAddr {
    scripted_upstream(reply, Then::Close).0
}

fn chunked_close_delimited_and_informational_answers_are_read_whole(client: &str) {
    for (reply, body) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
               5\r\nhello\r\n6;note=x\r\n world\r\n0\r\ntrailer: t\r\n\r\n"[..],
            "hello world",
        ),
        (
            &b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nup to the end"[..],
            "up to the end",
        ),
        (
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
               content-length: 5\r\n\r\nafter"[..],
            "after",
        ),
    ] {
        for then in [Then::Close, Then::Trickle] {
            let (addr, _) = scripted_upstream(reply, then);
            let gateway = gateway(client, &[format!("http://{addr}/")], &[]);
            let response = gateway.get("/v1/user");
            assert_eq!(response.status, 200, "{body}");
            assert_eq!(response.body_text(), body);
            assert_eq!(response.header("content-type"), Some("text/plain"));
        }
    }
}

fn a_connection_the_upstream_closed_while_idle_is_replaced_unseen(client: &str) {
    // Keep-alive by its headers, but closed right after each answer.
    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
    let (addr, accepted) = scripted_upstream(reply, Then::Close);
    let gateway = gateway(client, &[format!("http://{addr}/")], &["--workers", "1"]);
    let mut caller = gateway.connect();
    for _ in 0..3 {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = caller.read_response(false);
        assert_eq!(
            (response.status, response.body_text()),
            (200, "ok".to_owned())
        );
        // The close reaches the gateway while the connection sits idle: its end of every
        // connection to the upstream has seen the FIN (or is gone).
        crate::support::wait_until("the upstream's close reaches the gateway", WAIT, || {
            !crate::support::tcp_sockets().iter().any(|socket| {
                socket.remote == addr && socket.state == crate::support::TCP_ESTABLISHED
            })
        });
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

fn a_connection_closed_after_the_request_is_an_error_not_a_silent_retry(client: &str) {
    // Half the upstream's requests end with the connection closed and no answer: the gateway
    // must pass that on (no retries asked for), not send the request again unseen.
    let upstream = spawn(config(&["--behaviour", "fault=close:50", "--seed", "11"]));
    let gateway = gateway(client, &[url(&upstream, "/v1/avatar")], &["--workers", "1"]);
    let mut caller = gateway.connect();
    let mut failed = 0;
    for _ in 0..200 {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = caller.read_response(false);
        match response.status {
            200 => {}
            502 => {
                assert_eq!(json(&response)["kind"], "closed");
                failed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
    // Each call was one upstream request: answered, or closed and passed on as a 502.
    let closed = metric(
        &upstream,
        "microservice2_faults_injected_total",
        &[("kind", "close")],
    );
    assert_eq!(
        closed,
        f64::from(failed),
        "closed connections not passed on"
    );
    assert_upstream_answered(&upstream, "avatar", f64::from(200 - failed));
}

fn an_answer_saying_connection_close_is_not_reused(client: &str) {
    // The upstream says close but leaves the connection open: a client that reused it would
    // wait for an answer that never comes.
    let reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    let (addr, accepted) = scripted_upstream(reply, Then::Hold);
    let gateway = gateway(
        client,
        &[format!("http://{addr}/")],
        &["--workers", "1", "--timeout", "500ms"],
    );
    let mut caller = gateway.connect();
    for _ in 0..3 {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(caller.read_response(false).status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

fn malformed_and_cut_off_answers_are_502s_naming_the_kind(client: &str) {
    for (reply, kind, error) in [
        (
            &b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n"[..],
            "malformed",
            "malformed upstream response",
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"[..],
            "closed",
            "upstream closed the connection",
        ),
        (&b""[..], "closed", "upstream closed the connection"),
        (
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            "malformed",
            "malformed upstream response",
        ),
    ] {
        let addr = fake_upstream(reply);
        let gateway = gateway(client, &[format!("http://{addr}/")], &[]);
        let response = gateway.get("/v1/user");
        assert_eq!(response.status, 502, "{kind}");
        let body = json(&response);
        assert_eq!(body["kind"], kind, "{body}");
        assert_eq!(body["error"], error, "{body}");
    }
}

fn health_readiness_and_metrics_are_served_in_gateway_mode(client: &str) {
    let upstream = spawn(config(&[]));
    let target = url(&upstream, "/v1/avatar");
    let gateway = gateway(client, std::slice::from_ref(&target), &[]);
    assert_eq!(gateway.get("/healthz").status, 200);
    assert_eq!(gateway.get("/readyz").status, 200);
    for _ in 0..5 {
        assert_eq!(gateway.get("/v1/user").status, 200);
    }
    // A request is counted just after its answer is written: the last may not be yet.
    let answered = [("route", "gateway"), ("method", "GET"), ("status", "200")];
    crate::support::wait_until("the gateway records its 5 answers", WAIT, || {
        gateway.metric("microservice2_requests_total", &answered) >= 5.0
    });
    let scrape = scrape(&mut gateway.connect());
    assert_eq!(
        value(
            &scrape,
            "microservice2_requests_total",
            &[("route", "gateway"), ("method", "GET"), ("status", "200")]
        ),
        5.0
    );
    let calls = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "microservice2_upstream_request_duration_seconds"
                && s.labels.get("upstream") == Some(target.as_str())
                && s.labels.get("outcome") == Some("2xx")
        })
        .expect("a 2xx series");
    match &calls.value {
        Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(5.0));
        }
        other => panic!("not a histogram: {other:?}"),
    }
    for kind in ["connect", "timeout", "closed", "malformed", "unavailable"] {
        assert_eq!(
            value(
                &scrape,
                "microservice2_upstream_errors_total",
                &[("kind", kind)]
            ),
            0.0
        );
    }
}

#[test]
fn a_busy_caller_connection_outlives_the_idle_timeout() {
    let upstream = spawn(config(&["--behaviour", "delay=150ms"]));
    let gateway = gateway(
        DEFAULT_CLIENT,
        &[url(&upstream, "/v1/avatar")],
        &["--idle-timeout", "400ms", "--header-timeout", "5s"],
    );
    let mut caller = gateway.connect();
    let start = Instant::now();
    // Each call takes 150 ms upstream, then 100 ms idle: never 400 ms without a request.
    while start.elapsed() < Duration::from_millis(1200) {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            caller.read_response(false).status,
            200,
            "a busy connection stays open"
        );
        // The caller's pace (the 100 ms idle above), not a wait for the gateway.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_header_timeout_of_a_pipelined_head_starts_after_the_calls_before_it() {
    let upstream = spawn(config(&["--behaviour", "delay=300ms"]));
    let gateway = gateway(
        DEFAULT_CLIENT,
        &[url(&upstream, "/v1/avatar")],
        &["--header-timeout", "400ms"],
    );
    let mut caller = gateway.connect();
    // A whole request and the start of the next in one write: the gateway spends 300 ms on
    // the first before it waits for the rest of the second.
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/user HTTP/1.1\r\n");
    assert_eq!(caller.read_response(false).status, 200);
    // 500 ms after the head began, 200 ms after the gateway was free to wait for it: the
    // length of this pause is what the test is about, not a wait for a state.
    std::thread::sleep(Duration::from_millis(200));
    caller.send(b"Host: t\r\n\r\n");
    assert_eq!(
        caller.read_response(false).status,
        200,
        "the upstream's time is not the caller's"
    );
}

#[test]
fn the_gateways_fast_path_and_hyper_answer_the_same_bytes() {
    let client = DEFAULT_CLIENT;
    let upstream = spawn(config(&[]));
    let gateway = gateway(client, &[url(&upstream, "/v1/avatar")], &[]);
    // A plain GET takes the fast path; the same GET with a body-length header goes to hyper.
    for (fast, hyper) in [
        (
            "GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "HEAD /v1/user HTTP/1.1\r\nHost: t\r\n\r\n",
            "HEAD /v1/user HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
        ),
    ] {
        let fast = gateway.request(fast);
        let hyper = gateway.request(hyper);
        // Status, headers in order and body, the date and the first `createdAt` masked.
        assert_eq!(
            String::from_utf8_lossy(&masked_response(&fast)),
            String::from_utf8_lossy(&masked_response(&hyper))
        );
    }
    // Statuses other than 200 too: a missing upstream path passes its 404 through both ways.
    let missing = self::gateway(client, &[url(&upstream, "/nothing")], &[]);
    let fast = missing.get("/v1/user");
    let hyper = missing.request("GET /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((fast.status, &fast.body), (hyper.status, &hyper.body));
    assert_eq!(fast.header("content-type"), hyper.header("content-type"));
}

/// An upstream that answers each request on a connection with `GOOD`, then, 30 ms later,
/// writes a second, unsolicited answer (`EVIL`) on the idle connection. Counts the
/// connections it accepted and the unsolicited answers it has written (or tried to).
fn unsolicited_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let unsolicited = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let written = Arc::clone(&unsolicited);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let written = Arc::clone(&written);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                    let good = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nGOOD";
                    let evil = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nEVIL";
                    if stream.write_all(good).is_err() {
                        return;
                    }
                    // The script: the unsolicited answer comes once the good one is taken.
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = stream.write_all(evil);
                    written.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, accepted, unsolicited)
}

fn an_answer_nobody_asked_for_is_never_handed_to_a_caller(client: &str) {
    let (addr, accepted, unsolicited) = unsolicited_upstream();
    let gateway = gateway(client, &[format!("http://{addr}/")], &["--workers", "1"]);
    let mut caller = gateway.connect();
    let mut bodies = Vec::new();
    for call in 1..=5 {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = caller.read_response(false);
        bodies.push(format!("{} {}", response.status, response.body_text()));
        // The unsolicited answer reaches the idle pooled connection before the next call:
        // written, and nothing the upstream wrote is still on its way.
        crate::support::wait_until("the unsolicited answer reaches the gateway", WAIT, || {
            unsolicited.load(Ordering::SeqCst) >= call
                && crate::support::tcp_sockets()
                    .iter()
                    .all(|socket| socket.local != addr || socket.unacked == 0)
        });
    }
    assert_eq!(bodies, vec!["200 GOOD"; 5]);
    // Each connection that carried bytes nobody asked for was dropped, never reused.
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

/// The gateway's answer when the upstream always answers `reply` (and closes).
fn through(client: &str, reply: Vec<u8>, extra: &[&str]) -> RawResponse {
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    let addr = fake_upstream(reply);
    let mut args = vec!["--timeout", "500ms"];
    args.extend_from_slice(extra);
    gateway(client, &[format!("http://{addr}/")], &args).get("/v1/user")
}

fn lengths_and_chunk_sizes_are_digits_only(client: &str) {
    let with_length = |value: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {value}\r\n\r\nhello"
        )
    };
    let chunked = |line: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n{line}\r\nhello\r\n0\r\n\r\n"
        )
    };
    // RFC 9110: a length is digits; RFC 9112: a chunk size is hex digits, then an extension.
    let mut refused: Vec<String> = ["+5", "0x5", "-5", "5 5", "5.0", "", "99999999999999999999"]
        .iter()
        .map(|value| with_length(value))
        .collect();
    refused.extend(
        ["+5", " 5", "0x5", "5,5", "-5", "g"]
            .iter()
            .map(|line| chunked(line)),
    );
    // Lists of equal lengths (which RFC 9110 lets a recipient take as one) and whitespace
    // after a chunk size with no extension: hyper takes both; the lean client does not.
    if client == "lean" {
        refused.extend(["5,5", "5, 5"].iter().map(|value| with_length(value)));
        refused.push(chunked("5 "));
    }
    for reply in refused {
        let response = through(client, reply.clone().into_bytes(), &[]);
        assert_eq!(response.status, 502, "{reply:?}");
        assert_eq!(json(&response)["kind"], "malformed", "{reply:?}");
    }
    // Whitespace around a field value is no part of it (RFC 9110 5.5), leading zeros are
    // digits, and whitespace may come before a chunk extension.
    for reply in [
        with_length(" 5"),
        with_length("05"),
        chunked("05"),
        chunked("5 ;ext=1"),
    ] {
        let response = through(client, reply.clone().into_bytes(), &[]);
        assert_eq!(
            (response.status, response.body_text()),
            (200, "hello".to_owned()),
            "{reply:?}"
        );
    }
}

fn an_upstream_body_over_the_limit_is_refused_whatever_its_framing(client: &str) {
    let limit = ["--max-upstream-body", "10"];
    let length = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let chunked = |body: &str| {
        let half = body.len() / 2;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            half,
            &body[..half],
            body.len() - half,
            &body[half..]
        )
    };
    let to_close =
        |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}");
    /// A reply for a body, in one framing.
    type Framed<'a> = &'a dyn Fn(&str) -> String;
    let framings: [(&str, Framed<'_>); 3] = [
        ("length", &length),
        ("chunked", &chunked),
        ("close", &to_close),
    ];
    for (framing, reply) in framings {
        let at = through(client, reply("0123456789").into_bytes(), &limit);
        assert_eq!(
            (at.status, at.body_text()),
            (200, "0123456789".to_owned()),
            "{framing}: exactly the limit passes"
        );
        let over = through(client, reply("0123456789A").into_bytes(), &limit);
        assert_eq!(over.status, 502, "{framing}");
        let body = json(&over);
        assert_eq!(body["kind"], "too_large", "{framing}: {body}");
        assert_eq!(
            body["error"], "upstream body too large",
            "{framing}: {body}"
        );
    }
    // A chunk that only announces more than the limit, and then ends the connection, was cut
    // off: the limit is crossed by bytes received, as hyper-util's limited body counts them.
    let announced = through(
        client,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nb\r\n0123".to_vec(),
        &limit,
    );
    assert_eq!(announced.status, 502);
    assert_eq!(
        json(&announced)["kind"],
        "closed",
        "{}",
        announced.body_text()
    );
    // Counted under its own kind, and not retried.
    let addr = fake_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n0123456789A");
    let gateway = gateway(
        client,
        &[format!("http://{addr}/")],
        &["--max-upstream-body", "10", "--retries", "3"],
    );
    assert_eq!(gateway.get("/v1/user").status, 502);
    assert_eq!(
        metric(
            &gateway,
            "microservice2_upstream_errors_total",
            &[("kind", "too_large")]
        ),
        1.0
    );
}

/// An upstream that answers every connection with `head` and then endless zero bytes, in the
/// body's `framing` (`length`, `chunked` or `close`), until the reader goes away.
fn endless_upstream(framing: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let head = match framing {
                    "length" => "HTTP/1.1 200 OK\r\ncontent-length: 2000000000\r\n\r\n",
                    "chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                    _ => "HTTP/1.1 200 OK\r\n\r\n",
                };
                let chunk = vec![b'0'; 64 * 1024];
                let mut piece = chunk.clone();
                if framing == "chunked" {
                    piece = format!("{:x}\r\n", chunk.len()).into_bytes();
                    piece.extend_from_slice(&chunk);
                    piece.extend_from_slice(b"\r\n");
                }
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let start = Instant::now();
                // 2 GB at most, and never past 20 s.
                for _ in 0..(2_000_000_000 / chunk.len()) {
                    if stream.write_all(&piece).is_err()
                        || start.elapsed() > Duration::from_secs(20)
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn a_2_gb_upstream_body_is_refused_within_2_s_in_bounded_memory(client: &str) {
    for framing in ["length", "chunked", "close"] {
        let addr = endless_upstream(framing);
        let upstream = format!("http://{addr}/");
        let gateway = ChildServer::gateway(&[
            "--upstream",
            &upstream,
            "--client",
            client,
            "--timeout",
            "10s",
        ]);
        let mut caller = Client::connect(gateway.addr);
        let start = Instant::now();
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = caller.read_response(false);
        let elapsed = start.elapsed();
        assert_eq!(response.status, 502, "{framing}");
        assert_eq!(json(&response)["kind"], "too_large", "{framing}");
        assert!(elapsed < Duration::from_secs(2), "{framing}: {elapsed:?}");
        let (_, peak_kib) = gateway.memory_kib();
        assert!(peak_kib < 200 * 1024, "{framing}: peak {peak_kib} KiB");
    }
}
