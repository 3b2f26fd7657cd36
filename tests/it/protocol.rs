//! HTTP/1.1 behaviour on the wire: keep-alive, pipelining, malformed input.

use crate::support::{masked_response, spawn_default};

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

#[test]
fn fast_path_and_hyper_answer_the_same_bytes() {
    let server = spawn_default();
    // A plain GET takes the fast path; the same GET with a body-length header goes to hyper.
    let fast = server.get("/v1/avatar");
    let hyper =
        server.request("GET /v1/avatar HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
    // Status, headers in order and body, the date and the first `createdAt` masked.
    assert_eq!(
        String::from_utf8_lossy(&masked_response(&fast)),
        String::from_utf8_lossy(&masked_response(&hyper))
    );
    let fast_head = server.request("HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    let hyper_head =
        server.request("HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(fast_head.headers.len(), hyper_head.headers.len());
    for ((fast_name, fast_value), (hyper_name, hyper_value)) in
        fast_head.headers.iter().zip(&hyper_head.headers)
    {
        assert_eq!(fast_name, hyper_name);
        if fast_name != "date" {
            assert_eq!(fast_value, hyper_value, "{fast_name}");
        }
    }
}

#[test]
fn pipelined_avatar_requests_are_all_answered_in_order() {
    let server = spawn_default();
    let mut client = server.connect();
    let mut batch = GET.repeat(10);
    batch.extend_from_slice(b"HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    batch.extend_from_slice(GET);
    client.send(&batch);
    for index in 0..10 {
        let response = client.read_response(false);
        assert_eq!(response.status, 200, "response {index}");
        assert_eq!(response.body.len(), 3696, "response {index}");
    }
    let head = client.read_response(true);
    assert_eq!(head.header("content-length"), Some("3696"));
    assert_eq!(client.read_response(false).body.len(), 3696);
}

#[test]
fn a_pipeline_longer_than_one_read_is_answered_in_order() {
    // About 9 KB of requests: more than one read takes (4 KiB), so requests straddle reads
    // and the connection keeps the start of one while the rest arrives. Every third is a
    // HEAD, so a response out of order or missing shows as a body where none belongs.
    const HEAD: &[u8] = b"HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n";
    let server = spawn_default();
    let mut client = server.connect();
    let mut batch = Vec::new();
    for index in 0..220 {
        batch.extend_from_slice(if index % 3 == 0 { HEAD } else { GET });
    }
    assert!(batch.len() > 2 * 4096);
    client.send(&batch);
    for index in 0..220 {
        let head = index % 3 == 0;
        let response = client.read_response(head);
        assert_eq!(response.status, 200, "response {index}");
        assert_eq!(
            response.body.len(),
            if head { 0 } else { 3696 },
            "response {index}"
        );
        assert_eq!(
            response.header("content-length"),
            Some("3696"),
            "response {index}"
        );
    }
    client.send(GET);
    assert_eq!(client.read_response(false).body.len(), 3696);
}

#[test]
fn connections_of_one_worker_keep_their_unfinished_requests_apart() {
    // One worker: every connection reads through the same buffer, so each must keep the
    // start of its own request while the others read.
    let server = crate::support::spawn(crate::support::config(&["--workers", "1"]));
    let mut clients: Vec<_> = (0..3).map(|_| server.connect()).collect();
    let requests: [&[u8]; 3] = [
        GET,
        b"HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /elsewhere HTTP/1.1\r\nHost: test\r\n\r\n",
    ];
    for (client, request) in clients.iter_mut().zip(requests) {
        client.send(&request[..17]);
    }
    // Each connection's start has been read before the others send their rest.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for (client, request) in clients.iter_mut().zip(requests).rev() {
        client.send(&request[17..]);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let get = clients[0].read_response(false);
    assert_eq!((get.status, get.body.len()), (200, 3696));
    let head = clients[1].read_response(true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("3696"))
    );
    assert_eq!(clients[2].read_response(false).status, 404);
}

#[test]
fn a_request_split_across_many_writes_is_answered() {
    let server = spawn_default();
    let mut client = server.connect();
    for chunk in GET.chunks(3) {
        client.send(chunk);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
}

#[test]
fn the_connection_keeps_working_after_hyper_takes_it_over() {
    let server = spawn_default();
    let mut client = server.connect();
    client.send(GET);
    assert_eq!(client.read_response(false).status, 200);
    client.send(b"GET /elsewhere HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(client.read_response(false).status, 404);
    for _ in 0..3 {
        client.send(GET);
        let response = client.read_response(false);
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 3696);
    }
}

#[test]
fn http_1_0_is_answered_and_closed() {
    let server = spawn_default();
    let mut client = server.connect();
    client.send(b"GET /v1/avatar HTTP/1.0\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
    assert!(client.is_closed());
}

/// Sends GET `path` over HTTP/2 with prior knowledge; returns (status, version, body).
fn h2_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(u16, hyper::Version, Vec<u8>), String> {
    use http_body_util::{BodyExt, Empty};
    crate::support::client_runtime().block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sender.send_request(request),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let version = response.version();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok((status, version, body))
    })
}

#[test]
fn http2_prior_knowledge_works_beside_http_1_1_with_the_flag() {
    for args in [&["--http2"][..], &["--http2", "--max-inflight", "100"][..]] {
        let server = crate::support::spawn(crate::support::config(args));
        let (status, version, body) = h2_get(server.addr, "/v1/avatar").expect("an h2c answer");
        assert_eq!((status, version), (200, hyper::Version::HTTP_2), "{args:?}");
        assert_eq!(body.len(), 3696);
        let (status, _, _) = h2_get(server.addr, "/v1/avatar?status=503").expect("h2c");
        assert_eq!(status, 503);
        // HTTP/1.1 on the same port.
        let response = server.get("/v1/avatar");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 3696);
    }
}

#[test]
fn http2_is_refused_without_the_flag() {
    let server = spawn_default();
    assert!(h2_get(server.addr, "/v1/avatar").is_err());
    assert_eq!(server.get("/v1/avatar").status, 200);
}

#[test]
fn with_http2_and_no_fast_path_a_silent_connection_still_drains_and_times_out() {
    // --max-inflight turns the fast path off, so --http2 reads ahead for the preface.
    let server = crate::support::spawn(crate::support::config(&[
        "--http2",
        "--max-inflight",
        "100",
        "--idle-timeout",
        "300ms",
    ]));
    let mut silent = server.connect();
    let start = std::time::Instant::now();
    assert!(silent.is_closed(), "closed by the idle timeout");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let _parked = server.connect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let start = std::time::Instant::now();
    server.stop();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "shutdown waited {:?} for a connection that never spoke",
        start.elapsed()
    );
}
