//! The behaviour grammar: `key=value` pairs joined by `&`, the same in `--behaviour`, the
//! `x-m2-behaviour` header and the query string. Values follow fortio's spelling where the two
//! overlap (`delay=150us:10,2ms:5`, `status=503:5,429:1`). Every value is checked against the
//! [`Limits`]: out of range is an error, never a silent clamp.

use std::time::Duration;

use super::{BehaviourError, Fault};
use crate::time::parse_duration;

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
    /// `lognormal(20ms,200ms)`: median and 99th percentile.
    LogNormal { median: Duration, p99: Duration },
    /// `linear(1ms,100us)`: base plus this much per request in flight.
    Linear {
        base: Duration,
        per_inflight: Duration,
    },
}

/// Every control's key, as the header, the query and `--behaviour` spell it.
pub const KEYS: [&str; 7] = ["delay", "status", "fault", "count", "drip", "rate", "seed"];

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
        } = later;
        self.delay = delay.or(self.delay.take());
        self.status = status.or(self.status.take());
        self.fault = fault.or(self.fault.take());
        self.count = count.or(self.count);
        self.drip = drip.or(self.drip);
        self.rate = rate.or(self.rate);
        self.seed = seed.or(self.seed);
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

const DURATION: &str = "a duration such as 250ms, 1.5s or 150us";

fn parse_bounded_duration(
    param: &str,
    text: &str,
    limits: &Limits,
) -> Result<Duration, BehaviourError> {
    let duration = parse_duration(text.trim()).map_err(|_| BehaviourError::new(param, DURATION))?;
    if duration > limits.max_delay {
        return Err(BehaviourError::new(
            param,
            format!(
                "a duration of at most {} (--max-delay)",
                show(limits.max_delay)
            ),
        ));
    }
    Ok(duration)
}

/// A duration as the user would write it.
fn show(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_secs_f64() * 1e3)
    }
}

/// Parses `p` in `value:p`: a percentage above 0 and at most 100.
fn parse_percent(param: &str, text: &str) -> Result<f64, BehaviourError> {
    match text.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(BehaviourError::new(
            param,
            "a percentage above 0 and at most 100 after ':'",
        )),
    }
}

/// Parses `a:p,b:q` (or a bare `a`, meaning 100%) with `item` for each value.
fn parse_weighted<T>(
    param: &str,
    text: &str,
    item: impl Fn(&str) -> Result<T, BehaviourError>,
) -> Result<Weighted<T>, BehaviourError> {
    if text.is_empty() {
        return Err(BehaviourError::new(param, "a value"));
    }
    let parts: Vec<&str> = text.split(',').collect();
    let mut choices = Vec::with_capacity(parts.len());
    for part in &parts {
        let (value, percent) = match part.split_once(':') {
            Some((value, percent)) => (value, parse_percent(param, percent)?),
            None if parts.len() == 1 => (*part, 100.0),
            None => {
                return Err(BehaviourError::new(
                    param,
                    "value:percent for every item of a list",
                ));
            }
        };
        choices.push((item(value)?, percent));
    }
    let total: f64 = choices.iter().map(|(_, p)| p).sum();
    if total > 100.0 + 1e-9 {
        return Err(BehaviourError::new(
            param,
            format!("percentages summing to at most 100, not {total}"),
        ));
    }
    Ok(Weighted { choices })
}

fn parse_delay(text: &str, limits: &Limits) -> Result<Delay, BehaviourError> {
    let duration = |t: &str| parse_bounded_duration("delay", t, limits);
    if let Some((name, rest)) = text.split_once('(') {
        let args = rest.strip_suffix(')').ok_or_else(|| {
            BehaviourError::new("delay", "a closing ')' after the distribution's arguments")
        })?;
        let args: Vec<&str> = args.split(',').collect();
        let two = |form: &str| -> Result<(Duration, Duration), BehaviourError> {
            match args[..] {
                [a, b] => Ok((duration(a)?, duration(b)?)),
                _ => Err(BehaviourError::new(
                    "delay",
                    format!("two durations: {form}"),
                )),
            }
        };
        return match name {
            "uniform" => {
                let (low, high) = two("uniform(10ms,50ms)")?;
                if low > high {
                    return Err(BehaviourError::new(
                        "delay",
                        "uniform(low,high) with low at most high",
                    ));
                }
                Ok(Delay::Uniform(low, high))
            }
            "normal" => {
                let (mean, sd) = two("normal(mean,standard deviation)")?;
                Ok(Delay::Normal { mean, sd })
            }
            "lognormal" => {
                let (median, p99) = two("lognormal(median,p99)")?;
                if median.is_zero() || p99 < median {
                    return Err(BehaviourError::new(
                        "delay",
                        "lognormal(median,p99) with 0 < median <= p99",
                    ));
                }
                Ok(Delay::LogNormal { median, p99 })
            }
            "linear" => {
                let (base, per_inflight) = two("linear(base,per request in flight)")?;
                Ok(Delay::Linear { base, per_inflight })
            }
            "exp" => match args[..] {
                [mean] => Ok(Delay::Exp {
                    mean: duration(mean)?,
                }),
                _ => Err(BehaviourError::new("delay", "one duration: exp(mean)")),
            },
            _ => Err(BehaviourError::new(
                "delay",
                "a duration, a weighted list or one of uniform, normal, exp, lognormal, linear",
            )),
        };
    }
    if text.contains(':') {
        return Ok(Delay::Weighted(parse_weighted("delay", text, duration)?));
    }
    Ok(Delay::Fixed(duration(text)?))
}

fn parse_status(text: &str) -> Result<Weighted<u16>, BehaviourError> {
    parse_weighted("status", text, |code| match code.trim().parse::<u16>() {
        Ok(code) if (200..=599).contains(&code) => Ok(code),
        _ => Err(BehaviourError::new(
            "status",
            "an HTTP status code from 200 to 599",
        )),
    })
}

fn parse_fault(text: &str) -> Result<Weighted<Fault>, BehaviourError> {
    parse_weighted("fault", text, |kind| {
        Fault::ALL
            .into_iter()
            .find(|fault| fault.name() == kind.trim())
            .ok_or_else(|| BehaviourError::new("fault", "reset, close, hang or truncate"))
    })
}

fn parse_count(text: &str, limits: &Limits) -> Result<u32, BehaviourError> {
    match text.trim().parse::<u32>() {
        Ok(count) if count >= 1 && count <= limits.max_count => Ok(count),
        _ => Err(BehaviourError::new(
            "count",
            format!(
                "a whole number from 1 to {} (--max-count)",
                limits.max_count
            ),
        )),
    }
}

fn parse_rate(text: &str) -> Result<u64, BehaviourError> {
    const EXPECTED: &str = "bytes per second, such as 64KiB, 1MB or 512";
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: f64 = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(BehaviourError::new("rate", EXPECTED)),
    };
    let value = number
        .parse::<f64>()
        .map_err(|_| BehaviourError::new("rate", EXPECTED))?
        * multiplier;
    if !(1.0..=1e12).contains(&value) {
        return Err(BehaviourError::new(
            "rate",
            "at least 1 byte per second and at most 1TB",
        ));
    }
    Ok(value as u64)
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
                Delay::LogNormal {
                    median: ms(20),
                    p99: ms(200),
                },
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
            key in "(delay|status|fault|count|drip|rate|seed|x)",
            value in "[0-9a-z.:,()%]{0,24}",
        ) {
            let text = format!("{key}={value}");
            let _ = Controls::parse(&text, &Limits::default(), Unknown::Reject);
        }
    }
}
