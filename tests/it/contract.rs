//! The response contract of the seed: body bytes, headers, timestamps, HEAD, 404 and 405.

use microservice2::Config;
use microservice2::avatar::{CREATED_AT_OFFSET, TEMPLATE};
use microservice2::time::DateHeader;

use crate::support::{RawResponse, masked, now_nanos, parse_imf, parse_iso, spawn, spawn_default};

/// The seed document's body, read from the seed itself when it sits beside the repository
/// (as in CI), otherwise the copy compiled into the server.
fn seed_body() -> Vec<u8> {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/seed/microservice2-rust-hyper.md"
    );
    match std::fs::read_to_string(seed) {
        Ok(text) => text
            .lines()
            .find(|line| line.starts_with("[{ \"createdAt\""))
            .expect("the seed shows the body")
            .as_bytes()
            .to_vec(),
        Err(_) => TEMPLATE.to_vec(),
    }
}

const CREATED_AT_LEN: usize = 24;

fn created_at(response: &RawResponse) -> &str {
    std::str::from_utf8(&response.body[CREATED_AT_OFFSET..CREATED_AT_OFFSET + CREATED_AT_LEN])
        .expect("ASCII timestamp")
}

#[test]
fn body_is_the_seed_byte_for_byte_but_the_first_created_at() {
    let server = spawn_default();
    let response = server.get("/v1/avatar");
    assert_eq!(response.status, 200);
    let seed = seed_body();
    assert_eq!(seed.len(), 3696);
    assert_eq!(response.body.len(), 3696);
    assert_eq!(masked(&response.body), masked(&seed));
    assert_ne!(
        created_at(&response),
        "2023-04-21T12:40:19.925Z",
        "the first createdAt is the current time, not the seed's"
    );
}

#[test]
fn body_parses_as_json_with_twenty_avatars() {
    let server = spawn_default();
    let response = server.get("/v1/avatar");
    let value: serde_json::Value = serde_json::from_slice(&response.body).expect("valid JSON");
    let avatars = value.as_array().expect("a JSON array");
    assert_eq!(avatars.len(), 20);
    for (index, avatar) in avatars.iter().enumerate() {
        assert_eq!(avatar["id"], (index + 1).to_string());
        for key in ["createdAt", "name", "avatar"] {
            assert!(avatar[key].is_string(), "avatar {index} lacks {key}");
        }
    }
    assert_eq!(avatars[0]["name"], "BillyStoltenberg");
    assert_eq!(avatars[1]["createdAt"], "2022-11-05T09:01:38.207Z");
    assert_eq!(avatars[19]["name"], "JodySchadenDDS");
}

#[test]
fn headers_are_the_seeds_in_the_seeds_order() {
    let server = spawn_default();
    server.get("/v1/avatar").assert_seed_headers("/v1/avatar");
}

#[test]
fn created_at_and_date_are_fresh_and_agree() {
    let server = spawn_default();
    for _ in 0..20 {
        let before = now_nanos();
        let response = server.get("/v1/avatar");
        let after = now_nanos();
        let date = parse_iso(response.header("date").expect("date header"));
        let created = parse_iso(created_at(&response));
        // The snapshot is at most one millisecond old when it is handed out.
        assert!(
            date >= before - 1_000_000 && date <= after,
            "date {date} outside [{before} - 1ms, {after}]"
        );
        assert_eq!(created, date / 1_000_000 * 1_000_000, "same instant, in ms");
    }
}

#[test]
fn http_date_header_option_uses_imf_fixdate() {
    let server = spawn(Config {
        date_header: DateHeader::Http,
        ..Config::default()
    });
    let before = now_nanos();
    let response = server.get("/v1/avatar");
    let after = now_nanos();
    let date = response.header("date").expect("date header");
    assert!(date.ends_with(" GMT"), "{date}");
    let date = parse_imf(date);
    assert!(date >= before / 1_000_000_000 * 1_000_000_000 - 1_000_000_000 && date <= after);
    let created = parse_iso(created_at(&response));
    assert_eq!(created / 1_000_000_000 * 1_000_000_000, date);
}

#[test]
fn head_has_the_headers_but_no_body() {
    let server = spawn_default();
    let mut client = server.connect();
    client.send(b"HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = client.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3696"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("engine"), Some("Rust/Hype"));
    assert_eq!(head.header("location"), Some("/v1/avatar"));
    assert!(head.header("date").is_some());
    // If a body had followed the HEAD response, this GET's status line would be misread.
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    let get = client.read_response(false);
    assert_eq!(get.status, 200);
    assert_eq!(get.body.len(), 3696);
}

#[test]
fn unknown_path_is_404_not_found() {
    let server = spawn_default();
    for path in ["/", "/v1/avatars", "/v1", "/v1/avatar/1", "/V1/AVATAR"] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.body_text(), "Not found", "{path}");
    }
}

#[test]
fn query_string_does_not_change_the_route() {
    let server = spawn_default();
    let response = server.get("/v1/avatar?cachebuster=123");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = spawn_default();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let response = server.request(&format!(
            "{method} /v1/avatar HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
        ));
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET, HEAD"), "{method}");
        let body: serde_json::Value =
            serde_json::from_slice(&response.body).expect("a JSON error body");
        assert_eq!(body["error"], "method not allowed");
    }
}

#[test]
fn configured_path_is_served_and_sent_as_location() {
    let server = spawn(Config {
        path: "/api/v2/faces".into(),
        ..Config::default()
    });
    let response = server.get("/api/v2/faces");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("location"), Some("/api/v2/faces"));
    assert_eq!(server.get("/v1/avatar").status, 404);
}
