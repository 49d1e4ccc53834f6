//! The connection state machine, without I/O: the firmware's network task (and the server's
//! test through the simulator's transport) feeds it what happened — connected, a frame
//! arrived, the connection is gone, a reading was taken — and asks it what to send next.
//!
//! After connecting it says `hello` (with the offline drop count); nothing else is sent until
//! the `welcome`, which sets the clock, the interval and the numbering
//! ([`Outbox::on_welcome`]). Then control frames (command results, OTA reports) go first and
//! telemetry follows, at most [`Link::WINDOW`] batches unacknowledged. Commands are run once
//! per id: a repeated id (the server resends what it did not see answered) gets the earlier
//! result again.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString as _};
use alloc::vec::Vec;

use crate::outbox::{Outbox, Reading};
use crate::wire;

/// Who the device is, for `hello`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub firmware: String,
    pub chip: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Offline,
    /// `hello` sent, waiting for `welcome`.
    Greeting,
    Online,
}

/// What a server frame asks of the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Nothing to do beyond sending what [`Link::next_frame`] returns.
    None,
    /// Online; telemetry every `interval_secs`.
    Welcomed {
        device_id: u64,
        interval_secs: u32,
        settings: Vec<wire::Setting>,
    },
    /// Run this command, then call [`Link::command_done`].
    Run(wire::Command),
    /// A firmware update is offered.
    Offer(wire::OtaOffer),
    /// The server refused a frame.
    Refused(wire::ErrorFrame),
}

/// Results kept for answering repeated command ids.
const REMEMBERED_RESULTS: usize = 16;
/// Control frames waiting to be sent (results, OTA reports).
const CONTROL_QUEUE: usize = 16;

#[derive(Debug)]
pub struct Link<const N: usize, const R: usize> {
    identity: Identity,
    state: State,
    pub outbox: Outbox<N, R>,
    /// Unix ms minus uptime ms, from the last welcome.
    clock_offset_ms: Option<i64>,
    interval_secs: u32,
    control: VecDeque<wire::DeviceMessage>,
    results: VecDeque<wire::CommandResult>,
    /// Commands being run now (a repeat is not run again, and not answered until done).
    running: Vec<u64>,
    /// Sent after the next welcome: the outcome of an update the device rebooted for.
    boot_report: Option<wire::OtaStatus>,
}

impl<const N: usize, const R: usize> Link<N, R> {
    /// Telemetry batches sent and not yet acknowledged, at most.
    pub const WINDOW: usize = 4;

    pub fn new(identity: Identity, default_interval_secs: u32) -> Self {
        Self {
            identity,
            state: State::Offline,
            outbox: Outbox::new(),
            clock_offset_ms: None,
            interval_secs: default_interval_secs.max(1),
            control: VecDeque::new(),
            results: VecDeque::new(),
            running: Vec::new(),
            boot_report: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn interval_secs(&self) -> u32 {
        self.interval_secs
    }

    /// The firmware version `hello` announces.
    pub fn firmware(&self) -> &str {
        &self.identity.firmware
    }

    /// Unix time in ms at uptime `now_ms`, once a welcome told it.
    pub fn unix_ms(&self, now_ms: u64) -> Option<u64> {
        self.clock_offset_ms
            .and_then(|offset| u64::try_from(offset + now_ms as i64).ok())
    }

    /// To be reported after the next welcome (the boot guard's verdict on an update).
    pub fn report_after_welcome(&mut self, status: wire::OtaStatus) {
        self.boot_report = Some(status);
    }

    /// A reading was taken at uptime `now_ms`.
    pub fn record(&mut self, now_ms: u64, readings: &[Reading]) {
        self.outbox.push(now_ms, readings);
    }

    /// A connection is open: the frame to send first.
    pub fn connected(&mut self) -> wire::DeviceMessage {
        self.state = State::Greeting;
        wire::DeviceMessage::Hello(wire::Hello {
            protocol: wire::VERSION,
            firmware: self.identity.firmware.clone(),
            chip: self.identity.chip.clone(),
            capabilities: self.identity.capabilities.clone(),
            dropped_readings: self.outbox.dropped_to_report(),
        })
    }

    /// The connection is gone (closed, reset, or timed out).
    pub fn disconnected(&mut self) {
        self.state = State::Offline;
        self.outbox.on_disconnect();
        // Results not yet sent are sent again when the server repeats the command.
        self.control
            .retain(|m| !matches!(m, wire::DeviceMessage::CommandResult(_)));
    }

    /// A frame from the server, received at uptime `now_ms`.
    pub fn receive(&mut self, message: wire::ServerMessage, now_ms: u64) -> Event {
        match message {
            wire::ServerMessage::Welcome(welcome) => {
                self.state = State::Online;
                if welcome.time_ms > 0 {
                    self.clock_offset_ms = Some(welcome.time_ms as i64 - now_ms as i64);
                }
                if welcome.telemetry_interval_secs > 0 {
                    self.interval_secs = welcome.telemetry_interval_secs;
                }
                self.outbox.on_welcome(welcome.last_seq);
                if let Some(report) = self.boot_report.take() {
                    self.push_control(wire::DeviceMessage::OtaStatus(report));
                }
                Event::Welcomed {
                    device_id: welcome.device_id,
                    interval_secs: self.interval_secs,
                    settings: welcome.settings,
                }
            }
            wire::ServerMessage::TelemetryAck(ack) => {
                self.outbox.on_ack(ack.seq);
                Event::None
            }
            wire::ServerMessage::Command(command) => {
                if let Some(earlier) = self.results.iter().find(|r| r.id == command.id) {
                    let again = wire::DeviceMessage::CommandResult(earlier.clone());
                    self.push_control(again);
                    Event::None
                } else if self.running.contains(&command.id) {
                    Event::None
                } else {
                    self.running.push(command.id);
                    Event::Run(command)
                }
            }
            wire::ServerMessage::OtaOffer(offer) => Event::Offer(offer),
            wire::ServerMessage::Error(error) => {
                if error.code == "rate_limited" {
                    self.outbox.retry_in_flight();
                }
                Event::Refused(error)
            }
        }
    }

    /// A command finished: its result is sent next (and remembered for repeats).
    pub fn command_done(&mut self, id: u64, status: wire::CommandStatus, output: Option<&str>) {
        self.running.retain(|r| *r != id);
        let result = wire::CommandResult {
            id,
            status,
            output: output.map(|o| truncate(o, wire::MAX_TEXT)),
        };
        if self.results.len() == REMEMBERED_RESULTS {
            self.results.pop_front();
        }
        self.results.push_back(result.clone());
        self.push_control(wire::DeviceMessage::CommandResult(result));
    }

    /// Progress of an update, sent next.
    pub fn ota_status(&mut self, status: wire::OtaStatus) {
        // Only the newest progress of one rollout matters.
        self.control.retain(|m| {
            !matches!(m, wire::DeviceMessage::OtaStatus(s)
                if s.rollout == status.rollout && s.state == wire::OtaState::Downloading)
        });
        self.push_control(wire::DeviceMessage::OtaStatus(status));
    }

    fn push_control(&mut self, message: wire::DeviceMessage) {
        if self.control.len() == CONTROL_QUEUE {
            self.control.pop_front();
        }
        self.control.push_back(message);
    }

    /// The next frame to send now, if any: nothing before the welcome, then control frames,
    /// then telemetry within the window.
    pub fn next_frame(&mut self) -> Option<wire::DeviceMessage> {
        if self.state != State::Online {
            return None;
        }
        if let Some(message) = self.control.pop_front() {
            return Some(message);
        }
        self.outbox
            .next_to_send(Self::WINDOW, self.clock_offset_ms)
            .map(wire::DeviceMessage::Telemetry)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn link() -> Link<8, 2> {
        Link::new(
            Identity {
                firmware: "1.0.0".into(),
                chip: "esp32c3".into(),
                capabilities: vec!["telemetry".into(), "commands".into()],
            },
            60,
        )
    }

    fn welcome(last_seq: u64, time_ms: u64) -> wire::ServerMessage {
        wire::ServerMessage::Welcome(wire::Welcome {
            protocol: 1,
            device_id: 9,
            telemetry_interval_secs: 30,
            last_seq,
            settings: vec![],
            time_ms,
        })
    }

    fn command(id: u64) -> wire::ServerMessage {
        wire::ServerMessage::Command(wire::Command {
            id,
            name: "led".into(),
            args: vec!["on".into()],
        })
    }

    #[test]
    fn nothing_but_hello_before_the_welcome_then_dated_telemetry() {
        let mut link = link();
        link.record(1_000, &[("chip_temperature", 31.5)]);
        let hello = link.connected();
        assert!(
            matches!(hello, wire::DeviceMessage::Hello(ref h) if h.dropped_readings == 0 && h.chip == "esp32c3")
        );
        assert_eq!(link.next_frame(), None, "nothing before welcome");
        let event = link.receive(welcome(0, 1_800_000_005_000), 5_000);
        assert_eq!(
            event,
            Event::Welcomed {
                device_id: 9,
                interval_secs: 30,
                settings: vec![]
            }
        );
        let Some(wire::DeviceMessage::Telemetry(batch)) = link.next_frame() else {
            panic!("telemetry next");
        };
        assert_eq!(batch.seq, 1);
        assert_eq!(
            batch.at_ms, 1_800_000_001_000,
            "taken 4 s before the welcome"
        );
        assert_eq!(link.unix_ms(6_000), Some(1_800_000_006_000));
    }

    #[test]
    fn commands_run_once_and_repeats_get_the_earlier_result() {
        let mut link = link();
        link.connected();
        link.receive(welcome(0, 0), 0);
        assert!(matches!(link.receive(command(7), 0), Event::Run(_)));
        assert_eq!(link.receive(command(7), 0), Event::None, "still running");
        link.command_done(7, wire::CommandStatus::Succeeded, Some("led on"));
        let first = link.next_frame();
        assert!(matches!(first, Some(wire::DeviceMessage::CommandResult(ref r)) if r.id == 7));
        // The server did not see the answer (connection lost) and sends the command again.
        link.disconnected();
        link.connected();
        link.receive(welcome(0, 0), 0);
        assert_eq!(link.receive(command(7), 0), Event::None);
        assert_eq!(link.next_frame(), first, "answered again, not run again");
    }

    #[test]
    fn control_frames_go_before_telemetry_and_the_boot_report_after_the_welcome() {
        let mut link = link();
        link.report_after_welcome(wire::OtaStatus {
            rollout: 3,
            version: "1.1.0".into(),
            state: wire::OtaState::BootedOk,
            received: 0,
            detail: None,
        });
        link.record(0, &[("adc_mv", 1200.0)]);
        link.connected();
        link.receive(welcome(0, 0), 0);
        assert!(matches!(
            link.next_frame(),
            Some(wire::DeviceMessage::OtaStatus(ref s)) if s.state == wire::OtaState::BootedOk
        ));
        assert!(matches!(
            link.next_frame(),
            Some(wire::DeviceMessage::Telemetry(_))
        ));
        assert_eq!(link.next_frame(), None);
    }

    #[test]
    fn a_rate_limit_sends_the_batches_in_flight_again() {
        let mut link = link();
        link.connected();
        link.receive(welcome(0, 0), 0);
        link.record(0, &[("adc_mv", 1.0)]);
        assert!(link.next_frame().is_some());
        assert_eq!(link.next_frame(), None);
        let refused = link.receive(
            wire::ServerMessage::Error(wire::ErrorFrame {
                code: "rate_limited".into(),
                message: "slow down".into(),
            }),
            0,
        );
        assert!(matches!(refused, Event::Refused(_)));
        assert!(matches!(link.next_frame(), Some(wire::DeviceMessage::Telemetry(b)) if b.seq == 1));
    }
}
