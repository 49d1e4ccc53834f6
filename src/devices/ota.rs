//! Signed, staged firmware updates.
//!
//! - A workspace registers ed25519 public keys (`conclave firmware keygen` writes a pair);
//!   an image uploaded with its signature (`conclave firmware sign`) is kept only if one of
//!   them verifies it, so a stolen operator password alone cannot ship firmware. The device
//!   checks the same signature again with the key compiled into it.
//! - A rollout targets a tag or a list of devices, ordered by id and cut into cumulative
//!   stages (e.g. 5 % → 25 % → 100 %). A stage's devices are offered the image; the next stage
//!   starts once `success_threshold` percent of the devices offered so far booted it, and the
//!   rollout halts as soon as more than `failure_threshold` percent failed or rolled back.
//!   Halted rollouts resume or roll back: devices that took the image are offered the
//!   previous one.
//! - Devices download with their token (`GET /api/v1/device/firmware/{id}`), resuming with
//!   Range requests, and report each step (`ota_status`), shown per device and per rollout.
//!
//! Every state change happens in one transaction with the evaluation it causes, so two nodes
//! hearing two devices at once cannot both advance a stage.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use conclave_protocol as wire;
use diesel::prelude::*;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest as _;

use super::gateway::Signal;
use super::{DeviceIdentity, Registry};
use crate::db::{DbConnection, LockableTable, lock_row, write_transaction};
use crate::error::AppError;
use crate::schema::{devices, firmware_images, firmware_keys, ota_assignments, ota_rollouts};
use crate::tenancy::Permission;

/// An image with its bytes, cached while devices download it.
pub struct Image {
    pub id: i64,
    pub tenant_id: i64,
    pub sha256: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct FirmwareKey {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: String,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
}

/// An image as the API shows it (without its bytes).
#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct FirmwareImage {
    pub id: i64,
    pub tenant_id: i64,
    pub version: String,
    pub size: i64,
    pub sha256: String,
    pub signature: String,
    /// The key that verified it.
    pub key_id: Option<i64>,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
}

macro_rules! image_columns {
    () => {
        (
            firmware_images::id,
            firmware_images::tenant_id,
            firmware_images::version,
            firmware_images::size,
            firmware_images::sha256,
            firmware_images::signature,
            firmware_images::key_id,
            firmware_images::created_by,
            firmware_images::created_at,
        )
    };
}

#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct RolloutRow {
    pub id: i64,
    pub tenant_id: i64,
    pub image_id: i64,
    pub previous_image_id: Option<i64>,
    #[serde(skip)]
    pub target_json: String,
    #[serde(skip)]
    pub stages_json: String,
    /// The current stage, from 0.
    pub stage: i32,
    pub success_threshold: f64,
    pub failure_threshold: f64,
    /// `running`, `halted`, `completed`, `rolling_back`, `rolled_back`.
    pub state: String,
    /// Why it halted.
    pub reason: Option<String>,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub updated_at: NaiveDateTime,
}

/// Where a rollout goes: every device with a tag, or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Tag(String),
    Devices(Vec<i64>),
}

/// A rollout with its progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rollout {
    #[serde(flatten)]
    pub row: RolloutRow,
    pub target: Target,
    /// Cumulative percentages, ending at 100.
    pub stages: Vec<f64>,
    pub version: String,
    /// Devices per state (`waiting`, `offered`, `downloading`, `verifying`, `installed`,
    /// `booted_ok`, `rolled_back`, `failed`).
    pub counts: HashMap<String, i64>,
    pub total: i64,
    /// Filled for one rollout (`GET …/rollouts/{id}`), empty in lists.
    pub devices: Vec<Assignment>,
}

#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct Assignment {
    pub device_id: i64,
    pub device_name: String,
    pub stage: i32,
    /// The image offered (the previous one once rolled back).
    pub image_id: i64,
    pub state: String,
    pub received: i64,
    pub detail: Option<String>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewRollout {
    pub image_id: i64,
    /// Offered when rolled back; by default the image the newest earlier rollout to these
    /// devices shipped, if any.
    pub previous_image_id: Option<i64>,
    /// Every device with this tag…
    pub tag: Option<String>,
    /// … or these devices.
    pub devices: Option<Vec<i64>>,
    /// Cumulative percentages, increasing, ending at 100 (default `[5, 25, 100]`).
    pub stages: Option<Vec<f64>>,
    /// Percent of the devices offered so far that must boot the image before the next stage
    /// (default 90).
    pub success_threshold: Option<f64>,
    /// Percent of the devices offered so far whose failure halts the rollout (default 10).
    pub failure_threshold: Option<f64>,
}

const FINAL: [&str; 3] = ["booted_ok", "failed", "rolled_back"];
const IN_FLIGHT: [&str; 4] = ["offered", "downloading", "verifying", "installed"];

fn hex_bytes<const N: usize>(field: &str, text: &str) -> Result<[u8; N], AppError> {
    let text = text.trim();
    let bad = || AppError::BadRequest(format!("{field}: {} hex digits", 2 * N));
    if text.len() != 2 * N {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a public key as `conclave firmware keygen` writes it (hex, optional trailing
/// newline or comment line).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AppError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    let bytes = hex_bytes::<32>("public_key", line)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| AppError::BadRequest("public_key: not an ed25519 public key".to_owned()))
}

/// Whether `signature` (hex) over `data` verifies with one of `keys`; the key's id.
fn verifying_key(
    keys: &[FirmwareKey],
    data: &[u8],
    signature: &str,
) -> Result<Option<i64>, AppError> {
    let signature = Signature::from_bytes(&hex_bytes::<64>("signature", signature)?);
    for key in keys {
        let Ok(public) = parse_public_key(&key.public_key) else {
            continue;
        };
        if public.verify(data, &signature).is_ok() {
            return Ok(Some(key.id));
        }
    }
    Ok(None)
}

fn parse_version(version: &str) -> Result<String, AppError> {
    let version = version.trim();
    let ok = !version.is_empty()
        && version.len() <= wire::MAX_NAME
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(version.to_owned())
    } else {
        Err(AppError::BadRequest(
            "version: 1 to 64 letters, digits, '_', '.' or '-' (e.g. 1.4.2)".to_owned(),
        ))
    }
}

fn parse_stages(stages: Option<Vec<f64>>) -> Result<Vec<f64>, AppError> {
    let stages = stages.unwrap_or_else(|| vec![5.0, 25.0, 100.0]);
    let increasing = stages.windows(2).all(|w| w[0] < w[1]);
    let bounded = stages
        .iter()
        .all(|p| p.is_finite() && *p > 0.0 && *p <= 100.0);
    if stages.is_empty() || stages.len() > 10 || !increasing || !bounded {
        return Err(AppError::BadRequest(
            "stages: 1 to 10 increasing percentages above 0, e.g. [5, 25, 100]".to_owned(),
        ));
    }
    if stages.last().copied() != Some(100.0) {
        return Err(AppError::BadRequest(
            "stages: the last stage must be 100".to_owned(),
        ));
    }
    Ok(stages)
}

fn percent(field: &str, value: Option<f64>, default: f64) -> Result<f64, AppError> {
    let value = value.unwrap_or(default);
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(AppError::BadRequest(format!(
            "{field}: a percentage from 0 to 100"
        )))
    }
}

/// The stage of each of `n` devices (ordered): device `i` is in the first stage whose
/// cumulative share covers it; every stage holds at least one device while any are left.
fn stage_of(n: usize, stages: &[f64]) -> Vec<i32> {
    let mut cutoffs: Vec<usize> = Vec::new();
    for pct in stages {
        let cut = ((n as f64) * pct / 100.0).ceil() as usize;
        let floor = cutoffs.last().map_or(1, |c| c + 1);
        cutoffs.push(cut.max(floor).min(n));
    }
    (0..n)
        .map(|i| {
            let stage = cutoffs
                .iter()
                .position(|c| i < *c)
                .unwrap_or(stages.len() - 1);
            i32::try_from(stage).unwrap_or(0)
        })
        .collect()
}

fn load_rollout(conn: &mut DbConnection, id: i64) -> QueryResult<Option<RolloutRow>> {
    ota_rollouts::table.find(id).first(conn).optional()
}

/// Decides what a rollout does next after its devices changed; answers the devices to wake.
fn evaluate(conn: &mut DbConnection, id: i64) -> QueryResult<Vec<i64>> {
    let Some(rollout) = load_rollout(conn, id)? else {
        return Ok(Vec::new());
    };
    let now = Utc::now().naive_utc();
    let set_state = |conn: &mut DbConnection, state: &str, reason: Option<String>| {
        diesel::update(ota_rollouts::table.find(id))
            .set((
                ota_rollouts::state.eq(state),
                ota_rollouts::reason.eq(reason),
                ota_rollouts::updated_at.eq(now),
            ))
            .execute(conn)
    };
    match rollout.state.as_str() {
        "running" => {}
        "rolling_back" => {
            let previous = rollout.previous_image_id.unwrap_or_default();
            let open: i64 = ota_assignments::table
                .filter(ota_assignments::rollout_id.eq(id))
                .filter(ota_assignments::image_id.eq(previous))
                .filter(ota_assignments::state.ne_all(FINAL))
                .count()
                .get_result(conn)?;
            if open == 0 {
                set_state(conn, "rolled_back", rollout.reason)?;
            }
            return Ok(Vec::new());
        }
        _ => return Ok(Vec::new()),
    }
    let states: Vec<(i32, String)> = ota_assignments::table
        .filter(ota_assignments::rollout_id.eq(id))
        .select((ota_assignments::stage, ota_assignments::state))
        .load(conn)?;
    let reached: Vec<&str> = states
        .iter()
        .filter(|(stage, _)| *stage <= rollout.stage)
        .map(|(_, state)| state.as_str())
        .collect();
    let total = reached.len().max(1) as f64;
    let failed = reached
        .iter()
        .filter(|s| matches!(**s, "failed" | "rolled_back"))
        .count();
    let booted = reached.iter().filter(|s| **s == "booted_ok").count();
    if failed as f64 * 100.0 / total > rollout.failure_threshold {
        let reason = format!(
            "{failed} of {} devices failed ({:.0} % > {} %)",
            reached.len(),
            failed as f64 * 100.0 / total,
            rollout.failure_threshold
        );
        set_state(conn, "halted", Some(reason))?;
        metrics::counter!("ota_rollouts_halted_total").increment(1);
        return Ok(Vec::new());
    }
    if booted as f64 * 100.0 / total < rollout.success_threshold {
        return Ok(Vec::new());
    }
    let stages: Vec<f64> = serde_json::from_str(&rollout.stages_json).unwrap_or_default();
    let last = i32::try_from(stages.len().saturating_sub(1)).unwrap_or(0);
    if rollout.stage < last {
        let next = rollout.stage + 1;
        diesel::update(ota_rollouts::table.find(id))
            .set((
                ota_rollouts::stage.eq(next),
                ota_rollouts::updated_at.eq(now),
            ))
            .execute(conn)?;
        return ota_assignments::table
            .filter(ota_assignments::rollout_id.eq(id))
            .filter(ota_assignments::stage.eq(next))
            .select(ota_assignments::device_id)
            .load(conn);
    }
    if states
        .iter()
        .all(|(_, state)| FINAL.contains(&state.as_str()))
    {
        set_state(conn, "completed", None)?;
    }
    Ok(Vec::new())
}

/// An assignment with its rollout: rollout, offered image, state, stage; the rollout's
/// state, stage, previous and new image.
type OfferRow = (i64, i64, String, i32, String, i32, Option<i64>, i64);

/// The update offers a connection of `device` sends now (see `Registry::outbox`).
pub(super) fn offers(
    conn: &mut DbConnection,
    device: i64,
    after_hello: bool,
    public_url: &str,
) -> Result<Vec<wire::ServerMessage>, AppError> {
    let rows: Vec<OfferRow> = ota_assignments::table
        .inner_join(ota_rollouts::table)
        .filter(ota_assignments::device_id.eq(device))
        .filter(ota_rollouts::state.eq_any(["running", "rolling_back"]))
        .select((
            ota_assignments::rollout_id,
            ota_assignments::image_id,
            ota_assignments::state,
            ota_assignments::stage,
            ota_rollouts::state,
            ota_rollouts::stage,
            ota_rollouts::previous_image_id,
            ota_rollouts::image_id,
        ))
        .load(conn)?;
    let mut out = Vec::new();
    for (rollout, image, state, stage, rollout_state, rollout_stage, previous, new_image) in rows {
        let due = match rollout_state.as_str() {
            "running" => image == new_image && stage <= rollout_stage,
            _ => Some(image) == previous,
        };
        let resend = after_hello && IN_FLIGHT[..3].contains(&state.as_str());
        if !due || !(state == "waiting" || resend) {
            continue;
        }
        if state == "waiting" {
            let moved = diesel::update(
                ota_assignments::table
                    .find((rollout, device))
                    .filter(ota_assignments::state.eq("waiting")),
            )
            .set((
                ota_assignments::state.eq("offered"),
                ota_assignments::updated_at.eq(Utc::now().naive_utc()),
            ))
            .execute(conn)?;
            if moved == 0 {
                continue;
            }
        }
        let meta: FirmwareImage = firmware_images::table
            .find(image)
            .select(image_columns!())
            .first(conn)?;
        out.push(wire::ServerMessage::OtaOffer(wire::OtaOffer {
            rollout: rollout.unsigned_abs(),
            version: meta.version,
            url: format!("{public_url}/api/v1/device/firmware/{image}"),
            size: u32::try_from(meta.size).unwrap_or(u32::MAX),
            sha256: meta.sha256,
            signature: meta.signature,
        }));
    }
    Ok(out)
}

fn ota_state_name(state: wire::OtaState) -> &'static str {
    match state {
        wire::OtaState::Downloading => "downloading",
        wire::OtaState::Verifying => "verifying",
        wire::OtaState::Installed => "installed",
        wire::OtaState::BootedOk => "booted_ok",
        wire::OtaState::RolledBack => "rolled_back",
        wire::OtaState::Failed => "failed",
    }
}

fn rollout_view(
    conn: &mut DbConnection,
    row: RolloutRow,
    with_devices: bool,
) -> QueryResult<Rollout> {
    let counts: Vec<(String, i64)> = ota_assignments::table
        .filter(ota_assignments::rollout_id.eq(row.id))
        .group_by(ota_assignments::state)
        .select((ota_assignments::state, diesel::dsl::count_star()))
        .load(conn)?;
    let version = firmware_images::table
        .find(row.image_id)
        .select(firmware_images::version)
        .first(conn)?;
    let devices = if with_devices {
        ota_assignments::table
            .inner_join(devices::table)
            .filter(ota_assignments::rollout_id.eq(row.id))
            .order((ota_assignments::stage, devices::id))
            .select((
                ota_assignments::device_id,
                devices::name,
                ota_assignments::stage,
                ota_assignments::image_id,
                ota_assignments::state,
                ota_assignments::received,
                ota_assignments::detail,
                ota_assignments::updated_at,
            ))
            .load(conn)?
    } else {
        Vec::new()
    };
    Ok(Rollout {
        target: serde_json::from_str(&row.target_json).unwrap_or(Target::Devices(Vec::new())),
        stages: serde_json::from_str(&row.stages_json).unwrap_or_default(),
        version,
        total: counts.iter().map(|(_, n)| n).sum(),
        counts: counts.into_iter().collect(),
        devices,
        row,
    })
}

/// A device's part in a rollout: rollout, its state, version, state, bytes received,
/// detail, when.
type UpdateRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    NaiveDateTime,
);

impl Registry {
    /// The workspace's role must allow `permission` (404 when not a member).
    async fn check_tenant(
        &self,
        user: i64,
        tenant: i64,
        permission: Permission,
    ) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| Self::require(conn, user, tenant, permission))
            .await
    }

    pub async fn firmware_keys(
        &self,
        user: i64,
        tenant: i64,
    ) -> Result<Vec<FirmwareKey>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::require(conn, user, tenant, Permission::View)?;
                Ok(firmware_keys::table
                    .filter(firmware_keys::tenant_id.eq(tenant))
                    .order(firmware_keys::id)
                    .load(conn)?)
            })
            .await
    }

    /// Registers a signing key (admins and owners: whoever holds it can ship firmware).
    pub async fn add_firmware_key(
        &self,
        user: i64,
        tenant: i64,
        name: &str,
        public_key: &str,
    ) -> Result<FirmwareKey, AppError> {
        let name = super::parse_name(name)?;
        let public = hex(parse_public_key(public_key)?.as_bytes());
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    Self::require(tx, user, tenant, Permission::ManageMembers)?;
                    let exists: i64 = firmware_keys::table
                        .filter(firmware_keys::tenant_id.eq(tenant))
                        .filter(firmware_keys::public_key.eq(&public))
                        .count()
                        .get_result(tx)?;
                    if exists > 0 {
                        return Err(AppError::Conflict(
                            "public_key: this workspace has this key already".to_owned(),
                        ));
                    }
                    let now = Utc::now().naive_utc();
                    diesel::insert_into(firmware_keys::table)
                        .values((
                            firmware_keys::tenant_id.eq(tenant),
                            firmware_keys::name.eq(&name),
                            firmware_keys::public_key.eq(&public),
                            firmware_keys::created_by.eq(Some(user)),
                            firmware_keys::created_at.eq(now),
                        ))
                        .execute(tx)?;
                    let key: FirmwareKey = firmware_keys::table
                        .filter(firmware_keys::tenant_id.eq(tenant))
                        .filter(firmware_keys::public_key.eq(&public))
                        .first(tx)?;
                    crate::audit::record(
                        tx,
                        &crate::audit::AuditEvent {
                            event: "firmware.key_added",
                            actor_user_id: Some(user),
                            tenant_id: Some(tenant),
                            subject: Some(format!("firmware_key:{}", key.id)),
                            details: json!({ "name": name, "public_key": public }),
                            ..crate::audit::AuditEvent::default()
                        },
                        now,
                    )?;
                    Ok(key)
                })
            })
            .await
    }

    pub async fn delete_firmware_key(
        &self,
        user: i64,
        tenant: i64,
        id: i64,
    ) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    Self::require(tx, user, tenant, Permission::ManageMembers)?;
                    let deleted = diesel::delete(
                        firmware_keys::table
                            .filter(firmware_keys::tenant_id.eq(tenant))
                            .filter(firmware_keys::id.eq(id)),
                    )
                    .execute(tx)?;
                    if deleted == 0 {
                        return Err(AppError::NotFound("No such key.".to_owned()));
                    }
                    crate::audit::record(
                        tx,
                        &crate::audit::AuditEvent {
                            event: "firmware.key_deleted",
                            actor_user_id: Some(user),
                            tenant_id: Some(tenant),
                            subject: Some(format!("firmware_key:{id}")),
                            ..crate::audit::AuditEvent::default()
                        },
                        Utc::now().naive_utc(),
                    )?;
                    Ok(())
                })
            })
            .await
    }

    /// Stores an image whose signature one of the workspace's keys verifies (operators and
    /// above); refuses it otherwise.
    pub async fn upload_image(
        &self,
        user: i64,
        tenant: i64,
        version: &str,
        signature: &str,
        data: Vec<u8>,
    ) -> Result<FirmwareImage, AppError> {
        let version = parse_version(version)?;
        if data.is_empty() {
            return Err(AppError::BadRequest(
                "The body is the image's bytes; it was empty.".to_owned(),
            ));
        }
        if data.len() > self.inner.settings.firmware_max_bytes {
            return Err(AppError::PayloadTooLarge(format!(
                "Images are at most {} bytes (devices.firmware_max_bytes).",
                self.inner.settings.firmware_max_bytes
            )));
        }
        let signature = hex(&hex_bytes::<64>("signature", signature)?);
        self.check_tenant(user, tenant, Permission::Operate).await?;
        let keys = self.firmware_keys(user, tenant).await?;
        if keys.is_empty() {
            return Err(AppError::Conflict(
                "This workspace has no firmware keys: add the public key (conclave firmware keygen writes one) first."
                    .to_owned(),
            ));
        }
        let key_id = tokio::task::spawn_blocking({
            let (data, signature) = (data.clone(), signature.clone());
            move || verifying_key(&keys, &data, &signature)
        })
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("signature check: {e}")))??
        .ok_or_else(|| {
            metrics::counter!("firmware_uploads_refused_total").increment(1);
            AppError::BadRequest(
                "signature: it does not verify with any of this workspace's firmware keys; sign the image with `conclave firmware sign --key <file> <image>`."
                    .to_owned(),
            )
        })?;
        let sha256 = hex(&sha2::Sha256::digest(&data));
        let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let taken: i64 = firmware_images::table
                        .filter(firmware_images::tenant_id.eq(tenant))
                        .filter(firmware_images::version.eq(&version))
                        .count()
                        .get_result(tx)?;
                    if taken > 0 {
                        return Err(AppError::Conflict(format!(
                            "version: this workspace has an image {version} already"
                        )));
                    }
                    let now = Utc::now().naive_utc();
                    diesel::insert_into(firmware_images::table)
                        .values((
                            firmware_images::tenant_id.eq(tenant),
                            firmware_images::version.eq(&version),
                            firmware_images::size.eq(size),
                            firmware_images::sha256.eq(&sha256),
                            firmware_images::signature.eq(&signature),
                            firmware_images::key_id.eq(Some(key_id)),
                            firmware_images::data.eq(&data),
                            firmware_images::created_by.eq(Some(user)),
                            firmware_images::created_at.eq(now),
                        ))
                        .execute(tx)?;
                    let image: FirmwareImage = firmware_images::table
                        .filter(firmware_images::tenant_id.eq(tenant))
                        .filter(firmware_images::version.eq(&version))
                        .select(image_columns!())
                        .first(tx)?;
                    crate::audit::record(
                        tx,
                        &crate::audit::AuditEvent {
                            event: "firmware.uploaded",
                            actor_user_id: Some(user),
                            tenant_id: Some(tenant),
                            subject: Some(format!("firmware:{}", image.id)),
                            details: json!({ "version": version, "size": size,
                                "sha256": image.sha256, "key_id": key_id }),
                            ..crate::audit::AuditEvent::default()
                        },
                        now,
                    )?;
                    Ok(image)
                })
            })
            .await
    }

    pub async fn images(&self, user: i64, tenant: i64) -> Result<Vec<FirmwareImage>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::require(conn, user, tenant, Permission::View)?;
                Ok(firmware_images::table
                    .filter(firmware_images::tenant_id.eq(tenant))
                    .order(firmware_images::id.desc())
                    .select(image_columns!())
                    .load(conn)?)
            })
            .await
    }

    /// Deletes an image no rollout uses.
    pub async fn delete_image(&self, user: i64, tenant: i64, id: i64) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    Self::require(tx, user, tenant, Permission::Operate)?;
                    let used: i64 = ota_rollouts::table
                        .filter(
                            ota_rollouts::image_id
                                .eq(id)
                                .or(ota_rollouts::previous_image_id.eq(id)),
                        )
                        .count()
                        .get_result(tx)?;
                    if used > 0 {
                        return Err(AppError::Conflict(
                            "A rollout uses this image; it stays while the rollout exists."
                                .to_owned(),
                        ));
                    }
                    let deleted = diesel::delete(
                        firmware_images::table
                            .filter(firmware_images::tenant_id.eq(tenant))
                            .filter(firmware_images::id.eq(id)),
                    )
                    .execute(tx)?;
                    if deleted == 0 {
                        return Err(AppError::NotFound("No such image.".to_owned()));
                    }
                    Ok(())
                })
            })
            .await?;
        self.inner.images.invalidate(&id).await;
        Ok(())
    }

    /// Starts a staged rollout (operators and above); the first stage's devices are offered
    /// the image at once.
    pub async fn create_rollout(
        &self,
        user: i64,
        tenant: i64,
        new: NewRollout,
    ) -> Result<Rollout, AppError> {
        let stages = parse_stages(new.stages.clone())?;
        let success = percent("success_threshold", new.success_threshold, 90.0)?;
        let failure = percent("failure_threshold", new.failure_threshold, 10.0)?;
        let target = match (&new.tag, &new.devices) {
            (Some(tag), None) => Target::Tag(
                super::parse_tags(std::slice::from_ref(tag))?
                    .pop()
                    .unwrap_or_default(),
            ),
            (None, Some(list)) if !list.is_empty() && list.len() <= 100_000 => {
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                Target::Devices(list)
            }
            _ => {
                return Err(AppError::BadRequest(
                    "Give either tag or a non-empty devices list.".to_owned(),
                ));
            }
        };
        let (rollout, wake) = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    Self::require(tx, user, tenant, Permission::Operate)?;
                    let image_of = |tx: &mut DbConnection, id: i64| -> Result<FirmwareImage, AppError> {
                        firmware_images::table
                            .filter(firmware_images::tenant_id.eq(tenant))
                            .filter(firmware_images::id.eq(id))
                            .select(image_columns!())
                            .first(tx)
                            .optional()?
                            .ok_or_else(|| {
                                AppError::BadRequest(format!(
                                    "No image {id} in this workspace."
                                ))
                            })
                    };
                    let image = image_of(tx, new.image_id)?;
                    if let Some(previous) = new.previous_image_id {
                        if previous == image.id {
                            return Err(AppError::BadRequest(
                                "previous_image_id: must differ from image_id".to_owned(),
                            ));
                        }
                        image_of(tx, previous)?;
                    }
                    let rows: Vec<(i64, String)> = devices::table
                        .filter(devices::tenant_id.eq(tenant))
                        .order(devices::id)
                        .select((devices::id, devices::tags))
                        .load(tx)?;
                    let targeted: Vec<i64> = match &target {
                        Target::Tag(tag) => rows
                            .iter()
                            .filter(|(_, tags)| {
                                serde_json::from_str::<Vec<String>>(tags)
                                    .unwrap_or_default()
                                    .contains(tag)
                            })
                            .map(|(id, _)| *id)
                            .collect(),
                        Target::Devices(list) => {
                            let known: std::collections::HashSet<i64> =
                                rows.iter().map(|(id, _)| *id).collect();
                            if let Some(missing) = list.iter().find(|id| !known.contains(id)) {
                                return Err(AppError::BadRequest(format!(
                                    "devices: no device {missing} in this workspace"
                                )));
                            }
                            list.clone()
                        }
                    };
                    if targeted.is_empty() {
                        return Err(AppError::BadRequest(
                            "No device matches this target.".to_owned(),
                        ));
                    }
                    let busy: Option<(i64, i64)> = ota_assignments::table
                        .inner_join(ota_rollouts::table)
                        .filter(ota_assignments::device_id.eq_any(&targeted))
                        .filter(ota_rollouts::state.eq_any(["running", "halted", "rolling_back"]))
                        .select((ota_assignments::device_id, ota_rollouts::id))
                        .first(tx)
                        .optional()?;
                    if let Some((device, rollout)) = busy {
                        return Err(AppError::Conflict(format!(
                            "Device {device} is in rollout {rollout}, which has not finished; finish or roll it back first."
                        )));
                    }
                    // Rolling back offers what the devices ran before: given, or what the
                    // newest finished rollout to them shipped.
                    let previous = match new.previous_image_id {
                        Some(previous) => Some(previous),
                        None => ota_assignments::table
                            .inner_join(ota_rollouts::table)
                            .filter(ota_assignments::device_id.eq_any(&targeted))
                            .filter(ota_rollouts::state.eq("completed"))
                            .filter(ota_rollouts::image_id.ne(image.id))
                            .order(ota_rollouts::id.desc())
                            .select(ota_rollouts::image_id)
                            .first(tx)
                            .optional()?,
                    };
                    let now = Utc::now().naive_utc();
                    let id = diesel::insert_into(ota_rollouts::table)
                        .values((
                            ota_rollouts::tenant_id.eq(tenant),
                            ota_rollouts::image_id.eq(image.id),
                            ota_rollouts::previous_image_id.eq(previous),
                            ota_rollouts::target.eq(serde_json::to_string(&target).unwrap_or_default()),
                            ota_rollouts::stages.eq(serde_json::to_string(&stages).unwrap_or_default()),
                            ota_rollouts::stage.eq(0),
                            ota_rollouts::success_threshold.eq(success),
                            ota_rollouts::failure_threshold.eq(failure),
                            ota_rollouts::state.eq("running"),
                            ota_rollouts::created_by.eq(Some(user)),
                            ota_rollouts::created_at.eq(now),
                            ota_rollouts::updated_at.eq(now),
                        ))
                        .returning(ota_rollouts::id)
                        .get_result::<i64>(tx)?;
                    let row = load_rollout(tx, id)?.ok_or(diesel::result::Error::NotFound)?;
                    // One row at a time: diesel's batch insert does not compile through
                    // `MultiConnection` for SQLite, and this is one transaction either way.
                    for (device, stage) in targeted.iter().zip(stage_of(targeted.len(), &stages)) {
                        diesel::insert_into(ota_assignments::table)
                            .values((
                                ota_assignments::rollout_id.eq(row.id),
                                ota_assignments::device_id.eq(*device),
                                ota_assignments::stage.eq(stage),
                                ota_assignments::image_id.eq(image.id),
                                ota_assignments::state.eq("waiting"),
                                ota_assignments::received.eq(0_i64),
                                ota_assignments::updated_at.eq(now),
                            ))
                            .execute(tx)?;
                    }
                    crate::audit::record(
                        tx,
                        &crate::audit::AuditEvent {
                            event: "firmware.rollout_started",
                            actor_user_id: Some(user),
                            tenant_id: Some(tenant),
                            subject: Some(format!("rollout:{}", row.id)),
                            details: json!({ "image_id": image.id, "version": image.version,
                                "devices": targeted.len(), "stages": stages,
                                "success_threshold": success, "failure_threshold": failure }),
                            ..crate::audit::AuditEvent::default()
                        },
                        now,
                    )?;
                    let wake: Vec<i64> = ota_assignments::table
                        .filter(ota_assignments::rollout_id.eq(row.id))
                        .filter(ota_assignments::stage.eq(0))
                        .select(ota_assignments::device_id)
                        .load(tx)?;
                    Ok((rollout_view(tx, row, true)?, wake))
                })
            })
            .await?;
        for device in wake {
            self.signal(device, Signal::Wake);
        }
        Ok(rollout)
    }

    pub async fn rollouts(&self, user: i64, tenant: i64) -> Result<Vec<Rollout>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::require(conn, user, tenant, Permission::View)?;
                let rows: Vec<RolloutRow> = ota_rollouts::table
                    .filter(ota_rollouts::tenant_id.eq(tenant))
                    .order(ota_rollouts::id.desc())
                    .limit(100)
                    .load(conn)?;
                Ok(rows
                    .into_iter()
                    .map(|row| rollout_view(conn, row, false))
                    .collect::<QueryResult<Vec<_>>>()?)
            })
            .await
    }

    pub async fn rollout(&self, user: i64, tenant: i64, id: i64) -> Result<Rollout, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::require(conn, user, tenant, Permission::View)?;
                let row = load_rollout(conn, id)?
                    .filter(|r| r.tenant_id == tenant)
                    .ok_or_else(|| AppError::NotFound("No such rollout.".to_owned()))?;
                Ok(rollout_view(conn, row, true)?)
            })
            .await
    }

    /// `halt`, `resume` or `rollback` a rollout (operators and above).
    pub async fn steer_rollout(
        &self,
        user: i64,
        tenant: i64,
        id: i64,
        action: &str,
    ) -> Result<Rollout, AppError> {
        let action = action.to_owned();
        let (rollout, wake) = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    Self::require(tx, user, tenant, Permission::Operate)?;
                    lock_row(tx, LockableTable::OtaRollouts, id)?;
                    let row = load_rollout(tx, id)?
                        .filter(|r| r.tenant_id == tenant)
                        .ok_or_else(|| AppError::NotFound("No such rollout.".to_owned()))?;
                    let now = Utc::now().naive_utc();
                    let mut wake = Vec::new();
                    match (action.as_str(), row.state.as_str()) {
                        ("halt", "running") => {
                            diesel::update(ota_rollouts::table.find(id))
                                .set((
                                    ota_rollouts::state.eq("halted"),
                                    ota_rollouts::reason.eq(Some("halted by an operator")),
                                    ota_rollouts::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                        }
                        ("resume", "halted") => {
                            diesel::update(ota_rollouts::table.find(id))
                                .set((
                                    ota_rollouts::state.eq("running"),
                                    ota_rollouts::reason.eq(None::<String>),
                                    ota_rollouts::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                            wake = ota_assignments::table
                                .filter(ota_assignments::rollout_id.eq(id))
                                .filter(ota_assignments::stage.le(row.stage))
                                .filter(ota_assignments::state.eq("waiting"))
                                .select(ota_assignments::device_id)
                                .load(tx)?;
                            wake.extend(evaluate(tx, id)?);
                        }
                        ("rollback", "running" | "halted" | "completed") => {
                            let previous = row.previous_image_id.ok_or_else(|| {
                                AppError::Conflict(
                                    "This rollout has no previous image to go back to (give previous_image_id when starting one)."
                                        .to_owned(),
                                )
                            })?;
                            wake = ota_assignments::table
                                .filter(ota_assignments::rollout_id.eq(id))
                                .filter(ota_assignments::image_id.eq(row.image_id))
                                .filter(ota_assignments::state.eq_any(
                                    IN_FLIGHT.iter().copied().chain(["booted_ok"]),
                                ))
                                .select(ota_assignments::device_id)
                                .load(tx)?;
                            diesel::update(
                                ota_assignments::table
                                    .filter(ota_assignments::rollout_id.eq(id))
                                    .filter(ota_assignments::device_id.eq_any(&wake)),
                            )
                            .set((
                                ota_assignments::image_id.eq(previous),
                                ota_assignments::state.eq("waiting"),
                                ota_assignments::received.eq(0_i64),
                                ota_assignments::detail.eq(None::<String>),
                                ota_assignments::updated_at.eq(now),
                            ))
                            .execute(tx)?;
                            diesel::update(ota_rollouts::table.find(id))
                                .set((
                                    ota_rollouts::state.eq("rolling_back"),
                                    ota_rollouts::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                            evaluate(tx, id)?;
                        }
                        ("halt" | "resume" | "rollback", state) => {
                            return Err(AppError::Conflict(format!(
                                "A {state} rollout cannot {action}."
                            )));
                        }
                        _ => {
                            return Err(AppError::BadRequest(
                                "action: halt, resume or rollback".to_owned(),
                            ));
                        }
                    }
                    crate::audit::record(
                        tx,
                        &crate::audit::AuditEvent {
                            event: "firmware.rollout_steered",
                            actor_user_id: Some(user),
                            tenant_id: Some(tenant),
                            subject: Some(format!("rollout:{id}")),
                            details: json!({ "action": action, "before": row.state }),
                            ..crate::audit::AuditEvent::default()
                        },
                        now,
                    )?;
                    let row = load_rollout(tx, id)?.ok_or_else(|| {
                        AppError::NotFound("No such rollout.".to_owned())
                    })?;
                    Ok((rollout_view(tx, row, true)?, wake))
                })
            })
            .await?;
        for device in wake {
            self.signal(device, Signal::Wake);
        }
        Ok(rollout)
    }

    /// A device reported progress on an offer: recorded, and the rollout re-evaluated in the
    /// same transaction (it may advance a stage, halt, complete or finish rolling back).
    pub(crate) async fn ota_status(
        &self,
        identity: &DeviceIdentity,
        status: wire::OtaStatus,
    ) -> Result<(), AppError> {
        let device = identity.device_id;
        let rollout = i64::try_from(status.rollout)
            .map_err(|_| AppError::NotFound("No such rollout.".to_owned()))?;
        let state = ota_state_name(status.state);
        let wake = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    // Reports of one rollout's devices are decided one at a time: otherwise two
                    // nodes could each miss the other's report and neither advance the stage.
                    lock_row(tx, LockableTable::OtaRollouts, rollout)?;
                    let (image, current, received): (i64, String, i64) = ota_assignments::table
                        .find((rollout, device))
                        .select((
                            ota_assignments::image_id,
                            ota_assignments::state,
                            ota_assignments::received,
                        ))
                        .first(tx)
                        .optional()?
                        .ok_or_else(|| {
                            AppError::NotFound(format!(
                                "No update of rollout {rollout} was offered to this device."
                            ))
                        })?;
                    let version: String = firmware_images::table
                        .find(image)
                        .select(firmware_images::version)
                        .first(tx)?;
                    if version != status.version {
                        return Err(AppError::BadRequest(format!(
                            "ota_status.version: the offer of rollout {rollout} is {version}"
                        )));
                    }
                    if current == state {
                        if state == "downloading" {
                            diesel::update(ota_assignments::table.find((rollout, device)))
                                .set(ota_assignments::received.eq(i64::from(status.received)))
                                .execute(tx)?;
                        }
                        return Ok(Vec::new());
                    }
                    // Final is final (a device repeating itself after a reconnect), and an
                    // installed image only moves on to booting: a late progress report of
                    // the same download must not send the update back a step.
                    if FINAL.contains(&current.as_str())
                        || (current == "installed" && !FINAL.contains(&state))
                    {
                        return Ok(Vec::new());
                    }
                    let now = Utc::now().naive_utc();
                    diesel::update(ota_assignments::table.find((rollout, device)))
                        .set((
                            ota_assignments::state.eq(state),
                            ota_assignments::received.eq(if state == "downloading" {
                                i64::from(status.received)
                            } else {
                                received.max(i64::from(status.received))
                            }),
                            ota_assignments::detail.eq(&status.detail),
                            ota_assignments::updated_at.eq(now),
                        ))
                        .execute(tx)?;
                    if state == "booted_ok" {
                        diesel::update(devices::table.find(device))
                            .set(devices::firmware.eq(Some(&version)))
                            .execute(tx)?;
                    }
                    Ok(evaluate(tx, rollout)?)
                })
            })
            .await?;
        metrics::counter!("ota_status_total", "state" => state).increment(1);
        for device in wake {
            self.signal(device, Signal::Wake);
        }
        Ok(())
    }

    /// A device's updates, newest rollout first (its page).
    pub async fn device_updates(
        &self,
        user: i64,
        device: i64,
    ) -> Result<Vec<serde_json::Value>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, device, Permission::View)?;
                let rows: Vec<UpdateRow> = ota_assignments::table
                    .inner_join(ota_rollouts::table)
                    .inner_join(
                        firmware_images::table
                            .on(firmware_images::id.eq(ota_assignments::image_id)),
                    )
                    .filter(ota_assignments::device_id.eq(device))
                    .order(ota_rollouts::id.desc())
                    .limit(10)
                    .select((
                        ota_rollouts::id,
                        ota_rollouts::state,
                        firmware_images::version,
                        ota_assignments::state,
                        ota_assignments::received,
                        ota_assignments::detail,
                        ota_assignments::updated_at,
                    ))
                    .load(conn)?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(rollout, rollout_state, version, state, received, detail, at)| {
                            json!({ "rollout": rollout, "rollout_state": rollout_state,
                            "version": version, "state": state, "received": received,
                            "detail": detail, "updated_at": crate::time::rfc3339(at) })
                        },
                    )
                    .collect())
            })
            .await
    }

    /// An image a device may download: its workspace's, offered to it by a rollout.
    pub async fn image_for_device(
        &self,
        identity: &DeviceIdentity,
        id: i64,
    ) -> Result<Arc<Image>, AppError> {
        let (device, tenant) = (identity.device_id, identity.tenant_id);
        let offered: i64 = self
            .inner
            .db
            .run(move |conn| {
                ota_assignments::table
                    .filter(ota_assignments::device_id.eq(device))
                    .filter(ota_assignments::image_id.eq(id))
                    .count()
                    .get_result(conn)
                    .map_err(AppError::from)
            })
            .await?;
        if offered == 0 {
            return Err(AppError::NotFound(
                "No such image was offered to this device.".to_owned(),
            ));
        }
        let db = self.inner.db.clone();
        let image = self
            .inner
            .images
            .try_get_with(id, async move {
                db.run(move |conn| {
                    let (tenant_id, sha256, data): (i64, String, Vec<u8>) = firmware_images::table
                        .find(id)
                        .select((
                            firmware_images::tenant_id,
                            firmware_images::sha256,
                            firmware_images::data,
                        ))
                        .first(conn)?;
                    Ok::<_, AppError>(Arc::new(Image {
                        id,
                        tenant_id,
                        sha256,
                        data,
                    }))
                })
                .await
            })
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("firmware image {id}: {e}")))?;
        if image.tenant_id != tenant {
            return Err(AppError::NotFound(
                "No such image was offered to this device.".to_owned(),
            ));
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_cover_every_device_once_in_order() {
        assert_eq!(stage_of(20, &[5.0, 25.0, 100.0]), {
            let mut v = vec![0];
            v.extend([1; 4]);
            v.extend([2; 15]);
            v
        });
        // Few devices: each stage still gets one while any are left.
        assert_eq!(stage_of(2, &[5.0, 25.0, 100.0]), vec![0, 1]);
        assert_eq!(stage_of(1, &[50.0, 100.0]), vec![0]);
        assert_eq!(stage_of(4, &[100.0]), vec![0, 0, 0, 0]);
    }

    #[test]
    fn stages_and_thresholds_are_checked() {
        assert!(parse_stages(None).is_ok());
        assert!(parse_stages(Some(vec![50.0, 25.0, 100.0])).is_err());
        assert!(parse_stages(Some(vec![5.0, 25.0])).is_err());
        assert!(parse_stages(Some(vec![0.0, 100.0])).is_err());
        assert!(percent("x", Some(101.0), 1.0).is_err());
        assert!(percent("x", Some(f64::NAN), 1.0).is_err());
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        use ed25519_dalek::{Signer as _, SigningKey};
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let key = |id: i64, k: &SigningKey| FirmwareKey {
            id,
            tenant_id: 1,
            name: "k".to_owned(),
            public_key: hex(k.verifying_key().as_bytes()),
            created_by: None,
            created_at: Utc::now().naive_utc(),
        };
        let image = b"firmware bytes";
        let signature = hex(&signing.sign(image).to_bytes());
        assert_eq!(
            verifying_key(&[key(1, &other), key(2, &signing)], image, &signature).ok(),
            Some(Some(2))
        );
        assert_eq!(
            verifying_key(&[key(1, &other)], image, &signature).ok(),
            Some(None)
        );
        assert_eq!(
            verifying_key(&[key(2, &signing)], b"tampered", &signature).ok(),
            Some(None)
        );
        assert!(verifying_key(&[], image, "zz").is_err());
    }
}
