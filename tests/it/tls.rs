//! TLS serving: HTTPS and HTTP/2 over TLS with real clients (curl, openssl s_client, hyper's
//! client), the fast path and every route over TLS, mutual TLS, certificate reload, and every
//! bad TLS setting. Certificates are made at test time ([`crate::certs`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::certs::{Alg, Pair, Pki};
use crate::support::{
    ChildServer, Client, client_runtime, connect_tcp, exits_2_naming, masked_response, scrape_on,
    wait_until,
};

#[test]
fn every_bad_tls_setting_exits_2_naming_its_flag() {
    let pki = Pki::new("bad-settings");
    let good = pki.server("server", Alg::Ecdsa, 1);
    let other = pki.server("other", Alg::Ecdsa, 2);
    let (cert, key) = (
        good.cert.to_str().expect("utf-8"),
        good.key.to_str().expect("utf-8"),
    );
    let other_key = other.key.to_str().expect("utf-8");
    let missing = pki.dir().join("missing.pem");
    let missing = missing.to_str().expect("utf-8");
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let garbage = garbage.to_str().expect("utf-8");
    let ca = pki.ca();
    let ca = ca.to_str().expect("utf-8");
    let port = ["--port", "0", "--host", "127.0.0.1"];
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--tls-cert", cert], vec![], "--tls-key"),
        (vec!["--tls-key", key], vec![], "--tls-cert"),
        (vec![], vec![("M2_TLS_CERT", cert)], "M2_TLS_KEY"),
        (
            vec!["--tls-cert", missing, "--tls-key", key],
            vec![],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", missing],
            vec![],
            "--tls-key",
        ),
        (
            vec!["--tls-cert", garbage, "--tls-key", key],
            vec![],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", garbage],
            vec![],
            "--tls-key",
        ),
        // A key that is not the certificate's.
        (
            vec!["--tls-cert", cert, "--tls-key", other_key],
            vec![],
            "--tls-key",
        ),
        (
            vec!["--tls-cert", cert],
            vec![("M2_TLS_KEY", other_key)],
            "M2_TLS_KEY",
        ),
        // The certificate and key swapped.
        (
            vec!["--tls-cert", key, "--tls-key", cert],
            vec![],
            "--tls-cert",
        ),
        (vec!["--tls-client-ca", ca], vec![], "--tls-client-ca"),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-ca",
                garbage,
            ],
            vec![],
            "--tls-client-ca",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-ca",
                missing,
            ],
            vec![],
            "--tls-client-ca",
        ),
        (vec!["--tls-alpn", "h3"], vec![], "--tls-alpn"),
        (vec!["--tls-alpn", "h2"], vec![], "--tls-alpn"),
        (vec![], vec![("M2_TLS_ALPN", "http/1.1")], "M2_TLS_ALPN"),
        (vec!["--tls-alpn", "h2,h2"], vec![], "--tls-alpn"),
        (vec![], vec![("M2_TLS_ALPN", "spdy")], "M2_TLS_ALPN"),
        // Gateway mode: its own TLS reads M1_*.
        (vec!["gateway", "--tls-cert", cert], vec![], "--tls-key"),
        (
            vec!["gateway"],
            vec![("M1_TLS_CERT", cert), ("M1_TLS_KEY", other_key)],
            "M1_TLS_KEY",
        ),
    ];
    for (args, env, needle) in cases {
        let mut all = args.clone();
        all.extend(port);
        exits_2_naming(&all, &env, needle);
    }
}

#[test]
fn rsa_ecdsa_and_ed25519_keys_load() {
    let pki = Pki::new("key-types");
    for (index, alg) in [Alg::Ecdsa, Alg::Rsa, Alg::Ed25519].into_iter().enumerate() {
        let pair = pki.server(&format!("{alg:?}"), alg, index as u64 + 1);
        let config = crate::support::config(&[
            "--tls-cert",
            pair.cert.to_str().expect("utf-8"),
            "--tls-key",
            pair.key.to_str().expect("utf-8"),
        ]);
        assert!(config.tls.is_some(), "{alg:?}");
    }
}

/// A client configuration trusting `pki`'s CA, presenting `identity` when given, offering
/// `alpn`; sessions are resumed from an in-memory store (rustls's default).
fn client_config(pki: &Pki, identity: Option<&Pair>, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca()).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(chain(&pair.cert), key(&pair.key))
            .expect("a client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("read the chain")
        .collect::<Result<_, _>>()
        .expect("certificates")
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("read the key")
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS session to `addr` (verified as `localhost`), its handshake done, or why not.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let name = ServerName::try_from("localhost").expect("a name");
    let connection =
        ClientConnection::new(Arc::clone(config), name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(connection, connect_tcp(addr));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A client on a fresh TLS session to `server`.
fn https(addr: SocketAddr, config: &Arc<ClientConfig>) -> Client<Tls> {
    Client::over(tls_connect(addr, config).expect("a TLS session"))
}

/// A serve-mode child on TLS with `pair`, and `extra` flags.
fn tls_server(pair: &Pair, extra: &[&str]) -> ChildServer {
    let mut args = vec![
        "--tls-cert",
        pair.cert.to_str().expect("utf-8"),
        "--tls-key",
        pair.key.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    ChildServer::start_capturing_logs(&args)
}

/// A metric of a TLS server, scraped over TLS.
fn tls_metric(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    scrape_on(&mut https(addr, config), name, labels)
}

const GET: &[u8] = b"GET /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n";
const HEAD: &[u8] = b"HEAD /v1/avatar HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn https_answers_what_cleartext_answers_on_the_fast_path_and_through_hyper() {
    let pki = Pki::new("same-bytes");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let config = client_config(&pki, None, &["http/1.1"]);
    let cleartext = ChildServer::start(&[]);
    let tls = tls_server(&pair, &[]);
    let tls_hyper = tls_server(&pair, &["--no-fast-path"]);
    // One request, HEAD, five pipelined in one write, and one the fast path hands to hyper.
    let mut pipelined = Vec::new();
    for _ in 0..5 {
        pipelined.extend_from_slice(GET);
    }
    let exchanges: [(&[u8], usize, bool); 4] = [
        (GET, 1, false),
        (HEAD, 1, true),
        (&pipelined, 5, false),
        (b"GET /nope HTTP/1.1\r\nHost: test\r\n\r\n", 1, false),
    ];
    let mut plain = Client::connect(cleartext.addr);
    let mut fast = https(tls.addr, &config);
    let mut hyper = https(tls_hyper.addr, &config);
    for (request, count, head) in exchanges {
        plain.send(request);
        fast.send(request);
        hyper.send(request);
        for _ in 0..count {
            let expected = masked_response(&plain.read_response(head));
            assert_eq!(masked_response(&fast.read_response(head)), expected);
            assert_eq!(masked_response(&hyper.read_response(head)), expected);
        }
    }
    assert_eq!(
        tls_metric(
            tls.addr,
            &config,
            "microservice2_requests_total",
            &[("route", "avatar")]
        ),
        7.0
    );
}

#[test]
fn curl_gets_the_avatars_over_https_and_http2_without_the_http2_flag() {
    let pki = Pki::new("curl");
    let pair = pki.server("server", Alg::Rsa, 1);
    let server = tls_server(&pair, &[]);
    let url = format!("https://127.0.0.1:{}/v1/avatar", server.addr.port());
    let ca = pki.ca();
    for (version, expected) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let output = Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().expect("utf-8"), version])
            .args(["-w", "\n%{http_version} %{http_code}", &url])
            .output()
            .expect("run curl (installed by .ci/run when missing)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (body, line) = stdout.rsplit_once('\n').expect("a -w line");
        assert_eq!(line, format!("{expected} 200"));
        assert_eq!(body.len(), 3696);
        assert!(body.starts_with("[{ \"createdAt\": \""), "{body}");
    }
    // curl trusts only the CA it is given: without it, no session.
    let output = Command::new("curl")
        .args(["-sS", &url])
        .env("CURL_CA_BUNDLE", pki.dir().join("none.pem"))
        .output()
        .expect("run curl");
    assert!(!output.status.success());
}

/// What `openssl s_client` says of a session with `addr` offering `alpn`: its output.
fn s_client(addr: SocketAddr, ca: &Path, alpn: &str) -> String {
    s_client_with(addr, ca, &["-alpn", alpn])
}

/// What `openssl s_client` with `extra` flags says of a session with `addr`: its output.
fn s_client_with(addr: SocketAddr, ca: &Path, extra: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(extra)
        .arg("-showcerts")
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (installed by .ci/run when missing)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The serial number of the certificate the server at `addr` presents, as openssl prints it
/// (`serial=02`).
fn served_serial(addr: SocketAddr, ca: &Path) -> String {
    let session = s_client(addr, ca, "http/1.1");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(session.as_bytes())
        .expect("write the session");
    let output = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn alpn_offers_h2_then_http1_and_follows_tls_alpn() {
    let pki = Pki::new("alpn");
    let pair = pki.server("server", Alg::Ed25519, 7);
    let default = tls_server(&pair, &[]);
    let ca = pki.ca();
    let h2 = s_client(default.addr, &ca, "h2,http/1.1");
    assert!(h2.contains("ALPN protocol: h2"), "{h2}");
    assert!(h2.contains("Verify return code: 0 (ok)"), "{h2}");
    let http1 = s_client(default.addr, &ca, "http/1.1");
    assert!(http1.contains("ALPN protocol: http/1.1"), "{http1}");
    assert_eq!(served_serial(default.addr, &ca), "serial=07");
    // TLS 1.2 as well as 1.3.
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let session = s_client_with(default.addr, &ca, &[flag]);
        assert!(
            session.contains(&format!("Protocol  : {version}"))
                || session.contains(&format!("New, {version}")),
            "{session}"
        );
        assert!(session.contains("Verify return code: 0 (ok)"), "{session}");
    }
    let only_http1 = tls_server(&pair, &["--tls-alpn", "http/1.1"]);
    let chosen = s_client(only_http1.addr, &ca, "h2,http/1.1");
    assert!(chosen.contains("ALPN protocol: http/1.1"), "{chosen}");
}

#[test]
fn hyper_speaks_http2_over_tls() {
    let pki = Pki::new("hyper-h2");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &[]);
    let config = client_config(&pki, None, &["h2"]);
    client_runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("a name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("a TLS session");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .expect("an HTTP/2 connection");
        tokio::spawn(connection);
        for _ in 0..3 {
            let request = hyper::Request::get("https://localhost/v1/avatar")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("a request");
            let response = sender.send_request(request).await.expect("an answer");
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("the body")
                .to_bytes();
            assert_eq!(body.len(), 3696);
        }
    });
}

#[test]
fn a_cleartext_request_on_the_tls_port_gets_nothing_but_a_close_and_is_counted() {
    let pki = Pki::new("cleartext");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &[]);
    let config = client_config(&pki, None, &[]);
    let mut plain = connect_tcp(server.addr);
    plain.write_all(GET).expect("write");
    let mut got = Vec::new();
    // A reset (the request was never read) or an end: either way, not one byte.
    let _ = plain.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let failed = [("result", "failed")];
    wait_until(
        "the failed handshake is counted",
        Duration::from_secs(5),
        || {
            tls_metric(
                server.addr,
                &config,
                "microservice2_tls_handshakes_total",
                &failed,
            ) == 1.0
        },
    );
    let closed = [("reason", "tls_handshake")];
    assert_eq!(
        tls_metric(
            server.addr,
            &config,
            "microservice2_connections_closed_total",
            &closed
        ),
        1.0
    );
    // The scrapes themselves made sessions (the first full, the others resumed), each timed.
    let made = |result| {
        tls_metric(
            server.addr,
            &config,
            "microservice2_tls_handshakes_total",
            &[("result", result)],
        )
    };
    let (ok, resumed) = (made("ok"), made("resumed"));
    let timed = tls_metric(
        server.addr,
        &config,
        "microservice2_tls_handshake_duration_seconds_count",
        &[],
    );
    assert!(ok >= 1.0 && resumed >= 1.0, "{ok} {resumed}");
    assert!(timed >= ok + resumed, "{ok} {resumed} {timed}");
}

#[test]
fn sessions_resume_from_tickets() {
    let pki = Pki::new("resume");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &[]);
    let config = client_config(&pki, None, &["http/1.1"]);
    let mut first = https(server.addr, &config);
    first.send(GET);
    assert_eq!(first.read_response(false).status, 200);
    let mut second = https(server.addr, &config);
    assert_eq!(
        second.stream().conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    second.send(GET);
    assert_eq!(second.read_response(false).status, 200);
    let resumed = [("result", "resumed")];
    assert!(
        tls_metric(
            server.addr,
            &config,
            "microservice2_tls_handshakes_total",
            &resumed
        ) >= 1.0
    );
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::new("mtls");
    let other = Pki::new("mtls-other");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let ca = pki.ca();
    let server = tls_server(&pair, &["--tls-client-ca", ca.to_str().expect("utf-8")]);
    let client = pki.client("client", 10);
    let stranger = other.client("stranger", 11);
    let with = client_config(&pki, Some(&client), &["http/1.1"]);
    let mut admitted = https(server.addr, &with);
    admitted.send(GET);
    assert_eq!(admitted.read_response(false).status, 200);
    // Without a certificate, or with one from another CA: the handshake fails (in TLS 1.3 the
    // client learns it at its first read).
    for identity in [None, Some(&stranger)] {
        let config = client_config(&pki, identity, &["http/1.1"]);
        let refused = tls_connect(server.addr, &config).and_then(|mut tls| {
            tls.write_all(GET)?;
            let mut byte = [0u8; 1];
            tls.read(&mut byte)
        });
        assert!(
            refused.is_err(),
            "{:?}: {refused:?}",
            identity.map(|p| &p.cert)
        );
    }
    // curl, with and without --cert.
    let url = format!("https://127.0.0.1:{}/v1/avatar", server.addr.port());
    let curl = |cert: Option<&Pair>| {
        let mut command = Command::new("curl");
        command.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"]);
        command.arg(&ca);
        if let Some(pair) = cert {
            command
                .arg("--cert")
                .arg(&pair.cert)
                .arg("--key")
                .arg(&pair.key);
        }
        command.arg(&url).output().expect("run curl")
    };
    let output = curl(Some(&client));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    assert!(!curl(None).status.success());
    let failed = [("result", "failed")];
    wait_until(
        "the refused handshakes are counted",
        Duration::from_secs(5),
        || {
            tls_metric(
                server.addr,
                &with,
                "microservice2_tls_handshakes_total",
                &failed,
            ) >= 3.0
        },
    );
}

/// Replaces the files of `target` with those of `source` the way a Secret update does: each
/// written aside, then renamed over the old one.
fn replace_pair(target: &Pair, source: &Pair) {
    for (from, to) in [(&source.cert, &target.cert), (&source.key, &target.key)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copy");
        std::fs::rename(&aside, to).expect("rename");
    }
}

/// The DER of the certificate a new session to `addr` is shown.
fn served_certificate(addr: SocketAddr, config: &Arc<ClientConfig>) -> Vec<u8> {
    let tls = tls_connect(addr, config).expect("a TLS session");
    tls.conn.peer_certificates().expect("the server's chain")[0].to_vec()
}

#[test]
fn sighup_and_changed_files_reload_the_certificate_for_new_connections_only() {
    let pki = Pki::new("reload");
    let live = pki.server("live", Alg::Ecdsa, 1);
    let second = pki.server("second", Alg::Rsa, 2);
    let mismatched = pki.server("mismatched", Alg::Ecdsa, 3);
    let fourth = pki.server("fourth", Alg::Ed25519, 4);
    let mut server = tls_server(&live, &[]);
    let logs = server.tail_logs();
    let ca = pki.ca();
    let config = client_config(&pki, None, &["http/1.1"]);
    assert_eq!(served_serial(server.addr, &ca), "serial=01");
    let mut old = https(server.addr, &config);
    old.send(GET);
    assert_eq!(old.read_response(false).status, 200);
    let first_der = chain(&live.cert)[0].to_vec();

    // New files and SIGHUP: new connections see serial 2, the open one carries on.
    replace_pair(&live, &second);
    server.signal("HUP");
    wait_until(
        "the new certificate is served",
        Duration::from_secs(10),
        || served_serial(server.addr, &ca) == "serial=02",
    );
    old.send(GET);
    assert_eq!(old.read_response(false).status, 200);
    assert_eq!(
        old.stream().conn.peer_certificates().expect("chain")[0].to_vec(),
        first_der
    );
    let reloads = |result| {
        tls_metric(
            server.addr,
            &config,
            "microservice2_tls_reloads_total",
            &[("result", result)],
        )
    };
    // The new pair is served as soon as it is in place, and counted just after.
    wait_until("the reload is counted", Duration::from_secs(5), || {
        reloads("ok") >= 1.0
    });

    // A key that is not the certificate's: logged, counted, and the old pair stays.
    let bad = Pair {
        cert: mismatched.cert.clone(),
        key: second.key.clone(),
    };
    replace_pair(&live, &bad);
    server.signal("HUP");
    wait_until("the bad pair is logged", Duration::from_secs(10), || {
        logs.contains("TLS certificate not reloaded")
    });
    assert!(reloads("failed") >= 1.0);
    assert_eq!(served_serial(server.addr, &ca), "serial=02");

    // Files changed with no signal (a mounted Secret rotated): picked up by the watch.
    replace_pair(&live, &fourth);
    wait_until(
        "the rotated files are served",
        Duration::from_secs(10),
        || served_certificate(server.addr, &config) == chain(&fourth.cert)[0].to_vec(),
    );
    old.send(GET);
    assert_eq!(old.read_response(false).status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let text = logs.finish();
    assert!(text.contains("cause=\"SIGHUP\""), "{text}");
    assert!(text.contains("cause=\"the files changed\""), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// Sends `request` with a behaviour header on a fresh session and reads until the
/// connection ends: the bytes, and how it ended.
fn ending(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    behaviour: &str,
) -> (Vec<u8>, std::io::Result<usize>) {
    let mut tls = tls_connect(addr, config).expect("a TLS session");
    let request =
        format!("GET /v1/avatar HTTP/1.1\r\nHost: t\r\nx-m2-behaviour: {behaviour}\r\n\r\n");
    tls.write_all(request.as_bytes()).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (got, Ok(0)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => return (got, Err(err)),
        }
    }
}

#[test]
fn faults_end_tls_connections_as_a_crashed_server_would_and_shutdown_says_goodbye() {
    let pki = Pki::new("faults");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let mut server = tls_server(&pair, &[]);
    let config = client_config(&pki, None, &["http/1.1"]);
    // An injected status is an ordinary answer.
    let mut client = https(server.addr, &config);
    client.send(b"GET /v1/avatar?status=503 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(false).status, 503);
    // reset: a TCP RST.
    let (got, end) = ending(server.addr, &config, "fault=reset");
    assert!(got.is_empty());
    assert_eq!(
        end.expect_err("a reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    // close: the socket ends without close_notify, which rustls reports as an unexpected end.
    let (got, end) = ending(server.addr, &config, "fault=close");
    assert!(got.is_empty());
    assert_eq!(
        end.expect_err("no close_notify").kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    // truncate: part of the answer, then the same.
    let (got, end) = ending(server.addr, &config, "fault=truncate");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(got.len() < 3696, "{}", got.len());
    assert_eq!(
        end.expect_err("no close_notify").kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    let faults = tls_metric(
        server.addr,
        &config,
        "microservice2_faults_injected_total",
        &[],
    );
    assert_eq!(faults, 3.0);
    // Graceful shutdown closes an idle keep-alive session with close_notify: a clean end.
    let mut idle = https(server.addr, &config);
    idle.send(GET);
    assert_eq!(idle.read_response(false).status, 200);
    server.signal("TERM");
    let mut byte = [0u8; 1];
    assert_eq!(idle.stream().read(&mut byte).expect("a clean end"), 0);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn the_admin_port_and_the_gateway_serve_tls_too() {
    let pki = Pki::new("admin-gateway");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let (cert, key) = (
        pair.cert.to_str().expect("utf-8"),
        pair.key.to_str().expect("utf-8"),
    );
    let config = client_config(&pki, None, &["http/1.1"]);
    let server = crate::support::spawn(crate::support::config(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--admin-port",
        "0",
    ]));
    let admin = server.admin.expect("an admin port");
    let mut probe = https(admin, &config);
    for path in ["/healthz", "/readyz", "/metrics"] {
        probe.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(probe.read_response(false).status, 200, "{path}");
    }
    // The gateway reads its own TLS settings from M1_*, and calls a cleartext upstream.
    let upstream = ChildServer::start(&[]);
    let mut command = crate::support::gateway_command(&[]);
    command
        .env("M1_TLS_CERT", cert)
        .env("M1_TLS_KEY", key)
        .env("M2_URL", format!("http://{}/v1/avatar", upstream.addr));
    let gateway = ChildServer::start_command(command, Stdio::inherit());
    let mut caller = https(gateway.addr, &config);
    caller.send(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n");
    let answer = caller.read_response(false);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 3696);
}

/// A TLS session offering only `h2`, its HTTP/2 connection made by hyper's client; the
/// connection's task ends when the server closes it.
async fn h2_session(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("a TLS session");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("an HTTP/2 connection");
    (sender, tokio::spawn(connection))
}

fn h2_get(query: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(format!("https://localhost/v1/avatar{query}"))
        .body(http_body_util::Empty::new())
        .expect("a request")
}

#[test]
fn http2_connections_are_held_to_the_header_and_idle_timeouts_but_not_mid_answer() {
    let pki = Pki::new("h2-idle");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &["--header-timeout", "1s", "--idle-timeout", "1s"]);
    let config = client_config(&pki, None, &["h2"]);
    let scrape = client_config(&pki, None, &["http/1.1"]);
    client_runtime().block_on(async {
        // An answer that takes longer than the idle timeout is not cut; once it is done, the
        // idle connection is closed about a second later.
        let (mut sender, connection) = h2_session(server.addr, Arc::clone(&config)).await;
        let started = std::time::Instant::now();
        let response = sender
            .send_request(h2_get("?delay=1500ms"))
            .await
            .expect("an answer");
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(1500));
        let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(
            closed.is_ok(),
            "the idle HTTP/2 connection was never closed"
        );
        // A session that never sends the preface: the header timeout.
        let tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("a name");
        let mut silent = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name, tcp)
            .await
            .expect("a TLS session");
        // The server's SETTINGS and GOAWAY come, then the end.
        let mut got = Vec::new();
        let end = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut got),
        )
        .await;
        assert!(end.is_ok(), "the silent HTTP/2 session was never closed");
    });
    let closed = |reason| {
        tls_metric(
            server.addr,
            &scrape,
            "microservice2_connections_closed_total",
            &[("reason", reason)],
        )
    };
    wait_until("both closes are counted", Duration::from_secs(5), || {
        closed("idle_timeout") == 1.0 && closed("header_timeout") == 1.0
    });
}

#[test]
fn h2c_with_prior_knowledge_is_held_to_the_idle_timeout_too() {
    let server = ChildServer::start(&["--http2", "--idle-timeout", "1s", "--header-timeout", "1s"]);
    let mut h2c = connect_tcp(server.addr);
    // The preface and an empty SETTINGS frame, then nothing.
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("write");
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = h2c.read_to_end(&mut got);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The server's SETTINGS, then a GOAWAY (frame type 7) before the close.
    assert!(
        got.windows(4).any(|w| w[3] == 7 && w[..3] == [0, 0, 8]),
        "{got:?}"
    );
}

#[test]
fn a_refused_renegotiation_is_told_to_the_client_at_once() {
    let pki = Pki::new("renegotiation");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &[]);
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr.to_string(),
            "-tls1_2",
            "-msg",
            "-CAfile",
        ])
        .arg(pki.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl");
    let stdout = client.stdout.take().expect("stdout");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = client.stdin.take().expect("stdin");
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match seen.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(wait_for("Verify return code"), "no session");
    // `R` asks s_client to renegotiate; rustls refuses with a warning alert.
    stdin.write_all(b"R\n").expect("write");
    let refused = wait_for("no_renegotiation");
    let _ = client.kill();
    let _ = client.wait();
    assert!(refused, "the refusal never reached the client");
}

#[test]
fn with_mutual_tls_the_admin_port_asks_no_client_certificate_so_probes_and_healthcheck_pass() {
    let pki = Pki::new("mtls-admin");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let ca = pki.ca();
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let (cert, key, ca_file) = (path(&pair.cert), path(&pair.key), path(&ca));
    let server = crate::support::spawn(crate::support::config(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_file,
        "--admin-port",
        "0",
    ]));
    let admin = server.admin.expect("an admin port");
    let anonymous = client_config(&pki, None, &["http/1.1"]);
    let mut probe = https(admin, &anonymous);
    probe.send(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(probe.read_response(false).status, 200);
    // The main port still refuses a client without a certificate.
    let refused = tls_connect(server.addr, &anonymous).and_then(|mut tls| {
        tls.write_all(GET)?;
        let mut byte = [0u8; 1];
        tls.read(&mut byte)
    });
    assert!(refused.is_err(), "{refused:?}");
    // And the container health check, pointed at the admin port.
    let url = format!("https://127.0.0.1:{}/healthz", admin.port());
    let status = crate::support::binary(&["healthcheck", &url, "--ca", &ca_file])
        .status()
        .expect("run the health check");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_handshake_that_stalls_is_closed_at_the_header_timeout_and_an_idle_session_gets_close_notify() {
    let pki = Pki::new("handshake-timeout");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    let server = tls_server(&pair, &["--header-timeout", "1s", "--idle-timeout", "1s"]);
    let config = client_config(&pki, None, &["http/1.1"]);
    // A record header announcing a ClientHello, then nothing.
    let mut stalled = connect_tcp(server.addr);
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    let waited = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // An idle session on the fast path ends at the idle timeout with close_notify: a clean end.
    let mut idle = https(server.addr, &config);
    idle.send(GET);
    assert_eq!(idle.read_response(false).status, 200);
    let mut byte = [0u8; 1];
    assert_eq!(idle.stream().read(&mut byte).expect("a clean end"), 0);
    let closed = |reason| {
        tls_metric(
            server.addr,
            &config,
            "microservice2_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(closed("tls_handshake"), 1.0);
    assert_eq!(closed("idle_timeout"), 1.0);
    let failed = [("result", "failed")];
    assert_eq!(
        tls_metric(
            server.addr,
            &config,
            "microservice2_tls_handshakes_total",
            &failed
        ),
        1.0
    );
}

#[test]
fn a_paced_http2_body_with_pauses_longer_than_the_idle_timeout_is_not_cut() {
    let pki = Pki::new("h2-drip");
    let pair = pki.server("server", Alg::Ecdsa, 1);
    // The 33-byte injected body over 3 s: a chunk every 94 ms, more than the idle timeout.
    let server = tls_server(&pair, &["--idle-timeout", "40ms"]);
    let config = client_config(&pki, None, &["h2"]);
    client_runtime().block_on(async {
        let (mut sender, _connection) = h2_session(server.addr, config).await;
        let response = sender
            .send_request(h2_get("?status=503&drip=3s"))
            .await
            .expect("an answer");
        assert_eq!(response.status(), 503);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("the whole body")
            .to_bytes();
        assert_eq!(&body[..], br#"{"error":"injected","status":503}"#);
    });
}
