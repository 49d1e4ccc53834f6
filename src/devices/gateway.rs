//! Devices on the realtime endpoint: `GET /api/v1/ws` with `Sec-WebSocket-Protocol:
//! conclave.v1, bearer.<device token>` (JSON text frames) or `conclave.v1.bin, bearer.<…>`
//! (postcard binary frames). The messages are `conclave_protocol`'s (docs/protocol.md,
//! "Devices").
//!
//! A session: the device says `hello`, the server answers `welcome` (with the last stored
//! telemetry `seq`); each `telemetry` batch is stored in one transaction and acknowledged by
//! its `seq` — a batch at or below the stored `seq` (a resend after a reconnect) is
//! acknowledged without being stored again. Batches over the per-device rate get an `error`
//! and no ack, so the device sends them again later. Revoking or rotating the token, or
//! deleting the device, closes its connections on this node at once (close code 4001).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use conclave_protocol as wire;
use diesel::prelude::*;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::DeviceIdentity;
use crate::chat::hub::close;
use crate::db::{Db, DbConnection, write_transaction};
use crate::error::AppError;
use crate::schema::devices;
use crate::settings::DeviceSettings;
use crate::web::AppState;

/// A device's connections on this node: connection id and the token that closes it.
type Connections = HashMap<i64, Vec<(u64, CancellationToken)>>;

/// The device connections of this node, so a revocation can close them.
#[derive(Clone, Default)]
pub struct Live {
    next: Arc<AtomicU64>,
    by_device: Arc<Mutex<Connections>>,
}

impl Live {
    fn add(&self, device: i64) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock()
            .entry(device)
            .or_default()
            .push((id, token.clone()));
        metrics::gauge!("device_connections").increment(1.0);
        (id, token)
    }

    fn remove(&self, device: i64, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&device) {
            list.retain(|(c, _)| *c != id);
            if list.is_empty() {
                map.remove(&device);
            }
        }
        metrics::gauge!("device_connections").decrement(1.0);
    }

    /// Closes every connection of `device` on this node; how many there were.
    pub fn close(&self, device: i64) -> usize {
        let list = self.lock().remove(&device).unwrap_or_default();
        for (_, token) in &list {
            token.cancel();
        }
        list.len()
    }

    pub fn online(&self, device: i64) -> bool {
        self.lock().contains_key(&device)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.by_device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Binary,
}

/// Opens a device's session; the caller (the realtime endpoint) saw a device token.
pub async fn connect(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    token: &str,
    offered: &[String],
) -> Result<HttpResponse, AppError> {
    let versions: Vec<&String> = offered
        .iter()
        .filter(|p| !p.starts_with("bearer."))
        .collect();
    let encoding = if versions.iter().any(|p| *p == wire::SUBPROTOCOL_BINARY) {
        Encoding::Binary
    } else if versions.is_empty() || versions.iter().any(|p| *p == wire::SUBPROTOCOL_JSON) {
        Encoding::Json
    } else {
        return Err(AppError::BadRequest(format!(
            "Sec-WebSocket-Protocol: devices speak {} or {}",
            wire::SUBPROTOCOL_JSON,
            wire::SUBPROTOCOL_BINARY
        )));
    };
    let identity = state.devices.authenticate(token).await?.ok_or_else(|| {
        AppError::Unauthenticated("This device token is unknown or revoked.".to_owned())
    })?;
    let protocol = match encoding {
        Encoding::Json => wire::SUBPROTOCOL_JSON,
        Encoding::Binary => wire::SUBPROTOCOL_BINARY,
    };
    let (response, session, stream) =
        actix_ws::handle_with_protocols(&request, payload, &[protocol])
            .map_err(|e| AppError::BadRequest(format!("This endpoint speaks WebSocket: {e}")))?;
    let realtime = state.chat.hub().settings();
    let stream = stream
        .max_frame_size(wire::MAX_FRAME.max(realtime.max_frame_bytes))
        .aggregate_continuations()
        .max_continuation_size(wire::MAX_FRAME);
    let live = state.devices.live().clone();
    let (connection, cancelled) = live.add(identity.device_id);
    let device = Session {
        db: state.db.clone(),
        settings: state.devices.settings().clone(),
        identity,
        encoding,
        session,
        greeted: false,
    };
    let heartbeat = (
        Duration::from_secs(realtime.heartbeat_secs),
        Duration::from_secs(realtime.heartbeat_timeout_secs),
    );
    actix_web::rt::spawn(async move {
        let device_id = device.identity.device_id;
        device.run(stream, cancelled, heartbeat).await;
        live.remove(device_id, connection);
    });
    Ok(response)
}

struct Session {
    db: Db,
    settings: DeviceSettings,
    identity: DeviceIdentity,
    encoding: Encoding,
    session: actix_ws::Session,
    greeted: bool,
}

/// Why a session ends.
enum End {
    Close(u16),
    Gone,
}

impl Session {
    async fn run(
        mut self,
        mut stream: actix_ws::AggregatedMessageStream,
        cancelled: CancellationToken,
        (heartbeat_every, heartbeat_timeout): (Duration, Duration),
    ) {
        let per_second =
            std::num::NonZeroU32::new(self.settings.telemetry_batches_per_second.max(1))
                .unwrap_or(std::num::NonZeroU32::MIN);
        let burst = per_second.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
        let limiter = RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst));
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        let mut last_heard = Instant::now();
        let end = loop {
            tokio::select! {
                () = cancelled.cancelled() => break End::Close(close::SIGNED_OUT),
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > heartbeat_timeout {
                        break End::Close(close::HEARTBEAT_TIMEOUT);
                    }
                    if self.session.ping(b"").await.is_err() {
                        break End::Gone;
                    }
                }
                frame = stream.recv() => {
                    let message = match frame {
                        None => break End::Gone,
                        Some(Err(actix_ws::ProtocolError::Overflow)) => break End::Close(close::TOO_BIG),
                        Some(Err(_)) => break End::Gone,
                        Some(Ok(message)) => message,
                    };
                    last_heard = Instant::now();
                    let decoded = match (message, self.encoding) {
                        (AggregatedMessage::Text(text), Encoding::Json) => {
                            wire::from_json::<wire::DeviceMessage>(text.as_bytes())
                        }
                        (AggregatedMessage::Binary(bytes), Encoding::Binary) => {
                            wire::from_binary::<wire::DeviceMessage>(&bytes)
                        }
                        (AggregatedMessage::Text(_) | AggregatedMessage::Binary(_), _) => {
                            break End::Close(close::UNSUPPORTED_DATA)
                        }
                        (AggregatedMessage::Ping(bytes), _) => {
                            if self.session.pong(&bytes).await.is_err() {
                                break End::Gone;
                            }
                            continue;
                        }
                        (AggregatedMessage::Pong(_), _) => continue,
                        (AggregatedMessage::Close(_), _) => break End::Close(close::NORMAL),
                    };
                    metrics::counter!("device_frames_received_total").increment(1);
                    let reply = match decoded {
                        Ok(message) => self.handle(message, &limiter).await,
                        Err(error) => Ok(Some(refusal("bad_frame", &error.to_string()))),
                    };
                    match reply {
                        Ok(Some(reply)) => {
                            if self.send(&reply).await.is_err() {
                                break End::Gone;
                            }
                        }
                        Ok(None) => {}
                        Err(end) => break end,
                    }
                }
            }
        };
        if let End::Close(code) = end {
            let _ = self
                .session
                .close(Some(CloseReason {
                    code: CloseCode::Other(code),
                    description: Some(close::reason(code).to_owned()),
                }))
                .await;
        }
    }

    async fn send(&mut self, message: &wire::ServerMessage) -> Result<(), ()> {
        match self.encoding {
            Encoding::Json => {
                let bytes = wire::to_json(message).map_err(|_| ())?;
                let text = String::from_utf8(bytes).map_err(|_| ())?;
                self.session.text(text).await.map_err(|_| ())
            }
            Encoding::Binary => {
                let bytes = wire::to_binary(message).map_err(|_| ())?;
                self.session.binary(bytes).await.map_err(|_| ())
            }
        }
    }

    async fn handle(
        &mut self,
        message: wire::DeviceMessage,
        limiter: &governor::DefaultDirectRateLimiter,
    ) -> Result<Option<wire::ServerMessage>, End> {
        match message {
            wire::DeviceMessage::Hello(hello) => {
                if hello.protocol != wire::VERSION {
                    return Err(End::Close(close::UNSUPPORTED_DATA));
                }
                let device = self.identity.device_id;
                let last_seq = self
                    .db
                    .run(move |conn| {
                        diesel::update(devices::table.find(device))
                            .set((
                                devices::firmware.eq(&hello.firmware),
                                devices::chip.eq(&hello.chip),
                            ))
                            .execute(conn)?;
                        devices::table
                            .find(device)
                            .select(devices::last_seq)
                            .first::<i64>(conn)
                            .map_err(AppError::from)
                    })
                    .await
                    .map_err(|_| End::Close(close::INTERNAL))?;
                self.greeted = true;
                Ok(Some(wire::ServerMessage::Welcome(wire::Welcome {
                    protocol: wire::VERSION,
                    device_id: self.identity.device_id.unsigned_abs(),
                    telemetry_interval_secs: self.settings.telemetry_interval_secs,
                    last_seq: last_seq.unsigned_abs(),
                    settings: Vec::new(),
                })))
            }
            _ if !self.greeted => Ok(Some(refusal("hello_first", "Send hello first."))),
            wire::DeviceMessage::Telemetry(batch) => {
                if limiter.check().is_err() {
                    metrics::counter!("device_telemetry_refused_total", "reason" => "rate")
                        .increment(1);
                    return Ok(Some(refusal(
                        "rate_limited",
                        "Telemetry is arriving faster than allowed; send it again later.",
                    )));
                }
                let seq = batch.seq;
                ingest(&self.db, self.identity.device_id, batch)
                    .await
                    .map_err(|_| End::Close(close::INTERNAL))?;
                Ok(Some(wire::ServerMessage::TelemetryAck(
                    wire::TelemetryAck { seq },
                )))
            }
            wire::DeviceMessage::CommandResult(_) | wire::DeviceMessage::OtaStatus(_) => {
                Ok(Some(refusal(
                    "not_supported",
                    "This server does not send commands or updates to devices yet.",
                )))
            }
        }
    }
}

fn refusal(code: &str, message: &str) -> wire::ServerMessage {
    wire::ServerMessage::Error(wire::ErrorFrame {
        code: code.to_owned(),
        message: message.chars().take(wire::MAX_TEXT).collect(),
    })
}

/// When a batch was taken: the device's clock if it has a plausible one (not in the future by
/// more than a minute, not before 2020), else now.
fn taken_at(at_ms: u64, now: NaiveDateTime) -> NaiveDateTime {
    let earliest = DateTime::from_timestamp(1_577_836_800, 0).map(|t| t.naive_utc());
    i64::try_from(at_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.naive_utc())
        .filter(|t| Some(*t) >= earliest && *t <= now + TimeDelta::minutes(1))
        .unwrap_or(now)
}

/// Inserts a batch's readings, many rows per statement. (Written as SQL: diesel's batch
/// insert does not compile through `MultiConnection` for SQLite; see `history::sql`.)
fn insert_readings(
    conn: &mut DbConnection,
    device: i64,
    seq: i64,
    at: NaiveDateTime,
    readings: &[wire::Reading],
) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Double, Text, Timestamp};
    const ROWS_PER_STATEMENT: usize = 128;
    for chunk in readings.chunks(ROWS_PER_STATEMENT) {
        let postgres = matches!(conn, DbConnection::Postgresql(_));
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|i| {
                if postgres {
                    let b = 5 * i;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                } else {
                    "(?, ?, ?, ?, ?)".to_owned()
                }
            })
            .collect();
        let sql = format!(
            "INSERT INTO telemetry (device_id, metric, at, value, seq) VALUES {}",
            placeholders.join(", ")
        );
        macro_rules! insert_chunk {
            ($conn:expr) => {{
                let mut query = diesel::sql_query(sql).into_boxed();
                for reading in chunk {
                    query = query
                        .bind::<BigInt, _>(device)
                        .bind::<Text, _>(reading.metric.clone())
                        .bind::<Timestamp, _>(at)
                        .bind::<Double, _>(reading.value)
                        .bind::<BigInt, _>(seq);
                }
                query.execute($conn)?;
            }};
        }
        match conn {
            DbConnection::Sqlite(sqlite) => insert_chunk!(sqlite),
            DbConnection::Postgresql(pg) => insert_chunk!(pg),
        }
    }
    Ok(())
}

/// Stores a batch unless its `seq` is already stored: the device's `last_seq` moves forward
/// and the readings go in, in one transaction. Answers whether it was new.
pub async fn ingest(db: &Db, device: i64, batch: wire::Telemetry) -> Result<bool, AppError> {
    let seq = i64::try_from(batch.seq)
        .map_err(|_| AppError::BadRequest("telemetry.seq: too large".to_owned()))?;
    let stored = db
        .run(move |conn| {
            write_transaction(conn, |tx| -> Result<bool, AppError> {
                let now = Utc::now().naive_utc();
                let moved = diesel::update(
                    devices::table
                        .find(device)
                        .filter(devices::last_seq.lt(seq)),
                )
                .set((
                    devices::last_seq.eq(seq),
                    devices::last_seen_at.eq(Some(now)),
                ))
                .execute(tx)?;
                if moved == 0 {
                    return Ok(false);
                }
                insert_readings(tx, device, seq, taken_at(batch.at_ms, now), &batch.readings)?;
                Ok(true)
            })
        })
        .await?;
    if stored {
        metrics::counter!("device_telemetry_batches_total", "outcome" => "stored").increment(1);
    } else {
        metrics::counter!("device_telemetry_batches_total", "outcome" => "duplicate").increment(1);
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::taken_at;

    #[test]
    fn implausible_device_clocks_are_replaced_by_the_arrival_time() {
        let now = chrono::Utc::now().naive_utc();
        assert_eq!(taken_at(0, now), now);
        assert_eq!(taken_at(u64::MAX, now), now);
        let future = (now + chrono::TimeDelta::hours(2))
            .and_utc()
            .timestamp_millis();
        assert_eq!(taken_at(u64::try_from(future).unwrap_or(0), now), now);
        let earlier = now - chrono::TimeDelta::seconds(30);
        let ms = u64::try_from(earlier.and_utc().timestamp_millis()).unwrap_or(0);
        assert_eq!(
            taken_at(ms, now).and_utc().timestamp_millis(),
            earlier.and_utc().timestamp_millis()
        );
    }
}
