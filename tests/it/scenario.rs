//! Scenarios (`--scenario FILE`): phases switch on every worker within 10 ms of their
//! boundaries, replicas with `start: aligned` are in step, an RFC 3339 start waits, a
//! finished scenario leaves the start profile; `/admin/scenario`, its metrics and logs; bad
//! files refused at start and through the control API.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::control;
use crate::support::{ChildServer, Client, binary, config, exits_2_naming, spawn, wait_until};

/// Writes `text` to a file of its own for this test and returns its path.
pub fn scenario_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("m2-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write the scenario");
    path
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

fn json(response: &crate::support::RawResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("a JSON body: {:?}", response.body_text()))
}

/// Seconds since the Unix epoch, now.
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

fn status_of(client: &mut Client) -> u16 {
    client.send(b"GET /v1/avatar HTTP/1.1\r\nHost: t\r\n\r\n");
    client.read_response(false).status
}

#[test]
fn every_worker_switches_within_10_ms_of_each_boundary() {
    // Aligned on the wall clock: phase `outage` is [k, k + 0.5 s), `calm` [k + 0.5 s, k + 1 s).
    let file = scenario_file(
        "boundaries",
        "loop: true\nstart: aligned\nphases:\n\
         - {name: outage, duration: 500ms, behaviour: status=503}\n\
         - {name: calm, duration: 500ms, behaviour: \"\"}\n",
    );
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "2",
        "--scenario",
        path_str(&file),
    ];
    let server = ChildServer::start_command(binary(&args), std::process::Stdio::inherit());
    let addr = server.addr;
    let until = Instant::now() + Duration::from_millis(2600);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                // A few connections each, so both workers serve some.
                while Instant::now() < until {
                    let mut client = Client::connect(addr);
                    for _ in 0..50 {
                        let sent = wall();
                        let status = status_of(&mut client);
                        seen.push((sent, wall(), status));
                    }
                }
                seen
            })
        })
        .collect();
    let seen: Vec<(f64, f64, u16)> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("a client thread"))
        .collect();
    let margin = 0.010;
    let mut judged = [0, 0];
    for (sent, answered, status) in &seen {
        // Judged only when the whole exchange lies inside one phase, 10 ms from its edges.
        let (first, last) = (sent - margin, answered + margin);
        if first.floor() != last.floor() {
            continue;
        }
        let (a, b) = (first.fract(), last.fract());
        let expected = if b < 0.5 {
            503
        } else if a >= 0.5 {
            200
        } else {
            continue;
        };
        judged[usize::from(expected == 200)] += 1;
        assert_eq!(
            *status, expected,
            "sent at {sent:.4}, answered at {answered:.4}: {status}"
        );
    }
    assert!(
        judged[0] > 50 && judged[1] > 50,
        "too few exchanges judged: {judged:?} of {}",
        seen.len()
    );
}

#[test]
fn aligned_replicas_started_apart_are_in_the_same_phase_at_the_same_instants() {
    let file = scenario_file(
        "aligned",
        "loop: true\nstart: aligned\nphases:\n\
         - {name: teapot, duration: 300ms, behaviour: status=418}\n\
         - {name: down, duration: 300ms, behaviour: status=503}\n\
         - {name: fine, duration: 300ms, behaviour: \"\"}\n",
    );
    let first = ChildServer::start(&["--scenario", path_str(&file)]);
    std::thread::sleep(Duration::from_millis(700));
    let second = ChildServer::start(&["--scenario", path_str(&file)]);
    let mut a = Client::connect(first.addr);
    let mut b = Client::connect(second.addr);
    let mut compared = 0;
    let mut statuses = std::collections::HashSet::new();
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        let start = wall();
        let (one, two) = (status_of(&mut a), status_of(&mut b));
        let end = wall();
        // Both asked within one phase, 10 ms from its edges: they must agree.
        let phase = |t: f64| ((t * 1000.0).rem_euclid(900.0) / 300.0).floor();
        let (early, late) = (start - 0.010, end + 0.010);
        if phase(early) == phase(late) && (late - early) < 0.3 {
            assert_eq!(one, two, "at {start:.4}..{end:.4}");
            compared += 1;
            statuses.insert(one);
        }
    }
    assert!(compared > 20, "only {compared} comparisons");
    assert_eq!(statuses.len(), 3, "every phase seen: {statuses:?}");
}

#[test]
fn phases_follow_the_start_and_a_finished_scenario_leaves_the_start_profile() {
    let file = scenario_file(
        "once",
        "phases:\n\
         - {name: first, duration: 300ms, behaviour: status=503}\n\
         - {name: second, duration: 300ms, behaviour: status=429}\n",
    );
    let server = spawn(config(&[
        "--scenario",
        path_str(&file),
        "--behaviour",
        "status=418",
    ]));
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let status = server.get("/v1/avatar").status;
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == 418 {
            break;
        }
    }
    // A request may land in the first phase or only later on a busy machine; the order holds.
    let expected = [503, 429, 418];
    let from = expected
        .iter()
        .position(|status| Some(status) == seen.first())
        .expect("a known status first");
    assert_eq!(seen, expected[from..], "{seen:?}");
    let now = json(&server.get("/admin/scenario"));
    assert_eq!(now["state"], "finished");
    assert_eq!(now["phase"], serde_json::Value::Null);
}

#[test]
fn an_rfc_3339_start_waits_for_its_instant() {
    let at = SystemTime::now() + Duration::from_millis(1500);
    let since = at.duration_since(UNIX_EPOCH).expect("after 1970");
    let instant = format!(
        "{}",
        jiff::Timestamp::from_second(since.as_secs() as i64)
            .expect("a valid instant")
            .checked_add(jiff::SignedDuration::from_millis(i64::from(
                since.subsec_millis()
            )))
            .expect("in range")
    );
    let file = scenario_file(
        "at",
        &format!(
            "start: {instant}\nphases:\n- {{name: late, duration: 10s, behaviour: status=503}}\n"
        ),
    );
    let server = spawn(config(&["--scenario", path_str(&file)]));
    let pending = json(&server.get("/admin/scenario"));
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(pending["remaining_ms"].as_u64().is_some_and(|ms| ms > 500));
    assert_eq!(server.get("/v1/avatar").status, 200);
    wait_until("the start instant", Duration::from_secs(5), || {
        server.get("/v1/avatar").status == 503
    });
    assert!(SystemTime::now() >= at - Duration::from_millis(10));
    assert_eq!(json(&server.get("/admin/scenario"))["phase"], "late");
}

#[test]
fn an_empty_phase_keeps_plain_requests_on_the_fast_path() {
    let file = scenario_file(
        "fast",
        "phases:\n- {name: calm, duration: 600ms, behaviour: \"\"}\n\
         - {name: down, duration: 30s, behaviour: status=503}\n",
    );
    let server = spawn(config(&["--scenario", path_str(&file)]));
    let mut client = server.connect();
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(status_of(&mut client), 200);
    }
    assert!(start.elapsed() < Duration::from_millis(600), "still calm");
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        0.0
    );
    // The down phase's status is planned on the fast path as well.
    wait_until("the down phase", Duration::from_secs(5), || {
        status_of(&mut client) == 503
    });
    assert_eq!(
        server.metric("microservice2_fast_path_handovers_total", &[]),
        0.0
    );
}

#[test]
fn the_scenario_is_read_and_counted_and_its_phases_logged() {
    let file = scenario_file(
        "metrics",
        "loop: true\nphases:\n- {name: up, duration: 200ms, behaviour: \"\"}\n\
         - {name: down, duration: 200ms, behaviour: status=503}\n",
    );
    let mut server = ChildServer::start_capturing_logs(&["--scenario", path_str(&file)]);
    let now = json(&control(server.addr, "GET", "/admin/scenario", "", None));
    assert_eq!(now["state"], "running");
    assert!(now["phase"] == "up" || now["phase"] == "down", "{now}");
    for field in ["index", "elapsed_ms", "remaining_ms"] {
        assert!(now[field].is_u64(), "{field} in {now}");
    }
    assert!(now["remaining_ms"].as_u64() <= Some(200));
    // Read-only without --control: nothing can change.
    assert_eq!(
        control(server.addr, "POST", "/admin/scenario/restart", "", None).status,
        404
    );
    assert_eq!(
        control(server.addr, "PUT", "/admin/behaviour", "status=418", None).status,
        404
    );
    wait_until("three phase changes", Duration::from_secs(5), || {
        server.metric(
            "microservice2_behaviour_changes_total",
            &[("source", "scenario")],
        ) >= 3.0
    });
    let up = server.metric("microservice2_scenario_phase", &[("name", "up")]);
    let down = server.metric("microservice2_scenario_phase", &[("name", "down")]);
    assert_eq!(up + down, 1.0, "one phase at a time: up {up}, down {down}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let logs = server.logs();
    for phase in ["phase=\"up\"", "phase=\"down\""] {
        assert!(logs.contains(phase), "{phase} logged: {logs}");
    }
}

#[test]
fn the_control_api_restarts_replaces_and_stops_a_scenario() {
    let file = scenario_file(
        "control",
        "phases:\n- {name: one, duration: 400ms, behaviour: status=503}\n\
         - {name: two, duration: 30s, behaviour: status=429}\n",
    );
    let server = spawn(config(&["--control", "--scenario", path_str(&file)]));
    wait_until("phase two", Duration::from_secs(5), || {
        server.get("/v1/avatar").status == 429
    });
    let restarted = control(server.addr, "POST", "/admin/scenario/restart", "", None);
    assert_eq!(restarted.status, 200);
    assert_eq!(json(&restarted)["phase"], "one");
    assert_eq!(server.get("/v1/avatar").status, 503);
    // A bad replacement names the phase and the key, and changes nothing.
    let bad = control(
        server.addr,
        "PUT",
        "/admin/scenario",
        "phases:\n- {name: x, duration: 1s, behaviour: \"delay=soon\"}\n",
        None,
    );
    assert_eq!(bad.status, 400);
    let error = json(&bad)["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("phase 1 (x): behaviour:"), "{error}");
    assert_eq!(json(&server.get("/admin/scenario"))["phase"], "one");
    let replaced = control(
        server.addr,
        "PUT",
        "/admin/scenario",
        "phases:\n- {name: teapot, duration: 30s, behaviour: status=418}\n",
        None,
    );
    assert_eq!(replaced.status, 200, "{}", replaced.body_text());
    assert_eq!(json(&replaced)["phase"], "teapot");
    assert_eq!(server.get("/v1/avatar").status, 418);
    // The control API's profile wins over the scenario while it is set.
    control(server.addr, "PUT", "/admin/behaviour", "status=502", None);
    assert_eq!(server.get("/v1/avatar").status, 502);
    control(server.addr, "DELETE", "/admin/behaviour", "", None);
    assert_eq!(server.get("/v1/avatar").status, 418);
    let stopped = control(server.addr, "DELETE", "/admin/scenario", "", None);
    assert_eq!(json(&stopped)["source"], "start");
    assert_eq!(server.get("/v1/avatar").status, 200);
    assert_eq!(server.get("/admin/scenario").status, 404);
}

#[test]
fn a_bad_scenario_file_is_refused_at_start_naming_file_phase_and_key() {
    let cases = [
        (
            "unknown-key",
            "phases:\n- {name: a, duration: 1s, behavior: \"\"}\n",
            "phase 1 (a): unknown key \"behavior\"",
        ),
        (
            "zero",
            "phases:\n- {name: a, duration: 0s, behaviour: \"\"}\n",
            "phase 1 (a): duration:",
        ),
        (
            "grammar",
            "phases:\n- {name: a, duration: 1s, behaviour: \"\"}\n- {name: b, duration: 1s, behaviour: \"status=abc\"}\n",
            "phase 2 (b): behaviour:",
        ),
        (
            "aligned-once",
            "start: aligned\nphases:\n- {name: a, duration: 1s, behaviour: \"\"}\n",
            "start: aligned needs loop: true",
        ),
    ];
    for (name, text, needle) in cases {
        let file = scenario_file(&format!("bad-{name}"), text);
        let path = path_str(&file);
        exits_2_naming(&["--scenario", path], &[], needle);
        exits_2_naming(&["--scenario", path], &[], path);
        exits_2_naming(&[], &[("M2_SCENARIO", path)], "M2_SCENARIO");
    }
    exits_2_naming(
        &["--scenario", "/nonexistent/scenario.yaml"],
        &[],
        "--scenario",
    );
    let dir = std::env::temp_dir();
    exits_2_naming(
        &["--scenario", path_str(&dir)],
        &[],
        "a directory, not a file",
    );
    exits_2_naming(
        &["gateway", "--upstream", "http://127.0.0.1:1/x"],
        &[(
            "M1_SCENARIO",
            path_str(&scenario_file(
                "gateway-count",
                "phases:\n- {name: a, duration: 1s, behaviour: count=2}\n",
            )),
        )],
        "M1_SCENARIO",
    );
}
