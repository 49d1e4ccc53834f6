//! The forms of the device page (commands, rooms, rules) and the firmware pages (keys,
//! images, rollouts). Every form posts, acts through the same `Registry` calls as the API, and
//! sends the browser back with a notice or the reason it was refused.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::commands::NewRule;
use super::ota::NewRollout;
use crate::auth::identity::Identity;
use crate::error::AppError;
use crate::web::pages::{Notice, Page, back_to, html};
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/devices/firmware", firmware_page))
        .service(resource("/devices/firmware/keys").post(add_key_form))
        .service(resource("/devices/rollouts").post(create_rollout_form))
        .service(get("/devices/rollouts/{tenant}/{id}", rollout_page))
        .service(resource("/devices/rollouts/{tenant}/{id}/{action}").post(steer_form))
        .service(resource("/devices/{id}/commands").post(command_form))
        .service(resource("/devices/{id}/rooms").post(add_room_form))
        .service(resource("/devices/{id}/rooms/{room}/remove").post(remove_room_form))
        .service(resource("/devices/{id}/rules").post(add_rule_form))
        .service(resource("/devices/{id}/rules/{rule}/delete").post(delete_rule_form));
}

/// What the device page adds to its context: commands, rooms (and rooms it could join),
/// rules, updates.
pub(super) async fn device_context(
    state: &AppState,
    user: i64,
    device: i64,
    tenant: i64,
    context: &mut tera::Context,
) -> Result<(), AppError> {
    let devices = &state.devices;
    let commands = devices.commands(user, device, 10).await?;
    let rooms = devices.rooms_of(user, device).await?;
    let member_of: Vec<i64> = rooms.iter().map(|(id, _)| *id).collect();
    let joinable: Vec<_> = state
        .chat
        .list(user, Some(tenant))
        .await?
        .into_iter()
        .filter(|r| {
            r.room.privacy != crate::chat::Privacy::Private
                && r.room.kind != crate::chat::RoomKind::Direct
                && r.room.archived_at.is_none()
                && !member_of.contains(&r.room.id)
        })
        .map(|r| json!({ "id": r.room.id, "name": r.room.name }))
        .collect();
    let room_name = |id: i64| {
        rooms
            .iter()
            .find(|(room, _)| *room == id)
            .map_or_else(|| format!("room {id}"), |(_, name)| name.clone())
    };
    let rules: Vec<_> = devices
        .rules(user, device)
        .await?
        .into_iter()
        .map(|rule| {
            json!({ "id": rule.id, "room": room_name(rule.room_id), "metric": rule.metric,
                "op": rule.op, "threshold": rule.threshold, "firing": rule.firing })
        })
        .collect();
    let rooms: Vec<_> = rooms
        .into_iter()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    context.insert("commands", &commands);
    context.insert("rooms", &rooms);
    context.insert("joinable_rooms", &joinable);
    context.insert("rules", &rules);
    context.insert("updates", &devices.device_updates(user, device).await?);
    Ok(())
}

#[derive(Deserialize)]
pub struct CommandForm {
    name: String,
    /// Shell-quoted arguments.
    #[serde(default)]
    args: String,
}

async fn command_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<i64>,
    form: web::Form<CommandForm>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let form = form.into_inner();
    let outcome = match shlex::split(&form.args) {
        None => Err(AppError::BadRequest(
            "Arguments: unbalanced quotes.".to_owned(),
        )),
        Some(args) => state
            .devices
            .send_command(identity.user_id(), id, form.name.trim(), args)
            .await
            .map(|_| "command_sent"),
    };
    back_to(&format!("/devices/{id}"), outcome)
}

#[derive(Deserialize)]
pub struct RoomForm {
    room_id: i64,
}

async fn add_room_form(
    state: web::Data<AppState>,
    identity: Identity,
    request: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<RoomForm>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let outcome = state
        .devices
        .add_to_room(identity.user_id(), form.room_id, id, client_ip(&request))
        .await
        .map(|()| "room_added");
    back_to(&format!("/devices/{id}"), outcome)
}

async fn remove_room_form(
    state: web::Data<AppState>,
    identity: Identity,
    request: HttpRequest,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (id, room) = path.into_inner();
    let outcome = state
        .devices
        .remove_from_room(identity.user_id(), room, id, client_ip(&request))
        .await
        .map(|()| "room_removed");
    back_to(&format!("/devices/{id}"), outcome)
}

#[derive(Deserialize)]
pub struct RuleForm {
    room_id: i64,
    metric: String,
    op: String,
    threshold: String,
}

async fn add_rule_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<i64>,
    form: web::Form<RuleForm>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let form = form.into_inner();
    let outcome = match form.threshold.trim().parse::<f64>() {
        Err(_) => Err(AppError::BadRequest(
            "threshold: a number, e.g. 30 or -62.5".to_owned(),
        )),
        Ok(threshold) => state
            .devices
            .add_rule(
                identity.user_id(),
                id,
                NewRule {
                    room_id: form.room_id,
                    metric: form.metric.trim().to_owned(),
                    op: form.op,
                    threshold,
                },
            )
            .await
            .map(|_| "rule_added"),
    };
    back_to(&format!("/devices/{id}"), outcome)
}

async fn delete_rule_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (id, rule) = path.into_inner();
    let outcome = state
        .devices
        .delete_rule(identity.user_id(), id, rule)
        .await
        .map(|()| "rule_deleted");
    back_to(&format!("/devices/{id}"), outcome)
}

#[derive(Deserialize)]
pub struct TenantQuery {
    tenant: Option<i64>,
    notice: Option<String>,
    error: Option<String>,
}

async fn firmware_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let query = query.into_inner();
    let workspaces = state
        .db
        .run(move |conn| crate::tenancy::tenants_of(conn, user).map_err(AppError::from))
        .await?;
    let tenant = query
        .tenant
        .or_else(|| workspaces.first().map(|w| w.0))
        .ok_or_else(|| AppError::NotFound("You are not in any workspace.".to_owned()))?;
    let keys = state.devices.firmware_keys(user, tenant).await?;
    let images = state.devices.images(user, tenant).await?;
    let rollouts = state.devices.rollouts(user, tenant).await?;
    let may_operate = super::handlers::may_operate(&state, user, tenant).await?;
    let role = state
        .db
        .run(move |conn| crate::tenancy::role_of(conn, tenant, user).map_err(AppError::from))
        .await?;
    let may_manage_keys = role.is_some_and(|r| {
        crate::tenancy::Authorizer::can(r, crate::tenancy::Permission::ManageMembers)
    });
    let mut context = page.context(&state);
    context.insert("tenant", &tenant);
    context.insert(
        "workspaces",
        &workspaces
            .iter()
            .map(|(id, _, name, _)| json!({ "id": id, "name": name }))
            .collect::<Vec<_>>(),
    );
    context.insert("keys", &keys);
    context.insert("images", &images);
    context.insert("rollouts", &rollouts);
    context.insert("may_operate", &may_operate);
    context.insert("may_manage_keys", &may_manage_keys);
    context.insert("public_url", &state.public_url);
    Notice {
        notice: query.notice,
        error: query.error,
    }
    .insert(&mut context);
    html(&state, "devices/firmware.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct KeyForm {
    tenant: i64,
    name: String,
    public_key: String,
}

async fn add_key_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<KeyForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let outcome = state
        .devices
        .add_firmware_key(
            identity.user_id(),
            form.tenant,
            &form.name,
            &form.public_key,
        )
        .await
        .map(|_| "key_added");
    back_to(
        &format!("/devices/firmware?tenant={}", form.tenant),
        outcome,
    )
}

#[derive(Deserialize)]
pub struct RolloutForm {
    tenant: i64,
    image_id: i64,
    #[serde(default)]
    previous_image_id: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    stages: String,
    #[serde(default)]
    success_threshold: String,
    #[serde(default)]
    failure_threshold: String,
}

fn optional_number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, AppError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| AppError::BadRequest(format!("{field}: a number")))
}

async fn create_rollout_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<RolloutForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let tenant = form.tenant;
    let parsed = (|| -> Result<NewRollout, AppError> {
        let stages = if form.stages.trim().is_empty() {
            None
        } else {
            Some(
                form.stages
                    .split([',', ' ', '→'])
                    .map(|s| s.trim().trim_end_matches('%'))
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<f64>().map_err(|_| {
                            AppError::BadRequest(
                                "stages: percentages separated by commas, e.g. 5, 25, 100"
                                    .to_owned(),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        Ok(NewRollout {
            image_id: form.image_id,
            previous_image_id: optional_number("previous_image_id", &form.previous_image_id)?,
            tag: Some(form.tag.trim().to_owned()).filter(|t| !t.is_empty()),
            devices: None,
            stages,
            success_threshold: optional_number("success_threshold", &form.success_threshold)?,
            failure_threshold: optional_number("failure_threshold", &form.failure_threshold)?,
        })
    })();
    match parsed {
        Err(error) => back_to(&format!("/devices/firmware?tenant={tenant}"), Err(error)),
        Ok(new) => match state
            .devices
            .create_rollout(identity.user_id(), tenant, new)
            .await
        {
            Ok(rollout) => back_to(
                &format!("/devices/rollouts/{tenant}/{}", rollout.row.id),
                Ok("rollout_started"),
            ),
            Err(error) => back_to(&format!("/devices/firmware?tenant={tenant}"), Err(error)),
        },
    }
}

async fn rollout_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    path: web::Path<(i64, i64)>,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id) = path.into_inner();
    let user = identity.user_id();
    let rollout = state.devices.rollout(user, tenant, id).await?;
    let mut context = page.context(&state);
    context.insert("tenant", &tenant);
    context.insert("rollout", &rollout);
    context.insert(
        "may_operate",
        &super::handlers::may_operate(&state, user, tenant).await?,
    );
    query.into_inner().insert(&mut context);
    html(&state, "devices/rollout.html", &context, StatusCode::OK)
}

async fn steer_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(i64, i64, String)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id, action) = path.into_inner();
    let outcome = state
        .devices
        .steer_rollout(identity.user_id(), tenant, id, &action)
        .await
        .map(|_| "steered");
    back_to(&format!("/devices/rollouts/{tenant}/{id}"), outcome)
}
