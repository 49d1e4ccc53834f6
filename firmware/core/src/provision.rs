//! Provisioning: what a device needs to reach its server (Wi-Fi, server URL, a claim code or a
//! device token), kept as a [`Record`] in flash and written over the serial console with a
//! line protocol that `conclave device provision --port …` speaks (or a person, in a serial
//! terminal).
//!
//! Requests are lines (`\n` or `\r\n`); every answer line starts with `@conclave ` so a host
//! can tell answers from the log lines the firmware prints on the same console:
//!
//! ```text
//! CONCLAVE                   @conclave READY protocol=1 chip=esp32c3 firmware=0.1.0 provisioned=no
//! SET wifi_ssid My Network   @conclave OK wifi_ssid
//! SET wifi_password ********  @conclave OK wifi_password
//! SET server_url https://conclave.example.com
//! SET claim_code ABCD-EFGH   (or SET token cnd_…)
//! SHOW                       @conclave VALUE wifi_ssid=My Network … @conclave END
//! COMMIT                     @conclave OK saved      (or @conclave ERR <why>)
//! REBOOT / ERASE / UNSET <key>
//! ```
//!
//! A value is the rest of the line after one space (spaces inside are kept). `COMMIT` checks
//! the whole record before the firmware writes it; secrets are never echoed.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use heapless::String as Text;
use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

/// Everything the device needs to come online; kept in flash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub wifi_ssid: Text<32>,
    /// Empty for an open network, else the WPA2 passphrase (8–63 characters).
    pub wifi_password: Text<64>,
    /// The server's base URL (`https://conclave.example.com`).
    pub server_url: Text<128>,
    /// A one-time claim code, exchanged for a token on first connect, then cleared.
    pub claim_code: Text<64>,
    /// The device token (`cnd_…`).
    pub token: Text<128>,
}

/// The keys `SET` accepts.
pub const KEYS: [&str; 5] = [
    "wifi_ssid",
    "wifi_password",
    "server_url",
    "claim_code",
    "token",
];

impl Record {
    /// A record from build-time settings (`CONCLAVE_WIFI_SSID`, … read by the firmware with
    /// `option_env!`); `None` when the SSID or the server is missing.
    pub fn from_build(
        wifi_ssid: Option<&str>,
        wifi_password: Option<&str>,
        server_url: Option<&str>,
        claim_code: Option<&str>,
        token: Option<&str>,
    ) -> Option<Self> {
        let mut record = Self::default();
        record.set("wifi_ssid", wifi_ssid?).ok()?;
        record
            .set("wifi_password", wifi_password.unwrap_or(""))
            .ok()?;
        record.set("server_url", server_url?).ok()?;
        record.set("claim_code", claim_code.unwrap_or("")).ok()?;
        record.set("token", token.unwrap_or("")).ok()?;
        record.validate().ok()?;
        Some(record)
    }

    /// Sets one field; the reason when the key or the value is not acceptable.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        if value.chars().any(char::is_control) {
            return Err("values cannot contain control characters");
        }
        fn put<const N: usize>(field: &mut Text<N>, value: &str) -> Result<(), &'static str> {
            *field = Text::try_from(value).map_err(|_| "the value is too long for its field")?;
            Ok(())
        }
        match key {
            "wifi_ssid" => put(&mut self.wifi_ssid, value),
            "wifi_password" => put(&mut self.wifi_password, value),
            "server_url" => put(&mut self.server_url, value.trim()),
            "claim_code" => put(&mut self.claim_code, value.trim()),
            "token" => put(&mut self.token, value.trim()),
            _ => Err("unknown key (wifi_ssid, wifi_password, server_url, claim_code, token)"),
        }
    }

    /// The whole record is usable: an SSID, a valid passphrase, a server URL, and a claim code
    /// or a token.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.wifi_ssid.is_empty() {
            return Err("wifi_ssid is not set");
        }
        let password = self.wifi_password.len();
        if password != 0 && !(8..=63).contains(&password) {
            return Err("wifi_password must be empty (open network) or 8 to 63 characters");
        }
        if self.server_url.is_empty() {
            return Err("server_url is not set");
        }
        if Endpoint::parse(&self.server_url).is_err() {
            return Err("server_url must be an https:// or http:// URL");
        }
        if self.claim_code.is_empty() && self.token.is_empty() {
            return Err("set claim_code (from the device page) or token");
        }
        if !self.token.is_empty() && !self.token.starts_with("cnd_") {
            return Err("a device token starts with cnd_");
        }
        Ok(())
    }

    /// The claim code was exchanged: keep the token, forget the code.
    pub fn claimed(&mut self, token: &str) -> Result<(), &'static str> {
        self.set("token", token)?;
        self.claim_code.clear();
        Ok(())
    }

    fn shown(&self, key: &str) -> String {
        let secret = |v: &str| if v.is_empty() { "" } else { "(set)" };
        match key {
            "wifi_ssid" => self.wifi_ssid.as_str().into(),
            "wifi_password" => secret(&self.wifi_password).into(),
            "server_url" => self.server_url.as_str().into(),
            "claim_code" => secret(&self.claim_code).into(),
            _ => secret(&self.token).into(),
        }
    }
}

/// What the firmware must do after a console line, besides printing [`Output::lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this record to flash, then print `@conclave OK saved` (or the error).
    Save(alloc::boxed::Box<Record>),
    /// Erase the record, then print `@conclave OK erased`.
    Erase,
    /// Restart (after printing).
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub lines: Vec<String>,
    pub action: Option<Action>,
}

/// Every answer line starts with this.
pub const PREFIX: &str = "@conclave ";
/// The longest request line; longer ones are refused whole.
pub const MAX_LINE: usize = 300;

/// The console's state: the line being typed and the record being edited (it starts as the
/// stored one, so `SET` of one key keeps the others).
#[derive(Debug)]
pub struct Console {
    line: Vec<u8>,
    overflow: bool,
    draft: Record,
    chip: &'static str,
    firmware: &'static str,
    provisioned: bool,
}

impl Console {
    pub fn new(stored: Option<Record>, chip: &'static str, firmware: &'static str) -> Self {
        Self {
            line: Vec::new(),
            overflow: false,
            provisioned: stored.is_some(),
            draft: stored.unwrap_or_default(),
            chip,
            firmware,
        }
    }

    /// The record was written (after [`Action::Save`]).
    pub fn saved(&mut self) {
        self.provisioned = true;
    }

    /// One byte from the console; an [`Output`] at the end of each line.
    pub fn feed(&mut self, byte: u8) -> Option<Output> {
        match byte {
            b'\n' => {
                let line = core::mem::take(&mut self.line);
                if core::mem::take(&mut self.overflow) {
                    return Some(reply(format!(
                        "ERR the line is longer than {MAX_LINE} bytes"
                    )));
                }
                let line = String::from_utf8(line).ok()?;
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    return None;
                }
                Some(self.command(line))
            }
            _ if self.line.len() >= MAX_LINE => {
                self.overflow = true;
                None
            }
            _ => {
                self.line.push(byte);
                None
            }
        }
    }

    fn command(&mut self, line: &str) -> Output {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            "CONCLAVE" => reply(format!(
                "READY protocol=1 chip={} firmware={} provisioned={}",
                self.chip,
                self.firmware,
                if self.provisioned { "yes" } else { "no" }
            )),
            "SET" => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match self.draft.set(key, value) {
                    Ok(()) => reply(format!("OK {key}")),
                    Err(why) => reply(format!("ERR {why}")),
                }
            }
            "UNSET" => match self.draft.set(rest.trim(), "") {
                Ok(()) => reply(format!("OK {}", rest.trim())),
                Err(why) => reply(format!("ERR {why}")),
            },
            "SHOW" => {
                let mut lines: Vec<String> = KEYS
                    .iter()
                    .map(|key| format!("{PREFIX}VALUE {key}={}", self.draft.shown(key)))
                    .collect();
                lines.push(format!("{PREFIX}END"));
                Output {
                    lines,
                    action: None,
                }
            }
            "COMMIT" => match self.draft.validate() {
                Ok(()) => Output {
                    lines: vec![],
                    action: Some(Action::Save(alloc::boxed::Box::new(self.draft.clone()))),
                },
                Err(why) => reply(format!("ERR {why}")),
            },
            "ERASE" => {
                self.draft = Record::default();
                self.provisioned = false;
                Output {
                    lines: vec![],
                    action: Some(Action::Erase),
                }
            }
            "REBOOT" => Output {
                lines: vec![format!("{PREFIX}OK rebooting")],
                action: Some(Action::Reboot),
            },
            _ => reply(String::from(
                "ERR unknown command (CONCLAVE, SET, UNSET, SHOW, COMMIT, ERASE, REBOOT)",
            )),
        }
    }
}

fn reply(text: String) -> Output {
    Output {
        lines: vec![format!("{PREFIX}{text}")],
        action: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(console: &mut Console, line: &str) -> Output {
        let mut out = None;
        for b in line.bytes().chain(*b"\r\n") {
            if let Some(o) = console.feed(b) {
                assert!(out.is_none(), "one output per line");
                out = Some(o);
            }
        }
        out.expect("an answer")
    }

    #[test]
    fn a_host_provisions_a_device_line_by_line() {
        let mut console = Console::new(None, "esp32c3", "0.1.0");
        assert_eq!(
            send(&mut console, "CONCLAVE").lines,
            ["@conclave READY protocol=1 chip=esp32c3 firmware=0.1.0 provisioned=no"]
        );
        assert_eq!(
            send(&mut console, "SET wifi_ssid My Home Net").lines,
            ["@conclave OK wifi_ssid"]
        );
        assert_eq!(
            send(&mut console, "COMMIT").lines,
            ["@conclave ERR server_url is not set"]
        );
        send(&mut console, "SET wifi_password correct horse");
        send(&mut console, "SET server_url https://conclave.example.com");
        assert_eq!(
            send(&mut console, "COMMIT").lines,
            ["@conclave ERR set claim_code (from the device page) or token"]
        );
        send(&mut console, "set claim_code K7QX-M2PD");
        let shown = send(&mut console, "SHOW").lines;
        assert!(shown.contains(&"@conclave VALUE wifi_ssid=My Home Net".into()));
        assert!(
            shown.contains(&"@conclave VALUE wifi_password=(set)".into()),
            "{shown:?}"
        );
        assert!(
            !shown
                .iter()
                .any(|l| l.contains("horse") || l.contains("K7QX"))
        );
        let Some(Action::Save(record)) = send(&mut console, "COMMIT").action else {
            panic!("a record to save");
        };
        assert_eq!(record.wifi_password.as_str(), "correct horse");
        assert_eq!(record.claim_code.as_str(), "K7QX-M2PD");
        console.saved();
        assert!(send(&mut console, "CONCLAVE").lines[0].ends_with("provisioned=yes"));
    }

    #[test]
    fn bad_input_gets_a_reason_and_changes_nothing() {
        let stored = Record::from_build(
            Some("lab"),
            Some("12345678"),
            Some("http://10.0.0.2:8080"),
            None,
            Some("cnd_abc"),
        )
        .unwrap();
        let mut console = Console::new(Some(stored.clone()), "esp32c6", "0.1.0");
        assert!(
            send(&mut console, "SET colour blue").lines[0].starts_with("@conclave ERR unknown key")
        );
        assert!(
            send(&mut console, &format!("SET wifi_ssid {}", "x".repeat(33))).lines[0]
                .contains("too long")
        );
        assert!(send(&mut console, "SET wifi_ssid a\u{7}b").lines[0].contains("control"));
        assert!(send(&mut console, "DANCE").lines[0].starts_with("@conclave ERR unknown command"));
        send(&mut console, "SET wifi_password short");
        assert!(send(&mut console, "COMMIT").lines[0].contains("8 to 63"));
        send(&mut console, "SET wifi_password 12345678");
        send(&mut console, "SET server_url ftp://x");
        assert!(send(&mut console, "COMMIT").lines[0].contains("server_url"));
        send(&mut console, "SET server_url http://10.0.0.2:8080");
        assert_eq!(
            send(&mut console, "COMMIT").action,
            Some(Action::Save(stored.into()))
        );
        // An overlong line is refused whole, and the next line works.
        let long = "SET wifi_ssid ".to_string() + &"y".repeat(MAX_LINE);
        assert!(send(&mut console, &long).lines[0].contains("longer than"));
        assert_eq!(send(&mut console, "ERASE").action, Some(Action::Erase));
        assert_eq!(send(&mut console, "REBOOT").action, Some(Action::Reboot));
    }

    #[test]
    fn build_time_settings_and_the_claim_exchange() {
        assert!(Record::from_build(None, None, Some("https://x"), Some("C"), None).is_none());
        assert!(Record::from_build(Some("n"), None, Some("https://x"), None, None).is_none());
        let mut record =
            Record::from_build(Some("n"), None, Some("https://x"), Some("CODE"), None).unwrap();
        record.claimed("cnd_token").unwrap();
        assert_eq!(
            (record.claim_code.as_str(), record.token.as_str()),
            ("", "cnd_token")
        );
        assert!(record.validate().is_ok());
    }

    use alloc::string::ToString as _;
}
