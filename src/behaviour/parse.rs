//! The behaviour grammar: `key=value` pairs joined by `&`, the same in `--behaviour`, the
//! `x-m2-behaviour` header and the query string. Values follow fortio's spelling where the two
//! overlap (`delay=150us:10,2ms:5`, `status=503:5,429:1`). Every value is checked against the
//! [`Limits`]: out of range is an error, never a silent clamp.

use std::time::Duration;

use super::values::{
    parse_bounded_duration, parse_count, parse_delay, parse_fail_first, parse_fault, parse_rate,
    parse_status,
};
use super::{BehaviourError, Fault};

/// The bounds the server was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest delay, drip or distribution parameter accepted (`--max-delay`).
    pub max_delay: Duration,
    /// The most avatars `count` may ask for (`--max-count`).
    pub max_count: u32,
}

/// The flags' defaults (60 s, 10,000), for the unit tests; the server takes its limits from
/// the configuration.
#[cfg(test)]
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_delay: Duration::from_secs(60),
            max_count: 10_000,
        }
    }
}

/// How to treat keys the grammar does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// `--behaviour` and `x-m2-behaviour`: an unknown key is an error.
    Reject,
    /// The query string: callers add cache-busters and other parameters; ignore them.
    Ignore,
}

/// Choices with percentages; the remainder to 100 is "none".
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted<T> {
    pub choices: Vec<(T, f64)>,
}

/// A latency distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum Delay {
    /// `250ms`.
    Fixed(Duration),
    /// `150us:10,2ms:5`: percent of requests per value; the rest no delay.
    Weighted(Weighted<Duration>),
    /// `uniform(10ms,50ms)`.
    Uniform(Duration, Duration),
    /// `normal(50ms,10ms)`: mean and standard deviation, clamped at 0.
    Normal { mean: Duration, sd: Duration },
    /// `exp(20ms)`: exponential with this mean.
    Exp { mean: Duration },
    /// `lognormal(20ms,200ms)`: median and 99th percentile, and the log-space location and
    /// scale they make, worked out once ([`Delay::lognormal`]) rather than at every draw.
    LogNormal {
        median: Duration,
        p99: Duration,
        mu: f64,
        sigma: f64,
    },
    /// `linear(1ms,100us)`: base plus this much per request in flight.
    Linear {
        base: Duration,
        per_inflight: Duration,
    },
}

/// Every control's key, as the header, the query and `--behaviour` spell it.
pub const KEYS: [&str; 8] = [
    "delay",
    "status",
    "fault",
    "count",
    "drip",
    "rate",
    "seed",
    "fail-first",
];

/// The parsed controls of one source; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    pub delay: Option<Delay>,
    pub status: Option<Weighted<u16>>,
    pub fault: Option<Weighted<Fault>>,
    pub count: Option<u32>,
    pub drip: Option<Duration>,
    /// Bytes per second.
    pub rate: Option<u64>,
    pub seed: Option<u64>,
    /// The injected status or fault applies only to the first this many attempts of a request
    /// id (the attempt header); later attempts are answered as if none were asked for.
    pub fail_first: Option<u8>,
}

impl Controls {
    /// Parses `delay=…&status=…`.
    pub fn parse(
        text: &str,
        limits: &Limits,
        unknown: Unknown,
    ) -> Result<Controls, BehaviourError> {
        let mut controls = Controls::default();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = match pair.split_once('=') {
                Some((key, value)) => (percent_decode(key), percent_decode(value)),
                None if unknown == Unknown::Ignore => continue,
                None => {
                    return Err(BehaviourError::new(pair, "key=value pairs joined by '&'"));
                }
            };
            match key.as_str() {
                "delay" => controls.delay = Some(parse_delay(&value, limits)?),
                "status" => controls.status = Some(parse_status(&value)?),
                "fault" => controls.fault = Some(parse_fault(&value)?),
                "count" => controls.count = Some(parse_count(&value, limits)?),
                "drip" => controls.drip = Some(parse_bounded_duration("drip", &value, limits)?),
                "rate" => controls.rate = Some(parse_rate(&value)?),
                "seed" => {
                    controls.seed =
                        Some(value.parse().map_err(|_| {
                            BehaviourError::new("seed", "an unsigned 64-bit integer")
                        })?)
                }
                "fail-first" => controls.fail_first = Some(parse_fail_first(&value)?),
                _ if unknown == Unknown::Ignore => {}
                other => {
                    return Err(BehaviourError::new(
                        other,
                        format!("one of {}", KEYS.join(", ")),
                    ));
                }
            }
        }
        Ok(controls)
    }

    /// Overlays `later` on `self`, key by key: what `later` sets wins.
    pub fn merge(&mut self, later: Controls) {
        let Controls {
            delay,
            status,
            fault,
            count,
            drip,
            rate,
            seed,
            fail_first,
        } = later;
        self.delay = delay.or(self.delay.take());
        self.status = status.or(self.status.take());
        self.fault = fault.or(self.fault.take());
        self.count = count.or(self.count);
        self.drip = drip.or(self.drip);
        self.rate = rate.or(self.rate);
        self.seed = seed.or(self.seed);
        self.fail_first = fail_first.or(self.fail_first);
    }

    /// True when nothing is set: the request is served as if no behaviour existed.
    pub fn is_empty(&self) -> bool {
        *self == Controls::default()
    }
}

/// Decodes `%XX` escapes; anything malformed is kept as written (and then fails to parse).
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strict(text: &str) -> Result<Controls, BehaviourError> {
        Controls::parse(text, &Limits::default(), Unknown::Reject)
    }

    #[test]
    fn every_listed_key_is_one_the_parser_knows() {
        for key in KEYS {
            // A bad value is blamed on the key itself, not reported as an unknown key.
            let err = strict(&format!("{key}=!")).expect_err("'!' is no control's value");
            assert_eq!(err.param, key);
        }
        let unknown = strict("colour=blue").expect_err("an unknown key");
        assert_eq!(unknown.param, "colour");
        assert!(KEYS.iter().all(|key| unknown.expected.contains(key)));
    }

    fn error_param(text: &str) -> String {
        strict(text)
            .expect_err(&format!("{text:?} should be rejected"))
            .param
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_delay_form_parses() {
        let cases = [
            ("delay=250ms", Delay::Fixed(ms(250))),
            ("delay=1.5s", Delay::Fixed(ms(1500))),
            ("delay=150us", Delay::Fixed(Duration::from_micros(150))),
            ("delay=uniform(10ms,50ms)", Delay::Uniform(ms(10), ms(50))),
            (
                "delay=normal(50ms,10ms)",
                Delay::Normal {
                    mean: ms(50),
                    sd: ms(10),
                },
            ),
            ("delay=exp(20ms)", Delay::Exp { mean: ms(20) }),
            (
                "delay=lognormal(20ms,200ms)",
                Delay::lognormal(ms(20), ms(200)),
            ),
            (
                "delay=linear(1ms,100us)",
                Delay::Linear {
                    base: ms(1),
                    per_inflight: Duration::from_micros(100),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(strict(text).expect(text).delay, Some(expected), "{text}");
        }
        let weighted = strict("delay=150us:10,2ms:5,0.5s:1").expect("weighted");
        assert_eq!(
            weighted.delay,
            Some(Delay::Weighted(Weighted {
                choices: vec![
                    (Duration::from_micros(150), 10.0),
                    (ms(2), 5.0),
                    (ms(500), 1.0)
                ]
            }))
        );
    }

    #[test]
    fn status_fault_count_drip_rate_seed_parse() {
        let controls = strict(
            "status=503:5,429:1&fault=reset:1,truncate:2&count=100&drip=2s&rate=64KiB&seed=7",
        )
        .expect("valid");
        assert_eq!(
            controls.status,
            Some(Weighted {
                choices: vec![(503, 5.0), (429, 1.0)]
            })
        );
        assert_eq!(
            controls.fault,
            Some(Weighted {
                choices: vec![(Fault::Reset, 1.0), (Fault::Truncate, 2.0)]
            })
        );
        assert_eq!(controls.count, Some(100));
        assert_eq!(controls.drip, Some(ms(2000)));
        assert_eq!(controls.rate, Some(65_536));
        assert_eq!(controls.seed, Some(7));
        assert_eq!(
            strict("status=503").expect("bare").status,
            Some(Weighted {
                choices: vec![(503, 100.0)]
            })
        );
        assert_eq!(
            strict("fault=hang").expect("bare").fault,
            Some(Weighted {
                choices: vec![(Fault::Hang, 100.0)]
            })
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (text, param) in [
            ("delay=abc", "delay"),
            ("delay=61s", "delay"),
            ("delay=uniform(50ms,10ms)", "delay"),
            ("delay=uniform(10ms)", "delay"),
            ("delay=normal(1ms,2ms", "delay"),
            ("delay=gamma(1ms)", "delay"),
            ("delay=lognormal(0ms,1ms)", "delay"),
            ("delay=lognormal(20ms,10ms)", "delay"),
            ("delay=1ms:60,2ms:50", "delay"),
            ("delay=1ms:0", "delay"),
            ("delay=1ms,2ms", "delay"),
            ("status=700", "status"),
            ("status=99", "status"),
            ("status=abc", "status"),
            ("status=503:80,500:30", "status"),
            ("status=503:-1", "status"),
            ("status=", "status"),
            ("fault=explode", "fault"),
            ("fault=reset:101", "fault"),
            ("count=0", "count"),
            ("count=10001", "count"),
            ("count=-1", "count"),
            ("drip=forever", "drip"),
            ("drip=2m", "drip"),
            ("rate=0", "rate"),
            ("rate=fast", "rate"),
            ("rate=1PB", "rate"),
            ("seed=-3", "seed"),
            ("fail-first=0", "fail-first"),
            ("fail-first=101", "fail-first"),
            ("fail-first=-1", "fail-first"),
            ("fail-first=1.5", "fail-first"),
            ("fail-first=", "fail-first"),
            ("colour=blue", "colour"),
        ] {
            assert_eq!(error_param(text), param, "{text}");
        }
    }

    #[test]
    fn limits_bound_delay_and_count() {
        let limits = Limits {
            max_delay: ms(100),
            max_count: 50,
        };
        let parse = |text| Controls::parse(text, &limits, Unknown::Reject);
        assert!(parse("delay=100ms&count=50").is_ok());
        assert_eq!(parse("delay=101ms").expect_err("over").param, "delay");
        assert_eq!(parse("count=51").expect_err("over").param, "count");
        let message = parse("delay=1s").expect_err("over").expected;
        assert!(message.contains("--max-delay"), "{message}");
    }

    #[test]
    fn the_query_string_ignores_what_it_does_not_know() {
        let controls = Controls::parse(
            "cachebuster=123&delay=1ms&flag&utm_source=x",
            &Limits::default(),
            Unknown::Ignore,
        )
        .expect("unknown parameters are ignored");
        assert_eq!(controls.delay, Some(Delay::Fixed(ms(1))));
        assert_eq!(error_param("flag"), "flag");
    }

    #[test]
    fn percent_escapes_are_decoded() {
        let controls = strict("delay=uniform(1ms%2C2ms)&status=503%3A5").expect("escaped");
        assert_eq!(controls.delay, Some(Delay::Uniform(ms(1), ms(2))));
        assert_eq!(
            controls.status,
            Some(Weighted {
                choices: vec![(503, 5.0)]
            })
        );
    }

    #[test]
    fn later_sources_win_key_by_key() {
        let mut merged = strict("delay=5ms&status=503:1").expect("profile");
        merged.merge(strict("status=500").expect("header"));
        merged.merge(strict("count=3").expect("query"));
        assert_eq!(merged.delay, Some(Delay::Fixed(ms(5))));
        assert_eq!(
            merged.status,
            Some(Weighted {
                choices: vec![(500, 100.0)]
            })
        );
        assert_eq!(merged.count, Some(3));
        assert!(!merged.is_empty());
        assert!(strict("").expect("empty").is_empty());
    }

    #[test]
    fn fail_first_takes_1_to_100_and_merges_like_the_rest() {
        assert_eq!(strict("fail-first=1").expect("1").fail_first, Some(1));
        assert_eq!(strict("fail-first=100").expect("100").fail_first, Some(100));
        let err = strict("fail-first=101").expect_err("over 100");
        assert_eq!(
            err,
            BehaviourError::new("fail-first", "an integer from 1 to 100")
        );
        // Alone it is a control like any other: the request is planned, nothing injected.
        let alone = strict("fail-first=2").expect("alone");
        assert!(!alone.is_empty());
        let mut merged = strict("status=503&fail-first=2").expect("profile");
        merged.merge(strict("fail-first=5").expect("header"));
        assert_eq!(merged.fail_first, Some(5));
        merged.merge(strict("delay=1ms").expect("query"));
        assert_eq!(merged.fail_first, Some(5));
        let query = Controls::parse("fail-first=3&x=1", &Limits::default(), Unknown::Ignore);
        assert_eq!(query.expect("query").fail_first, Some(3));
    }

    #[test]
    fn errors_render_as_json() {
        let error = BehaviourError::new("delay", "a \"duration\"");
        assert_eq!(
            error.to_json(),
            r#"{"error":"a \"duration\"","param":"delay"}"#
        );
    }

    proptest! {
        #[test]
        fn the_parser_never_panics(text in ".*") {
            let _ = Controls::parse(&text, &Limits::default(), Unknown::Reject);
            let _ = Controls::parse(&text, &Limits::default(), Unknown::Ignore);
        }

        #[test]
        fn grammar_shaped_input_never_panics(
            key in "(delay|status|fault|count|drip|rate|seed|fail-first|x)",
            value in "[0-9a-z.:,()%]{0,24}",
        ) {
            let text = format!("{key}={value}");
            let _ = Controls::parse(&text, &Limits::default(), Unknown::Reject);
        }
    }
}
