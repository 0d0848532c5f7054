//! Backoff between retryable failures: exponential, capped, with jitter so that tasks that
//! failed together (a store outage) do not come back together.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// How much each further failure multiplies the wait.
    pub multiplier: f64,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            multiplier: 2.0,
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The nominal wait after the `failures`-th failure (1-based), before jitter.
    pub fn nominal(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(60) as i32;
        let seconds = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max.as_secs_f64()))
    }

    /// The wait to use: uniform in [nominal / 2, nominal] ("equal jitter"), so it still grows
    /// with every failure but two tasks rarely wake together.
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(failures).as_secs_f64();
        Duration::from_secs_f64(nominal * rng.random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_half() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            multiplier: 3.0,
            max: Duration::from_secs(20),
        };
        assert_eq!(policy.nominal(1), Duration::from_secs(1));
        assert_eq!(policy.nominal(2), Duration::from_secs(3));
        assert_eq!(policy.nominal(3), Duration::from_secs(9));
        assert_eq!(policy.nominal(4), Duration::from_secs(20));
        assert_eq!(policy.nominal(1000), Duration::from_secs(20));
        let mut rng = rand::rng();
        let waits: Vec<f64> = (0..200)
            .map(|_| policy.backoff(3, &mut rng).as_secs_f64())
            .collect();
        assert!(waits.iter().all(|w| (4.5..=9.0).contains(w)));
        let distinct = waits
            .iter()
            .map(|w| (w * 1e6) as u64)
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 100, "jitter spreads the waits");
    }
}
