//! TLS on the calling side: the gateway's `https://` upstreams through each client (trust by
//! `--upstream-ca`, `--upstream-insecure`, mutual TLS, pooled and resumed connections, what a
//! server sends on an idle connection), every bad upstream TLS setting, and
//! `microservice2 healthcheck https://…`. The upstreams are small tokio-rustls servers written
//! here, with certificates made at test time ([`crate::certs`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::{Alg, Pair, Pki};
use crate::support::exits_2_naming;
use crate::support::{RawResponse, TestServer, binary, config, spawn, tcp_sockets, wait_until};

/// How long a test waits for a state.
const WAIT: Duration = Duration::from_secs(5);

/// The upstream's answer to every request.
const REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n[{\"x\":1}]";

crate::gateway::with_each_client!(
    an_https_upstream_is_called_over_pooled_tls_connections_verified_by_its_name,
    a_certificate_from_another_ca_is_a_502_connect_error,
    upstream_insecure_accepts_an_unknown_ca,
    a_client_certificate_is_presented_to_an_upstream_that_requires_one,
    http_and_https_upstreams_mix_in_a_fan_out,
    records_without_data_on_an_idle_connection_leave_it_pooled,
    a_close_notify_on_an_idle_connection_retires_it_unseen,
    new_connections_resume_the_workers_tls_sessions,
    an_upstream_that_stalls_the_handshake_is_let_go_at_the_timeout,
);

/// A server configuration for `pair`, requiring client certificates signed by `client_ca`
/// when given.
pub fn server_config(pair: &Pair, client_ca: Option<&Path>) -> Arc<ServerConfig> {
    let pem = |path: &Path, flag| microservice2::tls::PemFile::new(flag, path);
    let chain = pem(&pair.cert, "cert").certificates().expect("the chain");
    let key = pem(&pair.key, "key").private_key().expect("the key");
    let builder = ServerConfig::builder_with_provider(microservice2::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in pem(ca, "ca").certificates().expect("the CA") {
                roots.add(cert).expect("a usable CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                microservice2::tls::provider(),
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(chain, key)
            .expect("the certificate and its key"),
    )
}

/// What the upstream does after each answer, while the connection sits idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// A TLS 1.3 key update: a record with no data, as session tickets are.
    KeyUpdate,
    /// TLS's close_notify, the TCP connection left open.
    CloseNotify,
}

/// What an upstream saw: TLS connections accepted, of them resumed, the names clients asked
/// for (SNI), and records written after an answer.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    resumed: AtomicUsize,
    names: Mutex<Vec<Option<String>>>,
    after: AtomicUsize,
}

/// A keep-alive HTTPS upstream on port 0 answering [`REPLY`] to every request, on a thread
/// and runtime of its own.
fn tls_upstream(config: Arc<ServerConfig>, after: After) -> (SocketAddr, Arc<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    listener.set_nonblocking(true).expect("nonblocking");
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    std::thread::spawn(move || {
        let runtime = crate::support::client_runtime();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let connection = tls.get_ref().1;
                    seen.accepted.fetch_add(1, Ordering::SeqCst);
                    if connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        seen.resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let name = connection.server_name().map(str::to_owned);
                    seen.names.lock().expect("names").push(name);
                    answer_requests(&mut tls, after, &seen).await;
                });
            }
        });
    });
    (addr, seen)
}

/// An HTTPS upstream with an `alg` certificate from a fresh test CA (`name`), which it
/// requires client certificates from when `mutual`.
struct Upstream {
    pki: Pki,
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// `https://localhost:PORT/`.
    url: String,
}

fn upstream(name: &str, alg: Alg, mutual: bool, after: After) -> Upstream {
    let pki = Pki::new(name);
    let client_ca = mutual.then(|| pki.ca());
    let config = server_config(&pki.server("server", alg, 1), client_ca.as_deref());
    let (addr, seen) = tls_upstream(config, after);
    let url = format!("https://localhost:{}/", addr.port());
    Upstream {
        pki,
        addr,
        seen,
        url,
    }
}

/// Answers each request head on `tls` until the client closes it (or, after a close_notify,
/// holds the connection until then).
async fn answer_requests(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    after: After,
    seen: &Seen,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
        if request.len() > 64 * 1024 {
            return;
        }
        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            request.drain(..end + 4);
            if tls.write_all(REPLY).await.is_err() {
                return;
            }
            match after {
                After::Nothing => {}
                After::KeyUpdate => {
                    tls.get_mut()
                        .1
                        .refresh_traffic_keys()
                        .expect("a TLS 1.3 key update");
                }
                After::CloseNotify => tls.get_mut().1.send_close_notify(),
            }
            if tls.flush().await.is_err() {
                return;
            }
            seen.after.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A gateway on port 0 using `client`, one worker, in front of `upstreams`, with extra flags.
fn gateway(client: &str, upstreams: &[String], extra: &[&str]) -> TestServer {
    let mut args = vec!["gateway", "--client", client, "--workers", "1"];
    for url in upstreams {
        args.extend(["--upstream", url.as_str()]);
    }
    args.extend_from_slice(extra);
    spawn(config(&args))
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn json(response: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|err| panic!("{err}: {}", response.body_text()))
}

/// Whether everything `upstream` wrote has reached the gateway (its kernel acknowledged it).
fn delivered(upstream: SocketAddr) -> bool {
    tcp_sockets()
        .iter()
        .all(|socket| socket.local != upstream || socket.unacked == 0)
}

fn an_https_upstream_is_called_over_pooled_tls_connections_verified_by_its_name(client: &str) {
    let Upstream {
        pki, addr, seen, ..
    } = upstream("pooled", Alg::Ecdsa, false, After::Nothing);
    let ca = pki.ca();
    // By name (sent as SNI) and by IP address (verified against the certificate's IP
    // addresses; no SNI).
    let by_name = format!("https://localhost:{}/v1/avatar", addr.port());
    let by_ip = format!("https://{addr}/v1/avatar");
    for (url, name) in [(by_name, Some("localhost")), (by_ip, None)] {
        let before = seen.accepted.load(Ordering::SeqCst);
        let gateway = gateway(client, &[url], &["--upstream-ca", path(&ca)]);
        let mut caller = gateway.connect();
        for _ in 0..20 {
            caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
            let response = caller.read_response(false);
            assert_eq!(response.status, 200, "{}", response.body_text());
            assert_eq!(response.body_text(), "[{\"x\":1}]");
        }
        // One worker, one request at a time: one connection, reused 19 times.
        assert_eq!(seen.accepted.load(Ordering::SeqCst) - before, 1);
        let names = seen.names.lock().expect("names");
        assert_eq!(names.last().cloned().flatten().as_deref(), name);
    }
}

fn a_certificate_from_another_ca_is_a_502_connect_error(client: &str) {
    let other = Pki::new("wrong");
    let Upstream { seen, url, .. } = upstream("right", Alg::Ecdsa, false, After::Nothing);
    let gateway = gateway(
        client,
        std::slice::from_ref(&url),
        &["--upstream-ca", path(&other.ca())],
    );
    let response = gateway.get("/v1/user");
    assert_eq!(response.status, 502);
    let body = json(&response);
    assert_eq!(body["kind"], "connect", "{body}");
    assert_eq!(body["error"], "upstream connection failed");
    assert_eq!(body["upstream"], url.as_str());
    let cause = body["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("certificate"), "{cause}");
    assert_eq!(
        gateway.metric(
            "microservice2_upstream_errors_total",
            &[("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 0);
}

fn upstream_insecure_accepts_an_unknown_ca(client: &str) {
    let Upstream { url, .. } = upstream("unknown", Alg::Rsa, false, After::Nothing);
    let gateway = gateway(client, &[url], &["--upstream-insecure"]);
    assert_eq!(gateway.get("/v1/user").status, 200);
}

fn a_client_certificate_is_presented_to_an_upstream_that_requires_one(client: &str) {
    let Upstream { pki, seen, url, .. } = upstream("mutual", Alg::Ecdsa, true, After::Nothing);
    let ca = pki.ca();
    let identity = pki.client("gateway", 2);
    let with = gateway(
        client,
        std::slice::from_ref(&url),
        &[
            "--upstream-ca",
            path(&ca),
            "--upstream-client-cert",
            path(&identity.cert),
            "--upstream-client-key",
            path(&identity.key),
        ],
    );
    assert_eq!(with.get("/v1/user").status, 200);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    let without = gateway(client, &[url], &["--upstream-ca", path(&ca)]);
    let response = without.get("/v1/user");
    assert_eq!(response.status, 502, "{}", response.body_text());
    // TLS 1.3: the client's handshake is done before the server refuses it, so the refusal
    // arrives as the answer to the request; a connect error all the same.
    let body = json(&response);
    assert_eq!(body["kind"], "connect", "{body}");
    let cause = body["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("CertificateRequired"), "{body}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

fn http_and_https_upstreams_mix_in_a_fan_out(client: &str) {
    let Upstream { pki, url, .. } = upstream("fan-out", Alg::Ed25519, false, After::Nothing);
    let plain = spawn(config(&[]));
    let upstreams = [
        format!("{url}a"),
        format!("http://{}/v1/avatar?count=1", plain.addr),
    ];
    let gateway = gateway(client, &upstreams, &["--upstream-ca", path(&pki.ca())]);
    let response = gateway.get("/v1/user");
    assert_eq!(response.status, 200);
    let body = json(&response);
    assert_eq!(body["upstreams"][0]["status"], 200, "{body}");
    assert_eq!(body["upstreams"][0]["body"][0]["x"], 1, "{body}");
    assert_eq!(body["upstreams"][1]["status"], 200, "{body}");
    assert_eq!(body["upstreams"][1]["body"][0]["id"], "1", "{body}");
}

/// Three calls, each once what the upstream does after its answer has reached the gateway.
fn three_calls_with_the_upstream_doing(client: &str, after: After) -> usize {
    let Upstream {
        pki,
        addr,
        seen,
        url,
    } = upstream("idle", Alg::Ecdsa, false, after);
    let gateway = gateway(client, &[url], &["--upstream-ca", path(&pki.ca())]);
    let mut caller = gateway.connect();
    for call in 1..=3 {
        caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = caller.read_response(false);
        assert_eq!(response.status, 200, "{after:?}: {}", response.body_text());
        wait_until("the upstream's records reach the gateway", WAIT, || {
            seen.after.load(Ordering::SeqCst) >= call && delivered(addr)
        });
    }
    seen.accepted.load(Ordering::SeqCst)
}

fn records_without_data_on_an_idle_connection_leave_it_pooled(client: &str) {
    assert_eq!(
        three_calls_with_the_upstream_doing(client, After::KeyUpdate),
        1
    );
}

fn a_close_notify_on_an_idle_connection_retires_it_unseen(client: &str) {
    assert_eq!(
        three_calls_with_the_upstream_doing(client, After::CloseNotify),
        3
    );
}

fn new_connections_resume_the_workers_tls_sessions(client: &str) {
    let Upstream { pki, seen, url, .. } = upstream("resume", Alg::Ecdsa, false, After::Nothing);
    let gateway = gateway(
        client,
        &[url],
        &["--upstream-ca", path(&pki.ca()), "--pool-max-idle", "0"],
    );
    for _ in 0..4 {
        assert_eq!(gateway.get("/v1/user").status, 200);
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
    // The first handshake is full; the session tickets it left resume the others.
    assert_eq!(seen.resumed.load(Ordering::SeqCst), 3);
}

#[test]
fn every_bad_upstream_tls_setting_exits_2_naming_its_flag() {
    let pki = Pki::new("bad-upstream-tls");
    let identity = pki.client("gateway", 1);
    let other = pki.client("other", 2);
    let (cert, key, other_key) = (path(&identity.cert), path(&identity.key), path(&other.key));
    let missing = pki.dir().join("missing.pem");
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let (missing, garbage) = (path(&missing), path(&garbage));
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--upstream-ca", missing], vec![], "--upstream-ca"),
        (vec!["--upstream-ca", garbage], vec![], "--upstream-ca"),
        (vec![], vec![("M1_UPSTREAM_CA", garbage)], "M1_UPSTREAM_CA"),
        (
            vec!["--upstream-client-cert", cert],
            vec![],
            "--upstream-client-key",
        ),
        (
            vec!["--upstream-client-key", key],
            vec![],
            "--upstream-client-cert",
        ),
        (
            vec![],
            vec![("M1_UPSTREAM_CLIENT_CERT", cert)],
            "M1_UPSTREAM_CLIENT_KEY",
        ),
        // A key that is not the certificate's.
        (
            vec![
                "--upstream-client-cert",
                cert,
                "--upstream-client-key",
                other_key,
            ],
            vec![],
            "--upstream-client-key",
        ),
        (
            vec![
                "--upstream-client-cert",
                missing,
                "--upstream-client-key",
                key,
            ],
            vec![],
            "--upstream-client-cert",
        ),
        (
            vec![
                "--upstream-client-cert",
                cert,
                "--upstream-client-key",
                garbage,
            ],
            vec![],
            "--upstream-client-key",
        ),
        (
            vec![],
            vec![("M1_UPSTREAM_INSECURE", "yes")],
            "M1_UPSTREAM_INSECURE",
        ),
        (
            vec!["--upstream", "https://exa mple/"],
            vec![],
            "--upstream",
        ),
    ];
    for (args, env, needle) in cases {
        let mut all = vec!["gateway", "--port", "0", "--host", "127.0.0.1"];
        all.extend(args.iter().copied());
        exits_2_naming(&all, &env, needle);
    }
}

#[test]
fn upstream_insecure_is_warned_about_at_start() {
    let mut server = crate::support::ChildServer::gateway_with(
        &["--upstream", "https://127.0.0.1:1/", "--upstream-insecure"],
        std::process::Stdio::piped(),
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
    let logs = server.logs();
    assert!(
        logs.contains("WARN") && logs.contains("not verified"),
        "{logs}"
    );
}

/// `microservice2 healthcheck` with `args`: its exit status and stderr.
fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = binary(&["healthcheck"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run healthcheck");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_checks_https_urls_against_its_ca_or_none() {
    let Upstream { pki, addr, .. } = upstream("healthcheck", Alg::Ecdsa, false, After::Nothing);
    let url = format!("https://{addr}/healthz");
    let ca = pki.ca();
    assert_eq!(healthcheck(&[&url, "--ca", path(&ca)], &[]).0, Some(0));
    assert_eq!(healthcheck(&["--ca", path(&ca), &url], &[]).0, Some(0));
    assert_eq!(
        healthcheck(&[&url], &[("M2_HEALTHCHECK_CA", path(&ca))]).0,
        Some(0)
    );
    let (code, stderr) = healthcheck(&[&url], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(stderr.contains("--ca"), "{stderr}");
    assert_eq!(healthcheck(&["--insecure", &url], &[]).0, Some(0));
    assert_eq!(
        healthcheck(&[&url], &[("M2_HEALTHCHECK_INSECURE", "true")]).0,
        Some(0)
    );
    // Without a URL, M2_TLS_CERT makes it https://127.0.0.1:$M2_PORT/healthz.
    let port = addr.port().to_string();
    let cert = pki.dir().join("server.pem");
    let env = [("M2_PORT", port.as_str()), ("M2_TLS_CERT", path(&cert))];
    assert_eq!(healthcheck(&["--ca", path(&ca)], &env).0, Some(0));
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = pki.dir().join("missing.pem");
    for (args, needle) in [
        (vec![&url, "--ca", path(&missing)], "--ca"),
        (vec![&url, "--ca", path(&garbage)], "--ca"),
        (vec![&url, "--colour"], "--colour"),
    ] {
        let (code, stderr) = healthcheck(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

fn an_upstream_that_stalls_the_handshake_is_let_go_at_the_timeout(client: &str) {
    // Takes TCP connections and never answers the ClientHello.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let url = format!("https://{addr}/v1/avatar");
    let gateway = gateway(
        client,
        &[url],
        &["--upstream-insecure", "--timeout", "300ms"],
    );
    let mut caller = gateway.connect();
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = caller.read_response(false);
    assert_eq!(response.status, 504, "{}", response.body_text());
    // The gateway lets the half-made connection go: the upstream sees its end.
    let (mut held, _) = listener.accept().expect("the gateway's connection");
    held.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut hello = vec![0u8; 64 * 1024];
    let mut ended = false;
    while let Ok(n) = std::io::Read::read(&mut held, &mut hello) {
        if n == 0 {
            ended = true;
            break;
        }
    }
    assert!(
        ended,
        "the gateway kept a connection whose handshake never finished"
    );
}
