//! HTTP/1.1 behaviour on the wire: keep-alive, pipelining, malformed input.

use crate::support::spawn_default;

const GET: &[u8] = b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn keep_alive_serves_a_thousand_requests_on_one_connection() {
    let server = spawn_default();
    let mut client = server.connect();
    for index in 0..1000 {
        client.send(GET);
        let response = client.read_response(false);
        assert_eq!(response.status, 200, "request {index}");
        assert_eq!(response.body.len(), 3696, "request {index}");
        assert_ne!(response.header("connection"), Some("close"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = spawn_default();
    let mut client = server.connect();
    client.send(
        b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n\
          GET /missing HTTP/1.1\r\nHost: test\r\n\r\n\
          HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    let first = client.read_response(false);
    let second = client.read_response(false);
    let third = client.read_response(true);
    assert_eq!((first.status, second.status, third.status), (200, 404, 200));
    assert_eq!(first.body.len(), 3696);
    assert_eq!(second.body_text(), "Not found");
    // The connection is still usable after the pipeline.
    client.send(GET);
    assert_eq!(client.read_response(false).status, 200);
}

/// Sends `raw` and asserts the server answers 4xx or closes the connection, then that a new
/// connection is served normally.
fn rejected_then_next_is_served(server: &crate::support::TestServer, raw: &[u8]) {
    let mut client = server.connect();
    // The server may close before reading everything; a failed write is a clean close too.
    let _ = std::io::Write::write_all(client.stream(), raw);
    if let Some(response) = client.try_read_response(true) {
        assert!(
            (400..500).contains(&response.status),
            "{:?} got {}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)]),
            response.status
        );
    }
    let mut next = server.connect();
    next.send(GET);
    let response = next.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
}

#[test]
fn malformed_requests_get_4xx_or_a_close_and_the_next_one_is_served() {
    let server = spawn_default();
    let huge_header = format!(
        "GET /v1/avatar HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let cases: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage\xff\xfe\r\n\r\n".to_vec(),
        b"this is not http\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /v1/avatar HTTP/1.1 extra\r\nHost: test\r\n\r\n".to_vec(),
        b"GET /v1/avatar HTTX/1.1\r\nHost: test\r\n\r\n".to_vec(),
        b"GET /v1/avatar HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
        huge_header.into_bytes(),
    ];
    for raw in &cases {
        rejected_then_next_is_served(&server, raw);
    }
}

#[test]
fn oversized_header_is_answered_with_431() {
    let server = spawn_default();
    let mut client = server.connect();
    let raw = format!(
        "GET /v1/avatar HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let _ = std::io::Write::write_all(client.stream(), raw.as_bytes());
    let response = client
        .try_read_response(true)
        .expect("an answer before the close");
    assert_eq!(response.status, 431);
}

#[test]
fn stopping_the_server_closes_idle_keep_alive_connections() {
    let server = spawn_default();
    let mut client = server.connect();
    client.send(GET);
    assert_eq!(client.read_response(false).status, 200);
    let addr = server.addr;
    server.stop();
    assert!(client.is_closed());
    assert!(std::net::TcpStream::connect(addr).is_err());
}
