//! Timer arithmetic of the FSM: jitter, keepalive interval, idle-hold backoff. Pure functions
//! of durations and a seeded generator; deadlines themselves live in the FSM, and no clock is
//! read here.

use std::time::Duration;

/// Hold timer while waiting for the peer's OPEN (RFC 4271 8.2.2 suggests 4 minutes).
pub const OPEN_SENT_HOLD: Duration = Duration::from_secs(240);

/// Seeded jitter source (splitmix64). Deterministic so a recorded event sequence replays to the
/// same deadlines.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    state: Option<u64>,
}

impl Jitter {
    pub fn new(seed: Option<u64>) -> Self {
        Jitter { state: seed }
    }

    fn next_u64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `base` times a factor uniform in 0.75..=1.0 (RFC 4271 10), or `base` without a seed.
    /// Jitter only ever shortens a timer, so a jittered keepalive still beats the hold timer.
    pub fn apply(&mut self, base: Duration) -> Duration {
        match &mut self.state {
            None => base,
            Some(s) => {
                let unit = (Self::next_u64(s) >> 11) as f64 / (1u64 << 53) as f64;
                base.mul_f64(0.75 + 0.25 * unit)
            }
        }
    }
}

/// KeepaliveTime for a negotiated hold time: one third of it (RFC 4271 10), never below one
/// second; `None` when the hold time is 0 (no keepalives at all).
pub fn keepalive_interval(hold_time: u16) -> Option<Duration> {
    (hold_time > 0).then(|| Duration::from_secs(u64::from((hold_time / 3).max(1))))
}

/// How long to stay in Idle before the automatic restart that follows the `failures`-th
/// consecutive failure (0-based): `connect_retry` doubled per failure, capped at `max`.
pub fn idle_hold(connect_retry: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.min(16);
    connect_retry.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_a_third_of_hold_time_and_absent_when_hold_is_zero() {
        assert_eq!(keepalive_interval(90), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_interval(3), Some(Duration::from_secs(1)));
        assert_eq!(keepalive_interval(4), Some(Duration::from_secs(1)));
        assert_eq!(keepalive_interval(0), None);
    }

    #[test]
    fn idle_hold_doubles_per_failure_and_stops_at_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(120);
        let seq: Vec<u64> = (0..7).map(|f| idle_hold(base, f, max).as_secs()).collect();
        assert_eq!(seq, [5, 10, 20, 40, 80, 120, 120]);
        // Large failure counts neither overflow nor exceed the cap.
        assert_eq!(idle_hold(base, u32::MAX, max), max);
    }

    #[test]
    fn jitter_stays_within_three_quarters_and_one_and_replays_from_its_seed() {
        let base = Duration::from_secs(30);
        let mut a = Jitter::new(Some(7));
        let mut b = Jitter::new(Some(7));
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = a.apply(base);
            assert!(d >= base.mul_f64(0.75) && d <= base, "{d:?} outside 22.5..=30 s");
            assert_eq!(d, b.apply(base), "same seed must give the same sequence");
            distinct.insert(d.as_millis());
        }
        assert!(distinct.len() > 100, "jitter barely varies: {} distinct values", distinct.len());
        assert_eq!(Jitter::new(None).apply(base), base);
    }
}
