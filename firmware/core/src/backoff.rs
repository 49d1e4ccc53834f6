//! Reconnect delays: exponential from `min` to `max`, with up to 25 % jitter subtracted so a
//! fleet that lost the server at once does not come back at once.

/// The delay before the next attempt; `reset` after a connection that worked.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u32,
    max_ms: u32,
    next_ms: u32,
}

impl Backoff {
    pub const fn new(min_ms: u32, max_ms: u32) -> Self {
        Self {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    /// The delay to wait now, given a random number (any `u32`) for the jitter.
    pub fn next_delay_ms(&mut self, random: u32) -> u32 {
        let base = self.next_ms;
        self.next_ms = base.saturating_mul(2).min(self.max_ms);
        let jitter = if base >= 4 { random % (base / 4) } else { 0 };
        base - jitter
    }

    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(1_000, 60_000);
        let delays: std::vec::Vec<u32> = (0..10).map(|_| backoff.next_delay_ms(0)).collect();
        assert_eq!(
            &delays[..7],
            &[1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]
        );
        assert!(delays[7..].iter().all(|d| *d == 60_000));
        let jittered = backoff.next_delay_ms(u32::MAX);
        assert!((45_000..=60_000).contains(&jittered), "{jittered}");
        backoff.reset();
        assert_eq!(backoff.next_delay_ms(0), 1_000);
    }
}
