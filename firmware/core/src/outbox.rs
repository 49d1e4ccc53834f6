//! The offline buffer: telemetry batches wait here from the moment they are taken until the
//! server acknowledges their `seq`, across lost connections (not across reboots: it is RAM).
//!
//! A bounded ring of `N` batches of up to `R` readings. When it is full the oldest batch is
//! dropped and its readings are counted; the count goes into the next `hello`
//! ([`Outbox::dropped_to_report`]) and is cleared once the server's `welcome` shows it was
//! heard.
//!
//! Sequence numbers: a batch taken before the server's first `welcome` of this boot has a
//! provisional `seq` (the device may have rebooted and lost its counter); the welcome's
//! `last_seq` renumbers every batch never sent above it, so none is mistaken for one the
//! server already stored. A batch that was sent keeps its `seq` forever: the server may have
//! stored it, and a resend with the same `seq` is then ignored, never stored twice.

use alloc::string::ToString as _;
use alloc::vec::Vec;
use heapless::Deque;

use crate::wire;

/// One reading: a metric name compiled into the firmware and its value.
pub type Reading = (&'static str, f32);

#[derive(Debug, Clone)]
struct Batch<const R: usize> {
    seq: u64,
    /// Uptime in milliseconds when taken.
    taken_ms: u64,
    readings: heapless::Vec<Reading, R>,
    /// Sent on some connection: its `seq` is final.
    sent_ever: bool,
    /// Sent on the current connection, waiting for its ack.
    in_flight: bool,
}

#[derive(Debug)]
pub struct Outbox<const N: usize, const R: usize> {
    batches: Deque<Batch<R>, N>,
    /// The last `seq` given out.
    last_seq: u64,
    /// Readings dropped because the buffer was full, not yet heard by the server.
    dropped: u64,
    /// The part of `dropped` announced in the current connection's `hello`.
    dropped_announced: u64,
}

impl<const N: usize, const R: usize> Default for Outbox<N, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const R: usize> Outbox<N, R> {
    pub const fn new() -> Self {
        Self {
            batches: Deque::new(),
            last_seq: 0,
            dropped: 0,
            dropped_announced: 0,
        }
    }

    /// Batches waiting (sent or not).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub const fn capacity(&self) -> usize {
        N
    }

    /// Readings dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Keeps a batch taken at `taken_ms` (uptime); the oldest batch makes room when full.
    /// Readings beyond `R` are ignored (the firmware's sensor set is fixed at build time).
    pub fn push(&mut self, taken_ms: u64, readings: &[Reading]) {
        if readings.is_empty() {
            return;
        }
        if self.batches.is_full()
            && let Some(oldest) = self.batches.pop_front()
        {
            self.dropped += oldest.readings.len() as u64;
        }
        self.last_seq += 1;
        let readings = readings.iter().take(R).copied().collect();
        // Cannot fail: a slot was freed above when the ring was full.
        let _ = self.batches.push_back(Batch {
            seq: self.last_seq,
            taken_ms,
            readings,
            sent_ever: false,
            in_flight: false,
        });
    }

    /// The number to put into `hello.dropped_readings` on a new connection.
    pub fn dropped_to_report(&mut self) -> u64 {
        self.dropped_announced = self.dropped;
        self.dropped
    }

    /// The server answered `hello`: the announced drops were heard, batches it stored
    /// (`last_seq`) are gone, batches never sent are numbered above what it has.
    pub fn on_welcome(&mut self, server_last_seq: u64) {
        self.dropped -= self.dropped_announced.min(self.dropped);
        self.dropped_announced = 0;
        while self
            .batches
            .front()
            .is_some_and(|b| b.sent_ever && b.seq <= server_last_seq)
        {
            self.batches.pop_front();
        }
        let floor = self
            .batches
            .iter()
            .filter(|b| b.sent_ever)
            .map(|b| b.seq)
            .max()
            .unwrap_or(0)
            .max(server_last_seq);
        if self.batches.iter().any(|b| !b.sent_ever && b.seq <= floor) {
            let mut seq = floor;
            for batch in self.batches.iter_mut().filter(|b| !b.sent_ever) {
                seq += 1;
                batch.seq = seq;
            }
            self.last_seq = seq;
        }
        self.last_seq = self.last_seq.max(floor);
    }

    /// The connection is gone: whatever was in flight is sent again on the next one.
    pub fn on_disconnect(&mut self) {
        self.dropped_announced = 0;
        for batch in self.batches.iter_mut() {
            batch.in_flight = false;
        }
    }

    /// Every batch up to `seq` is stored.
    pub fn on_ack(&mut self, seq: u64) -> usize {
        let mut released = 0;
        while self
            .batches
            .front()
            .is_some_and(|b| b.sent_ever && b.seq <= seq)
        {
            self.batches.pop_front();
            released += 1;
        }
        released
    }

    /// The server refused the batches in flight (rate limit): send them again later.
    pub fn retry_in_flight(&mut self) {
        for batch in self.batches.iter_mut() {
            batch.in_flight = false;
        }
    }

    pub fn in_flight(&self) -> usize {
        self.batches.iter().filter(|b| b.in_flight).count()
    }

    /// The next batch to send, if fewer than `window` are in flight. `clock_offset_ms` turns
    /// uptime into Unix time (`None`: the device has no clock and sends `at_ms = 0`).
    pub fn next_to_send(
        &mut self,
        window: usize,
        clock_offset_ms: Option<i64>,
    ) -> Option<wire::Telemetry> {
        if self.in_flight() >= window {
            return None;
        }
        let batch = self.batches.iter_mut().find(|b| !b.in_flight)?;
        batch.in_flight = true;
        batch.sent_ever = true;
        let at_ms = clock_offset_ms
            .map(|offset| u64::try_from(offset + batch.taken_ms as i64).unwrap_or(0))
            .unwrap_or(0);
        let readings: Vec<wire::Reading> = batch
            .readings
            .iter()
            .map(|(metric, value)| wire::Reading {
                metric: metric.to_string(),
                value: f64::from(*value),
            })
            .collect();
        Some(wire::Telemetry {
            seq: batch.seq,
            at_ms,
            readings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(out: &mut Outbox<4, 2>) -> std::vec::Vec<u64> {
        core::iter::from_fn(|| out.next_to_send(usize::MAX, None).map(|b| b.seq)).collect()
    }

    #[test]
    fn batches_leave_only_when_acknowledged() {
        let mut out = Outbox::<4, 2>::new();
        out.push(10, &[("t", 1.0)]);
        out.push(20, &[("t", 2.0)]);
        out.on_welcome(0);
        assert_eq!(seqs(&mut out), [1, 2]);
        out.on_disconnect();
        assert_eq!(out.len(), 2, "a lost connection keeps everything");
        out.on_welcome(0);
        assert_eq!(seqs(&mut out), [1, 2], "the same seqs are sent again");
        assert_eq!(out.on_ack(1), 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out.on_ack(2), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_reports_the_count_until_heard() {
        let mut out = Outbox::<4, 2>::new();
        for i in 0..6 {
            out.push(i, &[("a", 0.0), ("b", 0.0)]);
        }
        assert_eq!(out.len(), 4);
        assert_eq!(out.dropped(), 4, "two batches of two readings");
        assert_eq!(out.dropped_to_report(), 4);
        out.on_disconnect(); // the hello was never answered: still to report
        assert_eq!(out.dropped_to_report(), 4);
        out.push(7, &[("a", 0.0)]);
        assert_eq!(out.dropped(), 6);
        out.on_welcome(0);
        assert_eq!(out.dropped(), 2, "only what the hello carried is cleared");
        assert_eq!(out.next_to_send(1, None).map(|b| b.readings.len()), Some(2));
    }

    #[test]
    fn batches_never_sent_are_numbered_above_what_the_server_has() {
        // A rebooted device starts at seq 1; the server already stored up to 41.
        let mut out = Outbox::<4, 2>::new();
        out.push(1, &[("t", 1.0)]);
        out.push(2, &[("t", 2.0)]);
        out.on_welcome(41);
        assert_eq!(seqs(&mut out), [42, 43]);
        out.push(3, &[("t", 3.0)]);
        assert_eq!(seqs(&mut out), [44]);
        // Sent batches keep their numbers even if the server claims less (restored backup).
        out.on_disconnect();
        out.push(4, &[("t", 4.0)]);
        out.on_welcome(10);
        assert_eq!(seqs(&mut out), [42, 43, 44, 45]);
        // And sent batches the server did store are released by the welcome itself.
        out.on_disconnect();
        out.on_welcome(43);
        assert_eq!(seqs(&mut out), [44, 45]);
    }

    #[test]
    fn the_window_limits_batches_in_flight_and_the_clock_dates_them() {
        let mut out = Outbox::<4, 2>::new();
        for i in 0..3 {
            out.push(1_000 * i, &[("t", 1.5)]);
        }
        out.on_welcome(0);
        let first = out.next_to_send(2, Some(1_700_000_000_000)).unwrap();
        assert_eq!(first.at_ms, 1_700_000_000_000);
        assert_eq!(first.readings[0].metric, "t");
        assert_eq!(first.readings[0].value, 1.5);
        assert_eq!(out.next_to_send(2, None).map(|b| b.at_ms), Some(0));
        assert!(out.next_to_send(2, None).is_none(), "two in flight");
        out.on_ack(1);
        assert_eq!(out.next_to_send(2, None).map(|b| b.seq), Some(3));
        out.retry_in_flight();
        assert_eq!(seqs(&mut out), [2, 3]);
    }
}
