//! The hand-written HTTP paths held to hyper's standard under abuse: memory that a burst gives
//! back, a write deadline for clients that stop reading, a header timeout per request head,
//! deadlines that ignore the wall clock, and the count of why connections ended.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{ChildServer, Client, TestServer, config, spawn, wait_until};

const GET: &[u8] = b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n";

/// The length of one whole answer to `request` on a fresh connection to `addr`.
fn answer_len(addr: SocketAddr, request: &[u8]) -> usize {
    let mut client = Client::connect(addr);
    client.send(request);
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    let head: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    "HTTP/1.1 200 OK\r\n".len() + head + 2 + response.body.len()
}

/// Opens `connections` connections to `addr`; on each, writes `depth` copies of `request` in
/// one write and reads every answer (each `answer` bytes long). Returns the connections,
/// still open.
fn pipelined_burst(
    addr: SocketAddr,
    connections: usize,
    depth: usize,
    request: &[u8],
    answer: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = crate::support::client_runtime();
    runtime.block_on(async {
        let burst = request.repeat(depth);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let burst = burst.clone();
            tasks.spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                stream.write_all(&burst).await.expect("write the burst");
                let mut answers = vec![0u8; depth * answer];
                let read =
                    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut answers));
                read.await.expect("answers within 30 s").expect("read");
                assert!(answers.starts_with(b"HTTP/1.1 200 OK\r\n"));
                let last = &answers[(depth - 1) * answer..];
                assert!(last.starts_with(b"HTTP/1.1 200 OK\r\n"), "answers in step");
                stream
            });
        }
        let mut open = Vec::with_capacity(connections);
        while let Some(stream) = tasks.join_next().await {
            open.push(stream.expect("a burst"));
        }
        open
    })
}

/// Resident memory a burst of 300 connections x 150 pipelined requests left behind, per
/// connection, in bytes, once the connections have idled for 2 s. With `warm`, the same 300
/// connections first make one request each (and close), so that what a client's pool keeps
/// for 300 callers is in place before the measure.
fn burst_residue(server: &ChildServer, request: &[u8], warm: bool) -> u64 {
    const CONNECTIONS: usize = 300;
    let answer = answer_len(server.addr, request);
    // The worker's own state (scratch buffer, rendered answer, pools) is made on first use.
    pipelined_burst(server.addr, 4, 150, request, answer);
    if warm {
        drop(pipelined_burst(
            server.addr,
            CONNECTIONS,
            1,
            request,
            answer,
        ));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (before, _) = server.memory_kib();
    let open = pipelined_burst(server.addr, CONNECTIONS, 150, request, answer);
    std::thread::sleep(Duration::from_secs(2));
    let (after, _) = server.memory_kib();
    drop(open);
    after.saturating_sub(before) * 1024 / CONNECTIONS as u64
}

#[test]
fn a_pipelined_burst_leaves_each_idle_connection_under_16_kb_in_serve_mode() {
    let server = ChildServer::start(&[]);
    let residue = burst_residue(&server, GET, false);
    assert!(residue <= 16 * 1024, "{residue} bytes per idle connection");
}

#[test]
fn a_pipelined_burst_leaves_each_idle_connection_under_16_kb_in_gateway_mode() {
    let upstream = spawn(config(&[]));
    let url = format!("http://{}/v1/avatar", upstream.addr);
    let request = b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n";
    // Everything counted, the lean client's pool of 300 upstream connections included.
    let lean = ChildServer::gateway(&["--upstream", &url, "--client", "lean"]);
    let residue = burst_residue(&lean, request, false);
    assert!(
        residue <= 16 * 1024,
        "lean: {residue} bytes per idle connection"
    );
    // hyper-util's pooled connections cost about 27 KB each, and a burst opens more of them
    // than there are callers (they rejoin the pool asynchronously): memory bounded by
    // --pool-max-idle, not by the connection. With its pool made first, the burst must leave
    // far less than the 500 KB a connection kept before its answers were written from shared
    // buffers.
    let hyper_util = ChildServer::gateway(&["--upstream", &url, "--client", "hyper-util"]);
    let residue = burst_residue(&hyper_util, request, true);
    assert!(
        residue <= 64 * 1024,
        "hyper-util: {residue} bytes per idle connection"
    );
}

/// Opens a connection to `addr` that writes `request` over and over and never reads, until
/// the socket takes no more.
fn never_reading(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nonblocking(true).expect("nonblocking");
    let burst = request.repeat(64);
    let mut stream = stream;
    let start = Instant::now();
    loop {
        match stream.write(&burst) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => panic!("write: {err}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never filled");
    }
    stream
}

#[test]
fn clients_that_never_read_are_closed_at_the_write_timeout_and_others_are_served() {
    for (path, clients) in [("/v1/avatar", 100), ("/v1/avatar?page=1", 20)] {
        // The query sends the second kind to hyper: its writes are held to the same limit.
        let server = ChildServer::start(&["--write-timeout", "3s", "--idle-timeout", "60s"]);
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
        let mut bystander = Client::connect(server.addr);
        bystander.send(GET);
        assert_eq!(bystander.read_response(false).status, 200);
        let closed = || {
            server.metric(
                "microservice2_connections_closed_total",
                &[("reason", "write_timeout")],
            )
        };
        // The first stalled connection makes what the worker keeps once made (about 80 KB on
        // the fast path, 320 KB on hyper's); without it the baseline is measured too low.
        let first = never_reading(server.addr, &request);
        wait_until(
            "the first stalled client closed",
            Duration::from_secs(9),
            || closed() == 1.0,
        );
        drop(first);
        let (baseline, _) = server.memory_kib();
        let start = Instant::now();
        let stalled: Vec<TcpStream> = (0..clients)
            .map(|_| never_reading(server.addr, &request))
            .collect();
        // Served throughout: a request every 50 ms, each answered at once.
        let mut slowest = Duration::ZERO;
        while closed() < 1.0 + clients as f64 {
            assert!(
                start.elapsed() < Duration::from_secs(9),
                "{path}: {} of {clients} closed after {:?}",
                closed() - 1.0,
                start.elapsed()
            );
            let asked = Instant::now();
            bystander.send(GET);
            assert_eq!(bystander.read_response(false).status, 200);
            slowest = slowest.max(asked.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(2900), "{path}: {waited:?}");
        assert!(slowest < Duration::from_secs(1), "{path}: {slowest:?}");
        // The stalled clients' sockets are gone: a write now fails.
        let mut stalled = stalled;
        let reset = stalled.iter_mut().all(|stream| {
            (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(1));
                matches!(stream.write(b"x"), Err(err) if err.kind() != ErrorKind::WouldBlock)
            })
        });
        assert!(reset, "{path}: a stalled client's connection is still open");
        // What stays is what the stalled clients' connections held at their peak (the
        // allocator keeps freed memory): the answers of one batch and a task on the fast
        // path; hyper's buffers (capped at 16 KiB) and up to 16 queued answers on hyper's.
        // Before the write timeout, each held about 443 KB and 106 KB, and never let go.
        let (after, _) = server.memory_kib();
        let kept = after.saturating_sub(baseline) * 1024 / clients as u64;
        let limit = if path == "/v1/avatar" { 16 } else { 64 } * 1024;
        assert!(kept <= limit, "{path}: {kept} bytes per closed client");
    }
}

#[test]
fn back_to_back_requests_that_each_arrive_in_time_are_never_cut_off() {
    // Every write finishes one request and starts the next, so a head is always under way;
    // each one arrives well within the header timeout, over four header timeouts in all.
    let server = spawn(config(&["--header-timeout", "500ms"]));
    for path in ["/v1/avatar", "/v1/avatar?page=1"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let (first, second) = request.split_at(request.len() / 2);
        let mut client = server.connect();
        client.send(first.as_bytes());
        let start = Instant::now();
        let mut answered = 0;
        while start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
            client.send(format!("{second}{first}").as_bytes());
            let response = client
                .try_read_response(false)
                .unwrap_or_else(|| panic!("{path}: closed after {answered} answers"));
            assert_eq!(response.status, 200);
            answered += 1;
        }
        assert!(answered > 50, "{path}: {answered}");
    }
    assert_eq!(
        server.metric(
            "microservice2_connections_closed_total",
            &[("reason", "header_timeout")]
        ),
        0.0
    );
}

#[test]
fn a_head_slower_than_the_header_timeout_is_cut_off_even_behind_good_requests() {
    let server = spawn(config(&[
        "--header-timeout",
        "500ms",
        "--idle-timeout",
        "60s",
    ]));
    for path in ["/v1/avatar", "/v1/avatar?page=1"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut client = server.connect();
        let mut start = Instant::now();
        if path == "/v1/avatar" {
            // Pipelined behind two good requests, in the same write.
            client.send(format!("{request}{request}GET {path} HTTP/1.1\r\nX-Slow:").as_bytes());
        } else {
            // On hyper's path the slow head follows the answers: hyper's header timeout is
            // the one at work, and the socket shows a head under way.
            client.send(format!("{request}{request}").as_bytes());
        }
        for _ in 0..2 {
            assert_eq!(client.read_response(false).status, 200);
        }
        if path != "/v1/avatar" {
            start = Instant::now();
            client.send(format!("GET {path} HTTP/1.1\r\nX-Slow:").as_bytes());
        }
        let mut rest = Vec::new();
        let _ = client.stream().read_to_end(&mut rest);
        let closed_after = start.elapsed();
        assert!(
            closed_after >= Duration::from_millis(450) && closed_after < Duration::from_secs(2),
            "{path}: {closed_after:?}"
        );
    }
    wait_until(
        "two header timeouts counted",
        Duration::from_secs(2),
        || {
            server.metric(
                "microservice2_connections_closed_total",
                &[("reason", "header_timeout")],
            ) == 2.0
        },
    );
}

/// Steps the child server's wall clock by `seconds` (the `test-clock` build's route).
fn shift_wall_clock(server: &ChildServer, seconds: i64) {
    let mut client = Client::connect(server.addr);
    client.send(format!("GET /__clock?shift={seconds} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    assert_eq!(client.read_response(false).status, 200);
}

#[test]
fn deadlines_follow_the_monotonic_clock_whatever_the_wall_clock_does() {
    let server = ChildServer::start(&["--idle-timeout", "1s", "--header-timeout", "1s"]);
    let mut idle = Client::connect(server.addr);
    idle.send(GET);
    let before = idle.read_response(false);
    let mut slow = Client::connect(server.addr);
    slow.send(b"GET /v1/avatar HTTP/1.1\r\nX-Slow:");
    let start = Instant::now();
    // An hour back: deadlines kept on the wall clock would now lie an hour ahead.
    shift_wall_clock(&server, -3600);
    // The dates move (the step took), and only the dates: the answer rendered before the
    // step may still be served until its millisecond is over.
    let date = |response: &crate::support::RawResponse| {
        crate::support::parse_iso(response.header("date").expect("date"))
    };
    let mut again = Client::connect(server.addr);
    let mut moved = 0;
    crate::support::wait_until("the date an hour back", Duration::from_secs(1), || {
        again.send(GET);
        moved = date(&before) - date(&again.read_response(false));
        moved != 0
    });
    assert!(
        (3590..=3610).contains(&(moved / 1_000_000_000)),
        "{moved} ns"
    );
    for (client, what) in [(&mut idle, "idle"), (&mut slow, "slow head")] {
        assert!(client.is_closed(), "{what}: still open");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(3), "{what}: {elapsed:?}");
    }
    // An hour forward: nothing is cut short.
    shift_wall_clock(&server, 7200);
    let mut fresh = Client::connect(server.addr);
    fresh.send(GET);
    assert_eq!(fresh.read_response(false).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    fresh.send(GET);
    assert_eq!(fresh.read_response(false).status, 200, "open after 300 ms");
    // No duration measured across the steps is hours long.
    let slow_answers = server.metric(
        "microservice2_request_duration_seconds_bucket",
        &[("route", "avatar"), ("le", "+Inf")],
    ) - server.metric(
        "microservice2_request_duration_seconds_bucket",
        &[("route", "avatar"), ("le", "60")],
    );
    assert_eq!(slow_answers, 0.0);
}

/// `microservice2_connections_closed_total{reason}` of an in-process server.
fn closed(server: &TestServer, reason: &str) -> f64 {
    server.metric(
        "microservice2_connections_closed_total",
        &[("reason", reason)],
    )
}

#[test]
fn why_each_connection_ended_is_counted() {
    let server = spawn(config(&[
        "--workers",
        "1",
        "--header-timeout",
        "300ms",
        "--idle-timeout",
        "300ms",
        "--write-timeout",
        "300ms",
    ]));
    let reasons = [
        "client",
        "header_timeout",
        "idle_timeout",
        "write_timeout",
        "error",
        "fault",
        "shutdown",
        "max_connections",
    ];
    let counts = |server: &TestServer| -> Vec<f64> {
        reasons
            .iter()
            .map(|reason| closed(server, reason))
            .collect()
    };
    let expect = |server: &TestServer, wanted: [f64; 8], what: &str| {
        wait_until(what, Duration::from_secs(3), || counts(server) == wanted);
    };
    // The client closes, on the fast path and on hyper's.
    for path in ["/v1/avatar", "/nowhere"] {
        let mut client = server.connect();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        client.read_response(false);
        drop(client);
    }
    expect(&server, [2., 0., 0., 0., 0., 0., 0., 0.], "client");
    // A head that never finishes, on both paths.
    for first in [&b""[..], b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"] {
        let mut client = server.connect();
        if !first.is_empty() {
            client.send(first);
            client.read_response(false);
        }
        client.send(b"GET /v1/avatar HTTP/1.1\r\nX-Slow:");
        assert!(client.is_closed());
    }
    expect(&server, [2., 2., 0., 0., 0., 0., 0., 0.], "header_timeout");
    // Idle after an answer, on both paths.
    for path in ["/v1/avatar", "/nowhere"] {
        let mut client = server.connect();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        client.read_response(false);
        assert!(client.is_closed());
    }
    expect(&server, [2., 2., 2., 0., 0., 0., 0., 0.], "idle_timeout");
    // A client that stops reading.
    let stalled = never_reading(server.addr, GET);
    expect(&server, [2., 2., 2., 1., 0., 0., 0., 0.], "write_timeout");
    drop(stalled);
    // A request hyper cannot parse: answered 400, then closed.
    let mut client = server.connect();
    client.send(b"GET /v1/avatar HTTP/1.1\r\nBad Header\r\n\r\n");
    assert_eq!(client.read_response(false).status, 400);
    assert!(client.is_closed());
    expect(&server, [2., 2., 2., 1., 1., 0., 0., 0.], "error");
    // An injected fault.
    let mut client = server.connect();
    client.send(b"GET /v1/avatar?fault=close HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(client.try_read_response(false).is_none());
    expect(&server, [2., 2., 2., 1., 1., 1., 0., 0.], "fault");
    // Shutdown closes what is left open, on both paths.
    let mut open = Vec::new();
    for path in ["/v1/avatar", "/nowhere"] {
        let mut client = server.connect();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        client.read_response(false);
        open.push(client);
    }
    let text = server.stop_and_render();
    let reason = |reason: &str| {
        crate::support::sample(
            &text,
            "microservice2_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(reason("shutdown"), 2.0, "{text}");
    assert_eq!(reason("client"), 2.0);
    drop(open);

    // Past --max-connections: closed at once, and counted.
    let limited = spawn(config(&["--workers", "1", "--max-connections", "1"]));
    let mut held = limited.connect();
    held.send(GET);
    held.read_response(false);
    let mut refused = limited.connect();
    assert!(refused.is_closed());
    wait_until("max_connections", Duration::from_secs(3), || {
        closed(&limited, "max_connections") == 1.0
    });
    // Every connection accepted is open or counted closed once.
    let accepted = limited.metric("microservice2_connections_accepted_total", &[]);
    let open_now = limited.metric("microservice2_connections_open", &[]);
    let all_closed: f64 = reasons.iter().map(|reason| closed(&limited, reason)).sum();
    assert_eq!(accepted, open_now + all_closed);
}
