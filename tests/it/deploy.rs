//! The deployment files against the binary: every Kubernetes Deployment (the base ones and the
//! benchmark variants) and every Compose service is started the way its file starts it, and
//! every probe, health check and scrape it names answers there; the ServiceMonitor, the
//! dashboard ConfigMap, the Compose monitoring profile's Prometheus and Grafana files all point
//! at what the manifests define.

use serde::Deserialize as _;
use serde_norway::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use crate::support::{ChildServer, Client, binary};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml_documents(relative: &str) -> Vec<Value> {
    let path = Path::new(ROOT).join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{relative}: {err}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|err| panic!("{relative}: {err}"))
        })
        .collect()
}

/// Every document of every `*.yaml` file directly in `dir`.
fn manifests(dir: &str) -> Vec<Value> {
    let mut files: Vec<String> = std::fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap_or_else(|err| panic!("{dir}: {err}"))
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {dir}");
    files
        .iter()
        .flat_map(|file| yaml_documents(&format!("{dir}/{file}")))
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| items.iter().map(text).collect())
        .unwrap_or_default()
}

fn number(value: &Value) -> u64 {
    text(value)
        .parse()
        .unwrap_or_else(|_| panic!("{value:?} is not a whole number"))
}

/// A string-to-string mapping (labels, Compose's environment).
fn map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|pairs| pairs.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// Whole seconds from a duration setting such as `5s`.
fn seconds(setting: &str) -> u64 {
    setting
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{setting} is not whole seconds"))
}

/// How the deployment files start the binary: its arguments and environment.
struct Started {
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl Started {
    fn gateway(&self) -> bool {
        self.args.first().is_some_and(|arg| arg == "gateway")
    }

    /// A setting of the process itself: `M1_NAME` in gateway mode, else `M2_NAME`.
    fn own(&self, name: &str) -> &str {
        let prefix = if self.gateway() { "M1" } else { "M2" };
        let variable = format!("{prefix}_{name}");
        self.env
            .get(&variable)
            .unwrap_or_else(|| panic!("{variable} is not set"))
    }

    fn port(&self, name: &str) -> u16 {
        self.own(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a port"))
    }

    /// Every setting is an environment variable: the only argument is the mode.
    fn assert_settings_are_variables(&self, what: &str) {
        assert!(
            self.args.is_empty() || self.args == ["gateway"],
            "{what}: settings as arguments {:?}; use the environment",
            self.args
        );
    }

    /// Starts the binary as the container would, but on 127.0.0.1 with port 0 for both
    /// listeners (the flags win over the environment). Returns it with its admin address.
    fn start(&self) -> (ChildServer, SocketAddr) {
        let mut full: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let at = usize::from(self.gateway());
        let local = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--workers",
            "1",
        ];
        for (offset, flag) in local.into_iter().enumerate() {
            full.insert(at + offset, flag);
        }
        let mut command = binary(&full);
        command.envs(&self.env);
        let mut server = ChildServer::start_command(command, Stdio::piped());
        let stderr = server.child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr);
        let admin = loop {
            let mut line = String::new();
            let read = lines.read_line(&mut line).expect("read the start-up log");
            assert!(read > 0, "no start-up line on stderr");
            if let Some((_, rest)) = line.split_once(" admin=Some(") {
                let address = rest.split(')').next().expect("split yields one part");
                break address.parse().expect("the admin address");
            }
        };
        // The rest of the log (shutdown lines) must not fill the pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        (server, admin)
    }
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut client = Client::connect(addr);
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    client.read_response(false).status
}

/// Probes and the scrape answer on the admin port and only there: the port under load never
/// carries them.
fn assert_admin_port_serves(what: &str, server: SocketAddr, admin: SocketAddr, paths: &[String]) {
    for path in paths {
        assert_eq!(get(admin, path), 200, "{what}: {path} on the admin port");
        assert_eq!(get(server, path), 404, "{what}: {path} on the main port");
    }
}

fn kind(document: &Value) -> String {
    text(&document["kind"])
}

fn named<'a>(documents: &'a [Value], wanted: &str, name: &str) -> Option<&'a Value> {
    documents
        .iter()
        .find(|doc| kind(doc) == wanted && text(&doc["metadata"]["name"]) == name)
}

/// Does `selector` (a `matchLabels` mapping) select something labelled `labels`?
fn selects(selector: &Value, labels: &Value) -> bool {
    let labels = map(labels);
    let wanted = map(selector);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One Deployment of `documents` against the rest of them and the binary.
fn check_deployment(dir: &str, documents: &[Value], deployment: &Value) {
    let name = text(&deployment["metadata"]["name"]);
    let what = format!("{dir}: {name}");
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let container = &containers[0];
    let started = Started {
        args: strings(&container["args"]),
        env: container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|pair| (text(&pair["name"]), text(&pair["value"])))
            .collect(),
    };
    started.assert_settings_are_variables(&what);
    let ports: BTreeMap<String, u16> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|port| (text(&port["name"]), number(&port["containerPort"]) as u16))
        .collect();
    assert_eq!(ports["http"], started.port("PORT"), "{what}: http");
    assert_eq!(ports["admin"], started.port("ADMIN_PORT"), "{what}: admin");

    // Probes on the admin port; readiness tolerates one slow answer on a saturated pod.
    let readiness = &container["readinessProbe"];
    let liveness = &container["livenessProbe"];
    for (probe, values) in [(readiness, [5, 2, 3]), (liveness, [10, 2, 3])] {
        assert_eq!(text(&probe["httpGet"]["port"]), "admin", "{what}");
        let timing = ["periodSeconds", "timeoutSeconds", "failureThreshold"]
            .map(|field| number(&probe[field]));
        assert_eq!(timing, values, "{what}: probe timing");
    }
    let annotations = map(&template["metadata"]["annotations"]);
    assert_eq!(
        annotations["prometheus.io/port"],
        ports["admin"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let grace = number(&pod["terminationGracePeriodSeconds"]);
    let drain = seconds(started.own("SHUTDOWN_DELAY")) + seconds(started.own("SHUTDOWN_TIMEOUT"));
    assert!(grace > drain, "{what}: grace {grace}s <= {drain}s");

    // Its Service: both ports by name, each with its application protocol.
    let service = named(documents, "Service", &name).unwrap_or_else(|| panic!("{what}: Service"));
    assert!(selects(
        &service["spec"]["selector"],
        &template["metadata"]["labels"]
    ));
    let service_ports = service["spec"]["ports"].as_sequence().expect("ports");
    for port in service_ports {
        assert!(ports.contains_key(&text(&port["targetPort"])), "{what}");
        assert_eq!(text(&port["appProtocol"]), "http", "{what}: appProtocol");
    }
    assert_eq!(service_ports.len(), 2, "{what}: http and admin");
    // A gateway's upstream is microservice2's Service, on its http port.
    if started.gateway() {
        let host = started.env["M2_DOMAIN"].trim_start_matches("http://");
        let upstream = named(documents, "Service", host).expect("M2_DOMAIN names a Service");
        let http = &upstream["spec"]["ports"][0];
        assert_eq!(text(&http["name"]), "http");
        assert_eq!(text(&http["port"]), started.env["M2_PORT"]);
    }
    let disruption = named(documents, "PodDisruptionBudget", &name)
        .unwrap_or_else(|| panic!("{what}: PodDisruptionBudget"));
    assert!(selects(
        &disruption["spec"]["selector"]["matchLabels"],
        &template["metadata"]["labels"]
    ));

    let (server, admin) = started.start();
    let mut paths: Vec<String> = [readiness, liveness]
        .iter()
        .map(|probe| text(&probe["httpGet"]["path"]))
        .collect();
    paths.push(annotations["prometheus.io/path"].clone());
    assert_admin_port_serves(&what, server.addr, admin, &paths);
    if !started.gateway() {
        assert_eq!(get(server.addr, started.own("PATH")), 200, "{what}");
    }
}

#[test]
fn every_kubernetes_deployment_serves_its_probes_and_scrape_on_the_admin_port() {
    let base = manifests("deploy/kubernetes");
    let benchmark = manifests("deploy/kubernetes/benchmark");
    for (dir, documents) in [
        ("deploy/kubernetes", &base),
        ("deploy/kubernetes/benchmark", &benchmark),
    ] {
        let deployments: Vec<&Value> = documents
            .iter()
            .filter(|doc| kind(doc) == "Deployment")
            .collect();
        let names: Vec<String> = deployments
            .iter()
            .map(|doc| text(&doc["metadata"]["name"]))
            .collect();
        assert_eq!(names, ["microservice1", "microservice2"], "{dir}");
        for deployment in deployments {
            check_deployment(dir, documents, deployment);
        }
    }
    // The base Deployments scale on CPU; the benchmark's keep the replicas they are given.
    for name in ["microservice1", "microservice2"] {
        let autoscaler = named(&base, "HorizontalPodAutoscaler", name).expect("an autoscaler");
        assert_eq!(text(&autoscaler["spec"]["scaleTargetRef"]["name"]), name);
        assert!(named(&benchmark, "HorizontalPodAutoscaler", name).is_none());
    }
}

#[test]
fn the_benchmark_pods_are_guaranteed_whole_cpus() {
    for deployment in manifests("deploy/kubernetes/benchmark")
        .iter()
        .filter(|doc| kind(doc) == "Deployment")
    {
        let pod = &deployment["spec"]["template"]["spec"];
        assert!(pod["initContainers"].is_null());
        for container in pod["containers"].as_sequence().expect("containers") {
            let resources = &container["resources"];
            let requests = map(&resources["requests"]);
            let limits = map(&resources["limits"]);
            // Guaranteed QoS: requests equal limits for both CPU and memory.
            assert_eq!(requests, limits);
            assert!(requests.contains_key("memory"));
            let cpus: u32 = requests["cpu"].parse().expect("whole CPUs, not millicores");
            assert!(cpus >= 1);
        }
    }
}

#[test]
fn the_service_monitor_scrapes_both_services_admin_ports_and_the_config_map_is_the_dashboard() {
    let services: Vec<Value> = manifests("deploy/kubernetes")
        .into_iter()
        .filter(|doc| kind(doc) == "Service")
        .collect();
    assert_eq!(services.len(), 2);
    let monitoring = manifests("deploy/kubernetes/monitoring");
    let monitor = monitoring
        .iter()
        .find(|doc| kind(doc) == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let spec = &monitor["spec"];
    let endpoint = &spec["endpoints"][0];
    assert_eq!(text(&endpoint["path"]), "/metrics");
    // The dashboard's rates need a scrape at least every 15 s.
    assert!(seconds(&text(&endpoint["interval"])) <= 15);
    for service in &services {
        let metadata = &service["metadata"];
        assert!(
            selects(&spec["selector"]["matchLabels"], &metadata["labels"]),
            "{:?} not selected",
            metadata["name"]
        );
        assert!(!metadata["labels"][text(&spec["jobLabel"]).as_str()].is_null());
        let port = service["spec"]["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|port| text(&port["name"]) == text(&endpoint["port"]))
            .expect("the scraped port");
        assert_eq!(text(&port["targetPort"]), "admin");
    }

    let config_map = monitoring
        .iter()
        .find(|doc| kind(doc) == "ConfigMap")
        .expect("the dashboard's ConfigMap");
    assert_eq!(
        text(&config_map["metadata"]["labels"]["grafana_dashboard"]),
        "1"
    );
    let dashboard =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/microservice2.json"))
            .expect("the dashboard");
    assert!(
        text(&config_map["data"]["microservice2.json"]) == dashboard,
        "the ConfigMap is not the dashboard: run deploy/kubernetes/monitoring/dashboard-configmap"
    );
}

#[test]
fn compose_services_answer_their_healthchecks_and_the_scrape_on_the_admin_port() {
    let compose = yaml_documents("docker-compose.yaml").remove(0);
    let services = compose["services"].as_mapping().expect("services");
    let mut chain = Vec::new();
    for (name, service) in services {
        let name = text(name);
        if !service["profiles"].is_null() {
            assert_eq!(strings(&service["profiles"]), ["monitoring"], "{name}");
            continue;
        }
        chain.push(name.clone());
        let started = Started {
            args: strings(&service["command"]),
            env: map(&service["environment"]),
        };
        started.assert_settings_are_variables(&name);
        let port = started.port("PORT");
        let admin_port = started.port("ADMIN_PORT");
        assert_eq!(
            strings(&service["ports"]),
            [format!("{port}:{port}")],
            "{name}"
        );
        // Limited CPUs, so a load generator on the same host keeps its own.
        let cpus: f64 = text(&service["cpus"]).parse().expect("cpus");
        assert!(cpus > 0.0, "{name}: cpus");
        let test = strings(&service["healthcheck"]["test"]);
        assert_eq!(
            test[..3],
            ["CMD", "/microservice2", "healthcheck"],
            "{name}"
        );
        let url = &test[3];
        assert_eq!(url, &format!("http://127.0.0.1:{admin_port}/healthz"));

        // Started the way Compose starts it, the healthcheck command passes against it.
        let (server, admin) = started.start();
        let local = url.replace(&format!(":{admin_port}/"), &format!(":{}/", admin.port()));
        let status = binary(&["healthcheck", &local])
            .status()
            .expect("run healthcheck");
        assert!(status.success(), "{name}: {local}");
        let paths = ["/healthz".to_owned(), "/metrics".to_owned()];
        assert_admin_port_serves(&name, server.addr, admin, &paths);
    }
    assert_eq!(chain, ["m2", "m1"]);
    // m1 calls m2 by its service name, on m2's port and path.
    let m1 = &compose["services"]["m1"]["environment"];
    let m2 = &compose["services"]["m2"]["environment"];
    assert_eq!(text(&m1["M2_DOMAIN"]), "http://m2");
    assert_eq!(text(&m1["M2_PORT"]), text(&m2["M2_PORT"]));
    assert_eq!(text(&m1["M2_PATH"]), text(&m2["M2_PATH"]));
}

/// A bind mount `./SOURCE:TARGET[:ro]` of a Compose service, as (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .map(|volume| {
            let parts: Vec<&str> = volume.split(':').collect();
            let source = parts[0]
                .strip_prefix("./")
                .expect("a path in the repository");
            assert!(Path::new(ROOT).join(source).exists(), "{source} is missing");
            (source.to_owned(), parts[1].to_owned())
        })
        .collect()
}

#[test]
fn the_compose_monitoring_profile_scrapes_both_admin_ports_and_provisions_the_dashboard() {
    let compose = yaml_documents("docker-compose.yaml").remove(0);
    let services = &compose["services"];

    // Prometheus: its configuration file is the one mounted, scraping m1 and m2's admin ports.
    let prometheus = &services["prometheus"];
    let mounted = mounts(prometheus);
    let command = strings(&prometheus["command"]);
    let config_at = command
        .iter()
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .expect("--config.file");
    let (config_file, _) = mounted
        .iter()
        .find(|(_, target)| target == config_at)
        .expect("the configuration is mounted");
    let config = yaml_documents(config_file).remove(0);
    let mut targets: Vec<String> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| strings(&job["static_configs"][0]["targets"]))
        .collect();
    targets.sort();
    let admin = |name: &str, prefix: &str| {
        let port = text(&services[name]["environment"][format!("{prefix}_ADMIN_PORT").as_str()]);
        format!("{name}:{port}")
    };
    assert_eq!(targets, [admin("m1", "M1"), admin("m2", "M2")]);
    let published = strings(&prometheus["ports"]);
    let prometheus_port = published[0].split(':').nth(1).expect("host:container");

    // Grafana: the data source is that Prometheus; the dashboards provider reads the directory
    // the dashboard is mounted in.
    let grafana = &services["grafana"];
    let mounted = mounts(grafana);
    let provisioning = mounted
        .iter()
        .find(|(_, target)| target == "/etc/grafana/provisioning")
        .map(|(source, _)| source.clone())
        .expect("the provisioning directory is mounted");
    let sources = yaml_documents(&format!("{provisioning}/datasources/prometheus.yaml")).remove(0);
    let source = &sources["datasources"][0];
    assert_eq!(text(&source["type"]), "prometheus");
    assert_eq!(
        text(&source["url"]),
        format!("http://prometheus:{prometheus_port}")
    );
    let providers =
        yaml_documents(&format!("{provisioning}/dashboards/microservice2.yaml")).remove(0);
    let directory = text(&providers["providers"][0]["options"]["path"]);
    let (_, dashboard_at) = mounted
        .iter()
        .find(|(source, _)| source == "deploy/grafana/microservice2.json")
        .expect("the dashboard is mounted");
    assert_eq!(
        Path::new(dashboard_at).parent(),
        Some(Path::new(&directory))
    );
    let home = text(&grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]);
    assert_eq!(&home, dashboard_at);
}
