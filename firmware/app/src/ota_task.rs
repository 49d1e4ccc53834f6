//! Firmware updates: downloads an offered image in Range requests into the inactive OTA slot,
//! a sector at a time, checking it as it arrives ([`Download`]); then the size, SHA-256 and
//! signature; then records the pending update, switches the boot slot and restarts. The new
//! image confirms itself after its first `welcome` (see `main.rs` and
//! `conclave_device_core::ota::on_boot`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use conclave_device_core::endpoint::Endpoint;
use conclave_device_core::http;
use conclave_device_core::ota::{self, Download, PendingUpdate};
use conclave_device_core::wire;
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use embedded_io_async::{Read as _, Write as _};

use crate::net::{Buffers, Conn};
use crate::storage::STORAGE;
use crate::{CONFIG, OFFERS, REPORTS, Report};

/// The update key compiled in (`CONCLAVE_OTA_PUBLIC_KEY`); empty: updates are refused.
static PUBLIC_KEY: &str = include_str!(concat!(env!("OUT_DIR"), "/ota_public_key.txt"));
const SECTOR: usize = 4_096;
/// Bytes asked for per Range request.
const RANGE: u32 = 16 * 1_024;
/// Progress is reported every this many bytes.
const REPORT_EVERY: u32 = 64 * 1_024;
const ATTEMPTS: u32 = 6;

#[embassy_executor::task]
pub async fn ota_task(stack: Stack<'static>) {
    let key = ota::public_key(PUBLIC_KEY);
    if key.is_none() {
        log::warn!(
            "ota: no update key compiled in (CONCLAVE_OTA_PUBLIC_KEY): updates will be refused"
        );
    }
    loop {
        let offer = OFFERS.receive().await;
        log::info!("ota: offered {} ({} bytes)", offer.version, offer.size);
        match update(stack, &offer, key.as_ref()).await {
            Ok(()) => {
                log::info!("ota: installed {}; restarting into it", offer.version);
                // Time for the `installed` report to leave.
                Timer::after(Duration::from_secs(2)).await;
                esp_hal::system::software_reset();
            }
            Err(why) => {
                log::warn!("ota: {why}");
                status(&offer, wire::OtaState::Failed, 0, Some(why)).await;
            }
        }
    }
}

async fn status(
    offer: &wire::OtaOffer,
    state: wire::OtaState,
    received: u32,
    detail: Option<String>,
) {
    REPORTS
        .send(Report::Ota(wire::OtaStatus {
            rollout: offer.rollout,
            version: offer.version.clone(),
            state,
            received,
            detail,
        }))
        .await;
}

async fn update(
    stack: Stack<'static>,
    offer: &wire::OtaOffer,
    key: Option<&ota::VerifyingKey>,
) -> Result<(), String> {
    let capacity = match STORAGE.lock().await.as_mut() {
        Some(storage) => storage.begin_image().map_err(|e| format!("{e}"))?,
        None => return Err("no flash".into()),
    };
    let mut download = Download::start(offer, key, capacity).map_err(|e| format!("{e}"))?;
    let url = Endpoint::parse(&offer.url).map_err(|e| format!("the offer's URL: {e}"))?;
    let token = CONFIG
        .lock()
        .await
        .as_ref()
        .map(|r| String::from(r.token.as_str()))
        .unwrap_or_default();
    status(offer, wire::OtaState::Downloading, 0, None).await;
    let mut sector: Vec<u8> = Vec::with_capacity(SECTOR);
    let mut written: u32 = 0;
    let mut reported = 0;
    let mut failures = 0;
    while !download.is_complete() {
        match fetch(
            stack,
            &url,
            &token,
            offer,
            &mut download,
            &mut sector,
            &mut written,
        )
        .await
        {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    return Err(format!("download failed {ATTEMPTS} times: {why}"));
                }
                log::warn!("ota: {why}; resuming at {} bytes", download.received());
                Timer::after(Duration::from_secs(2u64 << failures)).await;
            }
        }
        if download.received() - reported >= REPORT_EVERY {
            reported = download.received();
            status(offer, wire::OtaState::Downloading, reported, None).await;
        }
    }
    flush(&mut sector, &mut written).await?;
    status(offer, wire::OtaState::Verifying, download.received(), None).await;
    let received = download.received();
    download.finish().map_err(|e| format!("{e}"))?;
    let pending = PendingUpdate {
        rollout: offer.rollout,
        version: heapless::String::try_from(offer.version.as_str())
            .map_err(|_| String::from("the version is too long"))?,
    };
    match STORAGE.lock().await.as_mut() {
        Some(storage) => storage
            .activate_image(&pending)
            .map_err(|e| format!("{e}"))?,
        None => return Err("no flash".into()),
    }
    status(offer, wire::OtaState::Installed, received, None).await;
    Ok(())
}

/// Writes the full sector buffer to the slot.
async fn flush(sector: &mut Vec<u8>, written: &mut u32) -> Result<(), String> {
    if sector.is_empty() {
        return Ok(());
    }
    match STORAGE.lock().await.as_mut() {
        Some(storage) => storage
            .write_image(*written, sector)
            .map_err(|e| format!("{e}"))?,
        None => return Err("no flash".into()),
    }
    *written += sector.len() as u32;
    sector.clear();
    Ok(())
}

/// One connection: Range requests until the image is complete or the connection fails.
async fn fetch(
    stack: Stack<'static>,
    url: &Endpoint,
    token: &str,
    offer: &wire::OtaOffer,
    download: &mut Download,
    sector: &mut Vec<u8>,
    written: &mut u32,
) -> Result<(), String> {
    let mut buffers = Buffers::new(url.tls);
    let mut conn = Conn::open(stack, url, &mut buffers)
        .await
        .map_err(|e| format!("{e}"))?;
    let mut chunk = [0u8; 1_024];
    while !download.is_complete() {
        let from = download.received();
        let to = (from + RANGE).min(download.size()) - 1;
        let request = http::range_request(url, token, &offer.sha256, from, to);
        conn.write_all(&request).await.map_err(|e| format!("{e}"))?;
        conn.flush().await.map_err(|e| format!("{e}"))?;
        let mut received: Vec<u8> = Vec::new();
        let head = loop {
            let n = conn.read(&mut chunk).await.map_err(|e| format!("{e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            received.extend_from_slice(&chunk[..n]);
            match http::parse_head(&received).map_err(|e| format!("{e}"))? {
                Some(head) => break head,
                None if received.len() < 4_096 => continue,
                None => return Err("the answer's head is too large".into()),
            }
        };
        if head.status != 206 || head.range_start != Some(from) {
            conn.close().await;
            return Err(format!(
                "the server answered {} to a Range request (the image may have changed)",
                head.status
            ));
        }
        let mut body: Vec<u8> = received.split_off(head.length);
        let mut remaining = head.content_length;
        loop {
            let take = body.len().min(remaining);
            for byte_chunk in body[..take].chunks(SECTOR) {
                let mut rest = byte_chunk;
                while !rest.is_empty() {
                    let room = SECTOR - sector.len();
                    let (now, later) = rest.split_at(room.min(rest.len()));
                    download.update(now).map_err(|e| format!("{e}"))?;
                    sector.extend_from_slice(now);
                    if sector.len() == SECTOR {
                        flush(sector, written).await?;
                    }
                    rest = later;
                }
            }
            remaining -= take;
            if remaining == 0 {
                break;
            }
            let n = conn.read(&mut chunk).await.map_err(|e| format!("{e}"))?;
            if n == 0 {
                return Err("the server closed the connection mid-range".into());
            }
            body = chunk[..n].to_vec();
        }
    }
    conn.close().await;
    Ok(())
}
