//! `conclave device simulate|provision` and `conclave firmware keygen|sign`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use ed25519_dalek::{Signer as _, SigningKey};
use rand::RngCore as _;

use super::exit;
use crate::devices::simulator::{self, Options, Stats};

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Run N simulated devices against a server: telemetry, commands, firmware updates.
    Simulate(SimulateArgs),
    /// Write Wi-Fi credentials, the server and a claim code (or token) into a device running
    /// the Conclave firmware, over its serial console; then restart it.
    Provision(ProvisionArgs),
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// A one-time claim code (repeat for more devices); the tokens it yields are appended
    /// to --token-file.
    #[arg(long = "claim-code", value_name = "CODE")]
    claim_codes: Vec<String>,
    /// Device tokens, one per line (read first; claimed tokens are added).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Speak postcard (conclave.v1.bin) instead of JSON.
    #[arg(long)]
    binary: bool,
    /// The firmware version the devices start with.
    #[arg(long, default_value = "1.0.0")]
    firmware: String,
    /// Telemetry period in milliseconds (default: what the server says).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Readings per batch.
    #[arg(long, default_value_t = 3)]
    readings: usize,
    /// Distinct metrics the readings are spread over.
    #[arg(long, default_value_t = 3)]
    metrics: usize,
    /// Stop after this many batches per device (once acknowledged).
    #[arg(long)]
    batches: Option<u64>,
    /// Drop the connection without a close frame every N batches (a flaky network).
    #[arg(long)]
    disconnect_every: Option<u64>,
    /// The firmware public key (FILE.pub from `conclave firmware keygen`): updates whose
    /// signature it does not verify fail, as on a real device.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// New firmware "does not boot": devices roll back and report it.
    #[arg(long)]
    fail_updates: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The device's serial port, e.g. /dev/ttyACM0 (built-in USB of the ESP32-C3/C6).
    #[arg(long)]
    port: String,
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    #[arg(long)]
    wifi_ssid: String,
    /// The Wi-Fi passphrase (empty for an open network); better given in the environment.
    #[arg(
        long,
        env = "CONCLAVE_WIFI_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    wifi_password: String,
    /// The server's public URL, e.g. https://conclave.example.com.
    #[arg(long)]
    server: String,
    /// A claim code from the device page (exchanged for a token on first connect).
    #[arg(long, conflicts_with = "token", required_unless_present = "token")]
    claim_code: Option<String>,
    /// A device token instead of a claim code.
    #[arg(long, env = "CONCLAVE_DEVICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Keep the device running its old settings until it restarts.
    #[arg(long)]
    no_reboot: bool,
    /// Seconds to wait for the device to answer (it may be booting).
    #[arg(long, default_value_t = 15)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum FirmwareAction {
    /// Write a new ed25519 signing key to FILE (mode 0600) and its public key to FILE.pub.
    /// Register FILE.pub with the workspace and compile it into the firmware.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a firmware image: writes IMAGE.sig (hex) and prints the signature.
    Sign {
        /// The private key from `conclave firmware keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        image: PathBuf,
        /// Where to write the signature (default IMAGE.sig).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fail(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("conclave: {error}");
    ExitCode::from(code)
}

fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key {}: {e}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    let bytes: Vec<u8> = (0..line.len() / 2)
        .filter_map(|i| u8::from_str_radix(line.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let seed = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{} is not a key written by `conclave firmware keygen` (64 hex digits)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

pub fn firmware(action: FirmwareAction) -> ExitCode {
    match action {
        FirmwareAction::Keygen { out } => {
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            if out.exists() || public_path.exists() {
                return fail(
                    exit::DATA,
                    format!(
                        "{} or {} exists; keys are never overwritten",
                        out.display(),
                        public_path.display()
                    ),
                );
            }
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            let key = SigningKey::from_bytes(&seed);
            let public = hex(key.verifying_key().as_bytes());
            if let Err(e) = write_private(&out, &format!("{}\n", hex(&seed))) {
                return fail(
                    exit::FAILURE,
                    format!("cannot write {}: {e}", out.display()),
                );
            }
            if let Err(e) = std::fs::write(&public_path, format!("{public}\n")) {
                return fail(
                    exit::FAILURE,
                    format!("cannot write {}: {e}", public_path.display()),
                );
            }
            println!(
                "private key: {} (keep it secret)\npublic key:  {} = {public}",
                out.display(),
                public_path.display()
            );
            ExitCode::SUCCESS
        }
        FirmwareAction::Sign { key, image, out } => {
            let key = match read_signing_key(&key) {
                Ok(key) => key,
                Err(e) => return fail(exit::DATA, e),
            };
            let data = match std::fs::read(&image) {
                Ok(data) => data,
                Err(e) => {
                    return fail(exit::DATA, format!("cannot read {}: {e}", image.display()));
                }
            };
            let signature = hex(&key.sign(&data).to_bytes());
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.sig", image.display())));
            if let Err(e) = std::fs::write(&out, format!("{signature}\n")) {
                return fail(
                    exit::FAILURE,
                    format!("cannot write {}: {e}", out.display()),
                );
            }
            println!("{signature}");
            ExitCode::SUCCESS
        }
    }
}

pub async fn device(action: DeviceAction) -> Result<(), (u8, anyhow::Error)> {
    match action {
        DeviceAction::Provision(args) => provision(args).await,
        DeviceAction::Simulate(args) => simulate(args).await,
    }
}

async fn provision(args: ProvisionArgs) -> Result<(), (u8, anyhow::Error)> {
    let ProvisionArgs {
        port,
        baud,
        wifi_ssid,
        wifi_password,
        server,
        claim_code,
        token,
        no_reboot,
        timeout_secs,
    } = args;
    let record = crate::devices::provision::record(
        &wifi_ssid,
        &wifi_password,
        &server,
        claim_code.as_deref(),
        token.as_deref(),
    )
    .map_err(|e| (exit::DATA, e))?;
    let request = crate::devices::provision::Request {
        port,
        baud,
        record,
        reboot: !no_reboot,
        timeout: Duration::from_secs(timeout_secs.max(1)),
    };
    let done = tokio::task::spawn_blocking(move || {
        crate::devices::provision::provision(&request).map(|p| (p, request))
    })
    .await
    .map_err(|e| (exit::FAILURE, anyhow::anyhow!("{e}")))?;
    let (provisioned, request) = done.map_err(|e| (exit::UNAVAILABLE, e))?;
    println!(
        "provisioned the device on {} ({}): it joins {:?} and connects to {}{}",
        request.port,
        provisioned.banner,
        request.record.wifi_ssid.as_str(),
        request.record.server_url.as_str(),
        if request.reboot {
            "; restarting it now"
        } else {
            " after its next restart"
        }
    );
    Ok(())
}

async fn simulate(args: SimulateArgs) -> Result<(), (u8, anyhow::Error)> {
    let SimulateArgs {
        url,
        count,
        claim_codes,
        token_file,
        binary,
        firmware,
        interval_ms,
        readings,
        metrics,
        batches,
        disconnect_every,
        public_key,
        fail_updates,
        duration_secs,
    } = args;
    if count == 0 {
        return Err((exit::DATA, anyhow::anyhow!("--count: at least 1")));
    }
    if readings == 0 || readings > conclave_protocol::MAX_READINGS {
        return Err((
            exit::DATA,
            anyhow::anyhow!(
                "--readings: 1 to {} per batch",
                conclave_protocol::MAX_READINGS
            ),
        ));
    }
    let public_key = match public_key {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    exit::DATA,
                    anyhow::anyhow!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(
                crate::devices::ota::parse_public_key(&text)
                    .map_err(|e| (exit::DATA, anyhow::anyhow!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let options = Options {
        url,
        count,
        claim_codes,
        token_file,
        tokens: Vec::new(),
        binary,
        firmware,
        interval: interval_ms.map(Duration::from_millis),
        readings,
        metrics,
        batches,
        disconnect_every,
        public_key,
        fail_updates,
        download_chunk: 16 * 1024,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let stats = Arc::new(Stats::default());
    let report = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                println!("{}", summary(&stats));
            }
        })
    };
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
    }
    if let Some(secs) = duration_secs {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.cancel();
        });
    }
    let result = simulator::run(options, stop, stats.clone()).await;
    report.abort();
    println!("{}", summary(&stats));
    result.map_err(|e| (exit::FAILURE, e))
}

fn summary(stats: &Stats) -> String {
    format!(
        "connected {} · batches sent {} acked {} · readings acked {} · commands answered {} · updates booted {} failed {} · refused frames {}",
        Stats::get(&stats.connected),
        Stats::get(&stats.batches_sent),
        Stats::get(&stats.batches_acked),
        Stats::get(&stats.readings_acked),
        Stats::get(&stats.commands_answered),
        Stats::get(&stats.updates_booted),
        Stats::get(&stats.updates_failed),
        Stats::get(&stats.refused),
    )
}
