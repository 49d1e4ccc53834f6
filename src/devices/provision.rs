//! `conclave device provision --port …`: writes Wi-Fi credentials, the server's URL and a claim
//! code (or a token) into a device over its serial console, with the firmware's line protocol
//! (`conclave_device_core::provision`). The record is checked here with the firmware's own
//! rules before anything is sent, and each answer is awaited, so a mistake is reported with
//! the device's reason rather than discovered when the device fails to come online.
//!
//! Answers start with `@conclave `; everything else on the console is the firmware's log and
//! is passed through to `log` (the caller prints it with `--verbose`).

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use conclave_device_core::provision::{KEYS, PREFIX, Record};

/// What to write.
#[derive(Debug, Clone)]
pub struct Request {
    /// The serial device, e.g. `/dev/ttyACM0` (ESP32-C3/C6 built-in USB) or `/dev/ttyUSB0`.
    pub port: String,
    pub baud: u32,
    pub record: Record,
    /// Restart the device afterwards so it comes online with the new record.
    pub reboot: bool,
    /// How long to wait for the device to answer (it may be booting).
    pub timeout: Duration,
}

/// What the device said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The device's `READY` line, e.g. `chip=esp32c3 firmware=0.1.0 provisioned=no`.
    pub banner: String,
    /// Lines the device printed that were not answers (its log).
    pub log: Vec<String>,
}

/// Builds the record from the command line's values, with the firmware's checks.
pub fn record(
    wifi_ssid: &str,
    wifi_password: &str,
    server: &str,
    claim_code: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<Record> {
    let mut record = Record::default();
    for (key, value) in [
        ("wifi_ssid", wifi_ssid),
        ("wifi_password", wifi_password),
        ("server_url", server),
        ("claim_code", claim_code.unwrap_or("")),
        ("token", token.unwrap_or("")),
    ] {
        record
            .set(key, value)
            .map_err(|why| anyhow!("{key}: {why}"))?;
    }
    record.validate().map_err(|why| anyhow!("{why}"))?;
    Ok(record)
}

struct Console {
    port: Box<dyn serialport::SerialPort>,
    pending: Vec<u8>,
    log: Vec<String>,
}

impl Console {
    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.port
            .write_all(format!("{line}\r\n").as_bytes())
            .and_then(|()| self.port.flush())
            .context("cannot write to the serial port")
    }

    /// The next answer line (without the prefix), or `None` at the deadline.
    fn answer(&mut self, deadline: Instant) -> anyhow::Result<Option<String>> {
        let mut buffer = [0u8; 256];
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if let Some(answer) = line.strip_prefix(PREFIX) {
                    return Ok(Some(answer.to_owned()));
                }
                if !line.is_empty() {
                    tracing::debug!(device_log = %line);
                    self.log.push(line);
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            match self.port.read(&mut buffer) {
                Ok(0) => {}
                Ok(n) => self.pending.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read from the serial port"),
            }
        }
    }

    /// Sends `line` and waits for an answer starting with `OK` (the rest is returned).
    fn expect_ok(&mut self, line: &str, what: &str, timeout: Duration) -> anyhow::Result<String> {
        self.send(line)?;
        match self.answer(Instant::now() + timeout)? {
            Some(answer) => {
                if let Some(rest) = answer.strip_prefix("OK") {
                    Ok(rest.trim().to_owned())
                } else if let Some(why) = answer.strip_prefix("ERR") {
                    bail!("the device refused {what}: {}", why.trim())
                } else {
                    bail!("the device answered {what} with {answer:?}")
                }
            }
            None => bail!("the device did not answer {what} within {timeout:?}"),
        }
    }
}

/// Writes the record and (optionally) restarts the device.
pub fn provision(request: &Request) -> anyhow::Result<Provisioned> {
    let port = serialport::new(&request.port, request.baud)
        .timeout(Duration::from_millis(100))
        .open()
        .with_context(|| format!("cannot open {}", request.port))?;
    let mut console = Console {
        port,
        pending: Vec::new(),
        log: Vec::new(),
    };
    // The device may be starting (or printing): ask until it answers, within the timeout.
    let deadline = Instant::now() + request.timeout;
    let banner = loop {
        console.send("")?;
        console.send("CONCLAVE")?;
        let wait = (Instant::now() + Duration::from_secs(1)).min(deadline);
        match console.answer(wait)? {
            Some(answer) if answer.starts_with("READY") => {
                break answer.trim_start_matches("READY").trim().to_owned();
            }
            Some(_) => continue,
            None if Instant::now() >= deadline => bail!(
                "no Conclave firmware answered on {} within {:?} (is it the right port, and is the device running the Conclave firmware?)",
                request.port,
                request.timeout
            ),
            None => continue,
        }
    };
    if !banner.contains("protocol=1") {
        bail!("the device speaks another provisioning protocol: {banner}");
    }
    let answer_timeout = Duration::from_secs(5);
    for key in KEYS {
        let value = match key {
            "wifi_ssid" => request.record.wifi_ssid.as_str(),
            "wifi_password" => request.record.wifi_password.as_str(),
            "server_url" => request.record.server_url.as_str(),
            "claim_code" => request.record.claim_code.as_str(),
            _ => request.record.token.as_str(),
        };
        let line = if value.is_empty() {
            format!("UNSET {key}")
        } else {
            format!("SET {key} {value}")
        };
        console.expect_ok(&line, key, answer_timeout)?;
    }
    // Writing flash takes a moment.
    console.expect_ok("COMMIT", "the record", Duration::from_secs(15))?;
    if request.reboot {
        console.expect_ok("REBOOT", "the restart", answer_timeout)?;
    }
    Ok(Provisioned {
        banner,
        log: console.log,
    })
}
