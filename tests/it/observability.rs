//! Health, readiness, metrics (read with a real Prometheus text parser) and the admin port.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use crate::support::{ChildServer, Client, TestServer, config, spawn};

pub fn scrape(client: &mut Client) -> Scrape {
    client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.body_text();
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("valid exposition text")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => panic!("{name} is not a scalar"),
        })
        .sum()
}

fn requests(scrape: &Scrape, route: &str, method: &str, status: &str) -> f64 {
    value(
        scrape,
        "microservice2_requests_total",
        &[("route", route), ("method", method), ("status", status)],
    )
}

/// The duration histogram's buckets for `route`, as (upper bound, cumulative count).
fn buckets(scrape: &Scrape, route: &str) -> Vec<(f64, f64)> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "microservice2_request_duration_seconds"
                && s.labels.get("route") == Some(route)
        })
        .expect("a histogram per route");
    match &sample.value {
        Value::Histogram(counts) => counts.iter().map(|c| (c.less_than, c.count)).collect(),
        other => panic!("not a histogram: {other:?}"),
    }
}

#[test]
fn healthz_and_readyz_answer_get_and_head() {
    let server = spawn(config(&[]));
    for path in ["/healthz", "/readyz"] {
        let response = server.get(path);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let head = server.request(&format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(head.status, 200, "{path}");
    }
    assert_eq!(server.get("/healthz").body_text(), r#"{"status":"ok"}"#);
    assert_eq!(server.get("/readyz").body_text(), r#"{"status":"ready"}"#);
    let post = server.request("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405);
}

#[test]
fn counters_move_by_exactly_the_requests_sent() {
    let server = spawn(config(&[]));
    let mut observer = server.connect();
    let before = scrape(&mut observer);

    let mut client = server.connect();
    for _ in 0..50 {
        client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response(false).status, 200);
    }
    for _ in 0..5 {
        client.send(b"HEAD /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response(true).status, 200);
    }
    for _ in 0..3 {
        client.send(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response(false).status, 404);
    }
    for _ in 0..2 {
        client.send(b"GET /v1/avatar?status=503 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response(false).status, 503);
    }
    let mut faulty = server.connect();
    faulty.send(b"GET /v1/avatar?fault=close HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(faulty.is_closed());
    // The last requests were answered on `client`'s own task, so they are recorded by now.
    let after = scrape(&mut client);

    let delta = |route, method, status| {
        requests(&after, route, method, status) - requests(&before, route, method, status)
    };
    assert_eq!(delta("avatar", "GET", "200"), 50.0);
    assert_eq!(delta("avatar", "HEAD", "200"), 5.0);
    assert_eq!(delta("not_found", "GET", "404"), 3.0);
    assert_eq!(delta("avatar", "GET", "503"), 2.0);
    assert_eq!(delta("metrics", "GET", "200"), 1.0, "the first scrape");
    let faults = |s: &Scrape| {
        value(
            s,
            "microservice2_faults_injected_total",
            &[("kind", "close")],
        )
    };
    assert_eq!(faults(&after) - faults(&before), 1.0);
    let accepted = |s: &Scrape| value(s, "microservice2_connections_accepted_total", &[]);
    assert_eq!(accepted(&after) - accepted(&before), 2.0);
    assert!(value(&after, "microservice2_connections_open", &[]) >= 2.0);
    assert_eq!(value(&after, "microservice2_inflight_requests", &[]), 0.0);

    let avatar_after = buckets(&after, "avatar");
    let avatar_before = buckets(&before, "avatar");
    assert_eq!(
        avatar_after.len(),
        20,
        "19 bounds from 50 µs to 60 s, and +Inf"
    );
    assert_eq!(avatar_after[0].0, 0.000_05);
    assert_eq!(avatar_after[18].0, 60.0);
    assert!(
        avatar_after.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative"
    );
    let total = |b: &[(f64, f64)]| b.last().expect("+Inf").1;
    assert_eq!(total(&avatar_after) - total(&avatar_before), 57.0);
    let count = |s: &Scrape| {
        value(
            s,
            "microservice2_request_duration_seconds_count",
            &[("route", "avatar")],
        )
    };
    assert_eq!(count(&after) - count(&before), 57.0);

    assert_eq!(
        value(
            &after,
            "microservice2_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&after, process, &[]) > 0.0, "{process}");
    }
}

#[test]
fn no_metrics_turns_the_endpoint_off() {
    let server = spawn(config(&["--no-metrics"]));
    assert_eq!(server.get("/metrics").status, 404);
    assert_eq!(server.get("/v1/avatar").status, 200);
}

#[test]
fn the_admin_port_takes_the_reserved_paths_away_from_the_main_port() {
    let server: TestServer = spawn(config(&["--admin-port", "0"]));
    let admin = server.admin.expect("an admin listener");
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(server.get(path).status, 404, "main port {path}");
        let mut client = Client::connect(admin);
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(client.read_response(false).status, 200, "admin port {path}");
    }
    let mut client = Client::connect(admin);
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        client.read_response(false).status,
        404,
        "no avatars on the admin port"
    );
    assert_eq!(server.get("/v1/avatar").status, 200);
}

#[test]
fn readiness_turns_503_during_the_shutdown_delay_while_avatars_are_served() {
    let mut server = ChildServer::start(&["--shutdown-delay", "1s"]);
    let get = |path: &str| {
        let mut client = Client::connect(server.addr);
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        client.read_response(false)
    };
    assert_eq!(get("/readyz").status, 200);
    let start = std::time::Instant::now();
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    let ready = get("/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body_text(), r#"{"status":"draining"}"#);
    assert_eq!(
        get("/v1/avatar").status,
        200,
        "still serving during the delay"
    );
    assert_eq!(get("/healthz").status, 200, "still alive");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// Sends `count` plain GETs, a 404 and a delayed GET, then SIGTERM; returns the logs.
fn logs_of_a_short_run(args: &[&str], count: usize) -> String {
    let mut server = ChildServer::start_capturing_logs(args);
    let mut client = Client::connect(server.addr);
    for _ in 0..count {
        client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response(false).status, 200);
    }
    client.send(b"GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).status, 404);
    client.send(b"GET /v1/avatar?delay=5ms HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    server.logs()
}

#[test]
fn json_logs_parse_line_by_line_with_summary_access_lines_and_shutdown_steps() {
    let logs = logs_of_a_short_run(&["--log-format", "json", "--access-log"], 3);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "microservice2 started")
        .expect("a start-up summary");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(started["workers"], 1);
    assert!(
        started["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 5, "one line per request");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], "/v1/avatar");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["bytes"], 3696);
    assert!(access[0]["duration_us"].is_u64());
    assert_eq!(access[3]["status"], 404);
    assert!(
        access[4]["duration_us"]
            .as_u64()
            .is_some_and(|us| us >= 5000)
    );
    let shutdown = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shutdown:"))
        })
        .count();
    assert!(shutdown >= 3, "{logs}");
}

#[test]
fn access_log_is_off_by_default_and_sampled_on_request() {
    let logs = logs_of_a_short_run(&[], 5);
    assert!(logs.contains("microservice2 started"), "{logs}");
    assert!(
        !logs.contains("access"),
        "no access lines by default: {logs}"
    );
    let logs = logs_of_a_short_run(&["--access-log", "--access-log-sample", "0.2"], 400);
    let sampled = logs.lines().filter(|l| l.contains(" access: ")).count();
    // 402 requests at 20%: about 80; the binomial standard deviation is 8.
    assert!((40..=125).contains(&sampled), "{sampled} lines sampled");
}

/// A field of /proc/PID/status in bytes (the kernel gives kB).
fn status_bytes(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in {status}"));
    kib * 1024.0
}

#[test]
fn the_process_collector_reads_sizes_and_limits_from_the_system() {
    let server = crate::support::ChildServer::start_with_open_files_limit(4000, &[]);
    let pid = server.child.id();
    let rss = server.metric("process_resident_memory_bytes", &[]);
    let virtual_memory = server.metric("process_virtual_memory_bytes", &[]);
    // The server's own figures, against the kernel's, read a moment apart.
    let near = |metric: f64, kernel: f64| (metric - kernel).abs() <= kernel * 0.2;
    assert!(near(rss, status_bytes(pid, "VmRSS:")), "rss {rss}");
    assert!(
        near(virtual_memory, status_bytes(pid, "VmSize:")),
        "virtual {virtual_memory}"
    );
    assert!(virtual_memory >= rss);
    assert_eq!(server.metric("process_max_fds", &[]), 4000.0);
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package); .ci/run installs it and runs the ignored tests"]
fn promtool_finds_nothing_to_say_about_a_scrape_of_either_mode() {
    let upstream = crate::support::ChildServer::start(&["--behaviour", "delay=1ms"]);
    let url = format!("http://{}/v1/avatar", upstream.addr);
    let gateway = crate::support::ChildServer::gateway(&["--upstream", &url, "--retries", "1"]);
    for (server, path) in [(&upstream, "/v1/avatar"), (&gateway, "/v1/user")] {
        // Some traffic first, so that every labelled series has samples.
        for _ in 0..3 {
            let mut client = crate::support::Client::connect(server.addr);
            client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(client.read_response(false).status, 200);
        }
        let scrape = {
            let mut client = crate::support::Client::connect(server.addr);
            client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
            client.read_response(false).body
        };
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool on PATH (apt install prometheus)");
        std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), &scrape)
            .expect("feed promtool");
        let output = promtool.wait_with_output().expect("promtool ran");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "promtool on {path}'s server: {said}"
        );
    }
}
