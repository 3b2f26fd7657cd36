//! Differential tests of the two pieces of HTTP written by hand, against the library each
//! stands in for:
//!
//! - the serving fast path against hyper alone: the same generated request streams (valid and
//!   malformed, pipelined, split at random byte boundaries, with and without behaviour
//!   controls) go to a server with the fast path and to one started with `--no-fast-path`;
//!   the answers must match byte for byte (dates masked), and so must how the connection ends;
//! - the lean client against hyper-util's: the same generated upstream answers (framings,
//!   splits, bad lengths, 1xx, cut-off connections, malformed heads) go through a gateway with
//!   each client, from a plain upstream and from an `https://` one (whose connections end
//!   with or without TLS's close_notify); the caller must get the same status and body, or
//!   the same error kind.
//!
//! `cargo test` runs 48 cases of each (`PROPTEST_CASES` sets more); `bench/fuzz` runs them for
//! longer with fresh seeds. Known, deliberate differences are left out of the generators and
//! tested on their own in `gateway.rs` (`lengths_and_chunk_sizes_are_digits_only`).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use rustls::ServerConfig;

use crate::certs::{Alg, Pki};
use crate::client_tls::server_config;
use crate::support::{READ_TIMEOUT, TestServer, config, masked, spawn};

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The server ended it: a FIN, or a reset. Which of the two a client sees after a close
    /// depends on whether its later bytes had arrived unread when the server closed (the
    /// kernel resets a socket closed with unread bytes): a race of timing, not a decision of
    /// either server. The answers before it are compared byte for byte all the same.
    Closed,
    /// Still open after the read timeout.
    Open,
}

/// Writes `bytes` in pieces cut at `cuts`, a moment apart so that the server reads them
/// separately; reads until the server ends the connection.
/// The pieces `0..len` is cut into at `cuts` (each an index into it), in order, none empty.
fn pieces(len: usize, cuts: &[Index]) -> Vec<Range<usize>> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(len.max(1))).collect();
    points.sort_unstable();
    points.dedup();
    let mut from = 0;
    let mut pieces = Vec::with_capacity(points.len() + 1);
    for point in points.into_iter().chain([len]) {
        if point > from {
            pieces.push(from..point);
            from = point;
        }
    }
    pieces
}

fn exchange(addr: SocketAddr, bytes: &[u8], cuts: &[Index]) -> (Vec<u8>, Ending) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    for piece in pieces(bytes.len(), cuts) {
        if stream.write_all(&bytes[piece]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut answers = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let ending = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ending::Closed,
            Ok(n) => answers.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break Ending::Closed,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Ending::Open;
            }
            Err(err) => panic!("read: {err}"),
        }
    };
    (answers, ending)
}

/// One generated request: mostly the avatar GET in the shapes callers send, and every shape
/// the fast path must hand to hyper.
fn request() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        6 => Just("GET"),
        2 => Just("HEAD"),
        1 => Just("POST"),
        1 => Just("get"),
        1 => Just("DELETE"),
    ];
    let target = prop_oneof![
        8 => Just("/v1/avatar".to_owned()),
        2 => (0u32..1000).prop_map(|n| format!("/v1/avatar?cb={n}")),
        1 => Just("/v1/avatar?".to_owned()),
        1 => Just("/v1/avatar?status=503".to_owned()),
        1 => (0u64..50).prop_map(|seed| format!("/v1/avatar?status=503:50&seed={seed}")),
        1 => Just("/v1/avatar?count=3".to_owned()),
        1 => Just("/v1/avatar?delay=1ms".to_owned()),
        1 => Just("/v1/avatar?fault=close".to_owned()),
        1 => Just("/v1/avatar?fault=truncate".to_owned()),
        1 => Just("/v1/avatar?fault=hang".to_owned()),
        1 => Just("/v1/avatar?rate=1".to_owned()),
        1 => Just("/healthz".to_owned()),
        1 => Just("/nope".to_owned()),
        1 => Just("http://other/v1/avatar".to_owned()),
        1 => Just("/v1/avatar/".to_owned()),
        2 => "[a-zA-Z0-9%=&._~;{}\"#+-]{0,16}".prop_map(|query| format!("/v1/avatar?{query}")),
        1 => (0u64..50).prop_map(|seed| format!("/v1/avatar?delay=uniform(0ms,3ms)&status=503:30&seed={seed}")),
        1 => Just("/v1/avatar?%73tatus=429".to_owned()),
        1 => Just("/v1/avatar?drip=20ms".to_owned()),
        1 => Just("/v1/avatar?count=25&drip=30ms".to_owned()),
        1 => Just("/v1/avatar?status=503&drip=20ms".to_owned()),
        1 => Just("/v1/avatar?rate=200000&count=30".to_owned()),
        1 => Just("/v1/avatar?fault=reset".to_owned()),
        1 => (0u64..50).prop_map(|seed| format!("/v1/avatar?fault=truncate:30,close:20&count=2&seed={seed}")),
    ];
    let version = prop_oneof![8 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0")];
    let header = prop_oneof![
        4 => Just("Host: t".to_owned()),
        2 => "[ -~]{0,12}".prop_map(|value| format!("x-m2-behaviour: {value}")),
        1 => Just("Connection: Keep-Alive, close".to_owned()),
        1 => Just("connection: upgrade".to_owned()),
        1 => Just("Connection:   close  ".to_owned()),
        1 => Just("CONNECTION: KEEP-ALIVE".to_owned()),
        1 => Just("x-m2-behaviour: status=200".to_owned()),
        1 => Just("x-m2-behaviour: delay=2ms&status=502:50".to_owned()),
        1 => Just("x-m2-behaviour: fault=hang:50&delay=1ms".to_owned()),
        1 => Just("x-m2-behaviour: count=3&status=200".to_owned()),
        20 => header_fixed(),
    ];
    let body = prop_oneof![4 => Just(""), 1 => Just("abc"), 1 => Just("0\r\n\r\n")];
    (
        method,
        target,
        version,
        proptest::collection::vec(header, 0..5),
        body,
    )
        .prop_map(|(method, target, version, headers, body)| {
            let mut text = format!("{method} {target} {version}\r\n");
            for header in &headers {
                text.push_str(header);
                text.push_str("\r\n");
            }
            if !body.is_empty() && body != "0\r\n\r\n" {
                text.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            text.push_str("\r\n");
            text.push_str(body);
            text
        })
}

/// The fixed headers of [`request`].
fn header_fixed() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("Host: t"),
        2 => Just("User-Agent: k6/0.49"),
        2 => Just("Accept: */*"),
        1 => Just("Connection: keep-alive"),
        1 => Just("Connection: close"),
        1 => Just("x-m2-behaviour: status=418"),
        1 => Just("X-M2-Behaviour: delay=1ms"),
        1 => Just("x-m2-behaviour: colour=blue"),
        1 => Just("Content-Length: 0"),
        1 => Just("Expect: 100-continue"),
        1 => Just("Transfer-Encoding: chunked"),
        1 => Just("Bad Header"),
        1 => Just("X-Nul: a\u{0}b"),
    ]
    .prop_map(str::to_owned)
}

/// A request the fast path answers itself: GET or HEAD of the avatar path, HTTP/1.1, with
/// ordinary headers.
fn fast_request() -> impl Strategy<Value = String> {
    let method = prop_oneof![3 => Just("GET"), 1 => Just("HEAD")];
    let header = prop_oneof![
        Just("Host: t"),
        Just("User-Agent: wrk"),
        Just("Accept: application/json"),
        Just("X-Request-Id: 42"),
    ];
    (method, proptest::collection::vec(header, 0..4)).prop_map(|(method, headers)| {
        let mut text = format!("{method} /v1/avatar HTTP/1.1\r\n");
        for header in &headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text
    })
}

/// A stream of requests, sometimes with raw garbage in it, always ending with a request that
/// asks the server to close (so that every exchange ends without waiting for a timeout).
fn request_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        8 => fast_request().prop_map(String::into_bytes),
        8 => request().prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 1..40),
        1 => Just(b"\r\n".to_vec()),
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|pieces| {
        let mut bytes = pieces.concat();
        bytes.extend_from_slice(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        bytes
    })
}

/// The flags both servers of a pair share.
const FLAGS: [&str; 12] = [
    "--workers",
    "1",
    "--seed",
    "7",
    "--header-timeout",
    "1s",
    "--idle-timeout",
    "1s",
    "--max-hang",
    "50ms",
    "--max-delay",
    "2s",
];

/// A pair under test: the same flags, `more` among them, and the fast path on and off.
fn pair(more: &[&str]) -> (TestServer, TestServer) {
    let flags = [&FLAGS[..], more].concat();
    let with = spawn(config(&flags));
    let without = spawn(config(&[&flags[..], &["--no-fast-path"]].concat()));
    (with, without)
}

/// A server-wide profile (a delay and two injected statuses) and load shedding's count.
const PROFILED: [&str; 4] = [
    "--behaviour",
    "delay=uniform(0ms,2ms)&status=503:20,429:10",
    "--max-inflight",
    "1000",
];

/// The one known difference, made alike: hyper answers a head it cannot parse in the HTTP
/// version of the connection's previous request, so after an HTTP/1.0 request its `400`
/// (`414`, `431`) says `HTTP/1.0` and no `connection` header. When the fast path answered
/// that HTTP/1.0 request, hyper starts afresh at the bad head and writes `HTTP/1.1` with
/// `connection: close`. Both close the connection after it. Both sides are written in the
/// second form before they are compared.
fn after_http10(text: &[u8]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(text).into_owned();
    for status in [
        "400 Bad Request",
        "414 URI Too Long",
        "431 Request Header Fields Too Large",
    ] {
        text = text.replace(
            &format!("HTTP/1.0 {status}\r\ncontent-length: 0\r\n"),
            &format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n"),
        );
    }
    text.into_bytes()
}

/// Sends `stream` to both servers of `pair` and asserts the same answers and ending.
fn same_answers(
    pair: &(TestServer, TestServer),
    stream: &[u8],
    cuts: &[Index],
) -> Result<(), TestCaseError> {
    let (fast, hyper) = pair;
    let (fast_bytes, fast_end) = exchange(fast.addr, stream, cuts);
    let (hyper_bytes, hyper_end) = exchange(hyper.addr, stream, cuts);
    let fast_text = after_http10(&masked(&fast_bytes));
    let hyper_text = after_http10(&masked(&hyper_bytes));
    prop_assert_eq!(
        String::from_utf8_lossy(&fast_text),
        String::from_utf8_lossy(&hyper_text),
        "request stream {:?}",
        String::from_utf8_lossy(stream)
    );
    prop_assert_eq!(fast_end, hyper_end, "{:?}", String::from_utf8_lossy(stream));
    Ok(())
}

/// [`same_answers`] on a fresh pair started with `flags`, then the same probe to both: requests
/// whose plans are drawn from the worker's generator. Both servers are seeded alike, so they
/// draw the same plans as long as they draw for the same requests; a plan drawn on one path
/// and not the other (for a request whose answer was never seen) leaves the two generators
/// out of step, and the probe's answers then differ. A pair for each case: a case starts
/// from the seed's first draw whatever the cases before it did, and one that failed is
/// shrunk on servers in the same state.
fn same_answers_and_draws(
    flags: &[&str],
    stream: &[u8],
    cuts: &[Index],
) -> Result<(), TestCaseError> {
    let pair = pair(flags);
    same_answers(&pair, stream, cuts)?;
    let mut probe =
        b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: status=503:50\r\n\r\n".repeat(15);
    probe.extend_from_slice(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (fast, hyper) = &pair;
    let (fast_bytes, _) = exchange(fast.addr, &probe, &[]);
    let (hyper_bytes, _) = exchange(hyper.addr, &probe, &[]);
    let (fast_text, hyper_text) = (masked(&fast_bytes), masked(&hyper_bytes));
    prop_assert_eq!(
        String::from_utf8_lossy(&fast_text),
        String::from_utf8_lossy(&hyper_text),
        "plans drawn apart by request stream {:?}",
        String::from_utf8_lossy(stream)
    );
    Ok(())
}

proptest! {
    #![proptest_config(crate::support::fuzz_config())]

    #[test]
    fn fuzz_differential_fast_path_answers_as_hyper_does(
        stream in request_stream(),
        cuts in proptest::collection::vec(any::<Index>(), 0..6),
    ) {
        same_answers_and_draws(&[], &stream, &cuts)?;
    }

    /// The same with a server-wide profile: every request planned, most on the fast path.
    #[test]
    fn fuzz_differential_fast_path_plans_a_profile_as_hyper_does(
        stream in request_stream(),
        cuts in proptest::collection::vec(any::<Index>(), 0..6),
    ) {
        same_answers_and_draws(&PROFILED, &stream, &cuts)?;
    }
}

/// An upstream answer to generate: a framing, a status, and what may go wrong with it.
#[derive(Debug, Clone)]
struct Answer {
    bytes: Vec<u8>,
    cuts: Vec<Index>,
    /// Over TLS: the connection ends with close_notify (else with the TCP close alone).
    close_notify: bool,
}

/// Generated upstream answers: every framing the clients read, written in pieces, and the
/// ways an answer goes wrong (a length that lies, a cut, a malformed head or chunk).
fn upstream_answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        6 => Just((200u16, "OK")),
        1 => Just((201, "Created")),
        1 => Just((204, "No Content")),
        1 => Just((304, "Not Modified")),
        1 => Just((404, "Not Found")),
        1 => Just((418, "I'm a teapot")),
        1 => Just((502, "Bad Gateway")),
        1 => Just((503, "Service Unavailable")),
        1 => Just((299, "")),
    ];
    let body = prop_oneof![
        3 => "[a-z{}\":,\\[\\] ]{0,60}",
        1 => Just(String::new()),
        1 => Just("[{\"x\":1}]".to_owned()),
        1 => "[a-z]{200,3000}",
    ];
    let framing = prop_oneof![
        4 => Just("length"),
        3 => Just("chunked"),
        1 => Just("close"),
        1 => Just("http10"),
        1 => Just("http10-length"),
        1 => Just("length-short"),
        1 => Just("length-long"),
        1 => Just("gzip-then-close"),
    ];
    let informational = prop_oneof![
        6 => Just(""),
        1 => Just("HTTP/1.1 100 Continue\r\n\r\n"),
        1 => Just("HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"),
    ];
    let extra = prop_oneof![
        3 => Just(""),
        1 => Just("content-type: text/plain\r\n"),
        1 => Just("content-type: application/json\r\nserver: up\r\n"),
        1 => Just("connection: close\r\n"),
        1 => Just("connection: keep-alive\r\n"),
        1 => Just("x-many: a\r\nx-many: b\r\n"),
    ];
    let damage = prop_oneof![
        10 => Just("none"),
        1 => Just("bad-status"),
        1 => Just("bad-header"),
        1 => Just("bad-chunk-size"),
        1 => Just("no-chunk-crlf"),
        1 => Just("cut-head"),
        1 => Just("cut-body"),
        1 => Just("nothing"),
    ];
    let chunk_cuts = proptest::collection::vec(any::<Index>(), 0..4);
    let cuts = proptest::collection::vec(any::<Index>(), 0..5);
    (
        status,
        body,
        framing,
        informational,
        extra,
        damage,
        chunk_cuts,
        cuts,
        any::<Index>(),
    )
        .prop_map(
            |(
                (code, reason),
                body,
                framing,
                informational,
                extra,
                damage,
                chunk_cuts,
                cuts,
                cut,
            )| {
                let bytes = answer_bytes(
                    code,
                    reason,
                    &body,
                    framing,
                    informational,
                    extra,
                    damage,
                    &chunk_cuts,
                    cut,
                );
                Answer {
                    bytes,
                    cuts,
                    close_notify: true,
                }
            },
        )
}

/// The bytes of one generated answer.
#[allow(clippy::too_many_arguments)]
fn answer_bytes(
    code: u16,
    reason: &str,
    body: &str,
    framing: &str,
    informational: &str,
    extra: &str,
    damage: &str,
    chunk_cuts: &[Index],
    cut: Index,
) -> Vec<u8> {
    if damage == "nothing" {
        return Vec::new();
    }
    let version = if framing.starts_with("http10") {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut head = format!("{informational}{version} {code} {reason}\r\n{extra}");
    if damage == "bad-status" {
        head = format!("{version} 2x0 {reason}\r\n{extra}");
    }
    if damage == "bad-header" {
        head.push_str("this is not a header\r\n");
    }
    let mut framed = String::new();
    match framing {
        "length" | "http10-length" => {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
            framed.push_str(body);
        }
        "length-short" => {
            head.push_str(&format!("content-length: {}\r\n", body.len() / 2));
            framed.push_str(body);
        }
        "length-long" => {
            head.push_str(&format!("content-length: {}\r\n", body.len() + 5));
            framed.push_str(body);
        }
        "chunked" => {
            head.push_str("transfer-encoding: chunked\r\n");
            for piece in pieces(body.len(), chunk_cuts) {
                let size = if damage == "bad-chunk-size" {
                    "zz".to_owned()
                } else {
                    format!("{:x}", piece.len())
                };
                let ext = if piece.start == 0 { ";name=value" } else { "" };
                framed.push_str(&format!("{size}{ext}\r\n{}", &body[piece]));
                if damage != "no-chunk-crlf" {
                    framed.push_str("\r\n");
                }
            }
            framed.push_str("0\r\ntrailer: t\r\n\r\n");
        }
        "gzip-then-close" => {
            head.push_str("transfer-encoding: gzip\r\n");
            framed.push_str(body);
        }
        // `close` and `http10`: the body ends with the connection.
        _ => framed.push_str(body),
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    let head_len = bytes.len();
    bytes.extend_from_slice(framed.as_bytes());
    match damage {
        "cut-head" => bytes.truncate(cut.index(head_len.max(1))),
        "cut-body" if bytes.len() > head_len => {
            bytes.truncate(head_len + cut.index(bytes.len() - head_len));
        }
        _ => {}
    }
    bytes
}

/// An upstream that writes the current answer, in its pieces, to every connection it accepts,
/// then closes it; over TLS when given a server configuration.
fn scripted_upstream(current: Arc<Mutex<Answer>>, tls: Option<Arc<ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let answer = current.lock().expect("the current answer").clone();
            let _ = stream.set_nodelay(true);
            match &tls {
                None => write_answer(&mut stream, &answer),
                Some(config) => {
                    // A client that gives up on the handshake does not hold the upstream.
                    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
                    let Ok(connection) = rustls::ServerConnection::new(Arc::clone(config)) else {
                        continue;
                    };
                    let mut tls = rustls::StreamOwned::new(connection, stream);
                    write_answer(&mut tls, &answer);
                    if answer.close_notify {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                    stream = tls.sock;
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
            // Read what the client may still send, so the close is a FIN, not a reset.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    addr
}

/// Reads a request head on `stream`, then writes `answer` in its pieces.
fn write_answer(stream: &mut (impl Read + Write), answer: &Answer) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    for piece in pieces(answer.bytes.len(), &answer.cuts) {
        let _ = stream.write_all(&answer.bytes[piece]);
        let _ = stream.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a caller got from the gateway: the upstream's status, content type and body passed
/// on, or the gateway's own error kind.
fn outcome(server: &TestServer) -> String {
    let response = server.get("/v1/user");
    let body = response.body_text();
    let own_error = matches!(response.status, 502 | 504)
        && serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|json| json.get("upstream").is_some());
    if own_error {
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        return format!("{} {} {}", response.status, json["error"], json["kind"]);
    }
    format!(
        "{} {:?} {:?}",
        response.status,
        response.header("content-type"),
        body
    )
}

/// A gateway with each client in front of one scripted upstream: one worker, no idle
/// connections kept, so that every call is one fresh exchange (`extra` flags added).
fn gateway_pair(upstream: &str, extra: &[&str]) -> (TestServer, TestServer) {
    let gateway = |client: &str| {
        let flags = [
            "gateway",
            "--upstream",
            upstream,
            "--client",
            client,
            "--workers",
            "1",
            "--pool-max-idle",
            "0",
            "--timeout",
            "2s",
            "--max-upstream-body",
            "2KiB",
        ];
        spawn(config(&[&flags[..], extra].concat()))
    };
    (gateway("lean"), gateway("hyper-util"))
}

thread_local! {
    /// One scripted upstream, and a gateway with each client in front of it.
    static GATEWAYS: (Arc<Mutex<Answer>>, TestServer, TestServer) = {
        let current = Arc::new(Mutex::new(Answer { bytes: Vec::new(), cuts: Vec::new(), close_notify: true }));
        let addr = scripted_upstream(Arc::clone(&current), None);
        let (lean, hyper_util) = gateway_pair(&format!("http://{addr}/"), &[]);
        (current, lean, hyper_util)
    };

    /// The same over TLS: a scripted `https://` upstream with a certificate of a test CA.
    static TLS_GATEWAYS: (Arc<Mutex<Answer>>, TestServer, TestServer) = {
        let pki = Pki::new("differential");
        let tls = server_config(&pki.server("upstream", Alg::Ecdsa, 1), None);
        let current = Arc::new(Mutex::new(Answer { bytes: Vec::new(), cuts: Vec::new(), close_notify: true }));
        let addr = scripted_upstream(Arc::clone(&current), Some(tls));
        let ca = pki.ca();
        let upstream = format!("https://localhost:{}/", addr.port());
        let (lean, hyper_util) =
            gateway_pair(&upstream, &["--upstream-ca", ca.to_str().expect("UTF-8")]);
        (current, lean, hyper_util)
    };
}

/// Has the upstream of `gateways` give `answer`, and asserts both clients pass on the same.
fn same_through_both(
    gateways: &(Arc<Mutex<Answer>>, TestServer, TestServer),
    answer: &Answer,
) -> Result<(), TestCaseError> {
    let (current, lean, hyper_util) = gateways;
    *current.lock().expect("the current answer") = answer.clone();
    let lean_got = outcome(lean);
    let hyper_got = outcome(hyper_util);
    prop_assert_eq!(
        &lean_got,
        &hyper_got,
        "upstream answered {:?} (close_notify: {})",
        String::from_utf8_lossy(&answer.bytes),
        answer.close_notify
    );
    Ok(())
}

proptest! {
    #![proptest_config(crate::support::fuzz_config())]

    #[test]
    fn fuzz_differential_lean_client_reads_answers_as_hyper_util_does(answer in upstream_answer()) {
        GATEWAYS.with(|gateways| same_through_both(gateways, &answer))?;
    }

    #[test]
    fn fuzz_differential_lean_client_reads_https_answers_as_hyper_util_does(
        answer in upstream_answer(),
        close_notify in any::<bool>(),
    ) {
        let answer = Answer { close_notify, ..answer };
        TLS_GATEWAYS.with(|gateways| same_through_both(gateways, &answer))?;
    }
}

#[test]
fn the_differential_upstreams_answer_through_both_clients() {
    // Otherwise both clients failing the same way (a TLS setting gone wrong) would compare
    // equal: a well-formed answer must come through each, plain and over TLS.
    let answer = Answer {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        cuts: Vec::new(),
        close_notify: false,
    };
    for gateways in [&GATEWAYS, &TLS_GATEWAYS] {
        gateways.with(|(current, lean, hyper_util)| {
            *current.lock().expect("the current answer") = answer.clone();
            for gateway in [lean, hyper_util] {
                assert_eq!(outcome(gateway), r#"200 Some("application/json") "ok""#);
            }
        });
    }
}
