//! The server-wide behaviour while the server runs: the start profile (`--behaviour`), the
//! control API's profile (`PUT /admin/behaviour`), and a scenario's phases (`--scenario`).
//! The control API's profile wins while it is set; else the scenario's phase, while one
//! applies; else the start profile.
//!
//! Workers switch without messages: each keeps the profile it last worked out with the
//! instant it stops applying (the end of a scenario's phase) and the version of the state it
//! came from. A request looks at one atomic and one instant; the state's lock is taken only
//! when a phase ends or the control API changed something, once per worker.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::behaviour::scenario::{Position, Scenario};
use crate::behaviour::{BehaviourError, Controls};
use crate::config::ProfileCheck;
use crate::ops::exposition::{ChangeSource, Phases, Registry};

/// A server-wide behaviour profile: as written, and as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub text: String,
    pub controls: Controls,
}

/// Where the profile that applies now comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Start,
    Control,
    Scenario,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Start => "start",
            Source::Control => "control",
            Source::Scenario => "scenario",
        }
    }
}

/// The server-wide behaviour, shared by every worker.
#[derive(Debug)]
pub struct Live {
    /// Bumped (under the lock) by every change the control API makes.
    version: AtomicU64,
    state: Mutex<State>,
    check: ProfileCheck,
    /// Wakes the task that logs the scenario's phases when the scenario changes.
    scenario_changed: Notify,
}

#[derive(Debug)]
struct State {
    start: Arc<Profile>,
    control: Option<Arc<Profile>>,
    scenario: Option<Running>,
}

/// A scenario being played: how far into it it was at `anchor`.
#[derive(Debug)]
struct Running {
    scenario: Arc<Scenario>,
    phases: Vec<Arc<Profile>>,
    anchor: Instant,
    /// Nanoseconds into the scenario at `anchor`; negative before its start.
    offset: i128,
}

impl Running {
    fn new(scenario: Arc<Scenario>, now: Instant) -> Running {
        let phases = scenario
            .phases
            .iter()
            .map(|phase| {
                Arc::new(Profile {
                    text: phase.behaviour.clone(),
                    controls: phase.controls.clone(),
                })
            })
            .collect();
        let offset = scenario.elapsed_at_start(crate::time::now());
        Running {
            scenario,
            phases,
            anchor: now,
            offset,
        }
    }

    fn position(&self, now: Instant) -> Position {
        let elapsed = if now >= self.anchor {
            self.offset + (now - self.anchor).as_nanos() as i128
        } else {
            self.offset - (self.anchor - now).as_nanos() as i128
        };
        self.scenario.position(elapsed)
    }
}

/// The profile that applies at one instant, and until when.
#[derive(Debug, Clone)]
pub struct Current {
    pub profile: Arc<Profile>,
    pub source: Source,
    /// When this stops applying unless something changes (the end of a scenario's phase).
    pub until: Option<Instant>,
}

impl State {
    fn current(&self, now: Instant) -> Current {
        let scenario = self.scenario.as_ref().map(|running| {
            let position = running.position(now);
            let phase = position
                .phase()
                .map(|index| Arc::clone(&running.phases[index]));
            (phase, position.remaining().map(|remaining| now + remaining))
        });
        if let Some(control) = &self.control {
            return Current {
                profile: Arc::clone(control),
                source: Source::Control,
                until: None,
            };
        }
        match scenario {
            Some((Some(phase), until)) => Current {
                profile: phase,
                source: Source::Scenario,
                until,
            },
            Some((None, until)) => Current {
                profile: Arc::clone(&self.start),
                source: Source::Start,
                until,
            },
            None => Current {
                profile: Arc::clone(&self.start),
                source: Source::Start,
                until: None,
            },
        }
    }
}

/// Where a running scenario is, for `GET /admin/scenario`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioNow {
    pub looping: bool,
    pub position: Position,
    pub phase: Option<(usize, String)>,
}

impl Live {
    /// The state at start: `start` (`--behaviour`), and `scenario` starting `now`.
    pub fn new(
        start: Profile,
        scenario: Option<Arc<Scenario>>,
        check: ProfileCheck,
        now: Instant,
    ) -> Live {
        Live {
            version: AtomicU64::new(0),
            state: Mutex::new(State {
                start: Arc::new(start),
                control: None,
                scenario: scenario.map(|scenario| Running::new(scenario, now)),
            }),
            check,
            scenario_changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a whole state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The profile that applies at `now`, with the version of the state it was read from.
    pub fn current(&self, now: Instant) -> (u64, Current) {
        let state = self.state();
        (self.version.load(Ordering::Acquire), state.current(now))
    }

    /// The version of the state: a worker's copy is stale when this moved.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Checks `text` as `--behaviour` is checked.
    pub fn check(&self, text: &str) -> Result<Controls, BehaviourError> {
        self.check.check(text)
    }

    /// Makes a change under the lock, bumps the version, and logs and counts it.
    fn change(
        &self,
        what: &str,
        peer: Option<SocketAddr>,
        metrics: &Registry,
        apply: impl FnOnce(&mut State),
    ) -> Current {
        let now = Instant::now();
        let mut state = self.state();
        let old = state.current(now);
        apply(&mut state);
        self.version.fetch_add(1, Ordering::AcqRel);
        let new = state.current(now);
        drop(state);
        metrics.behaviour_changed(ChangeSource::Control);
        tracing::info!(
            target: "control",
            peer = peer.map(|peer| peer.to_string()).unwrap_or_default(),
            old = shown(&old.profile.text),
            old_source = old.source.label(),
            new = shown(&new.profile.text),
            new_source = new.source.label(),
            "{what}"
        );
        new
    }

    /// `PUT /admin/behaviour`: `profile` applies from now on, over any scenario.
    pub fn set_control(
        &self,
        profile: Profile,
        peer: Option<SocketAddr>,
        metrics: &Registry,
    ) -> Current {
        let profile = Arc::new(profile);
        self.change("behaviour set", peer, metrics, |state| {
            state.control = Some(profile);
        })
    }

    /// `DELETE /admin/behaviour`: back to the scenario's phase, or the start profile.
    pub fn clear_control(&self, peer: Option<SocketAddr>, metrics: &Registry) -> Current {
        self.change("behaviour reset", peer, metrics, |state| {
            state.control = None;
        })
    }

    /// `PUT /admin/scenario` (a new one, started now), `POST /admin/scenario/restart` (the
    /// same again) or `DELETE /admin/scenario` (none).
    pub fn set_scenario(
        &self,
        scenario: Option<Arc<Scenario>>,
        what: &str,
        peer: Option<SocketAddr>,
        metrics: &Registry,
    ) {
        let now = Instant::now();
        self.change(what, peer, metrics, |state| {
            state.scenario = scenario.map(|scenario| Running::new(scenario, now));
        });
        self.scenario_changed.notify_one();
    }

    /// The scenario being played, if any.
    pub fn scenario(&self) -> Option<Arc<Scenario>> {
        let state = self.state();
        state
            .scenario
            .as_ref()
            .map(|running| Arc::clone(&running.scenario))
    }

    /// Where the scenario is at `now`, if one is loaded.
    pub fn scenario_now(&self, now: Instant) -> Option<ScenarioNow> {
        let state = self.state();
        let running = state.scenario.as_ref()?;
        let position = running.position(now);
        let phase = position
            .phase()
            .map(|index| (index, running.scenario.phases[index].name.clone()));
        Some(ScenarioNow {
            looping: running.scenario.looping,
            position,
            phase,
        })
    }

    /// Logs each phase of the scenario as it begins, counts each move to another phase, and
    /// keeps `microservice2_scenario_phase` current. Runs until the server stops. Workers do
    /// not wait on this: each works its phase out from the clock.
    pub async fn log_scenario(&self, metrics: Registry) {
        let mut last: Option<(usize, Option<usize>)> = None;
        let mut generation = 0usize;
        loop {
            let changed = self.scenario_changed.notified();
            let now = Instant::now();
            let (names, current, wait) = {
                let state = self.state();
                match &state.scenario {
                    Some(running) => {
                        let position = running.position(now);
                        let (index, wait) = (position.phase(), position.remaining());
                        let names = running
                            .scenario
                            .phases
                            .iter()
                            .map(|phase| phase.name.clone())
                            .collect::<Vec<_>>();
                        (Some(names), index, wait)
                    }
                    None => (None, None, None),
                }
            };
            let key = (generation, current);
            if last != Some(key) {
                if let Some(names) = &names {
                    let phase = current.map(|index| names[index].as_str());
                    if last.is_some_and(|(seen, _)| seen == generation) {
                        metrics.behaviour_changed(ChangeSource::Scenario);
                    }
                    tracing::info!(
                        target: "scenario",
                        phase = phase.unwrap_or("-"),
                        index = current.map_or(-1, |index| index as i64),
                        "scenario phase"
                    );
                }
                metrics.set_scenario(names.map(|names| Phases { names, current }));
                last = Some(key);
            }
            // A wake a little past the boundary: the phase has surely changed by then.
            let sleep = wait.map_or(Duration::from_secs(3600), |wait| {
                wait + Duration::from_millis(1)
            });
            tokio::select! {
                () = changed => generation += 1,
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// The longest profile text a log line carries whole.
const SHOWN: usize = 256;

/// `text` for a log line: whole up to [`SHOWN`] bytes, else its start and its length.
fn shown(text: &str) -> String {
    if text.len() <= SHOWN {
        return text.to_owned();
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// A worker's copy of the profile that applies: read again when the state's version moved or
/// its `until` passed.
#[derive(Debug)]
pub(super) struct Cached {
    version: u64,
    current: Current,
    /// Whether the profile is empty: plain requests may take the fast path.
    plain: bool,
}

impl Cached {
    pub(super) fn new(live: &Live, now: Instant) -> RefCell<Cached> {
        let (version, current) = live.current(now);
        RefCell::new(Cached {
            version,
            plain: current.profile.controls.is_empty(),
            current,
        })
    }

    /// The profile that applies at `now`, refreshed from `live` when stale.
    #[inline]
    pub(super) fn at(&mut self, live: &Live, now: Instant) -> &Current {
        if self.version != live.version() || self.current.until.is_some_and(|until| now >= until) {
            let (version, current) = live.current(now);
            self.version = version;
            self.plain = current.profile.controls.is_empty();
            self.current = current;
        }
        &self.current
    }

    /// Whether the profile at `now` is empty.
    #[inline]
    pub(super) fn plain_at(&mut self, live: &Live, now: Instant) -> bool {
        self.at(live, now);
        self.plain
    }
}
