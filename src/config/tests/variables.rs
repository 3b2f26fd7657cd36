//! Settings read from environment variables: fail-first's, and every flag's `M2_*` (serve
//! mode) or `M1_*` (gateway mode) variable.

use super::*;

#[test]
fn fail_firsts_settings_come_from_flags_or_variables_in_both_modes() {
    let config = Config::default();
    assert_eq!(config.attempt_header.as_str(), "x-request-id");
    assert_eq!(config.attempt_keys, 100_000);
    assert_eq!(config.attempt_ttl, Duration::from_secs(60));
    let flags = [
        "--attempt-header",
        "x-attempt-id",
        "--attempt-keys",
        "2",
        "--attempt-ttl",
        "300ms",
    ];
    let config = parse(&flags).expect("valid flags");
    assert_eq!(config.attempt_header.as_str(), "x-attempt-id");
    assert_eq!(config.attempt_keys, 2);
    assert_eq!(config.attempt_ttl, Duration::from_millis(300));
    let env = [
        ("M2_ATTEMPT_HEADER", "x-serve"),
        ("M2_ATTEMPT_KEYS", "5"),
        ("M2_ATTEMPT_TTL", "1s"),
        ("M1_ATTEMPT_HEADER", "x-gateway"),
        ("M1_ATTEMPT_KEYS", "7"),
        ("M1_ATTEMPT_TTL", "2s"),
    ];
    let serve = parse_env(&[], &env).expect("valid variables");
    let settings = |config: &Config| {
        (
            config.attempt_header.to_string(),
            config.attempt_keys,
            config.attempt_ttl,
        )
    };
    assert_eq!(
        settings(&serve),
        ("x-serve".to_owned(), 5, Duration::from_secs(1))
    );
    let gateway = parse_env(&["gateway"], &env).expect("valid variables");
    assert_eq!(
        settings(&gateway),
        ("x-gateway".to_owned(), 7, Duration::from_secs(2))
    );
    let flagged = parse_env(&["gateway", "--attempt-keys", "9"], &env).expect("valid");
    assert_eq!(flagged.attempt_keys, 9);
}

#[test]
fn bad_fail_first_settings_are_named_with_their_variables() {
    for (args, needles) in [
        (
            &["--attempt-header", "X-Request-Id"][..],
            &["--attempt-header", "M2_ATTEMPT_HEADER", "lower case"][..],
        ),
        (&["--attempt-header", "x id"][..], &["--attempt-header"][..]),
        (&["--attempt-header", "host"][..], &["--attempt-header"][..]),
        (
            &["--attempt-header", "x-m2-behaviour"][..],
            &["--attempt-header"][..],
        ),
        (
            &["gateway", "--attempt-header", ""][..],
            &["--attempt-header", "M1_ATTEMPT_HEADER"][..],
        ),
        (
            &["--attempt-keys", "0"][..],
            &["--attempt-keys", "M2_ATTEMPT_KEYS"][..],
        ),
        (&["--attempt-keys", "10000001"][..], &["--attempt-keys"][..]),
        (&["--attempt-keys", "many"][..], &["--attempt-keys"][..]),
        (
            &["gateway", "--attempt-keys", "0"][..],
            &["--attempt-keys", "M1_ATTEMPT_KEYS"][..],
        ),
        (
            &["--attempt-ttl", "0s"][..],
            &["--attempt-ttl", "M2_ATTEMPT_TTL"][..],
        ),
        (&["--attempt-ttl", "soon"][..], &["--attempt-ttl"][..]),
        (
            &["gateway", "--attempt-ttl", "0s"][..],
            &["--attempt-ttl", "M1_ATTEMPT_TTL"][..],
        ),
    ] {
        let message = invalid(args);
        for needle in needles {
            assert!(message.contains(needle), "{args:?}: {message}");
        }
        assert!(!message.contains('\n'), "{args:?}: {message}");
    }
    assert!(parse(&["--attempt-keys", "10000000"]).is_ok());
}

#[test]
fn every_flag_reads_a_variable_m2_in_serve_mode_m1_in_gateway_mode() {
    let env = [
        ("M2_SHUTDOWN_TIMEOUT", "3s"),
        ("M2_ALLOW_REQUEST_BEHAVIOUR", "false"),
        ("M2_MAX_INFLIGHT", "8"),
        ("M2_HEADER_TIMEOUT", "2s"),
        ("M2_SEED", "42"),
        ("M2_NO_METRICS", "true"),
        ("M2_ACCESS_LOG", "true"),
        ("M2_ACCESS_LOG_SAMPLE", "0.5"),
        ("M1_SHUTDOWN_TIMEOUT", "4s"),
        ("M1_MAX_INFLIGHT", "9"),
        ("M1_SEED", "7"),
        ("M1_NO_METRICS", "false"),
        ("M1_TIMEOUT", "250ms"),
        ("M1_RETRIES", "3"),
        ("M1_RETRY_BACKOFF", "5ms"),
        ("M1_POOL_MAX_IDLE", "16"),
        ("M1_FORWARD_BEHAVIOUR", "true"),
    ];
    let serve = parse_env(&[], &env).expect("valid variables");
    assert_eq!(serve.shutdown_timeout, Duration::from_secs(3));
    assert!(!serve.allow_request_behaviour);
    assert_eq!(serve.max_inflight.map(NonZeroUsize::get), Some(8));
    assert_eq!(serve.header_timeout, Duration::from_secs(2));
    assert_eq!(serve.seed, Some(42));
    assert!(serve.no_metrics && serve.access_log);
    assert_eq!(serve.access_log_sample, 0.5);
    // In gateway mode the serve flags read M1_* (M2_* is the upstream's), and so do the
    // gateway's own.
    let config = parse_env(&["gateway"], &env).expect("valid variables");
    assert_eq!(config.shutdown_timeout, Duration::from_secs(4));
    assert!(config.allow_request_behaviour, "M2_* is not the gateway's");
    assert_eq!(config.max_inflight.map(NonZeroUsize::get), Some(9));
    assert_eq!(config.header_timeout, Duration::from_secs(10));
    assert_eq!(config.seed, Some(7));
    assert!(!config.no_metrics && !config.access_log);
    let gateway = config.gateway.expect("gateway mode");
    assert_eq!(gateway.timeout, Duration::from_millis(250));
    assert_eq!(gateway.retries, 3);
    assert_eq!(gateway.retry_backoff, Duration::from_millis(5));
    assert_eq!(gateway.pool_max_idle, 16);
    assert!(gateway.forward_behaviour);
    // Flags still win.
    let flagged = parse_env(&["gateway", "--retries", "1"], &env).expect("valid");
    assert_eq!(flagged.gateway.expect("gateway mode").retries, 1);
    // A switch's variable and --allow-request-behaviour's take true or false, as M2_HTTP2
    // does; a bad value names its variable.
    for (args, env, needle) in [
        (&[][..], [("M2_NO_METRICS", "1")], "M2_NO_METRICS"),
        (
            &[][..],
            [("M2_ALLOW_REQUEST_BEHAVIOUR", "no")],
            "M2_ALLOW_REQUEST_BEHAVIOUR",
        ),
        (&[][..], [("M2_HEADER_TIMEOUT", "abc")], "M2_HEADER_TIMEOUT"),
        (&["gateway"][..], [("M1_RETRIES", "101")], "M1_RETRIES"),
        (
            &["gateway"][..],
            [("M1_FORWARD_BEHAVIOUR", "yes")],
            "M1_FORWARD_BEHAVIOUR",
        ),
        (&["gateway"][..], [("M1_MAX_DELAY", "x")], "M1_MAX_DELAY"),
    ] {
        match parse_env(args, &env) {
            Err(ConfigError::Invalid(message)) => {
                assert!(message.contains(needle), "{message}");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("{env:?}: expected an error, got {other:?}"),
        }
    }
}
