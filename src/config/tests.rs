//! The configuration as the flags and the environment make it.

use super::*;

use std::net::Ipv4Addr;

mod variables;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    parse_env(args, &env::NoEnv)
}

fn parse_env(args: &[&str], env: &dyn Env) -> Result<Config, ConfigError> {
    Config::from_args_env(
        std::iter::once("microservice2").chain(args.iter().copied()),
        env,
    )
}

fn invalid(args: &[&str]) -> String {
    match parse(args) {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

#[test]
fn the_defaults_are_the_flags_defaults() {
    let config = Config::default();
    assert_eq!(config, parse(&[]).expect("defaults parse"));
    assert_eq!(config.port, 3000);
    assert_eq!(config.path, "/v1/avatar");
    assert_eq!(config.host.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.header_timeout, Duration::from_secs(10));
    assert_eq!(config.idle_timeout, Duration::from_secs(60));
    assert_eq!(config.write_timeout, Duration::from_secs(30));
    assert_eq!(config.max_delay, Duration::from_secs(60));
    assert_eq!(config.max_count, 10_000);
    assert!(config.gateway.is_none() && config.profile.is_empty());
}

#[test]
fn variables_come_from_the_source_given_and_flags_win_over_them() {
    let env = [
        ("M2_PORT", "4000"),
        ("M2_PATH", "/x"),
        ("M2_HTTP2", "true"),
        ("M2_NO_FAST_PATH", "false"),
        ("M2_BEHAVIOUR", "status=503"),
        ("M2_DEFER_ACCEPT", "true"),
    ];
    let config = parse_env(&[], &env).expect("valid variables");
    assert_eq!((config.port, config.path.as_str()), (4000, "/x"));
    assert!(config.http2 && !config.no_fast_path && config.defer_accept);
    assert!(!parse_env(&[], &[]).expect("defaults").defer_accept);
    assert_eq!(config.behaviour.as_deref(), Some("status=503"));
    let config = parse_env(&["--port", "5000", "--http2"], &env).expect("valid flags");
    assert_eq!(config.port, 5000);
    // The gateway reads M1_* for its own settings; M2_* name its upstream.
    let env = [
        ("M1_PORT", "9000"),
        ("M2_PORT", "4000"),
        ("M2_DOMAIN", "m2"),
        ("M1_DEFER_ACCEPT", "true"),
    ];
    let config = parse_env(&["gateway"], &env).expect("valid variables");
    assert_eq!(config.port, 9000);
    assert!(config.defer_accept);
    let upstream = &config.gateway.expect("gateway mode").upstreams[0];
    assert_eq!(upstream.url, "http://m2:4000/v1/avatar");
    // A bad variable is named, as a bad flag is.
    for (env, needle) in [
        ([("M2_PORT", "x")], "M2_PORT"),
        ([("M2_HTTP2", "1")], "M2_HTTP2"),
        ([("M2_BEHAVIOUR", "delay=abc")], "M2_BEHAVIOUR"),
    ] {
        match parse_env(&[], &env) {
            Err(ConfigError::Invalid(message)) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("{env:?}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn flags_are_parsed() {
    let config = parse(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--path",
        "/x",
        "--workers",
        "3",
        "--shutdown-timeout",
        "1.5s",
        "--date-header",
        "http",
    ])
    .expect("valid flags");
    assert_eq!(config.host.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(config.port, 0);
    assert_eq!(config.path, "/x");
    assert_eq!(config.worker_count(), 3);
    assert_eq!(config.shutdown_timeout, Duration::from_millis(1500));
    assert_eq!(config.date_header, DateHeader::Http);
}

#[test]
fn each_bad_setting_is_named_on_one_line() {
    for (args, needle) in [
        (&["--port", "70000"][..], "--port"),
        (&["--path", "v1"][..], "--path"),
        (&["--path", "/a b"][..], "--path"),
        (&["--path", "/metrics"][..], "--path"),
        (&["--path", "/healthz"][..], "--path"),
        (&["--shutdown-delay", "x"][..], "--shutdown-delay"),
        (&["--admin-port", "70000"][..], "--admin-port"),
        (&["--log-format", "xml"][..], "--log-format"),
        (&["--header-timeout", "0s"][..], "--header-timeout"),
        (&["--idle-timeout", "soon"][..], "--idle-timeout"),
        (&["--access-log-sample", "0"][..], "--access-log-sample"),
        (&["--access-log-sample", "1.5"][..], "--access-log-sample"),
        (&["--workers", "0"][..], "--workers"),
        (&["--shutdown-timeout", "soon"][..], "--shutdown-timeout"),
        (&["--date-header", "iso"][..], "--date-header"),
        (&["--host", "no such host.invalid"][..], "--host"),
        (&["--bogus"][..], "--bogus"),
        (&["--behaviour", "delay=abc"][..], "--behaviour"),
        (&["--behaviour", "colour=blue"][..], "--behaviour"),
        (
            &["--max-delay", "1s", "--behaviour", "delay=2s"][..],
            "--behaviour",
        ),
        (&["--max-count", "0"][..], "--max-count"),
        (&["--max-inflight", "0"][..], "--max-inflight"),
        (
            &["--allow-request-behaviour", "maybe"][..],
            "--allow-request-behaviour",
        ),
        (&["--seed", "x"][..], "--seed"),
        (&["--write-timeout", "0s"][..], "--write-timeout"),
        (&["--write-timeout", "soon"][..], "--write-timeout"),
        (&["--behaviour", "rate=1"][..], "rate"),
        (&["--behaviour", "count=10000&rate=10kB"][..], "rate"),
    ] {
        let message = invalid(args);
        assert!(message.contains(needle), "{args:?}: {message}");
        assert!(!message.contains('\n'), "{args:?}: {message}");
    }
}

#[test]
fn a_bad_value_names_the_environment_variable_too() {
    assert!(invalid(&["--port", "abc"]).contains("M2_PORT"));
}

#[test]
fn help_and_version_are_information_not_errors() {
    assert!(matches!(parse(&["--help"]), Err(ConfigError::Info(_))));
    assert!(matches!(parse(&["--version"]), Err(ConfigError::Info(_))));
}

#[test]
fn the_connection_limit_defaults_to_the_open_files_limit_less_a_reserve() {
    let config = Config::default();
    let limit = open_files_limit().expect("Linux reports its open-files limit");
    assert_eq!(config.connection_limit(), limit - 64);
    let config = Config {
        max_connections: NonZeroUsize::new(7),
        ..Config::default()
    };
    assert_eq!(config.connection_limit(), 7);
}

#[test]
fn gateway_mode_has_the_suites_defaults() {
    let config = parse(&["gateway"]).expect("defaults parse");
    assert_eq!(config.port, 8080);
    assert_eq!(config.path, "/v1/user");
    assert!(config.fast_path_allowed());
    let gateway = config.gateway.expect("gateway mode");
    assert_eq!(gateway.upstreams.len(), 1);
    assert_eq!(gateway.upstreams[0].url, "http://127.0.0.1:3000/v1/avatar");
    assert_eq!(gateway.timeout, Duration::from_secs(1));
    assert_eq!(gateway.retries, 0);
    assert_eq!(gateway.retry_backoff, Duration::from_millis(10));
    assert!(!gateway.forward_behaviour);
    assert_eq!(gateway.client, ClientKind::HyperUtil);
    assert!(parse(&[]).expect("serve mode").gateway.is_none());
    let lean = parse(&["gateway", "--client", "lean"]).expect("lean client");
    assert_eq!(lean.gateway.map(|g| g.client), Some(ClientKind::Lean));
}

#[test]
fn gateway_upstreams_come_from_flags_or_the_suites_parts() {
    let config = parse(&[
        "gateway",
        "--upstream",
        "http://a:1/x,http://b:2/y",
        "--upstream",
        "http://[::1]:3/z?count=2",
    ])
    .expect("valid upstreams");
    let urls: Vec<String> = config
        .gateway
        .expect("gateway mode")
        .upstreams
        .into_iter()
        .map(|u| u.url)
        .collect();
    assert_eq!(
        urls,
        ["http://a:1/x", "http://b:2/y", "http://[::1]:3/z?count=2"]
    );
    let config = parse(&[
        "gateway",
        "--upstream-domain",
        "m2",
        "--upstream-port",
        "4000",
        "--upstream-path",
        "/avatars",
    ])
    .expect("valid parts");
    let upstream = &config.gateway.expect("gateway mode").upstreams[0];
    assert_eq!(upstream.url, "http://m2:4000/avatars");
    assert_eq!(upstream.uri.host(), Some("m2"));
}

#[test]
fn gateway_settings_are_named_with_their_m1_or_m2_variables() {
    for (args, needles) in [
        (&["gateway", "--port", "x"][..], &["--port", "M1_PORT"][..]),
        (&["gateway", "--path", "v1"][..], &["--path", "M1_PATH"][..]),
        (&["gateway", "--upstream-port", "x"][..], &["M2_PORT"][..]),
        (
            &["gateway", "--upstream", "ftp://a/"][..],
            &["--upstream", "ftp"][..],
        ),
        (
            &["gateway", "--upstream", "/v1/avatar"][..],
            &["--upstream", "absolute"][..],
        ),
        (
            &["gateway", "--upstream", "http://a b/"][..],
            &["--upstream"][..],
        ),
        (
            &["gateway", "--upstream-domain", "http://a:1"][..],
            &["M2_DOMAIN"][..],
        ),
        (&["gateway", "--timeout", "0s"][..], &["--timeout"][..]),
        (&["gateway", "--retries", "101"][..], &["--retries"][..]),
        (
            &["gateway", "--retry-backoff", "x"][..],
            &["--retry-backoff"][..],
        ),
        (
            &["gateway", "--pool-max-idle", "x"][..],
            &["--pool-max-idle"][..],
        ),
        (
            &["gateway", "--client", "curl"][..],
            &["--client", "M1_CLIENT", "hyper-util", "lean"][..],
        ),
        (
            &["gateway", "--behaviour", "count=3"][..],
            &["count", "M1_BEHAVIOUR"][..],
        ),
        (&["--upstream", "http://a/"][..], &["--upstream"][..]),
        (
            &["gateway", "--max-upstream-body", "0"][..],
            &["--max-upstream-body", "M1_MAX_UPSTREAM_BODY"][..],
        ),
        (
            &["gateway", "--max-upstream-body", "16mb"][..],
            &["--max-upstream-body"][..],
        ),
        (
            &["gateway", "--write-timeout", "0s"][..],
            &["--write-timeout", "M1_WRITE_TIMEOUT"][..],
        ),
        // The gateway paces a body as large as --max-upstream-body (16 MiB).
        (
            &["gateway", "--behaviour", "rate=64KiB"][..],
            &["rate", "M1_BEHAVIOUR"][..],
        ),
    ] {
        let message = invalid(args);
        for needle in needles {
            assert!(message.contains(needle), "{args:?}: {message}");
        }
        assert!(!message.contains('\n'), "{args:?}: {message}");
    }
}

#[test]
fn gateway_help_lists_the_upstream_flags() {
    match parse(&["gateway", "--help"]) {
        Err(ConfigError::Info(text)) => {
            for flag in [
                "--upstream",
                "--timeout",
                "--retries",
                "--forward-behaviour",
                "--client",
                "M1_PORT",
            ] {
                assert!(text.contains(flag), "{flag} missing from:\n{text}");
            }
        }
        other => panic!("expected help, got {other:?}"),
    }
    match parse(&["--help"]) {
        Err(ConfigError::Info(text)) => assert!(text.contains("gateway --help")),
        other => panic!("expected help, got {other:?}"),
    }
}

#[test]
fn the_new_limits_have_their_defaults() {
    let config = parse(&["--port", "0"]).expect("defaults");
    assert_eq!(config.write_timeout, Duration::from_secs(30));
    assert!(!config.no_fast_path && config.fast_path_allowed());
    assert!(
        !parse(&["--no-fast-path"])
            .expect("valid")
            .fast_path_allowed()
    );
    let gateway = parse(&["gateway"]).expect("defaults").gateway;
    assert_eq!(gateway.map(|g| g.max_upstream_body), Some(16 << 20));
    let faster = parse(&["gateway", "--behaviour", "rate=1MiB"]).expect("16 s of 16 MiB");
    assert_eq!(faster.profile.rate, Some(1 << 20));
}

#[test]
fn https_upstreams_load_client_tls_and_plain_ones_need_none() {
    let plain = parse(&["gateway"]).expect("defaults").gateway;
    assert!(plain.and_then(|g| g.tls).is_none());
    let config = parse(&["gateway", "--upstream", "https://m2/v1/avatar,http://m3/"])
        .expect("mixed upstreams");
    let gateway = config.gateway.expect("gateway mode");
    let tls = gateway.tls.expect("loaded for the https upstream");
    assert_eq!(tls.settings, crate::tls::ClientSettings::default());
    assert_eq!(tls.config.alpn_protocols, [b"http/1.1".to_vec()]);
    let insecure = parse(&["gateway", "--upstream-insecure"]).expect("a switch");
    let tls = insecure
        .gateway
        .and_then(|g| g.tls)
        .expect("a TLS flag loads it");
    assert!(tls.settings.insecure);
}
