//! Devices at work: commands (from the API, or `/cmd <device> <name> [args]` in a room the
//! device belongs to), threshold rules that post a room event when a reading crosses them, the
//! outbox a connection drains (commands, then update offers), and telemetry retention.
//!
//! Commands are rows first (`device_commands`), frames second: whichever node the device is
//! connected to is woken (`Signal::Wake`, relayed between nodes) and sends what is pending, so
//! a command survives the device being offline (until `devices.command_ttl_secs`) and the
//! node that took it restarting. A command sent but not answered is sent again after the
//! device's next `hello` (at least once; devices answer a repeated id without running it
//! twice). The answer lands in the row and, for a room's `/cmd`, in the room as the device's
//! reply to the command message.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use conclave_protocol::{self as wire, Validate as _};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::gateway::Signal;
use super::{DeviceIdentity, Registry, event};
use crate::chat::Room;
use crate::chat::rooms::{MessageView, SlashCommands};
use crate::db::{DbConnection, DbError, write_transaction};
use crate::error::AppError;
use crate::history::MemberKind;
use crate::jobs::{JobError, JobRegistry, Queue};
use crate::schema::{device_commands, device_rules, devices, room_members, telemetry};
use crate::tenancy::Permission;

/// Rules one device may have.
const MAX_RULES: i64 = 32;
/// Commands one device may have waiting (pending or sent).
const MAX_WAITING: i64 = 64;
pub const RETENTION_JOB: &str = "devices.retention";
const RETENTION_EVERY: TimeDelta = TimeDelta::hours(1);
/// Rows one retention statement deletes (short transactions beside ingestion).
const DELETE_CHUNK: i64 = 5_000;

/// A command as the API shows it.
#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct CommandRow {
    pub id: i64,
    pub device_id: i64,
    pub name: String,
    #[serde(skip)]
    pub args_json: String,
    /// `pending` (waiting for the device), `sent`, `accepted`, `succeeded`, `failed`,
    /// `unknown` (the device has no such command), `expired` (offline too long).
    pub status: String,
    pub output: Option<String>,
    pub room_id: Option<i64>,
    pub message_id: Option<i64>,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
    #[schema(value_type = Option<String>)]
    #[serde(serialize_with = "crate::time::serialize_opt")]
    pub sent_at: Option<NaiveDateTime>,
    #[schema(value_type = Option<String>)]
    #[serde(serialize_with = "crate::time::serialize_opt")]
    pub done_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandView {
    #[serde(flatten)]
    pub row: CommandRow,
    pub args: Vec<String>,
}

macro_rules! command_columns {
    () => {
        (
            device_commands::id,
            device_commands::device_id,
            device_commands::name,
            device_commands::args,
            device_commands::status,
            device_commands::output,
            device_commands::room_id,
            device_commands::message_id,
            device_commands::created_by,
            device_commands::created_at,
            device_commands::sent_at,
            device_commands::done_at,
        )
    };
}

fn view(row: CommandRow) -> CommandView {
    CommandView {
        args: serde_json::from_str(&row.args_json).unwrap_or_default(),
        row,
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "unknown" | "expired")
}

/// A command checked against the protocol's limits (name, argument count and length).
fn checked_command(name: &str, args: Vec<String>) -> Result<wire::Command, AppError> {
    let command = wire::Command {
        id: 0,
        name: name.to_owned(),
        args,
    };
    wire::ServerMessage::Command(command.clone())
        .validate()
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok(command)
}

/// Stores a command for `device` (pending) and answers it.
fn queue_command(
    conn: &mut DbConnection,
    device: i64,
    command: &wire::Command,
    origin: Option<(i64, i64)>,
    created_by: Option<i64>,
) -> Result<CommandRow, AppError> {
    let waiting: i64 = device_commands::table
        .filter(device_commands::device_id.eq(device))
        .filter(device_commands::status.eq_any(["pending", "sent"]))
        .count()
        .get_result(conn)?;
    if waiting >= MAX_WAITING {
        return Err(AppError::Coded {
            status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_commands",
            message: format!(
                "{waiting} commands already wait for this device; let it answer first."
            ),
            retry_after_secs: Some(10),
        });
    }
    let now = Utc::now().naive_utc();
    let id = diesel::insert_into(device_commands::table)
        .values((
            device_commands::device_id.eq(device),
            device_commands::name.eq(&command.name),
            device_commands::args.eq(serde_json::to_string(&command.args).unwrap_or_default()),
            device_commands::status.eq("pending"),
            device_commands::room_id.eq(origin.map(|o| o.0)),
            device_commands::message_id.eq(origin.map(|o| o.1)),
            device_commands::created_by.eq(created_by),
            device_commands::created_at.eq(now),
        ))
        .returning(device_commands::id)
        .get_result::<i64>(conn)?;
    Ok(device_commands::table
        .find(id)
        .select(command_columns!())
        .first::<CommandRow>(conn)?)
}

/// A code block holding `text` whatever backticks it contains (device output is untrusted;
/// in a fence it renders as text).
fn fenced(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}\n{text}\n{fence}")
}

/// What a device says in the room when a command ends.
fn answer_text(name: &str, status: &str, output: Option<&str>, ttl_minutes: u64) -> String {
    let output = output.filter(|o| !o.trim().is_empty());
    match (status, output) {
        ("succeeded", Some(output)) => format!("`{name}` ✓\n\n{}", fenced(output)),
        ("succeeded", None) => format!("`{name}` ✓ done"),
        ("failed", Some(output)) => format!("`{name}` failed:\n\n{}", fenced(output)),
        ("failed", None) => format!("`{name}` failed."),
        ("unknown", _) => format!("I do not know the command `{name}`."),
        _ => format!("`{name}` expired: I was offline for more than {ttl_minutes} minutes."),
    }
}

/// A threshold rule.
#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct Rule {
    pub id: i64,
    pub device_id: i64,
    pub room_id: i64,
    pub metric: String,
    /// `above` or `below`.
    pub op: String,
    pub threshold: f64,
    /// Whether the last reading was past the threshold.
    pub firing: bool,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
}

impl Rule {
    fn crossed(&self, value: f64) -> bool {
        match self.op.as_str() {
            "below" => value < self.threshold,
            _ => value > self.threshold,
        }
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewRule {
    /// A room the device is a member of.
    pub room_id: i64,
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub metric: String,
    /// `above` or `below`.
    #[schema(schema_with = crate::api_docs::above_or_below)]
    pub op: String,
    pub threshold: f64,
}

fn parse_rule(rule: &NewRule) -> Result<(), AppError> {
    let metric_ok = !rule.metric.is_empty()
        && rule.metric.len() <= wire::MAX_NAME
        && rule
            .metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !metric_ok {
        return Err(AppError::BadRequest(
            "metric: 1 to 64 letters, digits, '_', '.' or '-'".to_owned(),
        ));
    }
    if !matches!(rule.op.as_str(), "above" | "below") {
        return Err(AppError::BadRequest(
            "op: either \"above\" or \"below\"".to_owned(),
        ));
    }
    if !rule.threshold.is_finite() {
        return Err(AppError::BadRequest(
            "threshold: a finite number".to_owned(),
        ));
    }
    Ok(())
}

fn is_room_member(conn: &mut DbConnection, room: i64, device: i64) -> QueryResult<bool> {
    Ok(room_members::table
        .find((room, MemberKind::Device.as_str(), device))
        .count()
        .get_result::<i64>(conn)?
        > 0)
}

/// A number as people write it: `30`, `21.5`.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl Registry {
    /// Queues a command for a device (operators and above); the device gets it now if it is
    /// connected to any node, else when it next connects (within `devices.command_ttl_secs`).
    pub async fn send_command(
        &self,
        user: i64,
        device: i64,
        name: &str,
        args: Vec<String>,
    ) -> Result<CommandView, AppError> {
        let command = checked_command(name, args)?;
        let row = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, device, Permission::Operate)?;
                    let queued = queue_command(tx, device, &command, None, Some(user))?;
                    crate::audit::record(
                        tx,
                        &event(
                            "device.command_sent",
                            Some(user),
                            row.tenant_id,
                            device,
                            json!({ "command": queued.id, "name": command.name }),
                        ),
                        queued.created_at,
                    )?;
                    Ok(queued)
                })
            })
            .await?;
        self.signal(device, Signal::Wake);
        Ok(view(row))
    }

    /// A device's commands, newest first.
    pub async fn commands(
        &self,
        user: i64,
        device: i64,
        limit: i64,
    ) -> Result<Vec<CommandView>, AppError> {
        let limit = limit.clamp(1, 200);
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, device, Permission::View)?;
                Ok(device_commands::table
                    .filter(device_commands::device_id.eq(device))
                    .order(device_commands::id.desc())
                    .limit(limit)
                    .select(command_columns!())
                    .load::<CommandRow>(conn)?
                    .into_iter()
                    .map(view)
                    .collect())
            })
            .await
    }

    pub async fn command(&self, user: i64, device: i64, id: i64) -> Result<CommandView, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, device, Permission::View)?;
                device_commands::table
                    .filter(device_commands::device_id.eq(device))
                    .filter(device_commands::id.eq(id))
                    .select(command_columns!())
                    .first::<CommandRow>(conn)
                    .optional()?
                    .map(view)
                    .ok_or_else(|| AppError::NotFound("No such command.".to_owned()))
            })
            .await
    }

    /// What a connection of `device` sends now: pending commands (marked sent), then update
    /// offers. After `hello`, commands sent but not answered and offers not finished too.
    pub(crate) async fn outbox(
        &self,
        device: i64,
        after_hello: bool,
    ) -> Result<Vec<wire::ServerMessage>, AppError> {
        let ttl = TimeDelta::seconds(
            i64::try_from(self.inner.settings.command_ttl_secs).unwrap_or(i64::MAX / 2),
        );
        let public_url = self.inner.public_url.clone();
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let now = Utc::now().naive_utc();
                let statuses: &[&str] = if after_hello {
                    &["pending", "sent"]
                } else {
                    &["pending"]
                };
                let rows: Vec<CommandRow> = device_commands::table
                    .filter(device_commands::device_id.eq(device))
                    .filter(device_commands::status.eq_any(statuses))
                    .filter(device_commands::created_at.gt(now - ttl))
                    .order(device_commands::id)
                    .limit(MAX_WAITING)
                    .select(command_columns!())
                    .load(conn)?;
                let mut out = Vec::new();
                for row in rows {
                    // Another connection (or node) may be sending it: whoever moves it sends.
                    let claimed = diesel::update(
                        device_commands::table
                            .find(row.id)
                            .filter(device_commands::status.eq(&row.status)),
                    )
                    .set((
                        device_commands::status.eq("sent"),
                        device_commands::sent_at.eq(Some(now)),
                    ))
                    .execute(conn)?;
                    if claimed == 1 {
                        out.push(wire::ServerMessage::Command(wire::Command {
                            id: row.id.unsigned_abs(),
                            name: row.name,
                            args: serde_json::from_str(&row.args_json).unwrap_or_default(),
                        }));
                    }
                }
                out.extend(super::ota::offers(conn, device, after_hello, &public_url)?);
                Ok(out)
            })
            .await
    }

    /// A device answered a command: the row records it and, for a room's `/cmd`, the device
    /// replies in the room. A repeated final answer changes nothing.
    pub(crate) async fn command_result(
        &self,
        identity: &DeviceIdentity,
        result: wire::CommandResult,
    ) -> Result<(), AppError> {
        let device = identity.device_id;
        let id = i64::try_from(result.id)
            .map_err(|_| AppError::NotFound("No such command.".to_owned()))?;
        let status = match result.status {
            wire::CommandStatus::Accepted => "accepted",
            wire::CommandStatus::Succeeded => "succeeded",
            wire::CommandStatus::Failed => "failed",
            wire::CommandStatus::Unknown => "unknown",
        };
        let output = result.output.clone();
        let done: Option<CommandRow> = self
            .inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let row: CommandRow = device_commands::table
                    .filter(device_commands::device_id.eq(device))
                    .filter(device_commands::id.eq(id))
                    .select(command_columns!())
                    .first(conn)
                    .optional()?
                    .ok_or_else(|| {
                        AppError::NotFound(format!("No command {id} was sent to this device."))
                    })?;
                if is_final(&row.status) {
                    return Ok(None);
                }
                let now = Utc::now().naive_utc();
                let moved = diesel::update(
                    device_commands::table
                        .find(id)
                        .filter(device_commands::status.eq(&row.status)),
                )
                .set((
                    device_commands::status.eq(status),
                    device_commands::output.eq(&output),
                    device_commands::done_at.eq(is_final(status).then_some(now)),
                ))
                .execute(conn)?;
                Ok((moved == 1 && is_final(status)).then_some(CommandRow {
                    status: status.to_owned(),
                    output,
                    done_at: Some(now),
                    ..row
                }))
            })
            .await?;
        metrics::counter!("device_command_results_total", "status" => status).increment(1);
        if let Some(row) = done {
            self.answer_in_room(device, &row).await;
        }
        Ok(())
    }

    /// Posts a finished command's answer in the room it was asked in, if any.
    async fn answer_in_room(&self, device: i64, row: &CommandRow) {
        let Some(room) = row.room_id else { return };
        let text = answer_text(
            &row.name,
            &row.status,
            row.output.as_deref(),
            self.inner.settings.command_ttl_secs / 60,
        );
        if let Err(e) = self
            .inner
            .chat
            .post_as_device(
                room,
                device,
                text,
                row.message_id,
                format!("cmd-{}", row.id),
            )
            .await
        {
            tracing::warn!(error = %e, room, device, "cannot post a command's answer");
        }
    }

    /// Adds a device to a room: the caller must be able to invite to the room and operate the
    /// device.
    pub async fn add_to_room(
        &self,
        user: i64,
        room: i64,
        device: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        let row = self
            .inner
            .db
            .run(move |conn| Self::visible(conn, user, device, Permission::Operate))
            .await?;
        self.inner
            .chat
            .add_device(user, room, device, row.tenant_id, ip)
            .await
    }

    pub async fn remove_from_room(
        &self,
        user: i64,
        room: i64,
        device: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| Self::visible(conn, user, device, Permission::Operate))
            .await?;
        self.inner
            .chat
            .remove_device(user, room, device, ip)
            .await?;
        self.inner.rules.invalidate(&device).await;
        Ok(())
    }

    /// The rooms a device is a member of: id and name.
    pub async fn rooms_of(&self, user: i64, device: i64) -> Result<Vec<(i64, String)>, AppError> {
        use crate::schema::rooms;
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, device, Permission::View)?;
                Ok(room_members::table
                    .inner_join(rooms::table)
                    .filter(room_members::member_kind.eq(MemberKind::Device.as_str()))
                    .filter(room_members::member_id.eq(device))
                    .order(rooms::name)
                    .select((rooms::id, rooms::name))
                    .load(conn)?)
            })
            .await
    }

    pub async fn rules(&self, user: i64, device: i64) -> Result<Vec<Rule>, AppError> {
        self.inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                Self::visible(conn, user, device, Permission::View)?;
                Ok(load_rules(conn, device)?)
            })
            .await
    }

    /// A threshold rule (operators and above); the device must be a member of the room.
    pub async fn add_rule(&self, user: i64, device: i64, rule: NewRule) -> Result<Rule, AppError> {
        parse_rule(&rule)?;
        let created = self
            .inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, device, Permission::Operate)?;
                    if !is_room_member(tx, rule.room_id, device)? {
                        return Err(AppError::Conflict(
                            "room_id: add the device to this room first.".to_owned(),
                        ));
                    }
                    let count: i64 = device_rules::table
                        .filter(device_rules::device_id.eq(device))
                        .count()
                        .get_result(tx)?;
                    if count >= MAX_RULES {
                        return Err(AppError::Conflict(format!(
                            "A device has at most {MAX_RULES} rules."
                        )));
                    }
                    let now = Utc::now().naive_utc();
                    let id = diesel::insert_into(device_rules::table)
                        .values((
                            device_rules::device_id.eq(device),
                            device_rules::room_id.eq(rule.room_id),
                            device_rules::metric.eq(&rule.metric),
                            device_rules::op.eq(&rule.op),
                            device_rules::threshold.eq(rule.threshold),
                            device_rules::firing.eq(false),
                            device_rules::created_by.eq(Some(user)),
                            device_rules::created_at.eq(now),
                        ))
                        .returning(device_rules::id)
                        .get_result::<i64>(tx)?;
                    let created: Rule = device_rules::table.find(id).first(tx)?;
                    crate::audit::record(
                        tx,
                        &event(
                            "device.rule_added",
                            Some(user),
                            row.tenant_id,
                            device,
                            json!({ "rule": created.id, "room_id": rule.room_id,
                                "metric": rule.metric, "op": rule.op, "threshold": rule.threshold }),
                        ),
                        now,
                    )?;
                    Ok(created)
                })
            })
            .await?;
        self.inner.rules.invalidate(&device).await;
        Ok(created)
    }

    pub async fn delete_rule(&self, user: i64, device: i64, rule: i64) -> Result<(), AppError> {
        self.inner
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let row = Self::visible(tx, user, device, Permission::Operate)?;
                    let deleted = diesel::delete(
                        device_rules::table
                            .filter(device_rules::device_id.eq(device))
                            .filter(device_rules::id.eq(rule)),
                    )
                    .execute(tx)?;
                    if deleted == 0 {
                        return Err(AppError::NotFound("No such rule.".to_owned()));
                    }
                    crate::audit::record(
                        tx,
                        &event(
                            "device.rule_deleted",
                            Some(user),
                            row.tenant_id,
                            device,
                            json!({ "rule": rule }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok(())
                })
            })
            .await?;
        self.inner.rules.invalidate(&device).await;
        Ok(())
    }

    /// Checks a stored batch's last values against the device's rules: a rule whose side
    /// changed posts once (crossing, and again on return), whichever node stores the batch.
    pub(crate) async fn apply_rules(
        &self,
        identity: &DeviceIdentity,
        seq: u64,
        latest: &[(String, f64)],
    ) {
        let device = identity.device_id;
        let db = self.inner.db.clone();
        let rules = self
            .inner
            .rules
            .try_get_with(device, async move {
                db.run(move |conn| load_rules(conn, device).map_err(DbError::from))
                    .await
                    .map(Arc::new)
            })
            .await;
        let rules = match rules {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!(error = %e, device, "cannot read a device's rules");
                return;
            }
        };
        let mut changed = false;
        for rule in rules.iter() {
            let Some((_, value)) = latest.iter().find(|(metric, _)| *metric == rule.metric) else {
                continue;
            };
            let (value, crossed) = (*value, rule.crossed(*value));
            if crossed == rule.firing {
                continue;
            }
            changed = true;
            let id = rule.id;
            let moved = self
                .inner
                .db
                .run(move |conn| {
                    diesel::update(
                        device_rules::table
                            .find(id)
                            .filter(device_rules::firing.eq(!crossed)),
                    )
                    .set(device_rules::firing.eq(crossed))
                    .execute(conn)
                    .map_err(DbError::from)
                })
                .await;
            if !matches!(moved, Ok(1)) {
                continue;
            }
            let text = if crossed {
                format!(
                    "⚠️ **{}**: {} is {} — {} {}.",
                    identity.name,
                    rule.metric,
                    number(value),
                    rule.op,
                    number(rule.threshold)
                )
            } else {
                format!(
                    "✅ **{}**: {} is back to {} (alert when {} {}).",
                    identity.name,
                    rule.metric,
                    number(value),
                    rule.op,
                    number(rule.threshold)
                )
            };
            metrics::counter!("device_rule_events_total").increment(1);
            if let Err(e) = self
                .inner
                .chat
                .post_as_device(rule.room_id, device, text, None, format!("rule-{id}-{seq}"))
                .await
            {
                tracing::warn!(error = %e, rule = id, "cannot post a rule's event");
            }
        }
        if changed {
            self.inner.rules.invalidate(&device).await;
        }
    }

    /// Expires commands that waited too long, every few seconds, posting in their rooms.
    pub fn spawn_sweeper(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                if let Err(e) = this.expire_commands().await {
                    tracing::warn!(error = %e, "cannot expire device commands");
                }
            }
        });
    }

    async fn expire_commands(&self) -> Result<(), AppError> {
        let ttl = TimeDelta::seconds(
            i64::try_from(self.inner.settings.command_ttl_secs).unwrap_or(i64::MAX / 2),
        );
        let expired: Vec<CommandRow> = self
            .inner
            .db
            .run(move |conn| -> Result<_, AppError> {
                let now = Utc::now().naive_utc();
                let rows: Vec<CommandRow> = device_commands::table
                    .filter(device_commands::status.eq_any(["pending", "sent", "accepted"]))
                    .filter(device_commands::created_at.le(now - ttl))
                    .limit(500)
                    .select(command_columns!())
                    .load(conn)?;
                let mut expired = Vec::new();
                for row in rows {
                    let moved = diesel::update(
                        device_commands::table
                            .find(row.id)
                            .filter(device_commands::status.eq(&row.status)),
                    )
                    .set((
                        device_commands::status.eq("expired"),
                        device_commands::done_at.eq(Some(now)),
                    ))
                    .execute(conn)?;
                    if moved == 1 {
                        expired.push(CommandRow {
                            status: "expired".to_owned(),
                            ..row
                        });
                    }
                }
                Ok(expired)
            })
            .await?;
        for row in expired {
            metrics::counter!("device_command_results_total", "status" => "expired").increment(1);
            self.answer_in_room(row.device_id, &row).await;
        }
        Ok(())
    }

    /// Registers the telemetry retention job: raw readings older than
    /// `devices.telemetry_raw_days`, rollups older than `devices.telemetry_rollup_days` and
    /// finished commands older than 30 days go, in short chunks.
    pub fn register_jobs(&self, registry: &mut JobRegistry, queue: Queue) {
        let this = self.clone();
        registry.register(RETENTION_JOB, move |_job| {
            let (this, queue) = (this.clone(), queue.clone());
            async move {
                let deleted = this
                    .purge_telemetry()
                    .await
                    .map_err(|e| JobError::Retry(e.into()))?;
                if deleted > 0 {
                    tracing::info!(rows = deleted, "device retention deleted old telemetry");
                }
                this.inner
                    .db
                    .run(move |conn| {
                        queue
                            .ensure_scheduled_in(
                                conn,
                                RETENTION_JOB,
                                Utc::now() + RETENTION_EVERY,
                                false,
                            )
                            .map_err(DbError::from)
                    })
                    .await
                    .map_err(|e| JobError::Retry(e.into()))?;
                Ok(())
            }
        });
    }

    /// Schedules the first retention run unless one waits (call at start-up).
    pub async fn schedule(&self, queue: &Queue) -> Result<(), DbError> {
        queue
            .schedule_recurring(RETENTION_JOB, TimeDelta::minutes(3))
            .await
    }

    /// Deletes what retention says is too old; answers how many rows went.
    pub async fn purge_telemetry(&self) -> Result<usize, DbError> {
        use crate::schema::telemetry_hourly;
        let settings = self.inner.settings.clone();
        self.inner
            .db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                let raw_cutoff = now - TimeDelta::days(i64::from(settings.telemetry_raw_days));
                let rollup_cutoff =
                    now - TimeDelta::days(i64::from(settings.telemetry_rollup_days));
                let mut deleted = 0;
                loop {
                    let ids: Vec<i64> = telemetry::table
                        .filter(telemetry::at.lt(raw_cutoff))
                        .select(telemetry::id)
                        .limit(DELETE_CHUNK)
                        .load(conn)?;
                    if ids.is_empty() {
                        break;
                    }
                    deleted += diesel::delete(telemetry::table.filter(telemetry::id.eq_any(ids)))
                        .execute(conn)?;
                }
                deleted += diesel::delete(
                    telemetry_hourly::table.filter(telemetry_hourly::hour.lt(rollup_cutoff)),
                )
                .execute(conn)?;
                deleted += diesel::delete(
                    device_commands::table
                        .filter(device_commands::done_at.lt(now - TimeDelta::days(30))),
                )
                .execute(conn)?;
                Ok(deleted)
            })
            .await
    }
}

fn load_rules(conn: &mut DbConnection, device: i64) -> QueryResult<Vec<Rule>> {
    device_rules::table
        .filter(device_rules::device_id.eq(device))
        .order(device_rules::id)
        .load(conn)
}

/// `/cmd <device> <command> [arguments…]` in a room: the device (a member of the room, by
/// name or id) runs the command and answers in the room. Arguments follow shell quoting
/// (`/cmd lamp say "hello there"`).
pub struct DeviceCommands {
    registry: Registry,
}

impl DeviceCommands {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// The device and command a message asks for, or why it cannot run.
    async fn parse(&self, room: &Room, body: &str) -> Result<(i64, wire::Command), AppError> {
        const USAGE: &str = "Usage: /cmd <device> <command> [arguments…]";
        let rest = body.trim_start().trim_start_matches("/cmd").trim();
        let mut words = shlex::split(rest)
            .ok_or_else(|| AppError::BadRequest(format!("/cmd: unbalanced quotes. {USAGE}")))?;
        if words.len() < 2 {
            return Err(AppError::BadRequest(USAGE.to_owned()));
        }
        let args = words.split_off(2);
        let name = words.pop().unwrap_or_default();
        let wanted = words.pop().unwrap_or_default();
        let room_id = room.id;
        let members: Vec<(i64, String)> = self
            .registry
            .inner
            .db
            .run(move |conn| {
                room_members::table
                    .inner_join(devices::table.on(devices::id.eq(room_members::member_id)))
                    .filter(room_members::room_id.eq(room_id))
                    .filter(room_members::member_kind.eq(MemberKind::Device.as_str()))
                    .order(devices::name)
                    .select((devices::id, devices::name))
                    .load(conn)
                    .map_err(AppError::from)
            })
            .await?;
        let device = members
            .iter()
            .find(|(id, device)| {
                device.eq_ignore_ascii_case(&wanted)
                    || wanted.strip_prefix('#').unwrap_or(&wanted) == id.to_string()
            })
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                let here: Vec<&str> = members.iter().map(|(_, name)| name.as_str()).collect();
                AppError::BadRequest(if here.is_empty() {
                    format!("/cmd: no device called {wanted} here; this room has no devices.")
                } else {
                    format!(
                        "/cmd: no device called {wanted} here; devices in this room: {}.",
                        here.join(", ")
                    )
                })
            })?;
        let command =
            checked_command(&name, args).map_err(|e| AppError::BadRequest(format!("/cmd: {e}")))?;
        Ok((device, command))
    }
}

#[async_trait::async_trait]
impl SlashCommands for DeviceCommands {
    fn handles(&self, body: &str) -> bool {
        let body = body.trim_start();
        body == "/cmd" || body.starts_with("/cmd ") || body.starts_with("/cmd\n")
    }

    async fn check(&self, room: &Room, _author: i64, body: &str) -> Result<(), AppError> {
        self.parse(room, body).await.map(drop)
    }

    async fn run(&self, room: &Room, author: i64, message: &MessageView) {
        let body = message.body.clone().unwrap_or_default();
        let (device, command) = match self.parse(room, &body).await {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(error = %e, room = room.id, "a checked /cmd no longer runs");
                return;
            }
        };
        let origin = Some((room.id, message.id));
        let author = (message.sender.kind == MemberKind::User).then_some(author);
        let queued = self
            .registry
            .inner
            .db
            .run(move |conn| queue_command(conn, device, &command, origin, author))
            .await;
        match queued {
            Ok(_) => self.registry.signal(device, Signal::Wake),
            Err(e) => tracing::warn!(error = %e, device, "cannot queue a room's command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_stays_inside_its_fence() {
        let text = fenced("a ``` b ```` c");
        assert!(text.starts_with("`````\n"));
        assert!(text.ends_with("\n`````"));
        assert_eq!(fenced("plain"), "```\nplain\n```");
    }

    #[test]
    fn numbers_read_like_people_write_them() {
        assert_eq!(number(30.0), "30");
        assert_eq!(number(21.5), "21.5");
        assert_eq!(number(-0.25), "-0.25");
    }

    #[test]
    fn rules_are_checked() {
        let rule = |metric: &str, op: &str, threshold: f64| NewRule {
            room_id: 1,
            metric: metric.to_owned(),
            op: op.to_owned(),
            threshold,
        };
        assert!(parse_rule(&rule("temperature", "above", 30.0)).is_ok());
        assert!(parse_rule(&rule("temp erature", "above", 30.0)).is_err());
        assert!(parse_rule(&rule("t", "over", 30.0)).is_err());
        assert!(parse_rule(&rule("t", "below", f64::NAN)).is_err());
    }
}
