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
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike as _, Utc};
use conclave_protocol as wire;
use diesel::prelude::*;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{DeviceIdentity, Registry};
use crate::chat::hub::close;
use crate::db::{Db, DbConnection, write_transaction};
use crate::error::AppError;
use crate::schema::devices;
use crate::web::AppState;

/// What one node asks of a device's connections, wherever they are (relayed between nodes
/// like the chat's revocations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Close them (token revoked or rotated, device deleted).
    Close,
    /// Something waits for the device (a command, an update offer): look now.
    Wake,
}

/// What the registry and one connection's task share, in one allocation per connection (idle
/// memory per device is a target: two cancellation tokens, a `Notify` and an atomic, as this
/// was before, cost four allocations and about 400 bytes more per device).
#[derive(Default)]
struct Signals {
    /// The close code once the connection must close; 0 while it may stay open.
    code: AtomicU16,
    /// Set once the session has ended (after handling what it had received).
    done: AtomicBool,
    /// Wakes the session: something waits for the device, or it must close (`code`). A wake
    /// while the session is busy is kept (one permit), so none is lost.
    wake: Notify,
    /// Wakes whoever waits for the session to end.
    ended: Notify,
}

impl Signals {
    fn close(&self, code: u16) {
        self.code.store(code, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn closing(&self) -> Option<u16> {
        match self.code.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    async fn finished(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so a `finish` between the two is not missed.
            ended.as_mut().enable();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            ended.await;
        }
    }
}

/// One connection of a device on this node.
struct Handle {
    id: u64,
    signals: Arc<Signals>,
}

/// The device connections of this node, so revocations close them and commands wake them.
#[derive(Clone, Default)]
pub struct Live {
    next: Arc<AtomicU64>,
    by_device: Arc<Mutex<HashMap<i64, Vec<Handle>>>>,
}

/// What a new connection listens to.
struct Registered {
    id: u64,
    signals: Arc<Signals>,
    /// The sessions this one replaced: it starts once they have finished, so what the device
    /// said on its old connection is handled before what it says on the new one.
    replaced: Vec<Arc<Signals>>,
}

impl Live {
    /// Registers a connection of `device`; older ones beyond `cap` are closed (a device that
    /// reconnects replaces the half-open connection it left behind).
    fn add(&self, device: i64, cap: usize) -> Registered {
        let handle = Handle {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            signals: Arc::default(),
        };
        let mut registered = Registered {
            id: handle.id,
            signals: handle.signals.clone(),
            replaced: Vec::new(),
        };
        let mut map = self.lock();
        // Nearly every device has one connection: room for one, not the four `push` reserves.
        let list = map.entry(device).or_insert_with(|| Vec::with_capacity(1));
        while list.len() >= cap.max(1) {
            let old = list.remove(0);
            old.signals.close(close::REPLACED);
            registered.replaced.push(old.signals);
            metrics::counter!("device_connections_replaced_total").increment(1);
        }
        list.push(handle);
        metrics::gauge!("device_connections").increment(1.0);
        registered
    }

    fn remove(&self, device: i64, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&device) {
            list.retain(|h| h.id != id);
            if list.is_empty() {
                map.remove(&device);
            }
        }
        metrics::gauge!("device_connections").decrement(1.0);
    }

    /// Applies a signal to `device`'s connections on this node; how many there were.
    pub fn apply(&self, device: i64, signal: Signal) -> usize {
        match signal {
            Signal::Close => self.close_with(device, close::SIGNED_OUT),
            Signal::Wake => {
                let map = self.lock();
                let list = map.get(&device).map_or(&[][..], Vec::as_slice);
                for handle in list {
                    handle.signals.wake.notify_one();
                }
                list.len()
            }
        }
    }

    fn close_with(&self, device: i64, code: u16) -> usize {
        let list = self.lock().remove(&device).unwrap_or_default();
        for handle in &list {
            handle.signals.close(code);
        }
        list.len()
    }

    /// Closes every device connection on this node (it is shutting down: reconnect).
    pub fn shut_down(&self) -> usize {
        let devices: Vec<i64> = self.lock().keys().copied().collect();
        devices
            .into_iter()
            .map(|device| self.close_with(device, close::RESTARTING))
            .sum()
    }

    pub fn online(&self, device: i64) -> bool {
        self.lock().contains_key(&device)
    }

    /// Devices connected to this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Handle>>> {
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
    let registry = state.devices.clone();
    let live = registry.live().clone();
    let registered = live.add(
        identity.device_id,
        registry.settings().connections_per_device,
    );
    let device = Session {
        registry,
        identity,
        encoding,
        session,
        greeted: false,
    };
    let heartbeat = (
        Duration::from_secs(realtime.heartbeat_secs),
        Duration::from_secs(realtime.heartbeat_timeout_secs),
    );
    // The session's future is the task: no wrapper holding a second copy of what it moves in.
    actix_web::rt::spawn(device.run(stream, registered, heartbeat, live));
    Ok(response)
}

struct Session {
    registry: Registry,
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
        mut registered: Registered,
        (heartbeat_every, heartbeat_timeout): (Duration, Duration),
        live: Live,
    ) {
        let replaced = std::mem::take(&mut registered.replaced);
        if !replaced.is_empty() {
            // Boxed: only a reconnecting device waits here, and an idle session's future
            // stays small.
            Box::pin(async move {
                for earlier in replaced {
                    // Bounded: a session stuck on a dead database must not hold the device out.
                    let _ = tokio::time::timeout(Duration::from_secs(5), earlier.finished()).await;
                }
            })
            .await;
        }
        let per_second =
            std::num::NonZeroU32::new(self.registry.settings().telemetry_batches_per_second.max(1))
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
                () = registered.signals.wake.notified() => {
                    if let Some(code) = registered.signals.closing() {
                        if code == close::REPLACED {
                            // The device reconnected (it rebooted into an update, say): what it
                            // sent on this connection before leaving still counts.
                            Box::pin(self.drain(&mut stream, &limiter)).await;
                        }
                        break End::Close(code);
                    }
                    // Before `hello` there is nothing to deliver to: `hello` delivers what
                    // waits.
                    if self.greeted
                        && let Err(end) = Box::pin(self.deliver(false)).await
                    {
                        break end;
                    }
                }
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
                    // Boxed: the work a frame causes (database calls) lives on the heap while
                    // it runs, so an idle session's future stays small (RSS per device).
                    if let Err(end) = Box::pin(self.on_frame(message, &limiter)).await {
                        break end;
                    }
                }
            }
        };
        if let End::Close(code) = end {
            let reason = CloseReason {
                code: CloseCode::Other(code),
                description: Some(close::reason(code).to_owned()),
            };
            let _ = Box::pin(self.session.close(Some(reason))).await;
        }
        live.remove(self.identity.device_id, registered.id);
        registered.signals.finish();
    }

    /// Handles one frame: decodes it, acts, answers.
    async fn on_frame(
        &mut self,
        message: AggregatedMessage,
        limiter: &governor::DefaultDirectRateLimiter,
    ) -> Result<(), End> {
        let decoded = match (message, self.encoding) {
            (AggregatedMessage::Text(text), Encoding::Json) => {
                wire::from_json::<wire::DeviceMessage>(text.as_bytes())
            }
            (AggregatedMessage::Binary(bytes), Encoding::Binary) => {
                wire::from_binary::<wire::DeviceMessage>(&bytes)
            }
            (AggregatedMessage::Text(_) | AggregatedMessage::Binary(_), _) => {
                return Err(End::Close(close::UNSUPPORTED_DATA));
            }
            (AggregatedMessage::Ping(bytes), _) => {
                return self.session.pong(&bytes).await.map_err(|_| End::Gone);
            }
            (AggregatedMessage::Pong(_), _) => return Ok(()),
            (AggregatedMessage::Close(_), _) => return Err(End::Close(close::NORMAL)),
        };
        metrics::counter!("device_frames_received_total").increment(1);
        let reply = match decoded {
            Ok(message) => self.handle(message, limiter).await?,
            Err(error) => Some(refusal("bad_frame", &error.to_string())),
        };
        if let Some(reply) = reply {
            self.send(&reply).await.map_err(|()| End::Gone)?;
        }
        Ok(())
    }

    /// Handles the frames that already arrived (at most a few hundred), without waiting.
    async fn drain(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
        limiter: &governor::DefaultDirectRateLimiter,
    ) {
        use futures_util::FutureExt as _;
        for _ in 0..256 {
            let Some(Some(Ok(message))) = stream.recv().now_or_never() else {
                return;
            };
            if self.on_frame(message, limiter).await.is_err() {
                return;
            }
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

    /// Sends what waits for the device: commands, then update offers. After `hello`, also
    /// what was sent before but not answered (the device may have lost it).
    async fn deliver(&mut self, after_hello: bool) -> Result<(), End> {
        let outbox = self
            .registry
            .outbox(self.identity.device_id, after_hello)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, device = self.identity.device_id, "cannot read a device's outbox");
                End::Close(close::INTERNAL)
            })?;
        for message in &outbox {
            self.send(message).await.map_err(|()| End::Gone)?;
        }
        Ok(())
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
                let dropped = i64::try_from(hello.dropped_readings).unwrap_or(i64::MAX);
                if dropped > 0 {
                    tracing::warn!(
                        device,
                        dropped,
                        "a device dropped readings while offline (its buffer was full)"
                    );
                    metrics::counter!("device_readings_dropped_total")
                        .increment(hello.dropped_readings);
                }
                let last_seq = self
                    .registry
                    .db()
                    .run(move |conn| {
                        diesel::update(devices::table.find(device))
                            .set((
                                devices::firmware.eq(&hello.firmware),
                                devices::chip.eq(&hello.chip),
                                devices::readings_dropped.eq(devices::readings_dropped + dropped),
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
                let welcome = wire::ServerMessage::Welcome(wire::Welcome {
                    protocol: wire::VERSION,
                    device_id: self.identity.device_id.unsigned_abs(),
                    telemetry_interval_secs: self.registry.settings().telemetry_interval_secs,
                    last_seq: last_seq.unsigned_abs(),
                    settings: Vec::new(),
                    time_ms: u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
                });
                self.send(&welcome).await.map_err(|()| End::Gone)?;
                self.deliver(true).await?;
                Ok(None)
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
                let latest = latest_values(&batch);
                let stored = ingest(self.registry.db(), self.identity.device_id, batch)
                    .await
                    .map_err(|_| End::Close(close::INTERNAL))?;
                if stored {
                    self.registry
                        .apply_rules(&self.identity, seq, &latest)
                        .await;
                }
                Ok(Some(wire::ServerMessage::TelemetryAck(
                    wire::TelemetryAck { seq },
                )))
            }
            wire::DeviceMessage::CommandResult(result) => {
                match self.registry.command_result(&self.identity, result).await {
                    Ok(()) => Ok(None),
                    Err(AppError::NotFound(why)) => Ok(Some(refusal("unknown_command", &why))),
                    Err(AppError::BadRequest(why) | AppError::Conflict(why)) => {
                        Ok(Some(refusal("bad_frame", &why)))
                    }
                    Err(_) => Err(End::Close(close::INTERNAL)),
                }
            }
            wire::DeviceMessage::OtaStatus(status) => {
                match self.registry.ota_status(&self.identity, status).await {
                    Ok(()) => Ok(None),
                    Err(AppError::NotFound(why)) => Ok(Some(refusal("unknown_rollout", &why))),
                    Err(AppError::BadRequest(why) | AppError::Conflict(why)) => {
                        Ok(Some(refusal("bad_frame", &why)))
                    }
                    Err(_) => Err(End::Close(close::INTERNAL)),
                }
            }
        }
    }
}

/// Each metric's last value in a batch (what the rules look at).
fn latest_values(batch: &wire::Telemetry) -> Vec<(String, f64)> {
    let mut latest: Vec<(String, f64)> = Vec::new();
    for reading in &batch.readings {
        match latest
            .iter_mut()
            .find(|(metric, _)| *metric == reading.metric)
        {
            Some(entry) => entry.1 = reading.value,
            None => latest.push((reading.metric.clone(), reading.value)),
        }
    }
    latest
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

/// Folds a batch into the hourly rollups: one row per metric and hour, min/max/sum/count
/// merged in the same statement (upsert), so rollups are exact and current without a job.
fn upsert_hourly(
    conn: &mut DbConnection,
    device: i64,
    at: NaiveDateTime,
    readings: &[wire::Reading],
) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Double, Text, Timestamp};
    let hour = at
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(at);
    let mut folded: Vec<(&str, f64, f64, f64, i64)> = Vec::new();
    for reading in readings {
        match folded.iter_mut().find(|f| f.0 == reading.metric) {
            Some(f) => {
                f.1 = f.1.min(reading.value);
                f.2 = f.2.max(reading.value);
                f.3 += reading.value;
                f.4 += 1;
            }
            None => folded.push((
                &reading.metric,
                reading.value,
                reading.value,
                reading.value,
                1,
            )),
        }
    }
    let postgres = matches!(conn, DbConnection::Postgresql(_));
    let placeholders: Vec<String> = (0..folded.len())
        .map(|i| {
            if postgres {
                let b = 7 * i;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                )
            } else {
                "(?, ?, ?, ?, ?, ?, ?)".to_owned()
            }
        })
        .collect();
    let (least, greatest) = if postgres {
        ("LEAST", "GREATEST")
    } else {
        ("MIN", "MAX")
    };
    let sql = format!(
        "INSERT INTO telemetry_hourly (device_id, metric, hour, min, max, sum, count) VALUES {} \
         ON CONFLICT (device_id, metric, hour) DO UPDATE SET \
         min = {least}(telemetry_hourly.min, excluded.min), \
         max = {greatest}(telemetry_hourly.max, excluded.max), \
         sum = telemetry_hourly.sum + excluded.sum, \
         count = telemetry_hourly.count + excluded.count",
        placeholders.join(", ")
    );
    macro_rules! upsert {
        ($conn:expr) => {{
            let mut query = diesel::sql_query(sql).into_boxed();
            for (metric, min, max, sum, count) in &folded {
                query = query
                    .bind::<BigInt, _>(device)
                    .bind::<Text, _>(*metric)
                    .bind::<Timestamp, _>(hour)
                    .bind::<Double, _>(*min)
                    .bind::<Double, _>(*max)
                    .bind::<Double, _>(*sum)
                    .bind::<BigInt, _>(*count);
            }
            query.execute($conn)?;
        }};
    }
    match conn {
        DbConnection::Sqlite(sqlite) => upsert!(sqlite),
        DbConnection::Postgresql(pg) => upsert!(pg),
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
                let at = taken_at(batch.at_ms, now);
                insert_readings(tx, device, seq, at, &batch.readings)?;
                upsert_hourly(tx, device, at, &batch.readings)?;
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
