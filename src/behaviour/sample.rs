//! Random draws for behaviour injection: a small, fast generator (wyrand) owned by each worker
//! or seeded per request, and the sampling of delays and weighted choices. Pure: tested on
//! thousands of draws at fixed seeds, with no clock and no sleeping.

use std::time::Duration;

use super::parse::{Delay, Weighted};

/// z such that P(Z <= z) = 0.99 for a standard normal Z.
const Z_99: f64 = 2.326_347_874_040_841;

/// wyrand: one 64-bit word of state, a multiply and a few xors per draw. Not cryptographic;
/// good enough statistically for latency and error sampling, and cheap on the request path.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// Seeded from the clock and the thread, for workers started without `--seed`.
    pub fn from_entropy(salt: u64) -> Rng {
        let nanos = crate::time::now().as_nanos() as u64;
        let mut rng = Rng::new(nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xA076_1D64_78BD_642F);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xE703_7ED1_A0B4_28DB);
        ((product >> 64) ^ product) as u64
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box–Muller).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * libm::log(u1)).sqrt() * libm::cos(std::f64::consts::TAU * u2)
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

impl Delay {
    /// `lognormal(median,p99)`: its location and scale in log space, from the two quantiles.
    pub fn lognormal(median: Duration, p99: Duration) -> Delay {
        let mu = libm::log(median.as_secs_f64());
        let sigma = (libm::log(p99.as_secs_f64()) - mu) / Z_99;
        Delay::LogNormal {
            median,
            p99,
            mu,
            sigma,
        }
    }

    /// One delay; `inflight` is the number of requests in flight (for `linear`).
    pub fn sample(&self, rng: &mut Rng, inflight: usize) -> Duration {
        match self {
            Delay::Fixed(delay) => *delay,
            Delay::Weighted(weighted) => weighted.pick(rng).unwrap_or(Duration::ZERO),
            Delay::Uniform(low, high) => seconds(
                low.as_secs_f64() + (high.as_secs_f64() - low.as_secs_f64()) * rng.next_f64(),
            ),
            Delay::Normal { mean, sd } => {
                seconds(mean.as_secs_f64() + sd.as_secs_f64() * rng.next_normal())
            }
            Delay::Exp { mean } => seconds(-mean.as_secs_f64() * libm::log(1.0 - rng.next_f64())),
            Delay::LogNormal { mu, sigma, .. } => {
                seconds(libm::exp(mu + sigma * rng.next_normal()))
            }
            Delay::Linear { base, per_inflight } => {
                let count = u32::try_from(inflight).unwrap_or(u32::MAX);
                base.saturating_add(per_inflight.saturating_mul(count))
            }
        }
    }
}

impl<T: Copy> Weighted<T> {
    /// One choice, or `None` for the remainder of 100%.
    pub fn pick(&self, rng: &mut Rng) -> Option<T> {
        let draw = rng.next_f64() * 100.0;
        let mut cumulative = 0.0;
        for (value, percent) in &self.choices {
            cumulative += percent;
            if draw < cumulative {
                return Some(*value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAWS: usize = 20_000;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    /// Sorted samples in milliseconds.
    fn draws(delay: &Delay, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut values: Vec<f64> = (0..DRAWS)
            .map(|_| delay.sample(&mut rng, 0).as_secs_f64() * 1e3)
            .collect();
        values.sort_by(f64::total_cmp);
        values
    }

    fn quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn mean(values: &[f64]) -> f64 {
        values.iter().sum::<f64>() / values.len() as f64
    }

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * tolerance
    }

    #[test]
    fn same_seed_same_draws() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let first: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..100).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..100).map(|_| c.next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_draws_cover_the_range_evenly() {
        let values = draws(&Delay::Uniform(ms(10.0), ms(50.0)), 1);
        assert!(values[0] >= 10.0 && values[DRAWS - 1] <= 50.0);
        assert!(close(mean(&values), 30.0, 0.02), "{}", mean(&values));
        assert!(close(quantile(&values, 0.25), 20.0, 0.05));
    }

    #[test]
    fn normal_has_its_mean_and_spread_and_never_goes_negative() {
        let values = draws(
            &Delay::Normal {
                mean: ms(50.0),
                sd: ms(10.0),
            },
            2,
        );
        assert!(close(mean(&values), 50.0, 0.02), "{}", mean(&values));
        assert!(close(quantile(&values, 0.5), 50.0, 0.03));
        // p84 is one standard deviation above the mean.
        assert!(close(quantile(&values, 0.8413), 60.0, 0.03));
        let clamped = draws(
            &Delay::Normal {
                mean: ms(1.0),
                sd: ms(10.0),
            },
            3,
        );
        assert!(clamped[0] >= 0.0);
        assert!(
            quantile(&clamped, 0.3) == 0.0,
            "the negative half is clamped to 0"
        );
    }

    #[test]
    fn exponential_has_its_mean_and_median() {
        let values = draws(&Delay::Exp { mean: ms(20.0) }, 4);
        assert!(close(mean(&values), 20.0, 0.03), "{}", mean(&values));
        assert!(close(
            quantile(&values, 0.5),
            20.0 * std::f64::consts::LN_2,
            0.04
        ));
    }

    #[test]
    fn lognormal_has_the_given_median_and_p99() {
        let values = draws(&Delay::lognormal(ms(20.0), ms(200.0)), 5);
        assert!(
            close(quantile(&values, 0.5), 20.0, 0.04),
            "{}",
            quantile(&values, 0.5)
        );
        assert!(
            close(quantile(&values, 0.99), 200.0, 0.10),
            "{}",
            quantile(&values, 0.99)
        );
    }

    #[test]
    fn weighted_delays_follow_their_percentages() {
        let delay = Delay::Weighted(Weighted {
            choices: vec![(ms(1.0), 10.0), (ms(2.0), 5.0), (ms(500.0), 1.0)],
        });
        let values = draws(&delay, 6);
        let share = |v: f64| values.iter().filter(|&&x| x == v).count() as f64 / DRAWS as f64;
        assert!(close(share(1.0), 0.10, 0.08), "{}", share(1.0));
        assert!(close(share(2.0), 0.05, 0.12), "{}", share(2.0));
        assert!(close(share(500.0), 0.01, 0.25), "{}", share(500.0));
        assert!(close(share(0.0), 0.84, 0.02), "{}", share(0.0));
    }

    #[test]
    fn linear_grows_with_requests_in_flight() {
        let delay = Delay::Linear {
            base: ms(1.0),
            per_inflight: Duration::from_micros(100),
        };
        let mut rng = Rng::new(7);
        assert_eq!(delay.sample(&mut rng, 0), ms(1.0));
        assert_eq!(delay.sample(&mut rng, 10), ms(2.0));
        assert_eq!(delay.sample(&mut rng, 1000), ms(101.0));
    }

    #[test]
    fn weighted_choices_return_none_for_the_remainder() {
        let statuses = Weighted {
            choices: vec![(503u16, 5.0), (429, 1.0)],
        };
        let mut rng = Rng::new(8);
        let mut counts = [0usize; 3];
        for _ in 0..DRAWS {
            match statuses.pick(&mut rng) {
                Some(503) => counts[0] += 1,
                Some(429) => counts[1] += 1,
                None => counts[2] += 1,
                Some(other) => panic!("unexpected {other}"),
            }
        }
        assert!(
            close(counts[0] as f64 / DRAWS as f64, 0.05, 0.12),
            "{counts:?}"
        );
        assert!(
            close(counts[1] as f64 / DRAWS as f64, 0.01, 0.25),
            "{counts:?}"
        );
        let always = Weighted {
            choices: vec![(500u16, 100.0)],
        };
        assert!((0..1000).all(|_| always.pick(&mut rng) == Some(500)));
    }
}
