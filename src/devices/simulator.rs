//! Simulated devices (`conclave device simulate`): each speaks the real protocol
//! (`conclave_protocol`, JSON or postcard) over the real realtime endpoint, sends telemetry
//! and keeps every batch until it is acknowledged (resending after a reconnect), answers
//! commands, and goes through firmware updates: downloads in Range chunks with its token,
//! checks the SHA-256 and (given the public key) the ed25519 signature, "reboots" into the
//! new version and reports each step. For demos, tests and load tests.
//!
//! Flaky networks and bad images are part of the act: `disconnect_every` drops the connection
//! without a close frame every N batches (before their ack is read), `fail_updates` makes new
//! images fail to boot (the device reports `rolled_back` and keeps its old version).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use conclave_protocol as wire;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use futures_util::{SinkExt as _, StreamExt as _};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;

/// How a fleet of simulated devices behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub count: usize,
    /// One-time claim codes, one per device without a token.
    pub claim_codes: Vec<String>,
    /// Device tokens, one per line; tokens obtained from claim codes are appended.
    pub token_file: Option<PathBuf>,
    /// Tokens given directly (tests).
    pub tokens: Vec<String>,
    /// postcard frames (`conclave.v1.bin`) instead of JSON.
    pub binary: bool,
    /// The version the devices start with.
    pub firmware: String,
    /// Telemetry period; the server's (`welcome`) when `None`.
    pub interval: Option<Duration>,
    /// Readings per batch, spread over `metrics` metrics (`temperature`, `humidity`, `rssi`,
    /// `m3`, …): several samples of each per batch when `readings > metrics`.
    pub readings: usize,
    pub metrics: usize,
    /// Stop after this many batches per device (once all are acknowledged).
    pub batches: Option<u64>,
    /// Drop the connection (no close frame) after every N batches sent.
    pub disconnect_every: Option<u64>,
    /// The firmware public key: offers whose signature it does not verify fail.
    pub public_key: Option<VerifyingKey>,
    /// New images "do not boot": the device rolls back and reports it.
    pub fail_updates: bool,
    /// Bytes per Range request when downloading an image.
    pub download_chunk: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            count: 1,
            claim_codes: Vec::new(),
            token_file: None,
            tokens: Vec::new(),
            binary: false,
            firmware: "1.0.0".to_owned(),
            interval: None,
            readings: 3,
            metrics: 3,
            batches: None,
            disconnect_every: None,
            public_key: None,
            fail_updates: false,
            download_chunk: 16 * 1024,
        }
    }
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub connections: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub readings_acked: AtomicU64,
    pub commands_answered: AtomicU64,
    pub updates_booted: AtomicU64,
    pub updates_failed: AtomicU64,
    pub refused: AtomicU64,
    /// Devices that finished their `batches`.
    pub finished: AtomicU64,
    /// Devices whose `hello` was answered (now, counting each device once per connection).
    pub greeted: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Reads tokens (one per line, `#` comments) and redeems claim codes until there are
/// `options.count`; new tokens are appended to the token file.
pub async fn tokens(options: &Options) -> anyhow::Result<Vec<String>> {
    let mut tokens = options.tokens.clone();
    if let Some(file) = &options.token_file
        && file.exists()
    {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let client = reqwest::Client::new();
    for code in &options.claim_codes {
        if tokens.len() >= options.count {
            break;
        }
        let response = client
            .post(format!(
                "{}/api/v1/devices/claim",
                options.url.trim_end_matches('/')
            ))
            .json(&serde_json::json!({ "code": code, "firmware": options.firmware, "chip": "simulator" }))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", options.url))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "claim code {code} was refused ({status}): {}",
                body["detail"].as_str().unwrap_or("no reason given")
            );
        }
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("the claim answer has no token"))?
            .to_owned();
        if let Some(file) = &options.token_file {
            use std::io::Write as _;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            writeln!(out, "{token}")?;
        }
        tokens.push(token);
    }
    if tokens.len() < options.count {
        bail!(
            "{} devices need {} tokens or claim codes; there are {}",
            options.count,
            options.count,
            tokens.len()
        );
    }
    tokens.truncate(options.count);
    Ok(tokens)
}

/// Runs the fleet until `stop` (or until every device sent its `batches`).
pub async fn run(
    options: Options,
    stop: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let ws_url = websocket_url(&options.url)?;
    let tokens = tokens(&options).await?;
    let options = Arc::new(options);
    // One client (and connection pool) for the fleet's downloads.
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, token) in tokens.into_iter().enumerate() {
        let device = Device {
            index,
            token,
            ws_url: ws_url.clone(),
            options: options.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            http: http.clone(),
            seq: 0,
            unacked: VecDeque::new(),
            sent: 0,
            firmware: options.firmware.clone(),
            rebooted_into: None,
            answered: HashSet::new(),
            settings: Vec::new(),
        };
        tasks.spawn(device.run());
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(anyhow!("a simulated device crashed: {e}")),
        }
    }
    Ok(())
}

fn websocket_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http://") {
        Ok(format!("ws://{rest}/api/v1/ws"))
    } else if url.starts_with("https://") {
        // The simulator's WebSocket client is built without TLS (no second TLS stack in the
        // server binary); run it beside the server or behind a local tunnel.
        bail!(
            "the simulator speaks ws:// only: give an http:// URL (e.g. the server's own address)"
        )
    } else {
        bail!("--url: an http:// address, e.g. http://127.0.0.1:8080")
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A device's connection to the realtime endpoint, speaking `conclave_protocol` in either
/// encoding. The simulated devices use it, and so does the test that runs the firmware's own
/// connection state machine (`conclave_device_core::link`) against the server.
pub struct Transport {
    socket: Socket,
    binary: bool,
}

impl Transport {
    /// Connects to the server at `url` (`http://host:port`) with a device token.
    pub async fn connect(url: &str, token: &str, binary: bool) -> anyhow::Result<Self> {
        Self::connect_ws(&websocket_url(url)?, token, binary).await
    }

    async fn connect_ws(ws_url: &str, token: &str, binary: bool) -> anyhow::Result<Self> {
        let mut request = ws_url.into_client_request()?;
        let protocol = if binary {
            wire::SUBPROTOCOL_BINARY
        } else {
            wire::SUBPROTOCOL_JSON
        };
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("{protocol}, bearer.{token}").parse()?,
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { socket, binary })
    }

    pub async fn send(&mut self, message: &wire::DeviceMessage) -> anyhow::Result<()> {
        let frame = if self.binary {
            Message::binary(wire::to_binary(message)?)
        } else {
            Message::text(String::from_utf8(wire::to_json(message)?)?)
        };
        self.socket.send(frame).await?;
        Ok(())
    }

    /// The next protocol message; `None` when the connection ended.
    pub async fn receive(&mut self) -> anyhow::Result<Option<wire::ServerMessage>> {
        loop {
            let Some(frame) = self.socket.next().await else {
                return Ok(None);
            };
            let message = match frame {
                Ok(Message::Text(text)) => wire::from_json(text.as_bytes())?,
                Ok(Message::Binary(bytes)) => wire::from_binary(&bytes)?,
                Ok(Message::Close(_)) | Err(_) => return Ok(None),
                Ok(_) => continue,
            };
            return Ok(Some(message));
        }
    }

    /// Closes like a well-behaved device: the close frame, then whatever the server still
    /// sends until its close frame. Dropping the socket with unread data would make the kernel
    /// reset the connection, and the server would lose the frames it had not read yet.
    pub async fn close(&mut self) {
        let _ = self.socket.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

/// What an update in progress tells the connection to send.
enum Update {
    Status(wire::OtaStatus),
    /// Installed: reboot into it (reconnect with the new version).
    Reboot {
        rollout: u64,
        version: String,
    },
}

struct Device {
    index: usize,
    token: String,
    ws_url: String,
    options: Arc<Options>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    http: reqwest::Client,
    /// The last seq used.
    seq: u64,
    /// Sent, not yet acknowledged: kept until the ack, resent after a reconnect.
    unacked: VecDeque<wire::Telemetry>,
    sent: u64,
    firmware: String,
    /// Rebooted into this update; report it after `hello`.
    rebooted_into: Option<(u64, String, bool)>,
    /// Commands already run (a repeat is answered without running again).
    answered: HashSet<u64>,
    settings: Vec<(String, String)>,
}

/// Why a connection ended.
enum Ended {
    Stop,
    Finished,
    Dropped,
    Reboot,
}

impl Device {
    async fn run(mut self) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            match self.connect().await {
                Ok(socket) => {
                    backoff = Duration::from_millis(100);
                    self.stats.connected.fetch_add(1, Ordering::Relaxed);
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let ended = self.session(socket).await;
                    self.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    match ended {
                        Ok(Ended::Stop) => return Ok(()),
                        Ok(Ended::Finished) => {
                            self.stats.finished.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        Ok(Ended::Dropped | Ended::Reboot) => continue,
                        Err(e) => {
                            tracing::debug!(device = self.index, error = %e, "simulated device lost its connection");
                        }
                    }
                }
                Err(e) if e.to_string().contains("401") => {
                    bail!(
                        "device {} was refused: its token is unknown or revoked",
                        self.index
                    )
                }
                Err(e) => {
                    tracing::debug!(device = self.index, error = %e, "simulated device cannot connect");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self) -> anyhow::Result<Transport> {
        Transport::connect_ws(&self.ws_url, &self.token, self.options.binary).await
    }

    fn acked(&self, batch: &wire::Telemetry) {
        self.stats.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.stats
            .readings_acked
            .fetch_add(batch.readings.len() as u64, Ordering::Relaxed);
    }

    fn batch(&mut self) -> wire::Telemetry {
        self.seq += 1;
        let at_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let t = self.seq as f64 / 10.0 + self.index as f64;
        let metrics = self.options.metrics.max(1);
        let readings = (0..self.options.readings)
            .map(|i| {
                let m = i % metrics;
                let t = t + (i / metrics) as f64 / 100.0;
                wire::Reading {
                    metric: match m {
                        0 => "temperature".to_owned(),
                        1 => "humidity".to_owned(),
                        2 => "rssi".to_owned(),
                        n => format!("m{n}"),
                    },
                    value: match m {
                        0 => 21.0 + 3.0 * t.sin(),
                        1 => 45.0 + 10.0 * (t / 3.0).cos(),
                        2 => -60.0 - (self.seq % 7) as f64,
                        n => n as f64 + t,
                    },
                }
            })
            .collect();
        wire::Telemetry {
            seq: self.seq,
            at_ms,
            readings,
        }
    }

    async fn session(&mut self, mut socket: Transport) -> anyhow::Result<Ended> {
        let hello = wire::DeviceMessage::Hello(wire::Hello {
            protocol: wire::VERSION,
            firmware: self.firmware.clone(),
            chip: "simulator".to_owned(),
            capabilities: vec!["telemetry".into(), "commands".into(), "ota".into()],
            dropped_readings: 0,
        });
        socket.send(&hello).await?;
        let welcome = loop {
            match socket.receive().await? {
                Some(wire::ServerMessage::Welcome(welcome)) => {
                    self.stats.greeted.fetch_add(1, Ordering::Relaxed);
                    break welcome;
                }
                Some(_) => continue,
                None => return Ok(Ended::Dropped),
            }
        };
        // The server stored up to last_seq: those batches are safe; continue above it.
        while self
            .unacked
            .front()
            .is_some_and(|b| b.seq <= welcome.last_seq)
        {
            if let Some(batch) = self.unacked.pop_front() {
                self.acked(&batch);
            }
        }
        self.seq = self.seq.max(welcome.last_seq);
        if let Some((rollout, version, booted)) = self.rebooted_into.take() {
            let state = if booted {
                wire::OtaState::BootedOk
            } else {
                wire::OtaState::RolledBack
            };
            let detail =
                (!booted).then(|| "the new image did not boot; back on the old one".to_owned());
            let status = wire::DeviceMessage::OtaStatus(wire::OtaStatus {
                rollout,
                version,
                state,
                received: 0,
                detail,
            });
            socket.send(&status).await?;
            if booted {
                self.stats.updates_booted.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.updates_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let resend: Vec<wire::Telemetry> = self.unacked.iter().cloned().collect();
        for batch in resend {
            socket.send(&wire::DeviceMessage::Telemetry(batch)).await?;
        }
        let every = self
            .options
            .interval
            .unwrap_or(Duration::from_secs(u64::from(
                welcome.telemetry_interval_secs.max(1),
            )));
        // The first batch follows one period after connecting, as a device on a schedule does.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (updates, mut progress) = mpsc::unbounded_channel::<Update>();
        let mut resend_due = false;
        let mut updating: HashSet<u64> = HashSet::new();
        loop {
            if self.options.batches.is_some_and(|n| self.sent >= n) && self.unacked.is_empty() {
                socket.close().await;
                return Ok(Ended::Finished);
            }
            tokio::select! {
                () = self.stop.cancelled() => {
                    socket.close().await;
                    return Ok(Ended::Stop);
                }
                _ = ticker.tick() => {
                    if resend_due {
                        resend_due = false;
                        let resend: Vec<wire::Telemetry> = self.unacked.iter().cloned().collect();
                        for batch in resend {
                            socket.send(&wire::DeviceMessage::Telemetry(batch)).await?;
                        }
                        continue;
                    }
                    if self.options.batches.is_some_and(|n| self.sent >= n) {
                        continue;
                    }
                    let batch = self.batch();
                    self.unacked.push_back(batch.clone());
                    self.sent += 1;
                    socket.send(&wire::DeviceMessage::Telemetry(batch)).await?;
                    self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    if self.options.disconnect_every.is_some_and(|n| n > 0 && self.sent.is_multiple_of(n)) {
                        // Gone mid-conversation: no close frame, the ack never read.
                        drop(socket);
                        return Ok(Ended::Dropped);
                    }
                }
                update = progress.recv() => {
                    match update {
                        Some(Update::Status(status)) => {
                            socket.send(&wire::DeviceMessage::OtaStatus(status)).await?;
                        }
                        Some(Update::Reboot { rollout, version }) => {
                            let booted = !self.options.fail_updates;
                            if booted {
                                self.firmware = version.clone();
                            }
                            self.rebooted_into = Some((rollout, version, booted));
                            socket.close().await;
                            return Ok(Ended::Reboot);
                        }
                        None => {}
                    }
                }
                message = socket.receive() => {
                    let Some(message) = message? else {
                        return Ok(Ended::Dropped);
                    };
                    match message {
                        wire::ServerMessage::TelemetryAck(ack) => {
                            while self.unacked.front().is_some_and(|b| b.seq <= ack.seq) {
                                if let Some(batch) = self.unacked.pop_front() {
                                    self.acked(&batch);
                                }
                            }
                        }
                        wire::ServerMessage::Command(command) => {
                            if let Some(reboot) = self.answer(&mut socket, command).await? {
                                socket.close().await;
                                return Ok(reboot);
                            }
                        }
                        wire::ServerMessage::OtaOffer(offer) => {
                            // An offer repeated while its download runs is the same update.
                            if updating.insert(offer.rollout) {
                                self.start_update(offer, updates.clone());
                            }
                        }
                        wire::ServerMessage::Error(error) => {
                            self.stats.refused.fetch_add(1, Ordering::Relaxed);
                            if error.code == "rate_limited" {
                                resend_due = true;
                            }
                        }
                        wire::ServerMessage::Welcome(_) => {}
                    }
                }
            }
        }
    }

    /// Runs a command (once per id) and answers it; `Some` when it asks for a reboot.
    async fn answer(
        &mut self,
        socket: &mut Transport,
        command: wire::Command,
    ) -> anyhow::Result<Option<Ended>> {
        let repeat = !self.answered.insert(command.id);
        let (status, output) = match command.name.as_str() {
            "ping" => (wire::CommandStatus::Succeeded, Some("pong".to_owned())),
            "echo" => (wire::CommandStatus::Succeeded, Some(command.args.join(" "))),
            "set" if command.args.len() == 2 => {
                if !repeat {
                    self.settings.retain(|(k, _)| *k != command.args[0]);
                    self.settings
                        .push((command.args[0].clone(), command.args[1].clone()));
                }
                (
                    wire::CommandStatus::Succeeded,
                    Some(format!("{} = {}", command.args[0], command.args[1])),
                )
            }
            "set" => (
                wire::CommandStatus::Failed,
                Some("usage: set <name> <value>".to_owned()),
            ),
            "status" => (
                wire::CommandStatus::Succeeded,
                Some(format!(
                    "firmware {} · seq {} · {} unacknowledged",
                    self.firmware,
                    self.seq,
                    self.unacked.len()
                )),
            ),
            "fail" => (
                wire::CommandStatus::Failed,
                Some("failed as asked".to_owned()),
            ),
            "reboot" => (wire::CommandStatus::Succeeded, Some("rebooting".to_owned())),
            _ => (wire::CommandStatus::Unknown, None),
        };
        if !repeat && status != wire::CommandStatus::Unknown {
            socket
                .send(&wire::DeviceMessage::CommandResult(wire::CommandResult {
                    id: command.id,
                    status: wire::CommandStatus::Accepted,
                    output: None,
                }))
                .await?;
        }
        socket
            .send(&wire::DeviceMessage::CommandResult(wire::CommandResult {
                id: command.id,
                status,
                output,
            }))
            .await?;
        self.stats.commands_answered.fetch_add(1, Ordering::Relaxed);
        Ok((command.name == "reboot" && !repeat).then_some(Ended::Reboot))
    }

    /// Downloads, verifies and "installs" an offered image in the background.
    fn start_update(&self, offer: wire::OtaOffer, updates: mpsc::UnboundedSender<Update>) {
        let (http, token, chunk, key) = (
            self.http.clone(),
            self.token.clone(),
            self.options.download_chunk.max(1024),
            self.options.public_key,
        );
        tokio::spawn(async move {
            let status = |state, received, detail: Option<String>| {
                Update::Status(wire::OtaStatus {
                    rollout: offer.rollout,
                    version: offer.version.clone(),
                    state,
                    received,
                    detail,
                })
            };
            match download(&http, &token, &offer, chunk, &updates).await {
                Ok(image) => {
                    let _ = updates.send(status(wire::OtaState::Verifying, offer.size, None));
                    if let Err(why) = verify(&image, &offer, key.as_ref()) {
                        let _ = updates.send(status(wire::OtaState::Failed, offer.size, Some(why)));
                        return;
                    }
                    let _ = updates.send(status(wire::OtaState::Installed, offer.size, None));
                    let _ = updates.send(Update::Reboot {
                        rollout: offer.rollout,
                        version: offer.version.clone(),
                    });
                }
                Err(e) => {
                    let _ = updates.send(status(
                        wire::OtaState::Failed,
                        0,
                        Some(format!("download failed: {e}")),
                    ));
                }
            }
        });
    }
}

/// Fetches an image in Range chunks (each request resumes where the last ended), reporting
/// progress.
async fn download(
    http: &reqwest::Client,
    token: &str,
    offer: &wire::OtaOffer,
    chunk: usize,
    updates: &mpsc::UnboundedSender<Update>,
) -> anyhow::Result<Vec<u8>> {
    let size = usize::try_from(offer.size)?;
    let mut image = Vec::with_capacity(size);
    while image.len() < size {
        let end = (image.len() + chunk).min(size) - 1;
        let response = http
            .get(&offer.url)
            .bearer_auth(token)
            .header("Range", format!("bytes={}-{end}", image.len()))
            .header("If-Range", format!("\"{}\"", offer.sha256))
            .send()
            .await?;
        match response.status().as_u16() {
            206 => image.extend_from_slice(&response.bytes().await?),
            // The whole image (the server ignored the range).
            200 => {
                image = response.bytes().await?.to_vec();
                break;
            }
            status => bail!("the server answered {status}"),
        }
        let _ = updates.send(Update::Status(wire::OtaStatus {
            rollout: offer.rollout,
            version: offer.version.clone(),
            state: wire::OtaState::Downloading,
            received: u32::try_from(image.len()).unwrap_or(u32::MAX),
            detail: None,
        }));
    }
    Ok(image)
}

/// The checks a device makes before installing: size, SHA-256, and the signature with the
/// key it was built with.
fn verify(image: &[u8], offer: &wire::OtaOffer, key: Option<&VerifyingKey>) -> Result<(), String> {
    if image.len() != offer.size as usize {
        return Err(format!(
            "got {} bytes, expected {}",
            image.len(),
            offer.size
        ));
    }
    let digest: String = sha2::Sha256::digest(image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != offer.sha256 {
        return Err("SHA-256 mismatch".to_owned());
    }
    if let Some(key) = key {
        let bytes: Vec<u8> = (0..offer.signature.len() / 2)
            .filter_map(|i| u8::from_str_radix(offer.signature.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let signature = <[u8; 64]>::try_from(bytes.as_slice())
            .map(|b| Signature::from_bytes(&b))
            .map_err(|_| "malformed signature".to_owned())?;
        key.verify(image, &signature)
            .map_err(|_| "the signature does not verify with this device's key".to_owned())?;
    }
    Ok(())
}
