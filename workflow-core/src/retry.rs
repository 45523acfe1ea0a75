//! Retry policies for steps: `#[step(retry = RetryPolicy::exponential(3))]`.

use std::error::Error;
use std::time::Duration;

/// How often and how patiently a failing step is run again on the same event.
///
/// A step invocation that returns an error is retried while the policy allows:
/// `max_attempts` counts the first run too, and [`RetryPolicy::retry_if`] can limit retries to
/// some errors. The step sees the attempt number in `ctx.attempt()` and the previous error in
/// `ctx.last_error()`. Panics, timeouts and cancellation are never retried.
///
/// Delays are deterministic: the jitter of exponential backoff is derived from the run id, the
/// step and the attempt, so a test or a replay sees the same delays.
///
/// ```
/// use std::time::Duration;
/// use tidewater::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(4).base_delay(Duration::from_millis(100)).without_jitter();
/// assert_eq!(policy.max_attempts(), 4);
/// assert_eq!(policy.delay(1, 7, 0), Duration::from_millis(100));
/// assert_eq!(policy.delay(2, 7, 0), Duration::from_millis(200));
/// assert_eq!(policy.delay(3, 7, 0), Duration::from_millis(400));
///
/// let fixed = RetryPolicy::fixed(3, Duration::from_millis(5));
/// assert_eq!(fixed.delay(2, 7, 0), Duration::from_millis(5));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    max_delay: Duration,
    exponential: bool,
    jitter: bool,
    retry_if: Option<fn(&(dyn Error + 'static)) -> bool>,
}

impl RetryPolicy {
    /// Up to `max_attempts` runs in all, `delay` apart.
    pub const fn fixed(max_attempts: u32, delay: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base: delay,
            max_delay: delay,
            exponential: false,
            jitter: false,
            retry_if: None,
        }
    }

    /// Up to `max_attempts` runs in all, waiting 100 ms, 200 ms, 400 ms... (capped at 30 s),
    /// each plus a deterministic jitter of up to half the delay.
    pub const fn exponential(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            exponential: true,
            jitter: true,
            retry_if: None,
        }
    }

    /// The first delay of exponential backoff (the only delay of a fixed policy).
    pub const fn base_delay(mut self, delay: Duration) -> RetryPolicy {
        self.base = delay;
        if !self.exponential {
            self.max_delay = delay;
        }
        self
    }

    /// The longest delay of exponential backoff.
    pub const fn max_delay(mut self, delay: Duration) -> RetryPolicy {
        self.max_delay = delay;
        self
    }

    /// No jitter: exactly the base delays.
    pub const fn without_jitter(mut self) -> RetryPolicy {
        self.jitter = false;
        self
    }

    /// Retry only errors for which `predicate` is true; others fail at once.
    pub const fn retry_if(mut self, predicate: fn(&(dyn Error + 'static)) -> bool) -> RetryPolicy {
        self.retry_if = Some(predicate);
        self
    }

    /// How many runs in all, the first included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Should the error of attempt `attempt` be retried?
    pub fn should_retry(&self, attempt: u32, error: &(dyn Error + 'static)) -> bool {
        attempt < self.max_attempts && self.retry_if.is_none_or(|predicate| predicate(error))
    }

    /// The wait after failed attempt `attempt` (1-based) of step `step` in run `run_id`.
    pub fn delay(&self, attempt: u32, run_id: u64, step: usize) -> Duration {
        if !self.exponential {
            return self.base;
        }
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.max_delay);
        if !self.jitter {
            return delay;
        }
        // SplitMix64 of (run, step, attempt): the same inputs give the same jitter.
        let mut x = run_id
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((step as u64) << 32 | u64::from(attempt));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let half = delay / 2;
        let jitter = half.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64);
        (delay + jitter).min(self.max_delay.max(delay))
    }
}
