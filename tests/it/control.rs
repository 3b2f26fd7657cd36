//! The control API (`--control`): the server-wide behaviour read and changed while the server
//! runs, on the main port or the admin port, with and without a token; changes apply to new
//! requests on every worker and on connections the fast path held, never to requests in
//! flight; bad input changes nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{
    ChildServer, Client, RawResponse, TestServer, config, exits_2_naming, spawn, wait_until,
};

const TOKEN: &str = "0123456789abcdef-test-token";

fn json(response: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("a JSON body: {:?}", response.body_text()))
}

/// One control request on a fresh connection to `addr`.
pub fn control(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> RawResponse {
    let auth = token.map_or(String::new(), |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = Client::connect(addr);
    client.send(request.as_bytes());
    client.read_response(method == "HEAD")
}

fn behaviour(server: &TestServer) -> serde_json::Value {
    json(&control(server.addr, "GET", "/admin/behaviour", "", None))
}

#[test]
fn without_control_nothing_under_admin_answers_or_changes() {
    let server = spawn(config(&[]));
    for (method, path) in [
        ("GET", "/admin/behaviour"),
        ("PUT", "/admin/behaviour"),
        ("DELETE", "/admin/behaviour"),
        ("GET", "/admin/scenario"),
        ("POST", "/admin/scenario/restart"),
    ] {
        let response = control(server.addr, method, path, "status=503", None);
        assert_eq!(response.status, 404, "{method} {path}");
    }
    assert_eq!(server.get("/v1/avatar").status, 200);
}

#[test]
fn a_profile_put_applies_to_new_requests_and_delete_restores_the_start_profile() {
    let server = spawn(config(&["--control", "--behaviour", "status=418"]));
    assert_eq!(
        behaviour(&server),
        serde_json::json!({"behaviour": "status=418", "source": "start"})
    );
    assert_eq!(server.get("/v1/avatar").status, 418);
    let put = control(server.addr, "PUT", "/admin/behaviour", "status=503", None);
    assert_eq!(put.status, 200, "{}", put.body_text());
    assert_eq!(
        json(&put),
        serde_json::json!({"behaviour": "status=503", "source": "control"})
    );
    assert_eq!(behaviour(&server)["source"], "control");
    // Every worker, from the answer on: many fresh connections land on both.
    for _ in 0..20 {
        assert_eq!(server.get("/v1/avatar").status, 503);
    }
    let deleted = control(server.addr, "DELETE", "/admin/behaviour", "", None);
    assert_eq!(
        json(&deleted),
        serde_json::json!({"behaviour": "status=418", "source": "start"})
    );
    for _ in 0..20 {
        assert_eq!(server.get("/v1/avatar").status, 418);
    }
    assert_eq!(
        server.metric(
            "microservice2_behaviour_changes_total",
            &[("source", "control")]
        ),
        2.0
    );
    assert_eq!(
        server.metric(
            "microservice2_requests_total",
            &[("route", "control"), ("status", "200")]
        ),
        4.0
    );
}

#[test]
fn a_connection_on_the_fast_path_follows_a_change() {
    // Control requests go to the admin port: on the main port each would be a hand-over.
    let server = spawn(config(&["--control", "--admin-port", "0"]));
    let admin = server.admin.expect("an admin listener");
    let mut client = server.connect();
    let plain = b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..5 {
        client.send(plain);
        assert_eq!(client.read_response(false).status, 200);
    }
    // With nothing set, plain requests stay on the fast path.
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        0.0
    );
    // An injected status is planned on the fast path too.
    control(admin, "PUT", "/admin/behaviour", "status=503", None);
    client.send(plain);
    assert_eq!(client.read_response(false).status, 503);
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        0.0
    );
    // `fail-first` is hyper's to plan (it reads the attempt header): the connection moves
    // there.
    control(
        admin,
        "PUT",
        "/admin/behaviour",
        "status=502&fail-first=1",
        None,
    );
    client.send(plain);
    assert_eq!(client.read_response(false).status, 502);
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        1.0
    );
    control(admin, "DELETE", "/admin/behaviour", "", None);
    client.send(plain);
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    response.assert_seed_headers("/v1/avatar");
    // A new connection is on the fast path again.
    let mut fresh = server.connect();
    fresh.send(plain);
    assert_eq!(fresh.read_response(false).status, 200);
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        1.0
    );
}

#[test]
fn a_request_in_flight_keeps_its_plan() {
    let server = spawn(config(&["--control", "--behaviour", "delay=600ms"]));
    let mut slow = server.connect();
    let start = Instant::now();
    slow.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    // Wait until it is in flight, then take the delay away.
    wait_until("the request in flight", Duration::from_secs(5), || {
        server.scraped("microservice2_inflight_requests", &[]) >= 1.0
    });
    control(server.addr, "PUT", "/admin/behaviour", "", None);
    let quick = Instant::now();
    assert_eq!(server.get("/v1/avatar").status, 200);
    assert!(quick.elapsed() < Duration::from_millis(300));
    assert_eq!(slow.read_response(false).status, 200);
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[test]
fn a_bad_profile_is_refused_and_changes_nothing() {
    let server = spawn(config(&["--control", "--behaviour", "status=418"]));
    let cases: [(&str, &[u8], u16, &str); 4] = [
        ("delay=fast", b"delay=fast", 400, "delay"),
        ("unknown key", b"colour=blue", 400, "colour"),
        ("count over the limit", b"count=99999999", 400, "count"),
        ("not UTF-8", b"status=\xff", 400, ""),
    ];
    for (what, body, status, param) in cases {
        let mut client = server.connect();
        let head = format!(
            "PUT /admin/behaviour HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.send(head.as_bytes());
        client.send(body);
        let response = client.read_response(false);
        assert_eq!(response.status, status, "{what}: {}", response.body_text());
        let answer = json(&response);
        assert!(answer["error"].is_string(), "{what}: {answer}");
        if !param.is_empty() {
            assert_eq!(answer["param"], param, "{what}");
        }
    }
    // A profile is at most 64 KiB (a scenario 1 MiB).
    let huge = format!("status={}", "503:0.0001,".repeat(6000));
    let response = control(server.addr, "PUT", "/admin/behaviour", &huge, None);
    assert_eq!(response.status, 413, "{}", response.body_text());
    assert_eq!(behaviour(&server)["behaviour"], "status=418");
    assert_eq!(server.get("/v1/avatar").status, 418);
    assert_eq!(
        server.metric("microservice2_behaviour_changes_total", &[]),
        0.0
    );
    let response = control(server.addr, "POST", "/admin/behaviour", "", None);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    assert_eq!(
        control(server.addr, "GET", "/admin/nothing", "", None).status,
        404
    );
}

#[test]
fn a_token_is_required_when_one_is_set() {
    let server = spawn(config(&["--control", "--control-token", TOKEN]));
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let response = control(server.addr, "PUT", "/admin/behaviour", "status=503", token);
        assert_eq!(response.status, 401, "{token:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert!(json(&response)["error"].is_string());
    }
    assert_eq!(server.get("/v1/avatar").status, 200);
    let response = control(
        server.addr,
        "PUT",
        "/admin/behaviour",
        "status=503",
        Some(TOKEN),
    );
    assert_eq!(response.status, 200);
    assert_eq!(server.get("/v1/avatar").status, 503);
}

#[test]
fn with_an_admin_port_the_control_api_lives_there_only() {
    let server = spawn(config(&["--control", "--admin-port", "0"]));
    let admin = server.admin.expect("an admin listener");
    assert_eq!(
        control(server.addr, "PUT", "/admin/behaviour", "status=503", None).status,
        404
    );
    assert_eq!(server.get("/v1/avatar").status, 200);
    assert_eq!(
        control(admin, "PUT", "/admin/behaviour", "status=503", None).status,
        200
    );
    assert_eq!(server.get("/v1/avatar").status, 503);
}

#[test]
fn every_change_is_logged_with_old_new_and_peer() {
    let mut server = ChildServer::start_capturing_logs(&["--control", "--behaviour", "status=418"]);
    let response = control(server.addr, "PUT", "/admin/behaviour", "status=503:5", None);
    assert_eq!(response.status, 200);
    // A long profile is logged by its start and its length.
    let long = format!("status={}", "503:0.0001,".repeat(3000));
    let long = long.trim_end_matches(',');
    let response = control(server.addr, "PUT", "/admin/behaviour", long, None);
    assert_eq!(response.status, 200, "{}", response.body_text());
    let response = control(server.addr, "DELETE", "/admin/behaviour", "", None);
    assert_eq!(response.status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let logs = server.logs();
    let set = logs
        .lines()
        .find(|line| line.contains("behaviour set"))
        .unwrap_or_else(|| panic!("no change logged: {logs}"));
    for needle in [
        "old=\"status=418\"",
        "new=\"status=503:5\"",
        "peer=\"127.0.0.1:",
    ] {
        assert!(set.contains(needle), "{needle} in {set}");
    }
    let reset = logs
        .lines()
        .find(|line| line.contains("behaviour reset"))
        .unwrap_or_else(|| panic!("no reset logged: {logs}"));
    assert!(reset.contains("new=\"status=418\""), "{reset}");
    assert!(
        reset.contains(&format!("({} bytes)", long.len())) && reset.len() < 1024,
        "{reset}"
    );
}

#[test]
fn the_gateways_own_behaviour_changes_too() {
    let upstream = spawn(config(&[]));
    let url = format!("http://{}/v1/avatar", upstream.addr);
    let gateway = ChildServer::gateway(&["--upstream", &url, "--control"]);
    let call = |addr| {
        let mut client = Client::connect(addr);
        client.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        client.read_response(false).status
    };
    assert_eq!(call(gateway.addr), 200);
    // The grammar is checked as the gateway's --behaviour is: no count there.
    let refused = control(gateway.addr, "PUT", "/admin/behaviour", "count=3", None);
    assert_eq!(refused.status, 400);
    assert_eq!(json(&refused)["param"], "count");
    let put = control(gateway.addr, "PUT", "/admin/behaviour", "status=502", None);
    assert_eq!(put.status, 200);
    assert_eq!(call(gateway.addr), 502);
}

#[test]
fn control_settings_are_checked_at_start() {
    exits_2_naming(
        &["--control-token", TOKEN],
        &[],
        "--control-token needs --control",
    );
    exits_2_naming(
        &["--control", "--control-token", "short"],
        &[],
        "--control-token",
    );
    exits_2_naming(
        &["--control"],
        &[("M2_CONTROL_TOKEN", "has a space in it, sadly")],
        "M2_CONTROL_TOKEN",
    );
}
