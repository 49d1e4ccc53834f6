//! The device registry and provisioning: devices belong to a workspace; an operator creates a
//! one-time claim code (text and QR code, expiring); a device exchanges it for a long-lived
//! token (`cnd_…`, stored as its SHA-256, rotatable, revocable).
//!
//! Permissions are workspace permissions: members see their workspace's devices, operators and
//! above create claims, rename, tag, rotate or revoke tokens and delete devices. A workspace's
//! plan caps its devices (`billing.plans.*.devices`, counting open claims).

pub mod api;
pub mod commands;
pub mod gateway;
pub mod handlers;
pub mod ota;
pub mod pages;
pub mod provision;
pub mod simulator;

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use rand::RngCore as _;
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::sessions::token_id;
use crate::chat::rooms::ChatService;
use crate::db::{Db, DbConnection, write_transaction};
use crate::error::AppError;
use crate::schema::{device_claims, device_tokens, devices, tenants};
use crate::settings::{BillingSettings, DeviceSettings};
use crate::tenancy::{Authorizer, Permission};

/// Device tokens start with this, so a leaked one is recognisable (and told from API tokens).
pub const TOKEN_PREFIX: &str = "cnd_";
const MAX_TAGS: usize = 16;
/// Claim codes: 12 characters of Crockford's base32 (no I, L, O, U), about 60 bits.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub kind: String,
    #[serde(skip)]
    pub tags: String,
    pub firmware: Option<String>,
    pub chip: Option<String>,
    #[schema(value_type = Option<String>)]
    #[serde(serialize_with = "crate::time::serialize_opt")]
    pub last_seen_at: Option<NaiveDateTime>,
    pub last_seq: i64,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
    /// Readings the device's offline buffer dropped when full, in total (from its `hello`).
    pub readings_dropped: i64,
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Device {
    #[serde(flatten)]
    pub row: DeviceRow,
    pub tags: Vec<String>,
    /// Whether a live token exists (revoked devices cannot connect until rotated).
    pub has_token: bool,
    /// Connected to this node now.
    pub online: bool,
}

/// What an operator says about a device to come.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub name: String,
    pub kind: String,
    pub tags: Vec<String>,
}

/// A claim code, shown once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Claim {
    /// `XXXX-XXXX-XXXX`; the device sends it to `POST /api/v1/devices/claim`.
    pub code: String,
    /// What the QR code holds: `conclave-claim:<server>#<code>`.
    pub uri: String,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub expires_at: NaiveDateTime,
    /// The QR code, an SVG document.
    pub qr_svg: String,
}

/// A provisioned device and its token (the only time the token exists in clear).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Provisioned {
    pub device: Device,
    pub token: String,
}

/// Who a device token belongs to.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub device_id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub token_id: String,
}

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    settings: DeviceSettings,
    billing: BillingSettings,
    public_url: String,
    live: gateway::Live,
    /// Rooms get the devices' events and answers; the hub relays signals to other nodes.
    chat: ChatService,
    /// Each device's threshold rules, read on every stored batch.
    rules: moka::future::Cache<i64, Arc<Vec<commands::Rule>>>,
    /// Firmware images being downloaded, so a thousand devices read one copy.
    images: moka::future::Cache<i64, Arc<ota::Image>>,
}

pub fn parse_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "name: 1 to 64 characters, no control characters".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

fn slug_like(field: &str, value: &str) -> Result<String, AppError> {
    let value = value.trim().to_ascii_lowercase();
    let ok = (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value)
    } else {
        Err(AppError::BadRequest(format!(
            "{field}: 1 to 32 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A device tag, as the API document describes it (`parse_tags` checks tags; it folds case).
pub struct Tag;

impl utoipa::PartialSchema for Tag {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[A-Za-z0-9_.-]{1,32}$"))
            .description(Some("1 to 32 letters, digits, `-`, `_` or `.`"))
            .into()
    }
}

impl utoipa::ToSchema for Tag {}

pub fn parse_tags(tags: &[String]) -> Result<Vec<String>, AppError> {
    if tags.len() > MAX_TAGS {
        return Err(AppError::BadRequest(format!("tags: at most {MAX_TAGS}")));
    }
    let mut parsed: Vec<String> = tags
        .iter()
        .map(|t| slug_like("tags", t))
        .collect::<Result<_, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
    )
}

fn new_code() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A typed code as stored: upper case, without dashes or spaces, look-alikes mapped
/// (Crockford: O→0, I/L→1).
fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect()
}

fn issue_token(conn: &mut DbConnection, device_id: i64, now: NaiveDateTime) -> QueryResult<String> {
    diesel::update(
        device_tokens::table
            .filter(device_tokens::device_id.eq(device_id))
            .filter(device_tokens::revoked_at.is_null()),
    )
    .set(device_tokens::revoked_at.eq(Some(now)))
    .execute(conn)?;
    let token = new_token();
    diesel::insert_into(device_tokens::table)
        .values((
            device_tokens::id.eq(token_id(&token)),
            device_tokens::device_id.eq(device_id),
            device_tokens::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(token)
}

fn device_of(conn: &mut DbConnection, row: DeviceRow) -> QueryResult<Device> {
    devices_of(conn, vec![row])?
        .into_iter()
        .next()
        .ok_or(diesel::result::Error::NotFound)
}

/// The API's view of registry rows: tags parsed, and which have a live token (one query for
/// all of them).
fn devices_of(conn: &mut DbConnection, rows: Vec<DeviceRow>) -> QueryResult<Vec<Device>> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let with_token: std::collections::HashSet<i64> = device_tokens::table
        .filter(device_tokens::device_id.eq_any(&ids))
        .filter(device_tokens::revoked_at.is_null())
        .select(device_tokens::device_id)
        .load::<i64>(conn)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| Device {
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            has_token: with_token.contains(&row.id),
            online: false,
            row,
        })
        .collect())
}

fn event(
    name: &'static str,
    actor: Option<i64>,
    tenant: i64,
    device: i64,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        event: name,
        actor_user_id: actor,
        tenant_id: Some(tenant),
        subject: Some(format!("device:{device}")),
        details,
        ..AuditEvent::default()
    }
}

impl Registry {
    pub fn new(
        db: Db,
        settings: DeviceSettings,
        billing: BillingSettings,
        public_url: &str,
        chat: ChatService,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                settings,
                billing,
                public_url: public_url.to_owned(),
                live: gateway::Live::default(),
                chat,
                // Another node's rule change (or a rule firing there) is seen within this.
                rules: moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(30))
                    .build(),
                images: moka::future::Cache::builder()
                    .weigher(|_, image: &Arc<ota::Image>| {
                        u32::try_from(image.data.len()).unwrap_or(u32::MAX)
                    })
                    .max_capacity(64 * 1024 * 1024)
                    .time_to_idle(std::time::Duration::from_secs(600))
                    .build(),
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Signals `device`'s connections on this node and, through the cluster relay, on the
    /// others.
    pub fn signal(&self, device: i64, signal: gateway::Signal) {
        self.inner.live.apply(device, signal);
        let hub = self.inner.chat.hub();
        hub.forward(crate::chat::relay::Wire::Device {
            n: hub.node(),
            d: device,
            s: signal,
        });
    }

    /// The device connections of this node.
    pub fn live(&self) -> &gateway::Live {
        &self.inner.live
    }

    pub fn settings(&self) -> &DeviceSettings {
        &self.inner.settings
    }

    fn with_presence(&self, mut device: Device) -> Device {
        device.online = self.inner.live.online(device.row.id);
        device
    }

    /// The caller's role in `tenant` must allow `permission`; 404 when not a member at all.
    fn require(
        conn: &mut DbConnection,
        user: i64,
        tenant: i64,
        permission: Permission,
    ) -> Result<(), AppError> {
        let role = crate::tenancy::role_of(conn, tenant, user)?
            .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
        if Authorizer::can(role, permission) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "Your role ({role}) cannot manage devices; operators and above can."
            )))
        }
    }

    /// A device the caller may see (404 otherwise, so ids do not leak across workspaces),
    /// checked for `permission`.
    fn visible(
        conn: &mut DbConnection,
        user: i64,
        id: i64,
        permission: Permission,
    ) -> Result<DeviceRow, AppError> {
        let row: Option<DeviceRow> = devices::table
            .find(id)
            .select(DeviceRow::as_select())
            .first(conn)
            .optional()?;
        let row = row.ok_or_else(|| AppError::NotFound("No such device.".to_owned()))?;
        match crate::tenancy::role_of(conn, row.tenant_id, user)? {
            None => Err(AppError::NotFound("No such device.".to_owned())),
            Some(role) if !Authorizer::can(role, permission) => Err(AppError::Forbidden(format!(
                "Your role ({role}) cannot manage devices; operators and above can."
            ))),
            Some(_) => Ok(row),
        }
    }

    /// A one-time claim code for a device to come.
    pub async fn create_claim(
        &self,
        actor: i64,
        tenant: i64,
        new: NewDevice,
        ip: Option<String>,
    ) -> Result<Claim, AppError> {
        let name = parse_name(&new.name)?;
        let kind = slug_like("kind", &new.kind)?;
        let tags = parse_tags(&new.tags)?;
        let code = new_code();
        let stored = token_id(&normalise_code(&code));
        let now = Utc::now().naive_utc();
        let ttl = i64::try_from(self.inner.settings.claim_ttl_minutes)
            .ok()
            .and_then(TimeDelta::try_minutes)
            .unwrap_or(TimeDelta::days(7));
        let expires_at = now.checked_add_signed(ttl).unwrap_or(NaiveDateTime::MAX);
        let billing = self.inner.billing.clone();
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<(), AppError> {
                    Self::require(tx, actor, tenant, Permission::Operate)?;
                    crate::tenancy::lock_tenant(tx, tenant)?;
                    let taken: bool = diesel::select(diesel::dsl::exists(
                        devices::table
                            .filter(devices::tenant_id.eq(tenant))
                            .filter(devices::name.eq(&name)),
                    ))
                    .get_result(tx)?;
                    if taken {
                        return Err(AppError::Conflict(format!(
                            "name: a device called {name:?} exists in this workspace"
                        )));
                    }
                    let (plan_name, plan) = crate::billing::plans::plan_of(tx, &billing, tenant)?;
                    if let Some(limit) = plan.devices {
                        let existing: i64 = devices::table
                            .filter(devices::tenant_id.eq(tenant))
                            .count()
                            .get_result(tx)?;
                        let open: i64 = device_claims::table
                            .filter(device_claims::tenant_id.eq(tenant))
                            .filter(device_claims::used_at.is_null())
                            .filter(device_claims::expires_at.gt(now))
                            .count()
                            .get_result(tx)?;
                        if (existing + open).unsigned_abs() >= limit {
                            return Err(AppError::Coded {
                                status: actix_web::http::StatusCode::PAYMENT_REQUIRED,
                                code: "device_limit",
                                message: format!(
                                    "The {plan_name} plan allows {limit} devices (open claim codes count); remove one or upgrade."
                                ),
                                retry_after_secs: None,
                            });
                        }
                    }
                    let tags_json = serde_json::to_string(&tags).map_err(AppError::internal)?;
                    diesel::insert_into(device_claims::table)
                        .values((
                            device_claims::id.eq(&stored),
                            device_claims::tenant_id.eq(tenant),
                            device_claims::name.eq(&name),
                            device_claims::kind.eq(&kind),
                            device_claims::tags.eq(&tags_json),
                            device_claims::created_by.eq(Some(actor)),
                            device_claims::created_at.eq(now),
                            device_claims::expires_at.eq(expires_at),
                        ))
                        .execute(tx)?;
                    let mut entry = AuditEvent {
                        event: "device.claim_created",
                        actor_user_id: Some(actor),
                        tenant_id: Some(tenant),
                        subject: Some(format!("tenant:{tenant}")),
                        details: json!({ "name": name, "kind": kind, "tags": tags, "expires_at": crate::time::rfc3339(expires_at) }),
                        ..AuditEvent::default()
                    };
                    entry.ip = ip;
                    audit::record(tx, &entry, now)?;
                    Ok(())
                })
            })
            .await?;
        let uri = format!(
            "conclave-claim:{}#{code}",
            self.inner.public_url.trim_end_matches('/')
        );
        let svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(AppError::internal)?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(180, 180)
            .quiet_zone(true)
            .build();
        let qr_svg = match svg.find("<svg") {
            Some(start) => svg[start..].to_owned(),
            None => svg,
        };
        Ok(Claim {
            code,
            uri,
            expires_at,
            qr_svg,
        })
    }

    /// A device exchanges a claim code for its token. Unknown, used and expired codes get the
    /// same answer.
    pub async fn redeem(
        &self,
        code: &str,
        firmware: Option<String>,
        chip: Option<String>,
        ip: Option<String>,
    ) -> Result<Provisioned, AppError> {
        let stored = token_id(&normalise_code(code));
        let firmware = firmware.map(|f| f.chars().take(64).collect::<String>());
        let chip = chip.map(|c| c.chars().take(64).collect::<String>());
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<Provisioned, AppError> {
                    let now = Utc::now().naive_utc();
                    let claim: Option<(i64, String, String, String, Option<i64>)> =
                        device_claims::table
                            .find(&stored)
                            .filter(device_claims::used_at.is_null())
                            .filter(device_claims::expires_at.gt(now))
                            .select((
                                device_claims::tenant_id,
                                device_claims::name,
                                device_claims::kind,
                                device_claims::tags,
                                device_claims::created_by,
                            ))
                            .first(tx)
                            .optional()?;
                    let Some((tenant, name, kind, tags, created_by)) = claim else {
                        return Err(AppError::Coded {
                            status: actix_web::http::StatusCode::BAD_REQUEST,
                            code: "invalid_claim",
                            message:
                                "This claim code is unknown, used or expired; ask for a new one."
                                    .to_owned(),
                            retry_after_secs: None,
                        });
                    };
                    let id = crate::db::unless_taken(
                        diesel::insert_into(devices::table)
                            .values((
                                devices::tenant_id.eq(tenant),
                                devices::name.eq(&name),
                                devices::kind.eq(&kind),
                                devices::tags.eq(&tags),
                                devices::firmware.eq(&firmware),
                                devices::chip.eq(&chip),
                                devices::created_by.eq(created_by),
                                devices::created_at.eq(now),
                            ))
                            .returning(devices::id)
                            .get_result::<i64>(tx),
                    )?
                    .ok_or_else(|| {
                        AppError::Conflict(format!(
                            "A device called {name:?} was added meanwhile; ask for a new code."
                        ))
                    })?;
                    diesel::update(device_claims::table.find(&stored))
                        .set((
                            device_claims::used_at.eq(Some(now)),
                            device_claims::device_id.eq(Some(id)),
                        ))
                        .execute(tx)?;
                    let token = issue_token(tx, id, now)?;
                    let mut entry = event(
                        "device.provisioned",
                        None,
                        tenant,
                        id,
                        json!({ "name": name, "kind": kind }),
                    );
                    entry.ip = ip;
                    audit::record(tx, &entry, now)?;
                    let row = devices::table
                        .find(id)
                        .select(DeviceRow::as_select())
                        .first(tx)?;
                    Ok(Provisioned {
                        device: device_of(tx, row)?,
                        token,
                    })
                })
            })
            .await
    }

    /// Devices of the workspaces the caller is in (or of one of them), newest first.
    pub async fn list(&self, user: i64, tenant: Option<i64>) -> Result<Vec<Device>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let mine: Vec<i64> = crate::tenancy::tenants_of(conn, user)?
                    .into_iter()
                    .map(|t| t.0)
                    .filter(|id| tenant.is_none_or(|wanted| wanted == *id))
                    .collect();
                let rows: Vec<DeviceRow> = devices::table
                    .filter(devices::tenant_id.eq_any(&mine))
                    .order(devices::id.desc())
                    .limit(500)
                    .select(DeviceRow::as_select())
                    .load(conn)?;
                Ok(devices_of(conn, rows)?)
            })
            .await
            .map(|list| list.into_iter().map(|d| self.with_presence(d)).collect())
    }

    pub async fn get(&self, user: i64, id: i64) -> Result<Device, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let row = Self::visible(conn, user, id, Permission::View)?;
                Ok(device_of(conn, row)?)
            })
            .await
            .map(|d| self.with_presence(d))
    }

    /// Renames or re-tags a device.
    pub async fn update(
        &self,
        user: i64,
        id: i64,
        name: Option<String>,
        tags: Option<Vec<String>>,
    ) -> Result<Device, AppError> {
        let name = name.as_deref().map(parse_name).transpose()?;
        let tags = tags.as_deref().map(parse_tags).transpose()?;
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let before = Self::visible(tx, user, id, Permission::Operate)?;
                    if let Some(name) = &name {
                        let renamed = crate::db::unless_taken(
                            diesel::update(devices::table.find(id))
                                .set(devices::name.eq(name))
                                .execute(tx),
                        )?;
                        if renamed.is_none() {
                            return Err(AppError::Conflict(format!(
                                "name: a device called {name:?} exists in this workspace"
                            )));
                        }
                    }
                    if let Some(tags) = &tags {
                        let text = serde_json::to_string(tags).map_err(AppError::internal)?;
                        diesel::update(devices::table.find(id))
                            .set(devices::tags.eq(text))
                            .execute(tx)?;
                    }
                    audit::record(
                        tx,
                        &event(
                            "device.updated",
                            Some(user),
                            before.tenant_id,
                            id,
                            json!({
                                "before": { "name": before.name, "tags": serde_json::from_str::<serde_json::Value>(&before.tags).unwrap_or_default() },
                                "after": { "name": name, "tags": tags },
                            }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    let row = devices::table.find(id).select(DeviceRow::as_select()).first(tx)?;
                    Ok(device_of(tx, row)?)
                })
            })
            .await
    }

    pub async fn delete(&self, user: i64, id: i64) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, id, Permission::Operate)?;
                    diesel::delete(devices::table.find(id)).execute(tx)?;
                    audit::record(
                        tx,
                        &event(
                            "device.deleted",
                            Some(user),
                            row.tenant_id,
                            id,
                            json!({ "name": row.name }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok(())
                })
            })
            .await?;
        self.signal(id, gateway::Signal::Close);
        Ok(())
    }

    /// A new token for the device; the old one stops working at once.
    pub async fn rotate_token(&self, user: i64, id: i64) -> Result<String, AppError> {
        let token = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, id, Permission::Operate)?;
                    let now = Utc::now().naive_utc();
                    let token = issue_token(tx, id, now)?;
                    audit::record(
                        tx,
                        &event(
                            "device.token_rotated",
                            Some(user),
                            row.tenant_id,
                            id,
                            json!({}),
                        ),
                        now,
                    )?;
                    Ok(token)
                })
            })
            .await?;
        self.signal(id, gateway::Signal::Close);
        Ok(token)
    }

    /// Revokes the device's token: it can no longer connect until a new one is issued.
    pub async fn revoke_token(&self, user: i64, id: i64) -> Result<usize, AppError> {
        let revoked = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, id, Permission::Operate)?;
                    let now = Utc::now().naive_utc();
                    let revoked = diesel::update(
                        device_tokens::table
                            .filter(device_tokens::device_id.eq(id))
                            .filter(device_tokens::revoked_at.is_null()),
                    )
                    .set(device_tokens::revoked_at.eq(Some(now)))
                    .execute(tx)?;
                    audit::record(
                        tx,
                        &event(
                            "device.token_revoked",
                            Some(user),
                            row.tenant_id,
                            id,
                            json!({ "revoked": revoked }),
                        ),
                        now,
                    )?;
                    Ok(revoked)
                })
            })
            .await?;
        self.signal(id, gateway::Signal::Close);
        Ok(revoked)
    }

    /// The device a presented token belongs to, if the token is live; notes its use.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<DeviceIdentity>, AppError> {
        if !presented.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let id = token_id(presented);
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let found: Option<(i64, i64, String, Option<NaiveDateTime>)> = device_tokens::table
                    .inner_join(devices::table)
                    .filter(device_tokens::id.eq(&id))
                    .filter(device_tokens::revoked_at.is_null())
                    .select((
                        devices::id,
                        devices::tenant_id,
                        devices::name,
                        device_tokens::last_used_at,
                    ))
                    .first(conn)
                    .optional()?;
                let Some((device_id, tenant_id, name, last_used)) = found else {
                    return Ok(None);
                };
                // Written at most once a minute: a download authenticates every Range request.
                let now = Utc::now().naive_utc();
                if last_used.is_none_or(|at| now - at >= TimeDelta::minutes(1)) {
                    diesel::update(device_tokens::table.find(&id))
                        .set(device_tokens::last_used_at.eq(Some(now)))
                        .execute(conn)?;
                    diesel::update(devices::table.find(device_id))
                        .set(devices::last_seen_at.eq(Some(now)))
                        .execute(conn)?;
                }
                Ok(Some(DeviceIdentity {
                    device_id,
                    tenant_id,
                    name,
                    token_id: id,
                }))
            })
            .await
    }

    /// The workspace's name, for pages.
    pub async fn tenant_name(&self, tenant: i64) -> Result<Option<String>, AppError> {
        self.inner
            .db
            .run(move |conn| {
                tenants::table
                    .find(tenant)
                    .select(tenants::name)
                    .first(conn)
                    .optional()
                    .map_err(AppError::from)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_whatever_the_case_dashes_and_look_alikes() {
        let code = new_code();
        assert_eq!(code.len(), 14);
        assert_eq!(
            normalise_code(&code),
            normalise_code(&code.to_lowercase().replace('-', " "))
        );
        assert_eq!(normalise_code("O1IL-abcd"), "0111ABCD");
    }

    #[test]
    fn tags_are_normalised_and_checked() {
        assert_eq!(
            parse_tags(&["Lab".into(), "lab".into(), "floor-2".into()]).ok(),
            Some(vec!["floor-2".to_owned(), "lab".to_owned()])
        );
        assert!(parse_tags(&["a b".into()]).is_err());
        assert!(parse_tags(&vec!["x".to_owned(); 17]).is_err());
    }
}

/// One metric's readings over a time range: raw points, or buckets of `step` seconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub metric: String,
    /// `[at, value]` pairs (raw), oldest first; empty when bucketed.
    pub points: Vec<(String, f64)>,
    /// Buckets (with `step`), oldest first; empty when raw.
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// The bucket's start (RFC 3339).
    pub start: String,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub count: u64,
}

/// The most raw points one answer carries; ask for buckets (`step`) beyond it.
pub const MAX_POINTS: usize = 10_000;
/// The most buckets one answer carries.
pub const MAX_BUCKETS: i64 = 10_000;

impl Registry {
    /// Readings of a device the caller may see, between `from` and `to`, per metric (or one).
    pub async fn telemetry(
        &self,
        user: i64,
        id: i64,
        metric: Option<String>,
        from: NaiveDateTime,
        to: NaiveDateTime,
        step_secs: Option<i64>,
    ) -> Result<Vec<Series>, AppError> {
        use crate::schema::telemetry;
        if to <= from {
            return Err(AppError::BadRequest("to: must be after from".to_owned()));
        }
        if let Some(step) = step_secs
            && (step < 1 || (to - from).num_seconds() / step > MAX_BUCKETS)
        {
            return Err(AppError::BadRequest(format!(
                "step: at least 1 s and at most {MAX_BUCKETS} buckets in the range"
            )));
        }
        // Whole hours come from the hourly rollups: exact (kept by ingestion), cheap, and
        // still there after raw readings passed `devices.telemetry_raw_days`.
        if let Some(step) = step_secs.filter(|step| step % 3_600 == 0) {
            return self.rolled_up(user, id, metric, from, to, step).await;
        }
        let rows: Vec<(String, NaiveDateTime, f64)> = self
            .inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, id, Permission::View)?;
                let mut query = telemetry::table
                    .filter(telemetry::device_id.eq(id))
                    .filter(telemetry::at.ge(from))
                    .filter(telemetry::at.lt(to))
                    .order((telemetry::metric, telemetry::at, telemetry::id))
                    .limit(i64::try_from(MAX_POINTS * 20).unwrap_or(i64::MAX))
                    .select((telemetry::metric, telemetry::at, telemetry::value))
                    .into_boxed();
                if let Some(metric) = &metric {
                    query = query.filter(telemetry::metric.eq(metric.clone()));
                }
                Ok(query.load(conn)?)
            })
            .await?;
        let mut series: Vec<Series> = Vec::new();
        for (metric, at, value) in rows {
            if series.last().is_none_or(|s| s.metric != metric) {
                series.push(Series {
                    metric: metric.clone(),
                    points: Vec::new(),
                    buckets: Vec::new(),
                });
            }
            let Some(current) = series.last_mut() else {
                continue;
            };
            match step_secs {
                None => {
                    if current.points.len() >= MAX_POINTS {
                        return Err(AppError::BadRequest(format!(
                            "More than {MAX_POINTS} readings of {metric} in this range: ask for buckets with step (e.g. step=1h)."
                        )));
                    }
                    current.points.push((crate::time::rfc3339(at), value));
                }
                Some(step) => {
                    let index = (at - from).num_seconds() / step;
                    let start = from + TimeDelta::seconds(index * step);
                    let start_text = crate::time::rfc3339(start);
                    match current.buckets.last_mut() {
                        Some(bucket) if bucket.start == start_text => {
                            bucket.min = bucket.min.min(value);
                            bucket.max = bucket.max.max(value);
                            bucket.avg += (value - bucket.avg) / (bucket.count + 1) as f64;
                            bucket.count += 1;
                        }
                        _ => current.buckets.push(Bucket {
                            start: start_text,
                            min: value,
                            max: value,
                            avg: value,
                            count: 1,
                        }),
                    }
                }
            }
        }
        Ok(series)
    }
}

impl Registry {
    /// Buckets of whole hours from `telemetry_hourly` (the first starts at `from`'s hour).
    async fn rolled_up(
        &self,
        user: i64,
        id: i64,
        metric: Option<String>,
        from: NaiveDateTime,
        to: NaiveDateTime,
        step: i64,
    ) -> Result<Vec<Series>, AppError> {
        use crate::schema::telemetry_hourly as hourly;
        use chrono::Timelike as _;
        let from = from
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(from);
        let rows: Vec<(String, NaiveDateTime, f64, f64, f64, i64)> = self
            .inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, id, Permission::View)?;
                let mut query = hourly::table
                    .filter(hourly::device_id.eq(id))
                    .filter(hourly::hour.ge(from))
                    .filter(hourly::hour.lt(to))
                    .order((hourly::metric, hourly::hour))
                    .select((
                        hourly::metric,
                        hourly::hour,
                        hourly::min,
                        hourly::max,
                        hourly::sum,
                        hourly::count,
                    ))
                    .into_boxed();
                if let Some(metric) = &metric {
                    query = query.filter(hourly::metric.eq(metric.clone()));
                }
                Ok(query.load(conn)?)
            })
            .await?;
        let mut series: Vec<Series> = Vec::new();
        // Sums per bucket, to average at the end.
        let mut sums: Vec<Vec<f64>> = Vec::new();
        for (metric, hour, min, max, sum, count) in rows {
            if series.last().is_none_or(|s| s.metric != metric) {
                series.push(Series {
                    metric: metric.clone(),
                    points: Vec::new(),
                    buckets: Vec::new(),
                });
                sums.push(Vec::new());
            }
            let (Some(current), Some(current_sums)) = (series.last_mut(), sums.last_mut()) else {
                continue;
            };
            let start = from + TimeDelta::seconds((hour - from).num_seconds() / step * step);
            let start_text = crate::time::rfc3339(start);
            let count = u64::try_from(count).unwrap_or(0);
            match (current.buckets.last_mut(), current_sums.last_mut()) {
                (Some(bucket), Some(total)) if bucket.start == start_text => {
                    bucket.min = bucket.min.min(min);
                    bucket.max = bucket.max.max(max);
                    bucket.count += count;
                    *total += sum;
                }
                _ => {
                    current.buckets.push(Bucket {
                        start: start_text,
                        min,
                        max,
                        avg: 0.0,
                        count,
                    });
                    current_sums.push(sum);
                }
            }
        }
        for (series, sums) in series.iter_mut().zip(sums) {
            for (bucket, sum) in series.buckets.iter_mut().zip(sums) {
                bucket.avg = if bucket.count > 0 {
                    sum / bucket.count as f64
                } else {
                    0.0
                };
            }
        }
        Ok(series)
    }
}

/// A small line chart of bucket averages as an SVG document (no scripts, no styles: fits
/// the CSP). Numbers only go into it; the metric name is validated by the protocol.
pub fn chart_svg(series: &Series, from: NaiveDateTime, to: NaiveDateTime) -> String {
    const W: f64 = 600.0;
    const H: f64 = 140.0;
    let span = (to - from).num_seconds().max(1) as f64;
    let (low, high) = series
        .buckets
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), b| {
            (lo.min(b.min), hi.max(b.max))
        });
    let range = if high > low { high - low } else { 1.0 };
    let points: Vec<(f64, f64)> = series
        .buckets
        .iter()
        .filter_map(|b| {
            let at = chrono::DateTime::parse_from_rfc3339(&b.start)
                .ok()?
                .naive_utc();
            let x = (at - from).num_seconds() as f64 / span * (W - 8.0) + 4.0;
            let y = H - (b.avg - low) / range * (H - 16.0) - 8.0;
            Some((x, y))
        })
        .collect();
    let line: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    // A dot per bucket too: a single bucket (or one beside a gap) is still visible.
    let dots: String = points
        .iter()
        .map(|(x, y)| {
            format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"currentColor\"/>")
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"{} over the last 24 hours\"><rect x=\"0.5\" y=\"0.5\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"currentColor\" stroke-opacity=\"0.2\"/><polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\" points=\"{}\"/>{dots}</svg>",
        series.metric,
        W - 1.0,
        H - 1.0,
        line.join(" ")
    )
}
