//! The binary as users run it: the Listening line, configuration errors, signals.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{
    ChildServer, Client, ClosedPort, binary, read_by_peer, refuses_connections, wait_until,
};

/// How long a test waits for the server to reach a state before it fails.
const LIMIT: Duration = Duration::from_secs(5);

#[test]
fn listening_line_shows_the_real_port_and_the_port_answers() {
    let server = ChildServer::start(&[]);
    assert_ne!(server.addr.port(), 0);
    let mut client = Client::connect(server.addr);
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
}

#[test]
fn each_bad_setting_exits_2_with_one_line_naming_it() {
    /// Flags, environment variables, and the name the message must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 22] = [
        (&["--port", "70000"], &[], "--port"),
        (&[], &[("M2_PORT", "abc")], "M2_PORT"),
        (&["--path", "v1/avatar"], &[], "--path"),
        (&[], &[("M2_PATH", "nope")], "M2_PATH"),
        (&["--workers", "0"], &[], "--workers"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &["--shutdown-timeout", "forever"],
            &[],
            "--shutdown-timeout",
        ),
        (&[], &[("M2_DATE_HEADER", "iso")], "M2_DATE_HEADER"),
        (&["--behaviour", "delay=abc"], &[], "--behaviour"),
        (&["--path", "/metrics"], &[], "--path"),
        (&[], &[("RUST_LOG", "info,=x=")], "RUST_LOG"),
        (&[], &[("M2_BEHAVIOUR", "status=700")], "M2_BEHAVIOUR"),
        (
            &["--max-delay", "1s", "--behaviour", "drip=5s"],
            &[],
            "drip",
        ),
        // Gateway mode: M1_* name the gateway, M2_* its upstream.
        (&["gateway"], &[("M1_PORT", "abc")], "M1_PORT"),
        (&["gateway"], &[("M2_PORT", "abc")], "M2_PORT"),
        (&["gateway"], &[("M2_URL", "ftp://x/")], "--upstream"),
        (&["gateway"], &[("M2_DOMAIN", "http://a b")], "M2_DOMAIN"),
        (&["gateway", "--timeout", "0s"], &[], "--timeout"),
        (&["gateway"], &[("M1_CLIENT", "curl")], "M1_CLIENT"),
        // Every flag has a variable: serve mode's M2_*, gateway mode's M1_*.
        (&[], &[("M2_HEADER_TIMEOUT", "abc")], "M2_HEADER_TIMEOUT"),
        (&[], &[("M2_ACCESS_LOG", "yes")], "M2_ACCESS_LOG"),
        (&["gateway"], &[("M1_RETRIES", "abc")], "M1_RETRIES"),
    ];
    for (args, env, needle) in cases {
        crate::support::exits_2_naming(args, env, needle);
    }
}

#[test]
fn flags_win_over_the_environment() {
    // M2_PORT is invalid, but the flag given on the command line takes its place.
    let output = binary(&["--port", "abc"])
        .env("M2_PORT", "3000")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let mut child = binary(&["--host", "127.0.0.1", "--port", "0", "--workers", "1"])
        .env("M2_PORT", "not-a-port")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert!(line.starts_with("Listening on http://127.0.0.1:"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let output = binary(&[flag]).output().expect("run the binary");
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(!output.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let mut server = ChildServer::start(&["--shutdown-timeout", "5s"]);
    let mut client = Client::connect(server.addr);
    // The request has started arriving when the signal lands; the rest comes after it.
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n");
    wait_until(
        "the server has read the start of the request",
        LIMIT,
        || read_by_peer(client.stream()),
    );
    server.signal("TERM");
    wait_until("the listener closes on TERM", LIMIT, || {
        refuses_connections(server.addr)
    });
    // Draining has begun. Not a wait for a state: the request must keep the process alive
    // however long it takes, so it is left unfinished a while before the check.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.wait_exit(Duration::ZERO), None, "exited mid-request");
    client.send(b"\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.is_closed(), "keep-alive closes after the response");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn sigint_closes_idle_keep_alive_connections_and_exits_0() {
    let mut server = ChildServer::start(&[]);
    let mut client = Client::connect(server.addr);
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
    let start = Instant::now();
    server.signal("INT");
    assert!(client.is_closed(), "the idle connection is closed");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // New connections are refused once the listener is gone.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

#[test]
fn shutdown_timeout_bounds_a_request_that_never_completes() {
    let mut server = ChildServer::start(&["--shutdown-timeout", "300ms"]);
    let mut client = Client::connect(server.addr);
    client
        .stream()
        .write_all(b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n")
        .expect("write");
    wait_until(
        "the server has read the start of the request",
        LIMIT,
        || read_by_peer(client.stream()),
    );
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[test]
fn sigterm_waits_for_a_delayed_request_in_flight() {
    let mut server = ChildServer::start(&["--shutdown-timeout", "5s"]);
    let mut client = Client::connect(server.addr);
    let sent = Instant::now();
    client.send(b"GET /v1/avatar?delay=600ms HTTP/1.1\r\nHost: test\r\n\r\n");
    wait_until("the delayed request is in flight", LIMIT, || {
        server.metric("microservice2_inflight_requests", &[]) == 1.0
    });
    server.signal("TERM");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 3696);
    // Only a request that was in flight when shutdown began is answered `connection: close`.
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "the signal landed during the delay"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "it waited for the whole delay: {:?}",
        sent.elapsed()
    );
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_second_signal_exits_at_once_without_draining() {
    let mut server = ChildServer::start(&["--shutdown-timeout", "30s"]);
    let mut client = Client::connect(server.addr);
    client.send(b"GET /v1/avatar?delay=20s HTTP/1.1\r\nHost: test\r\n\r\n");
    wait_until("the delayed request is in flight", LIMIT, || {
        server.metric("microservice2_inflight_requests", &[]) == 1.0
    });
    server.signal("TERM");
    wait_until("the listener closes on TERM", LIMIT, || {
        refuses_connections(server.addr)
    });
    // Draining has begun. Not a wait for a state: one signal must not end the drain, so the
    // process is given a while to (wrongly) exit before the check.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        server.wait_exit(Duration::ZERO),
        None,
        "draining the delayed request"
    );
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(3)), Some(130));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn healthcheck_exits_0_on_200_1_otherwise_and_2_for_a_bad_url() {
    let server = ChildServer::start(&[]);
    let check = |args: &[&str], env: &[(&str, String)]| {
        let mut command = binary(&[]);
        command.arg("healthcheck").args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run healthcheck");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let base = format!("http://{}", server.addr);
    assert_eq!(check(&[&format!("{base}/healthz")], &[]).0, Some(0));
    assert_eq!(check(&[&format!("{base}/readyz")], &[]).0, Some(0));
    // Without a URL: /healthz on 127.0.0.1 at M2_PORT.
    let port = [("M2_PORT", server.addr.port().to_string())];
    assert_eq!(check(&[], &port).0, Some(0));
    let (code, stderr) = check(&[&format!("{base}/nothing")], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("404"), "{stderr}");
    let closed = ClosedPort::new();
    drop(server);
    let (code, stderr) = check(&[&closed.url("/healthz")], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    for bad in [
        &["ftp://x/"][..],
        &["not a url"][..],
        &["http://a/", "http://b/"][..],
    ] {
        let (code, stderr) = check(bad, &[]);
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{bad:?}: {stderr}");
    }
}

/// The flags of a `--help` text, each with the variable its entry names (`[env: NAME=]`), if
/// any; `--help` and `--version` left out. An entry starts on a line indented less than its
/// description (and the possible values under it).
fn flags_and_variables(help: &str) -> Vec<(String, Option<String>)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        let flag = trimmed
            .split_whitespace()
            .find(|word| word.starts_with("--"))
            .filter(|_| indent > 0 && indent < 10 && trimmed.starts_with('-'));
        match (flag, entries.last_mut()) {
            (Some(flag), _) => {
                entries.push((flag.trim_end_matches(',').to_owned(), line.to_owned()))
            }
            (None, Some((_, text))) => {
                text.push('\n');
                text.push_str(line);
            }
            (None, None) => {}
        }
    }
    entries
        .into_iter()
        .filter(|(flag, _)| flag != "--help" && flag != "--version")
        .map(|(flag, text)| {
            let var = text.split("[env: ").nth(1).map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            });
            (flag, var)
        })
        .collect()
}

#[test]
fn every_flag_of_both_modes_and_the_healthcheck_has_an_environment_variable() {
    // The upstream's parts keep the suite's M2_* names in gateway mode; the rest is M1_*.
    let upstream = [
        "--upstream",
        "--upstream-domain",
        "--upstream-port",
        "--upstream-path",
    ];
    for (args, prefix) in [
        (&["--help"][..], "M2_"),
        (&["gateway", "--help"][..], "M1_"),
        (&["healthcheck", "--help"][..], "M2_HEALTHCHECK_"),
    ] {
        let output = binary(args).output().expect("run --help");
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8(output.stdout).expect("UTF-8 help");
        let flags = flags_and_variables(&help);
        assert!(flags.len() >= 2, "{args:?}: no flags found in {help}");
        let wrong: Vec<_> = flags
            .iter()
            .filter(|(flag, var)| {
                let prefix = if args[0] == "gateway" && upstream.contains(&flag.as_str()) {
                    "M2_"
                } else {
                    prefix
                };
                !var.as_deref().is_some_and(|var| var.starts_with(prefix))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{args:?}: flags without a {prefix}* variable: {wrong:?}"
        );
    }
}
