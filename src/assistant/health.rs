//! Provider health: a circuit breaker per provider, fed by real calls and by periodic health
//! checks, and shown on `/metrics` and in the admin API.
//!
//! Closed: calls go through. After `breaker_failures` failures in a row the circuit opens:
//! calls skip the provider (to another route or the model's fallback) for
//! `breaker_cooldown_secs`. Then it is half-open: one call is let through as a probe; its
//! success closes the circuit, its failure opens it again. Hand-written (not a crate) because
//! the state must outlive reloads of the catalog and be readable for the admin page, which
//! the tower/failsafe breakers do not offer without wrapping our calls in their services.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    /// A half-open probe is out.
    probing: bool,
    last_error: Option<String>,
    last_check: Option<(DateTime<Utc>, bool)>,
}

/// What the admin API shows of one provider.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderHealth {
    pub circuit: Circuit,
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_check_at: Option<DateTime<Utc>>,
    pub last_check_ok: Option<bool>,
}

#[derive(Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    fn with<T>(&self, provider: &str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(states.entry(provider.to_owned()).or_default())
    }

    fn circuit_of(state: &State, now: Instant) -> Circuit {
        match state.open_until {
            None => Circuit::Closed,
            Some(until) if now < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    /// Whether a call may go to `provider` now. In half-open, only the first asker gets a yes
    /// (the probe).
    pub fn allow(&self, provider: &str) -> bool {
        let now = Instant::now();
        self.with(provider, |state| match Self::circuit_of(state, now) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen if state.probing => false,
            Circuit::HalfOpen => {
                state.probing = true;
                true
            }
        })
    }

    pub fn succeeded(&self, provider: &str) {
        self.with(provider, |state| {
            state.failures_in_a_row = 0;
            state.open_until = None;
            state.probing = false;
        });
        publish(provider, Circuit::Closed);
    }

    pub fn failed(&self, provider: &str, error: &str, threshold: u32, cooldown: Duration) {
        let now = Instant::now();
        let circuit = self.with(provider, |state| {
            state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
            state.last_error = Some(error.chars().take(300).collect());
            let probe_failed = state.probing;
            state.probing = false;
            if probe_failed || state.failures_in_a_row >= threshold {
                state.open_until = Some(now + cooldown);
            }
            Self::circuit_of(state, now)
        });
        metrics::counter!("assistant_provider_failures_total", "provider" => provider.to_owned())
            .increment(1);
        if circuit == Circuit::Open {
            tracing::warn!(provider, error, "provider circuit open");
        }
        publish(provider, circuit);
    }

    /// A health check's answer. A failed check counts like a failed call; a good one clears
    /// the failures of a closed circuit but does not close an open one (listing models is not
    /// answering): the next real call is the probe.
    pub fn checked(
        &self,
        provider: &str,
        result: Result<(), String>,
        threshold: u32,
        cooldown: Duration,
    ) {
        let ok = result.is_ok();
        self.with(provider, |state| state.last_check = Some((Utc::now(), ok)));
        metrics::gauge!("assistant_provider_up", "provider" => provider.to_owned()).set(if ok {
            1.0
        } else {
            0.0
        });
        match result {
            Ok(()) => {
                let circuit = self.with(provider, |state| {
                    let circuit = Self::circuit_of(state, Instant::now());
                    if circuit == Circuit::Closed {
                        state.failures_in_a_row = 0;
                    }
                    circuit
                });
                publish(provider, circuit);
            }
            Err(error) => self.failed(provider, &error, threshold, cooldown),
        }
    }

    pub fn health(&self, provider: &str) -> ProviderHealth {
        let now = Instant::now();
        self.with(provider, |state| ProviderHealth {
            circuit: Self::circuit_of(state, now),
            failures_in_a_row: state.failures_in_a_row,
            last_error: state.last_error.clone(),
            last_check_at: state.last_check.map(|(at, _)| at),
            last_check_ok: state.last_check.map(|(_, ok)| ok),
        })
    }
}

fn publish(provider: &str, circuit: Circuit) {
    metrics::gauge!("assistant_provider_circuit", "provider" => provider.to_owned())
        .set(circuit.gauge());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
        let breakers = Breakers::default();
        let cooldown = Duration::from_millis(40);
        breakers.failed("p", "boom", 2, cooldown);
        assert!(breakers.allow("p"), "one failure of two keeps it closed");
        breakers.failed("p", "boom", 2, cooldown);
        assert_eq!(breakers.health("p").circuit, Circuit::Open);
        assert!(!breakers.allow("p"));
        std::thread::sleep(cooldown);
        assert!(breakers.allow("p"), "the probe");
        assert!(!breakers.allow("p"), "only one probe at a time");
        breakers.failed("p", "still down", 2, cooldown);
        assert_eq!(
            breakers.health("p").circuit,
            Circuit::Open,
            "a failed probe reopens"
        );
        std::thread::sleep(cooldown);
        assert!(breakers.allow("p"));
        breakers.succeeded("p");
        assert_eq!(breakers.health("p").circuit, Circuit::Closed);
        assert!(breakers.allow("p") && breakers.allow("p"));
    }
}
