//! The scenario parser's messages and the position arithmetic, at fixed inputs and instants.

use super::*;
use crate::behaviour::parse::{Delay, Limits, Unknown};

const EXAMPLE: &str = r#"
loop: false
start: listen          # optional
phases:
  - {name: warm-up, duration: 30s, behaviour: ""}
  - {name: slow,    duration: 60s, behaviour: "delay=lognormal(20ms,200ms)"}
  - {name: outage,  duration: 30s, behaviour: "status=503:50&fault=reset:5"}
  - {name: recover, duration: 60s, behaviour: ""}
"#;

/// 2026-12-03T20:00:00Z.
const DEC_3_2026_20H: u64 = 1_796_328_000;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, &|behaviour| {
        Controls::parse(behaviour, &Limits::default(), Unknown::Reject)
    })
}

fn message(text: &str) -> String {
    parse(text)
        .expect_err("the scenario is invalid")
        .to_string()
}

fn secs(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// A scenario of phases `p1`, `p2`, … with these durations and no behaviour.
fn scenario(head: &str, durations: &[&str]) -> Scenario {
    let mut text = format!("{head}\nphases:\n");
    for (index, duration) in durations.iter().enumerate() {
        text += &format!(
            "  - {{name: p{}, duration: {duration}, behaviour: \"\"}}\n",
            index + 1
        );
    }
    parse(&text).expect("a valid scenario")
}

fn in_phase(index: usize, into: f64, remaining: f64) -> Position {
    Position::In {
        index,
        into: secs(into),
        remaining: secs(remaining),
    }
}

#[test]
fn the_example_parses_with_its_controls() {
    let scenario = parse(EXAMPLE).expect("the example is valid");
    assert!(!scenario.looping);
    assert_eq!(scenario.start, Start::Listen);
    let names: Vec<&str> = scenario.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["warm-up", "slow", "outage", "recover"]);
    assert_eq!(scenario.length(), secs(180.0));
    let slow = &scenario.phases[1];
    assert_eq!(slow.duration, secs(60.0));
    assert_eq!(slow.behaviour, "delay=lognormal(20ms,200ms)");
    assert!(matches!(slow.controls.delay, Some(Delay::LogNormal { .. })));
    assert!(scenario.phases[0].controls.is_empty());
    assert!(scenario.phases[2].controls.status.is_some());
    assert!(scenario.phases[2].controls.fault.is_some());
}

#[test]
fn loop_and_start_are_optional_and_durations_take_every_unit() {
    let scenario = scenario("", &["1.5s", "250ms", "2m", "1h"]);
    assert!(!scenario.looping);
    assert_eq!(scenario.start, Start::Listen);
    assert_eq!(scenario.length(), secs(1.5 + 0.25 + 120.0 + 3600.0));
}

#[test]
fn every_error_names_the_phase_and_the_key() {
    let phase = |body: &str| {
        format!("phases:\n  - {{name: a, duration: 1s, behaviour: \"\"}}\n  - {body}\n")
    };
    for (text, expected) in [
        (
            phase("{name: slow, duration: 1s, behaviour: \"delay=fast\"}"),
            "phase 2 (slow): behaviour: a duration such as 250ms, 1.5s or 150us (param delay)",
        ),
        (
            phase("{duration: 1s, behavior: \"\"}"),
            r#"phase 2: unknown key "behavior" (expected name, duration, behaviour)"#,
        ),
        (
            phase("{name: b, duration: 1s, behavior: \"\"}"),
            r#"phase 2 (b): unknown key "behavior" (expected name, duration, behaviour)"#,
        ),
        (
            phase("{name: b, behaviour: \"\"}"),
            "phase 2 (b): missing key duration (expected name, duration, behaviour)",
        ),
        (
            phase("{duration: 1s, behaviour: \"\"}"),
            "phase 2: missing key name (expected name, duration, behaviour)",
        ),
        (
            phase("{name: b, duration: 1s}"),
            "phase 2 (b): missing key behaviour (expected name, duration, behaviour)",
        ),
        (
            phase("{name: b, duration: 0s, behaviour: \"\"}"),
            "phase 2 (b): duration: must be at least 10ms",
        ),
        (
            phase("{name: b, duration: 9ms, behaviour: \"\"}"),
            "phase 2 (b): duration: must be at least 10ms",
        ),
        (
            phase("{name: b, duration: 30, behaviour: \"\"}"),
            "phase 2 (b): duration: expected a number with a unit: ns, us, ms, s, m or h (e.g. 250ms, 1.5s)",
        ),
        (
            phase("{name: b, duration: [1s], behaviour: \"\"}"),
            "phase 2 (b): duration: expected a string, found a list",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: }"),
            r#"phase 2 (b): behaviour: expected a string ("" for none), found nothing"#,
        ),
        (
            phase("{name: 7, duration: 1s, behaviour: \"\"}"),
            "phase 2: name: expected a string, found a number",
        ),
        (
            phase("{name: \"a b\", duration: 1s, behaviour: \"\"}"),
            "phase 2: name: expected 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        ),
        (
            phase(&format!(
                "{{name: {}, duration: 1s, behaviour: \"\"}}",
                "x".repeat(65)
            )),
            "phase 2: name: expected 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        ),
        (
            phase("{name: a, duration: 1s, behaviour: \"\"}"),
            "phase 2 (a): name: phase 1 has the same name; names must be unique",
        ),
        (
            phase("just-a-string"),
            "phase 2: expected a mapping with the keys name, duration, behaviour, found a string",
        ),
        (
            "phases: []".to_owned(),
            "phases: empty; a scenario needs at least one phase",
        ),
        (
            "phases: {a: 1}".to_owned(),
            "phases: expected a list of phases, found a mapping",
        ),
        (
            "loop: true".to_owned(),
            "missing key phases (expected phases, loop, start)",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "looping: true\n",
            r#"unknown key "looping" (expected phases, loop, start)"#,
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "loop: yes\n",
            "loop: expected true or false, found a string",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "start: aligned\n",
            "start: aligned needs loop: true (use an RFC 3339 instant for a one-off run)",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "start: soon\n",
            "start: expected listen, aligned or an RFC 3339 instant such as 2026-12-03T20:00:00Z",
        ),
        (
            // An instant needs its offset: a local time is ambiguous.
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "start: 2026-12-03T20:00:00\n",
            "start: expected listen, aligned or an RFC 3339 instant such as 2026-12-03T20:00:00Z",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "start: 1969-12-31T23:59:59Z\n",
            "start: an instant before 1970, the Unix epoch",
        ),
        (
            phase("{name: b, duration: 1s, behaviour: \"\"}") + "start: 1969-12-31T23:59:59.5Z\n",
            "start: an instant before 1970, the Unix epoch",
        ),
        (
            "- a\n- b\n".to_owned(),
            "expected a mapping with the keys phases, loop, start, found a list",
        ),
    ] {
        assert_eq!(message(&text), expected, "for {text}");
    }
}

#[test]
fn at_most_a_thousand_phases() {
    let phase = "  - {name: p, duration: 1s, behaviour: \"\"}\n";
    let text = format!("phases:\n{}", phase.repeat(MAX_PHASES + 1));
    assert_eq!(message(&text), "phases: 1001 phases; at most 1000");
}

#[test]
fn yaml_that_does_not_parse_reports_its_line() {
    let text = "phases:\n  - {name: a, duration: 1s\n";
    let message = message(text);
    assert!(message.contains("line 3 column 1"), "{message}");
}

#[test]
fn a_scenario_lasts_at_most_30_days() {
    let scenario = scenario("", &["720h"]);
    assert_eq!(scenario.length(), MAX_LENGTH);
    let text = "phases:\n  - {name: a, duration: 720h, behaviour: \"\"}\n  - {name: b, duration: 10ms, behaviour: \"\"}\n";
    assert_eq!(
        message(text),
        "phase 2 (b): duration: the scenario would last more than 30 days"
    );
}

#[test]
fn a_scenario_text_is_at_most_1_mib() {
    let body = "phases:\n  - {name: a, duration: 1s, behaviour: \"\"}\n#";
    let fill = |total: usize| format!("{body}{}", " ".repeat(total - body.len()));
    assert!(parse(&fill(MAX_BYTES)).is_ok());
    assert_eq!(
        message(&fill(MAX_BYTES + 1)),
        "1048577 bytes; a scenario is at most 1 MiB"
    );
}

#[test]
fn a_looping_scenario_wraps_around() {
    let scenario = scenario("loop: true", &["1s", "2s"]);
    let ns = |secs: f64| (secs * 1e9) as i128;
    assert_eq!(scenario.position(ns(0.5)), in_phase(0, 0.5, 0.5));
    assert_eq!(scenario.position(ns(3.5)), in_phase(0, 0.5, 0.5));
    assert_eq!(scenario.position(ns(3.0)), in_phase(0, 0.0, 1.0));
    assert_eq!(scenario.position(ns(3000.0 + 2.0)), in_phase(1, 1.0, 1.0));
}

#[test]
fn phase_boundaries_are_exact_to_the_nanosecond() {
    let scenario = scenario("", &["1s", "2s"]);
    assert_eq!(scenario.position(0), in_phase(0, 0.0, 1.0));
    assert_eq!(
        scenario.position(999_999_999),
        Position::In {
            index: 0,
            into: Duration::from_nanos(999_999_999),
            remaining: Duration::from_nanos(1),
        }
    );
    assert_eq!(scenario.position(1_000_000_000), in_phase(1, 0.0, 2.0));
    assert_eq!(
        scenario.position(2_999_999_999),
        Position::In {
            index: 1,
            into: Duration::from_nanos(1_999_999_999),
            remaining: Duration::from_nanos(1),
        }
    );
}

#[test]
fn before_its_start_and_after_its_last_phase_the_start_profile_applies() {
    let once = scenario("", &["1s", "2s"]);
    assert_eq!(
        once.position(-1_500_000_000),
        Position::Before {
            remaining: secs(1.5)
        }
    );
    assert_eq!(once.position(3_000_000_000), Position::After);
    assert_eq!(once.position(i128::MAX), Position::After);
    // A looping scenario has no after, but it may not have started yet.
    let looping = scenario("loop: true", &["1s", "2s"]);
    assert_eq!(
        looping.position(-1),
        Position::Before {
            remaining: Duration::from_nanos(1)
        }
    );
}

#[test]
fn listen_starts_when_the_listener_opens() {
    let scenario = scenario("", &["1s"]);
    assert_eq!(scenario.elapsed_at_start(secs(1000.3)), 0);
}

#[test]
fn aligned_runs_on_multiples_of_its_length_since_the_epoch() {
    let scenario = scenario("loop: true\nstart: aligned", &["3s", "4s"]);
    assert_eq!(scenario.start, Start::Aligned);
    let elapsed = scenario.elapsed_at_start(Duration::new(1000, 300_000_000));
    assert_eq!(elapsed, 6_300_000_000);
    assert_eq!(
        scenario.position(elapsed),
        Position::In {
            index: 1,
            into: Duration::new(3, 300_000_000),
            remaining: Duration::from_millis(700),
        }
    );
}

#[test]
fn at_an_instant_it_waits_for_then_follows_it() {
    let scenario = scenario("start: 2026-12-03T20:00:00Z", &["1s", "2s"]);
    let at = Duration::from_secs(DEC_3_2026_20H);
    assert_eq!(scenario.start, Start::At(at));
    let before = scenario.elapsed_at_start(at - secs(10.0));
    assert_eq!(before, -10_000_000_000);
    assert_eq!(
        scenario.position(before),
        Position::Before {
            remaining: secs(10.0)
        }
    );
    let after = scenario.elapsed_at_start(at + secs(1.5));
    assert_eq!(after, 1_500_000_000);
    assert_eq!(scenario.position(after), in_phase(1, 0.5, 1.5));
    let long_after = scenario.elapsed_at_start(at + secs(3.0));
    assert_eq!(scenario.position(long_after), Position::After);
}

#[test]
fn instants_may_carry_an_offset_and_a_fraction() {
    for (start, nanos) in [
        ("2026-12-03T21:00:00+01:00", 0),
        ("2026-12-03T15:30:00-04:30", 0),
        ("\"2026-12-03T20:00:00.25Z\"", 250_000_000),
    ] {
        let scenario = scenario(&format!("start: {start}"), &["1s"]);
        assert_eq!(
            scenario.start,
            Start::At(Duration::new(DEC_3_2026_20H, nanos)),
            "{start}"
        );
    }
    assert_eq!(
        scenario("start: 1970-01-01T00:00:00Z", &["1s"]).start,
        Start::At(Duration::ZERO)
    );
}

#[test]
fn text_nested_or_spread_past_any_scenario_is_refused_before_parsing() {
    let refused = |text: &str, needle: &str| {
        let started = std::time::Instant::now();
        let err = parse(text).expect_err("refused");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    };
    refused(&"[".repeat(1_000_000), "nested more than 16 levels");
    refused(&"{".repeat(1_000_000), "nested more than 16 levels");
    refused(
        &format!("{}x\n", "- ".repeat(500_000)),
        "nested more than 16 levels",
    );
    refused(
        &format!("{}x\n", "? ".repeat(500_000)),
        "nested more than 16 levels",
    );
    refused(
        &format!("{}x: 1\n", " ".repeat(65)),
        "indented more than 64",
    );
    refused(
        &format!("phases: [{}]", "1,".repeat(200_000)),
        "more than 100000",
    );
    // Quoted and commented brackets are text; an apostrophe in a plain scalar opens nothing.
    let quoted = format!(
        "# {}\nloop: false\nphases:\n- {{name: it's, duration: 1s, behaviour: \"{}\"}}\n",
        "[".repeat(100),
        "[".repeat(100)
    );
    let err = parse(&quoted).expect_err("a bad name and a bad behaviour");
    assert!(!err.to_string().contains("nested"), "{err}");
    let sneaky = format!("a: b'\n{}", "[".repeat(100));
    refused(&sneaky, "nested more than 16 levels");
}
