//! TLS serving: HTTPS and HTTP/2 over TLS with real clients (curl, openssl s_client, hyper's
//! client), the fast path and every route over TLS, mutual TLS, certificate reload, and every
//! bad TLS setting. Certificates are made at test time ([`crate::certs`]).

use crate::certs::{Alg, Pki};
use crate::support::binary;

/// Runs the binary with `args` (paths already in them) and returns its stderr, asserting it
/// exited 2 with one line naming `needle`.
pub(crate) fn exits_2_naming(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let output = binary(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?} {env:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}

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
