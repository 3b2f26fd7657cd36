//! Every shape of a GET of the served path on the fast path: a query, the behaviour header, a
//! server-wide profile, load shedding, HTTP/1.0 and `connection: close` are answered there
//! (the connection is never handed to hyper), delays wait on a timer without holding up the
//! worker or reordering pipelined answers, and a shed request gets hyper's bytes. That they
//! answer as hyper does, byte for byte, is `differential.rs`'s.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{
    ChildServer, Client, TestServer, closed_within, config, connect_tcp, masked, masked_response,
    spawn, wait_until,
};

const HANDOVERS: &str = "microservice2_fast_path_handovers_total";

/// How long a test waits for a state the server reaches on its own (the kernel's deferred
/// accept is about 1 s).
const LIMIT: Duration = Duration::from_secs(10);

/// Requests in flight, scraped on the admin port (so the main port's count of hand-overs
/// stays the test's own).
fn inflight(server: &TestServer) -> f64 {
    let admin = server.admin.expect("--admin-port");
    let mut scraper = Client::connect(admin);
    let text = ask(&mut scraper, "GET /metrics HTTP/1.1\r\n\r\n").body_text();
    crate::support::sample(&text, "microservice2_inflight_requests", &[])
}

fn ask(client: &mut Client, request: &str) -> crate::support::RawResponse {
    client.send(request.as_bytes());
    client.read_response(request.starts_with("HEAD"))
}

#[test]
fn every_shape_of_a_get_is_answered_without_hyper() {
    let server = spawn(config(&[]));
    let mut client = server.connect();
    let shapes = [
        ("GET /v1/avatar?cb=17 HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        (
            "GET /v1/avatar HTTP/1.1\r\nx-m2-behaviour: status=200\r\n\r\n",
            200,
        ),
        ("GET /v1/avatar?status=503 HTTP/1.1\r\nHost: t\r\n\r\n", 503),
        (
            "HEAD /v1/avatar HTTP/1.1\r\nX-M2-Behaviour: status=429\r\n\r\n",
            429,
        ),
        (
            "GET /v1/avatar?delay=5ms&cb=2 HTTP/1.1\r\nHost: t\r\n\r\n",
            200,
        ),
        (
            "GET /v1/avatar HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            200,
        ),
        (
            "GET /v1/avatar HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
            200,
        ),
    ];
    for (request, status) in shapes {
        let answer = ask(&mut client, request);
        assert_eq!(answer.status, status, "{request:?}");
    }
    // The HTTP/1.0 answer said keep-alive, and the connection stayed open for the rest.
    assert_eq!(
        ask(&mut client, "GET /v1/avatar HTTP/1.1\r\n\r\n").status,
        200
    );
    // `connection: close` and HTTP/1.0 without keep-alive: answered, then closed.
    for request in [
        "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /v1/avatar HTTP/1.0\r\n\r\n",
    ] {
        let mut once = server.connect();
        let answer = ask(&mut once, request);
        assert_eq!(answer.status, 200, "{request:?}");
        assert_eq!(answer.body.len(), 3696);
        assert!(once.is_closed(), "{request:?}");
    }
    assert_eq!(server.metric(HANDOVERS, &[]), 0.0);
    // Bodies streamed from the shared rendered bytes: a list, a paced body.
    let list = ask(&mut client, "GET /v1/avatar?count=2 HTTP/1.1\r\n\r\n");
    assert_eq!((list.status, list.body.len() < 3696), (200, true));
    let started = Instant::now();
    let dripped = ask(&mut client, "GET /v1/avatar?drip=200ms HTTP/1.1\r\n\r\n");
    assert_eq!((dripped.status, dripped.body.len()), (200, 3696));
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A HEAD's truncated body is never sent: the connection goes on.
    let head = ask(
        &mut client,
        "HEAD /v1/avatar?fault=truncate HTTP/1.1\r\n\r\n",
    );
    assert_eq!(head.header("content-length"), Some("3696"));
    assert_eq!(server.metric(HANDOVERS, &[]), 0.0);
    // `fail-first` is planned by hyper's path, which reads the attempt header.
    ask(
        &mut client,
        "GET /v1/avatar?status=503&fail-first=1 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(server.metric(HANDOVERS, &[]), 1.0);
}

#[test]
fn a_server_profile_is_planned_without_hyper() {
    let server = spawn(config(&["--control", "--admin-port", "0", "--seed", "3"]));
    let admin = server.admin.expect("--admin-port");
    let mut client = server.connect();
    assert_eq!(
        ask(&mut client, "GET /v1/avatar HTTP/1.1\r\n\r\n").status,
        200
    );
    let profile = "status=503:50&delay=uniform(1ms,2ms)";
    crate::control::control(admin, "PUT", "/admin/behaviour", profile, None);
    let mut statuses = [0u32; 2];
    for _ in 0..200 {
        let answer = ask(&mut client, "GET /v1/avatar?cb=1 HTTP/1.1\r\n\r\n");
        statuses[usize::from(answer.status == 503)] += 1;
    }
    assert!(statuses.iter().all(|&n| n > 50), "{statuses:?}");
    // The connection that met the profile stayed on the fast path.
    assert_eq!(server.metric(HANDOVERS, &[]), 0.0);
    let answered = |status: &str| {
        server.metric(
            "microservice2_requests_total",
            &[("route", "avatar"), ("status", status)],
        )
    };
    assert_eq!(answered("200") + answered("503"), 201.0);
}

#[test]
fn a_delay_holds_neither_the_worker_nor_the_order_of_pipelined_answers() {
    let server = spawn(config(&["--workers", "1", "--admin-port", "0"]));
    let mut slow = server.connect();
    let sent = Instant::now();
    slow.send(
        b"GET /v1/avatar?delay=400ms HTTP/1.1\r\n\r\n\
          GET /v1/avatar?status=503 HTTP/1.1\r\n\r\n\
          GET /v1/avatar HTTP/1.1\r\n\r\n",
    );
    wait_until(
        "the delayed request is in flight",
        Duration::from_secs(5),
        || inflight(&server) == 1.0,
    );
    // The one worker answers another connection meanwhile.
    let mut other = server.connect();
    let answer = ask(&mut other, "GET /v1/avatar HTTP/1.1\r\n\r\n");
    assert_eq!(answer.status, 200);
    let meanwhile = sent.elapsed();
    assert!(meanwhile < Duration::from_millis(400), "{meanwhile:?}");
    // The pipelined answers come in the order asked, after the delay.
    let statuses: Vec<u16> = (0..3).map(|_| slow.read_response(false).status).collect();
    assert_eq!(statuses, [200, 503, 200]);
    assert!(sent.elapsed() >= Duration::from_millis(400));
    assert_eq!(server.metric(HANDOVERS, &[]), 0.0);
}

/// Sheds a plain request on `server` (`--max-inflight 1`) while a delayed one holds the only
/// place; returns the shed answer as wire text, dates masked.
fn shed_on(server: &TestServer) -> Vec<u8> {
    let mut holder = server.connect();
    holder.send(b"GET /v1/avatar?delay=500ms HTTP/1.1\r\n\r\n");
    wait_until(
        "the delayed request is in flight",
        Duration::from_secs(5),
        || inflight(server) == 1.0,
    );
    let mut shed = server.connect();
    let answer = ask(
        &mut shed,
        "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(holder.read_response(false).status, 200);
    masked(&masked_response(&answer))
}

#[test]
fn a_shed_request_gets_hypers_answer_on_the_fast_path() {
    let flags = ["--max-inflight", "1", "--workers", "1", "--admin-port", "0"];
    let fast = spawn(config(&flags));
    let hyper = spawn(config(&[&flags[..], &["--no-fast-path"]].concat()));
    assert_eq!(shed_on(&fast), shed_on(&hyper));
    assert_eq!(fast.metric(HANDOVERS, &[]), 0.0);
}

#[test]
fn a_client_gone_during_a_delay_is_neither_answered_nor_counted() {
    let server = spawn(config(&["--workers", "1", "--admin-port", "0"]));
    let addr: SocketAddr = server.addr;
    let mut client = Client::connect(addr);
    client.send(b"GET /v1/avatar?delay=300ms HTTP/1.1\r\n\r\n");
    // (The scrapes below are connections of their own, answered on the metrics route.)
    wait_until(
        "the delayed request is in flight",
        Duration::from_secs(5),
        || inflight(&server) == 1.0,
    );
    let gone = Instant::now();
    drop(client);
    // Out of flight at once (not at the delay's end), and never counted as answered.
    wait_until("the request is dropped", Duration::from_secs(5), || {
        inflight(&server) == 0.0
    });
    assert!(
        gone.elapsed() < Duration::from_millis(250),
        "{:?}",
        gone.elapsed()
    );
    // Past the delay's end, it was not answered after all.
    std::thread::sleep(Duration::from_millis(400));
    let answered = [("route", "avatar")];
    assert_eq!(
        server.metric("microservice2_requests_total", &answered),
        0.0
    );
}

#[test]
fn a_delayed_request_leaves_the_next_head_its_whole_header_timeout() {
    // Each write ends one head and starts the next, as a client splitting its writes does:
    // every head is complete within milliseconds, so the connection must never be cut.
    let server = spawn(config(&["--workers", "1", "--header-timeout", "500ms"]));
    let mut client = server.connect();
    let head = "GET /v1/avatar?delay=1ms HTTP/1.1\r\nHost: t\r\n\r\n";
    let (first, rest) = head.split_at(10);
    client.send(first.as_bytes());
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        client.send(format!("{rest}{first}").as_bytes());
        assert_eq!(
            client.read_response(false).status,
            200,
            "after {answered} answers"
        );
        answered += 1;
    }
    assert!(answered > 10, "{answered}");
    let cut = [("reason", "header_timeout")];
    assert_eq!(
        server.metric("microservice2_connections_closed_total", &cut),
        0.0
    );
}

#[test]
fn the_idle_timeout_counts_from_a_delayed_answer() {
    // The delay outlasts the idle deadline the connection had when its request came: that
    // deadline must neither cut the wait nor the idle time after the answer.
    let server = spawn(config(&["--workers", "1", "--idle-timeout", "600ms"]));
    let mut client = server.connect();
    client.send(b"GET /v1/avatar?delay=900ms HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
    let answered = Instant::now();
    // Well inside the idle timeout counted from the answer, past the one counted from the
    // request.
    std::thread::sleep(Duration::from_millis(300));
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200, "still open");
    let idle_from = Instant::now();
    let waited = closed_within(&mut client, Duration::from_secs(5));
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(idle_from.duration_since(answered) < Duration::from_millis(600));
    let idle = [("reason", "idle_timeout")];
    wait_until("the idle close counted", Duration::from_secs(5), || {
        server.metric("microservice2_connections_closed_total", &idle) == 1.0
    });
}

#[test]
fn requests_there_before_the_accept_are_answered_as_hyper_answers_them() {
    // The server is stopped while the clients connect and send, so every request is there
    // when its connection is accepted: the first read answers the ones that end their
    // connection (fast/first.rs), the task the others.
    // A close request exactly as long as the first read, with another behind it.
    let padded = {
        let head = "GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ";
        let pad = "a".repeat(4096 - head.len() - 4);
        format!("{head}{pad}\r\n\r\nGET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n")
    };
    const REQUESTS: [&str; 8] = [
        "GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "HEAD /v1/avatar HTTP/1.1\r\nHost: t\r\nconnection: close\r\n\r\n",
        "GET /v1/avatar HTTP/1.0\r\n\r\n",
        "HEAD /v1/avatar?cb=1 HTTP/1.0\r\nHost: t\r\n\r\n",
        "GET /v1/avatar?status=503 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\nGET /v1/avatar HTTP/1.1\r\n\r\n",
        "GET /v1/avatars HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    ];
    let requests: Vec<&str> = REQUESTS.iter().copied().chain([padded.as_str()]).collect();
    let answers = |extra: &[&str]| {
        let server = ChildServer::start(extra);
        server.signal("STOP");
        let mut streams: Vec<_> = requests
            .iter()
            .map(|request| {
                let mut stream = connect_tcp(server.addr);
                stream.write_all(request.as_bytes()).expect("send");
                stream
            })
            .collect();
        server.signal("CONT");
        let answers: Vec<String> = streams
            .iter_mut()
            .map(|stream| {
                // Bytes left unread behind a close request make the close a reset (the
                // fast path reads 4 KiB at a time, hyper more): read up to either.
                let mut answer = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
                        Err(err) => panic!("read: {err}"),
                    }
                }
                String::from_utf8(masked(&answer)).expect("ASCII")
            })
            .collect();
        let counted: Vec<f64> = ["200", "503", "404"]
            .iter()
            .map(|status| server.metric("microservice2_requests_total", &[("status", status)]))
            .collect();
        let closed = server.metric(
            "microservice2_connections_closed_total",
            &[("reason", "client")],
        );
        (answers, counted, closed)
    };
    let (fast, fast_counted, fast_closed) = answers(&[]);
    let (hyper, hyper_counted, hyper_closed) = answers(&["--no-fast-path"]);
    for (index, (fast, hyper)) in fast.iter().zip(&hyper).enumerate() {
        assert_eq!(fast, hyper, "request {index}: {:?}", requests[index]);
    }
    assert_eq!(fast_counted, hyper_counted, "requests counted by status");
    assert_eq!(fast_counted[0], 7.0, "{fast_counted:?}");
    assert_eq!(
        fast_closed, hyper_closed,
        "connections closed by the client's asking"
    );
}

/// `--defer-accept`: the kernel holds a new connection until its first bytes come, so one
/// that sends at once is answered at its first read while a silent one is not accepted (and
/// takes no room under `--max-connections`); the silent one is accepted when the kernel's
/// wait ends, about 1 s later, and is then treated as any other (here: closed as over the
/// limit). Without the flag the silent connection takes the one slot and the others are
/// closed at once.
#[test]
fn with_defer_accept_a_connection_is_accepted_when_its_first_bytes_come() {
    let server = spawn(config(&["--defer-accept", "--max-connections", "1"]));
    let accepted = || server.metric("microservice2_connections_accepted_total", &[]);
    let closed = |reason| {
        server.metric(
            "microservice2_connections_closed_total",
            &[("reason", reason)],
        )
    };
    let mut silent = server.connect();
    let mut asking = server.connect();
    asking.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(asking.read_response(false).status, 200);
    closed_within(&mut asking, crate::support::READ_TIMEOUT);
    assert_eq!(
        accepted(),
        1.0,
        "only the connection that sent was accepted"
    );
    wait_until("the first connection's close is counted", LIMIT, || {
        closed("client") >= 1.0
    });
    let mut keeping = server.connect();
    keeping.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(keeping.read_response(false).status, 200);
    // The kernel's wait ends: the silent connection is accepted, over the limit, and closed.
    closed_within(&mut silent, LIMIT);
    assert_eq!(accepted(), 3.0);
    assert_eq!(closed("max_connections"), 1.0);
    keeping.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(keeping.read_response(false).status, 200);
}
