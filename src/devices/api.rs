//! HTTP surface of devices at work: commands, rooms and rules, firmware keys and images,
//! rollouts, and the firmware download devices make with their token.

use actix_web::http::header::{self, Header as _};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;

use super::commands::{CommandView, NewRule, Rule};
use super::handlers::device_token;
use super::ota::{FirmwareImage, FirmwareKey, NewRollout, Rollout};
use crate::auth::identity::Caller;
use crate::error::AppError;
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/api/v1/devices/{id}/commands", commands).post(send_command))
        .service(get("/api/v1/devices/{id}/commands/{command}", command))
        .service(get("/api/v1/devices/{id}/rules", rules).post(add_rule))
        .service(resource("/api/v1/devices/{id}/rules/{rule}").delete(delete_rule))
        .service(get("/api/v1/devices/{id}/rooms", device_rooms))
        .service(
            resource("/api/v1/rooms/{room}/devices/{device}")
                .put(add_to_room)
                .delete(remove_from_room),
        )
        .service(get("/api/v1/tenants/{tenant}/firmware/keys", keys).post(add_key))
        .service(resource("/api/v1/tenants/{tenant}/firmware/keys/{key}").delete(delete_key))
        .service(get("/api/v1/tenants/{tenant}/firmware", images).post(upload))
        .service(resource("/api/v1/tenants/{tenant}/firmware/{image}").delete(delete_image))
        .service(get("/api/v1/tenants/{tenant}/rollouts", rollouts).post(create_rollout))
        .service(get("/api/v1/tenants/{tenant}/rollouts/{rollout}", rollout))
        .service(
            resource("/api/v1/tenants/{tenant}/rollouts/{rollout}/{action}").post(steer_rollout),
        )
        .service(get("/api/v1/device/firmware/{image}", download));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// The command's name (letters, digits, `_ . -`).
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    #[serde(default)]
    #[schema(max_items = 32)]
    args: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "devices",
    summary = "Send a command to a device (operators); it runs when the device is connected",
    params(("id" = i64, Path)), request_body = NewCommand,
    responses((status = 202, body = CommandView),
        (status = 400, description = "Bad name or arguments", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Below operator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many commands wait for the device (`too_many_commands`)", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn send_command(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    body: crate::web::Json<NewCommand>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let command = state
        .devices
        .send_command(caller.user_id, path.into_inner(), &body.name, body.args)
        .await?;
    Ok(HttpResponse::Accepted().json(command))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// At most this many, newest first (default 50, at most 200).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", tag = "devices",
    summary = "A device's commands and their answers, newest first",
    params(("id" = i64, Path), Limit), responses((status = 200, description = "`{commands: [...]}`")))]
async fn commands(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    query: web::Query<Limit>,
) -> Result<HttpResponse, AppError> {
    let commands = state
        .devices
        .commands(caller.user_id, path.into_inner(), query.limit.unwrap_or(50))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "commands": commands })))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{command}", tag = "devices",
    params(("id" = i64, Path), ("command" = i64, Path)),
    responses((status = 200, body = CommandView)))]
async fn command(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (device, id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.devices.command(caller.user_id, device, id).await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/rules", tag = "devices",
    summary = "A device's threshold rules", params(("id" = i64, Path)),
    responses((status = 200, description = "`{rules: [...]}`")))]
async fn rules(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let rules = state
        .devices
        .rules(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "rules": rules })))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/rules", tag = "devices",
    summary = "A rule: post into the room when a reading crosses the threshold (operators)",
    params(("id" = i64, Path)), request_body = NewRule,
    responses((status = 201, body = Rule),
        (status = 400, description = "Bad metric, op or threshold", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is not in the room, or has 32 rules", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn add_rule(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    body: crate::web::Json<NewRule>,
) -> Result<HttpResponse, AppError> {
    let rule = state
        .devices
        .add_rule(caller.user_id, path.into_inner(), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(rule))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}/rules/{rule}", tag = "devices",
    params(("id" = i64, Path), ("rule" = i64, Path)),
    responses((status = 204, description = "Deleted")))]
async fn delete_rule(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (device, rule) = path.into_inner();
    state
        .devices
        .delete_rule(caller.user_id, device, rule)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/rooms", tag = "devices",
    summary = "The rooms a device is a member of", params(("id" = i64, Path)),
    responses((status = 200, description = "`{rooms: [{id, name}]}`")))]
async fn device_rooms(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let rooms: Vec<_> = state
        .devices
        .rooms_of(caller.user_id, path.into_inner())
        .await?
        .into_iter()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

#[utoipa::path(put, path = "/api/v1/rooms/{room}/devices/{device}", tag = "devices",
    summary = "Make a device a member of a room (room inviters who operate devices)",
    params(("room" = i64, Path), ("device" = i64, Path)),
    responses((status = 204, description = "Added"),
        (status = 400, description = "Private or direct room", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn add_to_room(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room, device) = path.into_inner();
    state
        .devices
        .add_to_room(caller.user_id, room, device, client_ip(&request))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(delete, path = "/api/v1/rooms/{room}/devices/{device}", tag = "devices",
    summary = "Take a device out of a room (with its rules there)",
    params(("room" = i64, Path), ("device" = i64, Path)),
    responses((status = 204, description = "Removed")))]
async fn remove_from_room(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room, device) = path.into_inner();
    state
        .devices
        .remove_from_room(caller.user_id, room, device, client_ip(&request))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/firmware/keys", tag = "firmware",
    summary = "The public keys firmware images must be signed with", params(("tenant" = i64, Path)),
    responses((status = 200, description = "`{keys: [...]}`")))]
async fn keys(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let keys = state
        .devices
        .firmware_keys(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// The `.pub` file `conclave firmware keygen` wrote: 64 hex digits.
    #[schema(pattern = r"^[0-9a-fA-F]{64}$")]
    public_key: String,
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/firmware/keys", tag = "firmware",
    summary = "Add a firmware signing key (admins)", params(("tenant" = i64, Path)),
    request_body = NewKey,
    responses((status = 201, body = FirmwareKey),
        (status = 400, description = "Not an ed25519 public key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Below admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workspace has this key already", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn add_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    body: crate::web::Json<NewKey>,
) -> Result<HttpResponse, AppError> {
    let key = state
        .devices
        .add_firmware_key(
            caller.user_id,
            path.into_inner(),
            &body.name,
            &body.public_key,
        )
        .await?;
    Ok(HttpResponse::Created().json(key))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/firmware/keys/{key}", tag = "firmware",
    params(("tenant" = i64, Path), ("key" = i64, Path)),
    responses((status = 204, description = "Deleted")))]
async fn delete_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, key) = path.into_inner();
    state
        .devices
        .delete_firmware_key(caller.user_id, tenant, key)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/firmware", tag = "firmware",
    summary = "The workspace's firmware images", params(("tenant" = i64, Path)),
    responses((status = 200, description = "`{images: [...]}`")))]
async fn images(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let images = state
        .devices
        .images(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "images": images })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// e.g. `1.4.2`.
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    version: String,
    /// The image's ed25519 signature, 128 hex digits (`conclave firmware sign` writes it).
    #[param(pattern = r"^[0-9a-fA-F]{128}$")]
    signature: String,
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/firmware", tag = "firmware",
    summary = "Upload a signed image (operators): the body is the image's bytes",
    params(("tenant" = i64, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FirmwareImage),
        (status = 400, description = "Bad version, or the signature does not verify", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No keys yet, or the version exists", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than devices.firmware_max_bytes", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn upload(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    query: web::Query<UploadQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    // Read as a stream: the JSON/bytes extractors stop at 256 KiB, images are megabytes.
    let max = state.settings.devices.firmware_max_bytes;
    let mut data = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AppError::BadRequest(format!("The body broke off: {e}")))?;
        if data.len() + chunk.len() > max {
            return Err(AppError::PayloadTooLarge(format!(
                "Images are at most {max} bytes (devices.firmware_max_bytes)."
            )));
        }
        data.extend_from_slice(&chunk);
    }
    let image = state
        .devices
        .upload_image(
            caller.user_id,
            path.into_inner(),
            &query.version,
            &query.signature,
            data,
        )
        .await?;
    Ok(HttpResponse::Created().json(image))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/firmware/{image}", tag = "firmware",
    params(("tenant" = i64, Path), ("image" = i64, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "A rollout uses it", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn delete_image(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, image) = path.into_inner();
    state
        .devices
        .delete_image(caller.user_id, tenant, image)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/rollouts", tag = "firmware",
    summary = "Rollouts, newest first, with counts per state", params(("tenant" = i64, Path)),
    responses((status = 200, description = "`{rollouts: [...]}`")))]
async fn rollouts(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let rollouts = state
        .devices
        .rollouts(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "rollouts": rollouts })))
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/rollouts", tag = "firmware",
    summary = "Start a staged rollout (operators)", params(("tenant" = i64, Path)),
    request_body = NewRollout,
    responses((status = 201, body = Rollout),
        (status = 400, description = "Bad target, stages or thresholds", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A targeted device is in an unfinished rollout", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_rollout(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    body: crate::web::Json<NewRollout>,
) -> Result<HttpResponse, AppError> {
    let rollout = state
        .devices
        .create_rollout(caller.user_id, path.into_inner(), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(rollout))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/rollouts/{rollout}", tag = "firmware",
    summary = "A rollout with every device's state", params(("tenant" = i64, Path), ("rollout" = i64, Path)),
    responses((status = 200, body = Rollout)))]
async fn rollout(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.devices.rollout(caller.user_id, tenant, id).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/rollouts/{rollout}/{action}", tag = "firmware",
    summary = "halt, resume or rollback a rollout (operators)",
    params(("tenant" = i64, Path), ("rollout" = i64, Path), ("action" = String, Path, pattern = r"^(halt|resume|rollback)$")),
    responses((status = 200, body = Rollout),
        (status = 409, description = "Not possible in the rollout's state", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn steer_rollout(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64, String)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id, action) = path.into_inner();
    let rollout = state
        .devices
        .steer_rollout(caller.user_id, tenant, id, &action)
        .await?;
    Ok(HttpResponse::Ok().json(rollout))
}

#[utoipa::path(get, path = "/api/v1/device/firmware/{image}", tag = "firmware",
    summary = "A device downloads an offered image with its token; Range requests resume",
    params(("image" = i64, Path)),
    responses((status = 200, description = "The image"), (status = 206, description = "A range of it"),
        (status = 401, description = "No live device token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not offered to this device", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range is outside the image")))]
async fn download(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let presented = device_token(&request).ok_or_else(|| {
        AppError::Unauthenticated("Send the device token: Authorization: Bearer cnd_…".to_owned())
    })?;
    let identity = state
        .devices
        .authenticate(presented)
        .await?
        .ok_or_else(|| {
            AppError::Unauthenticated("This device token is unknown or revoked.".to_owned())
        })?;
    let image = state
        .devices
        .image_for_device(&identity, path.into_inner())
        .await?;
    let etag = format!("\"{}\"", image.sha256);
    let len = image.data.len() as u64;
    // If-Range: a range of a different image would corrupt the download; send it whole.
    let same_image = request
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let range = match header::Range::parse(&request) {
        Ok(header::Range::Bytes(specs)) if same_image && specs.len() == 1 => Some(specs[0].clone()),
        _ => None,
    };
    metrics::counter!("firmware_downloads_total", "range" => if range.is_some() { "partial" } else { "full" })
        .increment(1);
    let Some(spec) = range else {
        return Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((header::ETAG, etag))
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .body(image.data.clone()));
    };
    let Some((start, end)) = spec.to_satisfiable_range(len) else {
        return Ok(HttpResponse::RangeNotSatisfiable()
            .insert_header((header::CONTENT_RANGE, format!("bytes */{len}")))
            .finish());
    };
    let (from, to) = (
        usize::try_from(start).unwrap_or(usize::MAX),
        usize::try_from(end).unwrap_or(usize::MAX),
    );
    let body = image
        .data
        .get(from..=to)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(HttpResponse::PartialContent()
        .content_type("application/octet-stream")
        .insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")))
        .body(body))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        send_command,
        commands,
        command,
        rules,
        add_rule,
        delete_rule,
        device_rooms,
        add_to_room,
        remove_from_room,
        keys,
        add_key,
        delete_key,
        images,
        upload,
        delete_image,
        rollouts,
        create_rollout,
        rollout,
        steer_rollout,
        download
    ),
    components(schemas(
        NewCommand,
        CommandView,
        super::commands::CommandRow,
        NewRule,
        Rule,
        NewKey,
        FirmwareKey,
        FirmwareImage,
        NewRollout,
        Rollout,
        super::ota::RolloutRow,
        super::ota::Target,
        super::ota::Assignment
    ))
)]
pub struct ApiDoc;
