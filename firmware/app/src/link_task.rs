//! The connection to the server: claims a token when the device has only a claim code, then
//! connects, greets, and runs the [`Link`] state machine until the connection ends;
//! reconnects with backoff. Readings keep arriving into the link's offline buffer whether or
//! not it is connected.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use conclave_device_core::backoff::Backoff;
use conclave_device_core::endpoint::{CLAIM_PATH, Endpoint};
use conclave_device_core::http;
use conclave_device_core::link::{Event, Link};
use conclave_device_core::provision::Record;
use conclave_device_core::websocket::{Incoming, WebSocket, WsFailure};
use conclave_device_core::wire;
use embassy_futures::select::{Either4, select4};
use embassy_net::Stack;
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::{Read as _, Write as _};

use crate::net::{Buffers, Conn, NetError};
use crate::storage::STORAGE;
use crate::{COMMANDS, CONFIG, INTERVAL, OFFERS, READINGS, REPORTS, Report, clock};

/// Batches kept while offline: at one batch a minute, over eight hours.
pub const BUFFER_BATCHES: usize = 512;
pub type DeviceLink = Link<BUFFER_BATCHES, 2>;

/// How long the server may stay silent before the connection counts as dead.
const SILENCE: Duration = Duration::from_secs(90);
const PING_EVERY: Duration = Duration::from_secs(30);

#[embassy_executor::task]
pub async fn link_task(stack: Stack<'static>, link: &'static mut DeviceLink) {
    let mut backoff = Backoff::new(1_000, 60_000);
    loop {
        if !stack.is_config_up() {
            wait_offline(link, Duration::from_secs(1)).await;
            continue;
        }
        let Some(record) = CONFIG.lock().await.clone() else {
            wait_offline(link, Duration::from_secs(5)).await;
            continue;
        };
        let outcome = if record.token.is_empty() {
            match claim(stack, record).await {
                // Claimed: connect at once with the new token.
                Ok(()) => continue,
                Err(why) => Err(why),
            }
        } else {
            session(stack, &record, link).await
        };
        match outcome {
            Ok(true) => backoff.reset(),
            Ok(false) => {}
            Err(why) => log::warn!("link: {why}"),
        }
        link.disconnected();
        let delay = backoff.next_delay_ms(esp_hal::rng::Rng::new().random());
        wait_offline(link, Duration::from_millis(u64::from(delay))).await;
    }
}

/// Waits, keeping readings and reports.
async fn wait_offline(link: &mut DeviceLink, duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        match select4(
            READINGS.receive(),
            REPORTS.receive(),
            Timer::at(deadline),
            core::future::pending::<()>(),
        )
        .await
        {
            Either4::First(sample) => link.record(sample.taken_ms, &sample.readings),
            Either4::Second(report) => apply(link, report),
            Either4::Third(()) | Either4::Fourth(()) => return,
        }
    }
}

fn apply(link: &mut DeviceLink, report: Report) {
    match report {
        Report::Command { id, status, output } => link.command_done(id, status, output.as_deref()),
        Report::Ota(status) => link.ota_status(status),
    }
}

/// One connection: `Ok(true)` when the server was reached and greeted us.
async fn session(
    stack: Stack<'static>,
    record: &Record,
    link: &mut DeviceLink,
) -> Result<bool, String> {
    let endpoint = Endpoint::websocket(&record.server_url).map_err(|e| format!("{e}"))?;
    let mut buffers = Buffers::new(endpoint.tls);
    let conn = Conn::open(stack, &endpoint, &mut buffers)
        .await
        .map_err(|e| format!("{e}"))?;
    let mut ws = WebSocket::connect(conn, esp_hal::rng::Rng::new(), &endpoint, &record.token)
        .await
        .map_err(|e| format!("{e}"))?;
    log::info!("link: connected to {}", endpoint.host);
    let hello = link.connected();
    let result = run(&mut ws, link, hello).await;
    let greeted = link.state() == conclave_device_core::link::State::Online;
    match result {
        Ok(()) => {
            let _ = embassy_time::with_timeout(Duration::from_secs(2), ws.close()).await;
        }
        Err(WsFailure::Closed) => {}
        Err(e) => log::warn!("link: {e}"),
    }
    ws.conn.close().await;
    Ok(greeted)
}

type Socket<'c> = WebSocket<Conn<'c>, esp_hal::rng::Rng>;

async fn run(
    ws: &mut Socket<'_>,
    link: &mut DeviceLink,
    hello: wire::DeviceMessage,
) -> Result<(), WsFailure<NetError>> {
    ws.send(&hello).await?;
    let mut heard = Instant::now();
    let mut ping_at = Instant::now() + PING_EVERY;
    loop {
        while let Some(incoming) = ws.process().await? {
            heard = Instant::now();
            match incoming {
                Incoming::Message(message) => handle(link, message),
                Incoming::Unreadable(e) => log::warn!("link: an unreadable frame: {e}"),
                Incoming::Closed(code) => {
                    log::info!("link: the server closed the connection ({code})");
                    return Err(WsFailure::Closed);
                }
                Incoming::Nothing => {}
            }
        }
        while let Some(frame) = link.next_frame() {
            ws.send(&frame).await?;
        }
        match select4(
            ws.fill(),
            READINGS.receive(),
            REPORTS.receive(),
            Timer::at(ping_at),
        )
        .await
        {
            Either4::First(filled) => {
                filled?;
                heard = Instant::now();
            }
            Either4::Second(sample) => link.record(sample.taken_ms, &sample.readings),
            Either4::Third(report) => apply(link, report),
            Either4::Fourth(()) => {
                if heard.elapsed() > SILENCE {
                    log::warn!(
                        "link: the server has been silent for {} s",
                        SILENCE.as_secs()
                    );
                    return Err(WsFailure::Closed);
                }
                ws.ping().await?;
                ping_at = Instant::now() + PING_EVERY;
            }
        }
    }
}

fn handle(link: &mut DeviceLink, message: wire::ServerMessage) {
    let now = clock::uptime_ms();
    match link.receive(message, now) {
        Event::Welcomed {
            interval_secs,
            device_id,
            ..
        } => {
            if let Some(unix) = link.unix_ms(now) {
                clock::set(unix, now);
            }
            INTERVAL.signal(interval_secs);
            log::info!("link: welcomed as device {device_id}; telemetry every {interval_secs} s");
            crate::confirm_update();
        }
        Event::Run(command) => {
            let id = command.id;
            if COMMANDS.try_send(command).is_err() {
                link.command_done(
                    id,
                    wire::CommandStatus::Failed,
                    Some("busy: too many commands waiting"),
                );
            }
        }
        Event::Offer(offer) => {
            // Full: an update is already running; the server offers again later.
            let _ = OFFERS.try_send(offer);
        }
        Event::Refused(error) => log::warn!("link: refused: {} ({})", error.message, error.code),
        Event::None => {}
    }
}

/// Exchanges the claim code for a device token and keeps it in flash.
async fn claim(stack: Stack<'static>, mut record: Record) -> Result<(), String> {
    let server = Endpoint::parse(&record.server_url)
        .map_err(|e| format!("{e}"))?
        .with_path(CLAIM_PATH);
    let mut buffers = Buffers::new(server.tls);
    let mut conn = Conn::open(stack, &server, &mut buffers)
        .await
        .map_err(|e| format!("{e}"))?;
    let request = http::claim_request(&server, &record.claim_code, crate::FIRMWARE, crate::CHIP);
    conn.write_all(&request).await.map_err(|e| format!("{e}"))?;
    conn.flush().await.map_err(|e| format!("{e}"))?;
    let (status, body) = read_answer(&mut conn).await.map_err(|e| format!("{e}"))?;
    conn.close().await;
    let token = match http::claim_answer(status, &body) {
        Ok(token) => token,
        Err(http::HttpError::Status(status, detail)) if (400..500).contains(&status) => {
            // A used or expired code will not work later either: wait for new provisioning.
            log::error!(
                "link: the claim code was refused ({status}: {detail}); provision the device again"
            );
            Timer::after(Duration::from_secs(600)).await;
            return Err(format!("claim refused ({status})"));
        }
        Err(e) => return Err(format!("claim: {e}")),
    };
    record.claimed(&token).map_err(String::from)?;
    if let Some(storage) = STORAGE.lock().await.as_mut() {
        storage.save_record(&record).map_err(|e| format!("{e}"))?;
    }
    *CONFIG.lock().await = Some(record);
    log::info!("link: claimed; the device token is stored");
    Ok(())
}

/// Reads one HTTP answer with a Content-Length body.
async fn read_answer(conn: &mut Conn<'_>) -> Result<(u16, Vec<u8>), NetError> {
    let mut received: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(NetError::Closed);
        }
        received.extend_from_slice(&chunk[..n]);
        match http::parse_head(&received) {
            Ok(Some(head)) => {
                if head.content_length > 4_096 {
                    return Err(NetError::Io);
                }
                while received.len() < head.length + head.content_length {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(NetError::Closed);
                    }
                    received.extend_from_slice(&chunk[..n]);
                }
                let body = received[head.length..head.length + head.content_length].to_vec();
                return Ok((head.status, body));
            }
            Ok(None) if received.len() < 8_192 => continue,
            _ => return Err(NetError::Io),
        }
    }
}
