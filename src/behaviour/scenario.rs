//! Scenarios: a YAML file that scripts the server's behaviour profile over time, as a list of
//! phases, each a behaviour (the `delay=…&status=…` grammar) held for a duration. Parsing walks
//! the YAML value by hand so that every error names the phase and the key at fault; where the
//! scenario stands at a given moment is pure arithmetic on the phases' cumulative ends, so the
//! caller owns the clock and the tests use fixed instants.

use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::{BehaviourError, Controls};
use crate::time::parse_duration;

/// The largest scenario text accepted: a thousand phases with long behaviours fit in a tenth of
/// it, so anything larger is a mistake (a wrong file), not a scenario.
pub const MAX_BYTES: usize = 1 << 20;

/// The most phases in one scenario: the phase name is a Prometheus label value, and a
/// thousand is already more series than a dashboard can show.
pub const MAX_PHASES: usize = 1000;

/// The longest a whole scenario may last: longer than any benchmark run, and it keeps every
/// position well inside `u64` nanoseconds.
pub const MAX_LENGTH: Duration = Duration::from_secs(30 * 86_400);

/// The shortest phase: workers switch within 10 ms of a boundary, so a shorter phase could
/// not be told apart; it also bounds the phase log of a looping scenario to 100 lines a second.
pub const MIN_PHASE: Duration = Duration::from_millis(10);

/// The longest phase name: it becomes a label value, read on dashboards.
pub const MAX_NAME: usize = 64;

const START_EXPECTED: &str =
    "start: expected listen, aligned or an RFC 3339 instant such as 2026-12-03T20:00:00Z";
const TOP_KEYS: &str = "phases, loop, start";
const PHASE_KEYS: &str = "name, duration, behaviour";

/// A scenario file that cannot be run; the message names the phase and the key at fault, but
/// not the file (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(String);

/// A parsed and checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// After the last phase, start again at the first.
    pub looping: bool,
    /// When phase 1 begins.
    pub start: Start,
    /// At least one, at most [`MAX_PHASES`].
    pub phases: Vec<Phase>,
    /// Each phase's end, in nanoseconds from the scenario's start: `position` bisects these.
    ends: Vec<u64>,
}

/// When a scenario's first phase begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// When the listener opens.
    Listen,
    /// On the wall clock's multiples of the scenario's length (counted from the Unix epoch),
    /// so every instance started with the same file is in the same phase at the same moment.
    Aligned,
    /// At this instant, since the Unix epoch.
    At(Duration),
}

/// One phase: a behaviour profile held for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Unique within the scenario: 1 to [`MAX_NAME`] ASCII letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// At least [`MIN_PHASE`].
    pub duration: Duration,
    /// The behaviour as written (may be empty).
    pub behaviour: String,
    /// The behaviour as parsed.
    pub controls: Controls,
}

/// Where a scenario stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Not started: the start profile applies for `remaining` more.
    Before { remaining: Duration },
    /// In phase `index`, `into` it, with `remaining` left of it.
    In {
        index: usize,
        into: Duration,
        remaining: Duration,
    },
    /// A non-looping scenario after its last phase: the start profile applies from now on.
    After,
}

impl Position {
    /// The phase that applies, if one does.
    pub fn phase(self) -> Option<usize> {
        match self {
            Position::In { index, .. } => Some(index),
            Position::Before { .. } | Position::After => None,
        }
    }

    /// How long until the position moves on (to a phase, or past one); `None` after the end.
    pub fn remaining(self) -> Option<Duration> {
        match self {
            Position::In { remaining, .. } | Position::Before { remaining } => Some(remaining),
            Position::After => None,
        }
    }
}

impl Scenario {
    /// Parses and checks a scenario; `validate` parses a phase's behaviour as the server would.
    pub fn parse(
        text: &str,
        validate: &dyn Fn(&str) -> Result<Controls, BehaviourError>,
    ) -> Result<Scenario, ScenarioError> {
        if text.len() > MAX_BYTES {
            return Err(error(format!(
                "{} bytes; a scenario is at most 1 MiB",
                text.len()
            )));
        }
        check_shape(text)?;
        let value: Value =
            serde_norway::from_str(text).map_err(|err| ScenarioError(err.to_string()))?;
        let Value::Mapping(top) = value else {
            return Err(error(format!(
                "expected a mapping with the keys {TOP_KEYS}, found {}",
                kind(&value)
            )));
        };
        reject_unknown_keys(&top, &["phases", "loop", "start"], TOP_KEYS, "")?;
        let looping = match top.get("loop") {
            None => false,
            Some(Value::Bool(looping)) => *looping,
            Some(other) => {
                return Err(error(format!(
                    "loop: expected true or false, found {}",
                    kind(other)
                )));
            }
        };
        let start = match top.get("start") {
            None => Start::Listen,
            Some(value) => parse_start(value)?,
        };
        if start == Start::Aligned && !looping {
            return Err(error(
                "start: aligned needs loop: true (use an RFC 3339 instant for a one-off run)",
            ));
        }
        let items = match top.get("phases") {
            None => return Err(error(format!("missing key phases (expected {TOP_KEYS})"))),
            Some(Value::Sequence(items)) if items.is_empty() => {
                return Err(error("phases: empty; a scenario needs at least one phase"));
            }
            Some(Value::Sequence(items)) if items.len() > MAX_PHASES => {
                return Err(error(format!(
                    "phases: {} phases; at most {MAX_PHASES}",
                    items.len()
                )));
            }
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                return Err(error(format!(
                    "phases: expected a list of phases, found {}",
                    kind(other)
                )));
            }
        };
        let mut phases: Vec<Phase> = Vec::with_capacity(items.len());
        let mut ends = Vec::with_capacity(items.len());
        let mut length = Duration::ZERO;
        for (index, item) in items.iter().enumerate() {
            let phase = parse_phase(index + 1, item, &phases, validate)?;
            length += phase.duration;
            if length > MAX_LENGTH {
                return Err(error(format!(
                    "phase {} ({}): duration: the scenario would last more than 30 days",
                    index + 1,
                    phase.name
                )));
            }
            ends.push(nanos(length));
            phases.push(phase);
        }
        Ok(Scenario {
            looping,
            start,
            phases,
            ends,
        })
    }

    /// The sum of the phases' durations.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.length_nanos())
    }

    fn length_nanos(&self) -> u64 {
        *self.ends.last().expect("a scenario has at least one phase")
    }

    /// How far into the scenario it is at the moment the process reads `wall` (since the Unix
    /// epoch) when the scenario starts now (its listener opened now): `Listen` → 0; `Aligned` →
    /// `wall` modulo the length; `At(t)` → `wall - t` (negative before `t`). In nanoseconds.
    pub fn elapsed_at_start(&self, wall: Duration) -> i128 {
        match self.start {
            Start::Listen => 0,
            Start::Aligned => (wall.as_nanos() % u128::from(self.length_nanos())) as i128,
            Start::At(at) => wall.as_nanos() as i128 - at.as_nanos() as i128,
        }
    }

    /// Where the scenario is `elapsed` nanoseconds after its start (negative: not started
    /// yet). A phase covers [its start, its end): its end is the next phase's start.
    pub fn position(&self, elapsed: i128) -> Position {
        if elapsed < 0 {
            return Position::Before {
                remaining: from_nanos(elapsed.unsigned_abs()),
            };
        }
        let length = i128::from(self.length_nanos());
        let elapsed = match elapsed {
            elapsed if self.looping => elapsed % length,
            elapsed if elapsed >= length => return Position::After,
            elapsed => elapsed,
        };
        // Below `length`, so it fits in u64 and some phase ends after it.
        let elapsed = elapsed as u64;
        let index = self.ends.partition_point(|&end| end <= elapsed);
        let begin = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        Position::In {
            index,
            into: Duration::from_nanos(elapsed - begin),
            remaining: Duration::from_nanos(self.ends[index] - elapsed),
        }
    }
}

fn parse_start(value: &Value) -> Result<Start, ScenarioError> {
    let text = match value {
        Value::String(text) => text.as_str(),
        _ => return Err(error(START_EXPECTED)),
    };
    match text {
        "listen" => Ok(Start::Listen),
        "aligned" => Ok(Start::Aligned),
        _ => {
            let at: jiff::Timestamp = text.parse().map_err(|_| error(START_EXPECTED))?;
            let (seconds, subsec) = (at.as_second(), at.subsec_nanosecond());
            // Before the epoch, jiff's parts are both negative (or one is zero).
            if seconds < 0 || subsec < 0 {
                return Err(error("start: an instant before 1970, the Unix epoch"));
            }
            Ok(Start::At(Duration::new(seconds as u64, subsec as u32)))
        }
    }
}

/// Phase `number` (1-based), checked against the phases before it.
fn parse_phase(
    number: usize,
    value: &Value,
    before: &[Phase],
    validate: &dyn Fn(&str) -> Result<Controls, BehaviourError>,
) -> Result<Phase, ScenarioError> {
    let Value::Mapping(map) = value else {
        return Err(error(format!(
            "phase {number}: expected a mapping with the keys {PHASE_KEYS}, found {}",
            kind(value)
        )));
    };
    let at = format!("phase {number}: ");
    let name = match map.get("name") {
        None => None,
        Some(Value::String(name)) if valid_name(name) => Some(name.clone()),
        Some(Value::String(_)) => {
            return Err(error(format!(
                "{at}name: expected 1 to {MAX_NAME} ASCII letters, digits, '-', '_' or '.'"
            )));
        }
        Some(other) => {
            return Err(error(format!(
                "{at}name: expected a string, found {}",
                kind(other)
            )));
        }
    };
    // From here on the message names the phase by its name too, when it has one.
    let at = match &name {
        Some(name) => format!("phase {number} ({name}): "),
        None => at,
    };
    reject_unknown_keys(map, &["name", "duration", "behaviour"], PHASE_KEYS, &at)?;
    let missing = |key: &str| error(format!("{at}missing key {key} (expected {PHASE_KEYS})"));
    let required = |key: &str| map.get(key).ok_or_else(|| missing(key));
    let Some(name) = name else {
        return Err(missing("name"));
    };
    if let Some(first) = before.iter().position(|phase| phase.name == name) {
        return Err(error(format!(
            "{at}name: phase {} has the same name; names must be unique",
            first + 1
        )));
    }
    let duration = match required("duration")? {
        Value::String(text) => parse_duration(text),
        // `duration: 30` has no unit: the grammar's own message says what it needs.
        Value::Number(number) => parse_duration(&number.to_string()),
        other => Err(format!("expected a string, found {}", kind(other))),
    }
    .map_err(|expected| error(format!("{at}duration: {expected}")))?;
    if duration < MIN_PHASE {
        return Err(error(format!("{at}duration: must be at least 10ms")));
    }
    let behaviour = match required("behaviour")? {
        Value::String(text) => text.clone(),
        other => {
            return Err(error(format!(
                "{at}behaviour: expected a string (\"\" for none), found {}",
                kind(other)
            )));
        }
    };
    let controls = validate(&behaviour).map_err(|err| error(format!("{at}behaviour: {err}")))?;
    Ok(Phase {
        name,
        duration,
        behaviour,
        controls,
    })
}

/// The first key of `map` not in `known`, as an error prefixed with `at`.
fn reject_unknown_keys(
    map: &Mapping,
    known: &[&str],
    listed: &str,
    at: &str,
) -> Result<(), ScenarioError> {
    for key in map.keys() {
        match key {
            Value::String(key) if known.contains(&key.as_str()) => {}
            Value::String(key) => {
                return Err(error(format!(
                    "{at}unknown key {key:?} (expected {listed})"
                )));
            }
            other => {
                return Err(error(format!(
                    "{at}unknown key: {} (expected {listed})",
                    kind(other)
                )));
            }
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A YAML value's kind, in words, for "expected …, found …".
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn error(message: impl Into<String>) -> ScenarioError {
    ScenarioError(message.into())
}

/// A duration of at most [`MAX_LENGTH`] in nanoseconds.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).expect("at most 30 days, far below u64::MAX ns")
}

/// Nanoseconds as a duration, saturating past `u64::MAX` seconds.
fn from_nanos(nanos: u128) -> Duration {
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(seconds, (nanos % 1_000_000_000) as u32)
}

/// The deepest nesting [`check_shape`] lets through: a scenario needs 3 levels (the top
/// mapping, the list of phases, a phase).
const MAX_NESTING: usize = 16;

/// The most leading spaces on a line: block nesting costs a column a level.
const MAX_INDENT: usize = 64;

/// The most structural indicators (`,` `[` `]` `{` `}` `:` `-` `?` outside quotes and comments):
/// a scenario of 1,000 phases has about 10,000.
const MAX_INDICATORS: usize = 100_000;

/// Refuses, before the YAML parser sees it, text whose shape no scenario has: nesting deeper
/// than [`MAX_NESTING`] (flow brackets, or block markers on one line), lines indented past
/// [`MAX_INDENT`], or more than [`MAX_INDICATORS`] indicators. The parser reads every event of
/// a document before building it, so 1 MiB of `[` cost it about 190 MB and 3 s before its own
/// depth limit answered; this scan costs one pass and no memory. It does not parse: it only
/// over-counts (an indicator in a plain scalar counts), so what passes it is for the parser
/// to judge.
fn check_shape(text: &str) -> Result<(), ScenarioError> {
    let too_deep = || {
        error(format!(
            "nested more than {MAX_NESTING} levels deep (a scenario needs 3)"
        ))
    };
    let mut indicators = 0usize;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > MAX_INDENT {
            return Err(error(format!(
                "a line indented more than {MAX_INDENT} spaces"
            )));
        }
        // Block markers opening the line (`- - - x`, `? ? x`) each nest a level.
        let mut rest = line.trim_start();
        let mut markers = 0;
        while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            markers += 1;
            rest = after.trim_start();
        }
        if markers > MAX_NESTING {
            return Err(too_deep());
        }
    }
    let (mut depth, mut quote, mut escaped, mut comment) = (0usize, None, false, false);
    let mut previous = '\n';
    for c in text.chars() {
        match (quote, c) {
            _ if comment => comment = c != '\n',
            (Some('"'), '\\') if !escaped => escaped = true,
            (Some(open), c) => {
                if c == open && !escaped {
                    quote = None;
                }
                escaped = false;
            }
            // A quote opens a quoted scalar only where a scalar may start (`it's` is plain).
            (None, '"' | '\'') if previous.is_whitespace() || "[{,:".contains(previous) => {
                quote = Some(c);
            }
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                indicators += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep());
                }
            }
            (None, ']' | '}') => {
                depth = depth.saturating_sub(1);
                indicators += 1;
            }
            (None, ',' | ':' | '-' | '?') => indicators += 1,
            _ => {}
        }
        previous = c;
    }
    if indicators > MAX_INDICATORS {
        return Err(error(format!(
            "more than {MAX_INDICATORS} commas, colons, dashes and brackets: larger than any scenario of {MAX_PHASES} phases"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
