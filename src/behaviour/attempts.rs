//! `fail-first=N`'s memory: how many attempts each request id (the value of the attempt
//! header, `--attempt-header`) has made, and what its first attempt drew, so that attempts 2
//! to N fail the same way and later ones succeed: a transient failure that a caller's retries
//! get past. One map shared by the workers, bounded whatever callers send: at most
//! `--attempt-keys` entries, the oldest dropped first, each forgotten `--attempt-ttl` after
//! its first attempt. Pure: the clock is an argument, and the tests pass fixed instants.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Fault, Plan};

/// What an attempt injected: an error status, a socket fault, or neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failure {
    pub status: Option<u16>,
    pub fault: Option<Fault>,
}

impl Failure {
    /// What `plan` injects.
    pub fn of(plan: &Plan) -> Failure {
        Failure {
            status: plan.status,
            fault: plan.fault,
        }
    }
}

/// One request id's attempts so far.
#[derive(Debug, Clone, Copy)]
struct Seen {
    attempts: u32,
    /// What the first attempt drew.
    failure: Failure,
    first: Instant,
}

/// The map and the order its entries were made in.
#[derive(Debug, Default)]
struct Table {
    seen: HashMap<u64, Seen>,
    /// (hash, first attempt) of each entry, oldest first: what to drop first. An item whose
    /// entry has since expired and been made again is stale; it is dropped when it reaches the
    /// front, which, being older than the new entry, it does no later than that entry expires.
    order: VecDeque<(u64, Instant)>,
}

/// The attempts of every request id seen within the time to live, shared by the workers.
#[derive(Debug)]
pub struct Attempts {
    table: Mutex<Table>,
    /// Keys the hash of each header value. The values themselves are never stored, so a
    /// caller sending long ids cannot grow the map's memory: each entry is a fixed size.
    /// Two ids whose 64-bit hashes collide (about one pair in 2^64, and not to be arranged
    /// without the key) share one count: one of them gets its ordinary answer an attempt or
    /// two early, which harms nothing.
    keys: RandomState,
    capacity: usize,
    ttl: Duration,
}

impl Attempts {
    /// A map of at most `capacity` request ids (at least 1), each kept `ttl` from its first
    /// attempt.
    pub fn new(capacity: usize, ttl: Duration) -> Attempts {
        Attempts {
            table: Mutex::new(Table::default()),
            keys: RandomState::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Counts an attempt of the request id `key` at `now`: returns its number (1-based,
    /// saturating) and what its first attempt injected, which `first` draws when this is the
    /// first (or the id's entry has expired or been dropped).
    pub fn attempt<F: FnOnce() -> Failure>(
        &self,
        key: &[u8],
        now: Instant,
        first: F,
    ) -> (u32, Failure) {
        let hash = self.keys.hash_one(key);
        if let Some(again) = self.lock().again(hash, now, self.ttl) {
            return again;
        }
        // Drawn with the lock released: the workers wait on each other only for the map.
        let failure = first();
        let mut table = self.lock();
        // Another worker may have counted a first attempt of the same id meanwhile: this one
        // is then its next.
        if let Some(again) = table.again(hash, now, self.ttl) {
            return again;
        }
        table.insert(hash, now, failure, self.capacity, self.ttl);
        (1, failure)
    }

    /// Applies `fail-first=fail_first` to `plan`, drawn for an attempt of the request id
    /// `key`: a first attempt keeps what it drew, attempts up to `fail_first` inject what the
    /// first drew, and later attempts inject no status or fault (their delay, body and pace
    /// stay as drawn: those are not failures).
    pub fn apply(&self, plan: &mut Plan, fail_first: u8, key: &[u8], now: Instant) {
        let (attempt, first) = self.attempt(key, now, || Failure::of(plan));
        let failure = if attempt <= u32::from(fail_first) {
            first
        } else {
            Failure::default()
        };
        plan.status = failure.status;
        plan.fault = failure.fault;
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; were it poisoned, the table is still whole.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Table {
    /// Counts a further attempt of `hash`, when its entry is there and has not expired.
    fn again(&mut self, hash: u64, now: Instant, ttl: Duration) -> Option<(u32, Failure)> {
        let seen = self.seen.get_mut(&hash)?;
        if expired(seen.first, now, ttl) {
            return None;
        }
        seen.attempts = seen.attempts.saturating_add(1);
        Some((seen.attempts, seen.failure))
    }

    /// Makes `hash`'s entry, its first attempt at `now`: first drops, from the front, what has
    /// expired, then the oldest until there is room, so the order holds at most `capacity`
    /// items, and the map (one item each) no more.
    fn insert(
        &mut self,
        hash: u64,
        now: Instant,
        failure: Failure,
        capacity: usize,
        ttl: Duration,
    ) {
        while let Some(&(_, first)) = self.order.front() {
            if self.order.len() < capacity && !expired(first, now, ttl) {
                break;
            }
            self.drop_oldest();
        }
        let first = Seen {
            attempts: 1,
            failure,
            first: now,
        };
        self.seen.insert(hash, first);
        self.order.push_back((hash, now));
    }

    /// Drops the oldest item, and its entry unless the entry was made again since.
    fn drop_oldest(&mut self) {
        if let Some((hash, first)) = self.order.pop_front() {
            if self.seen.get(&hash).is_some_and(|seen| seen.first == first) {
                self.seen.remove(&hash);
            }
        }
    }
}

/// Whether an entry first seen at `first` has outlived `ttl` at `now`.
fn expired(first: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(first) >= ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    const FAILED: Failure = Failure {
        status: Some(503),
        fault: None,
    };

    fn plan(status: Option<u16>, fault: Option<Fault>) -> Plan {
        Plan {
            delay: Duration::from_millis(5),
            fault,
            status,
            count: None,
            drip: None,
            rate: None,
        }
    }

    /// (map entries, order items).
    fn sizes(attempts: &Attempts) -> (usize, usize) {
        let table = attempts.lock();
        (table.seen.len(), table.order.len())
    }

    #[test]
    fn attempts_are_counted_per_id_and_only_the_first_draws() {
        let attempts = Attempts::new(100, MINUTE);
        let now = Instant::now();
        let mut draws = 0;
        let mut draw = || {
            draws += 1;
            FAILED
        };
        assert_eq!(attempts.attempt(b"r1", now, &mut draw), (1, FAILED));
        assert_eq!(attempts.attempt(b"r1", now, &mut draw), (2, FAILED));
        assert_eq!(attempts.attempt(b"r1", now, &mut draw), (3, FAILED));
        assert_eq!(draws, 1);
        let none = attempts.attempt(b"r2", now, Failure::default);
        assert_eq!(none, (1, Failure::default()));
        assert_eq!(attempts.attempt(b"r2", now, || FAILED).0, 2);
        assert_eq!(attempts.attempt(b"r1", now, || FAILED).0, 4);
    }

    #[test]
    fn fail_first_repeats_the_first_draw_then_injects_nothing() {
        let attempts = Attempts::new(100, MINUTE);
        let now = Instant::now();
        let apply = |key: &[u8], status: Option<u16>, fault: Option<Fault>| {
            let mut plan = plan(status, fault);
            attempts.apply(&mut plan, 2, key, now);
            assert_eq!(plan.delay, Duration::from_millis(5), "the delay stays");
            (plan.status, plan.fault)
        };
        // Attempts 1 and 2 fail as the first drew; later ones, whatever they draw, do not.
        assert_eq!(apply(b"a", Some(503), None), (Some(503), None));
        assert_eq!(apply(b"a", None, None), (Some(503), None));
        assert_eq!(apply(b"a", Some(503), None), (None, None));
        assert_eq!(apply(b"a", Some(500), None), (None, None));
        // A first attempt that drew nothing: its next attempts inject nothing either.
        assert_eq!(apply(b"b", None, None), (None, None));
        assert_eq!(apply(b"b", Some(503), None), (None, None));
        // Faults are repeated the same way.
        let reset = Some(Fault::Reset);
        assert_eq!(apply(b"c", None, reset), (None, reset));
        assert_eq!(apply(b"c", None, None), (None, reset));
        assert_eq!(apply(b"c", None, reset), (None, None));
    }

    #[test]
    fn at_capacity_the_oldest_id_is_dropped_first() {
        let attempts = Attempts::new(2, MINUTE);
        let now = Instant::now();
        let count = |key: &[u8]| attempts.attempt(key, now, Failure::default).0;
        assert_eq!((count(b"a"), count(b"b")), (1, 1));
        assert_eq!(count(b"a"), 2, "counting again does not make an id younger");
        assert_eq!(count(b"c"), 1, "a third id drops the oldest, a");
        assert_eq!(count(b"b"), 2);
        assert_eq!(count(b"c"), 2);
        assert_eq!(count(b"a"), 1, "a starts over, dropping b");
        assert_eq!(count(b"c"), 3);
        assert_eq!(count(b"b"), 1);
        assert_eq!(sizes(&attempts), (2, 2));
    }

    #[test]
    fn an_id_starts_over_once_its_first_attempt_is_older_than_the_ttl() {
        let attempts = Attempts::new(100, MINUTE);
        let start = Instant::now();
        let count = |at: Duration| attempts.attempt(b"r1", start + at, || FAILED);
        assert_eq!(count(Duration::ZERO), (1, FAILED));
        assert_eq!(count(Duration::from_secs(59)), (2, FAILED));
        // Expired: drawn again, and this draw is what the next attempts repeat.
        let drawn = attempts.attempt(b"r1", start + MINUTE, Failure::default);
        assert_eq!(drawn, (1, Failure::default()));
        assert_eq!(
            count(MINUTE + Duration::from_secs(1)),
            (2, Failure::default())
        );
        // The old order item went with the sweep; only the new entry's remains.
        assert_eq!(sizes(&attempts), (1, 1));
    }

    #[test]
    fn the_map_and_its_order_stay_bounded_under_churn() {
        let attempts = Attempts::new(100, MINUTE);
        let now = Instant::now();
        for id in 0u32..1_000_000 {
            attempts.attempt(&id.to_le_bytes(), now, Failure::default);
        }
        assert_eq!(sizes(&attempts), (100, 100));
        // Ids that come back after they expired leave stale items behind them: the sweep
        // drops them, so the order stays near the ids alive (a second's worth, 34), far
        // below the capacity.
        let attempts = Attempts::new(10_000, Duration::from_secs(1));
        let start = Instant::now();
        for step in 0u32..100_000 {
            let at = start + Duration::from_millis(30) * step;
            attempts.attempt(&(step % 50).to_le_bytes(), at, Failure::default);
            let (seen, order) = sizes(&attempts);
            assert!(
                seen <= order && order <= 35,
                "{seen} entries, {order} items"
            );
        }
    }

    #[test]
    fn attempts_from_many_threads_are_each_counted_once() {
        let attempts = Attempts::new(100, MINUTE);
        let now = Instant::now();
        let mut numbers: Vec<u32> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .map(|_| attempts.attempt(b"shared", now, || FAILED).0)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|thread| thread.join().expect("no panic"))
                .collect()
        });
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=4000).collect::<Vec<_>>());
    }
}
