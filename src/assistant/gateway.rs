//! HTTP: the OpenAI-compatible API for scripts (`POST /v1/chat/completions`, `GET /v1/models`,
//! authenticated by a Conclave API token, errors in OpenAI's shape so SDKs show them), the
//! sanitized model list and usage for signed-in people, and the admin view of providers.

use std::convert::Infallible;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::service::{Ask, Generation, StartError};
use super::usage::{Payer, Source};
use super::{ChatMessage, ProviderError, Role};
use crate::auth::identity::Caller;
use crate::error::AppError;
use crate::web::{AppState, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/chat/completions").post(chat_completions))
        .service(crate::web::get("/v1/models", list_models_openai))
        .service(crate::web::get("/api/v1/assistant/models", list_models))
        .service(crate::web::get("/api/v1/me/usage", my_usage))
        .service(resource("/api/v1/admin/assistant/providers").get(provider_status))
        .service(resource("/api/v1/admin/assistant/reload").post(reload));
}

/// An error as OpenAI's API and SDKs shape it.
fn openai_error(status: StatusCode, kind: &str, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": { "message": message, "type": kind, "param": Value::Null, "code": code }
    }))
}

fn invalid(message: impl AsRef<str>) -> HttpResponse {
    openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        message.as_ref(),
    )
}

/// The token's owner, or the OpenAI-shaped 401/403.
async fn token_caller(
    state: &AppState,
    request: &HttpRequest,
    writes: bool,
) -> Result<crate::auth::api_tokens::TokenIdentity, HttpResponse> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Send a Conclave API token: Authorization: Bearer cnv_… (create one under Settings → API tokens).",
        ));
    };
    let token = crate::auth::identity::resolve_token(state, request, presented)
        .await
        .map_err(|e| match e {
            AppError::Unavailable(message) => openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                &message,
            ),
            AppError::Coded { .. } => openai_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "The API token is not valid, expired or was revoked.",
            ),
            AppError::RateLimited { retry_after_secs } => {
                let mut refused = openai_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limited",
                    "Too many unknown API tokens from this address; try again in a minute.",
                );
                if let Some(secs) = retry_after_secs {
                    refused.headers_mut().insert(
                        actix_web::http::header::RETRY_AFTER,
                        actix_web::http::header::HeaderValue::from(secs),
                    );
                }
                refused
            }
            other => {
                tracing::error!(error = %other, "token lookup failed");
                openai_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal",
                    "Something went wrong on our side.",
                )
            }
        })?;
    if writes && !token.scopes.iter().any(|s| s == "write") {
        return Err(openai_error(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "insufficient_scope",
            "This token has only the read scope; completions need a token with the write scope.",
        ));
    }
    Ok(token)
}

/// `POST /v1/chat/completions`, parsed by hand so every mistake gets OpenAI's error shape and
/// names the field.
#[derive(Debug)]
struct CompletionBody {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
}

fn parse_body(bytes: &[u8]) -> Result<CompletionBody, String> {
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(body) = body.as_object() else {
        return Err("the body must be a JSON object".to_owned());
    };
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.trim().to_owned(),
        _ => return Err("model: required, the name of a model from GET /v1/models".to_owned()),
    };
    let Some(Value::Array(raw_messages)) = body.get("messages") else {
        return Err("messages: required, a non-empty array".to_owned());
    };
    if raw_messages.is_empty() {
        return Err("messages: must not be empty".to_owned());
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (index, message) in raw_messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(format!(
                    "messages[{index}].role: {other:?} is not supported (system, developer, user, assistant)"
                ));
            }
            None => return Err(format!("messages[{index}].role: required")),
        };
        let content = match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None if role == Role::Assistant => String::new(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(piece)) => text.push_str(piece),
                        (kind, _) => {
                            return Err(format!(
                                "messages[{index}].content: only text parts are supported, got {}",
                                kind.unwrap_or("a part without a type")
                            ));
                        }
                    }
                }
                text
            }
            _ => {
                return Err(format!(
                    "messages[{index}].content: required, a string or an array of text parts"
                ));
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err("messages: at least one message must have the role user".to_owned());
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err("stream: must be true or false".to_owned()),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = match body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= 1 => Some(n),
            _ => return Err("max_tokens: must be a whole number of at least 1".to_owned()),
        },
    };
    let temperature = match body.get("temperature") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "checked to be within 0..=2"
            )]
            Some(t) if (0.0..=2.0).contains(&t) => Some(t as f32),
            _ => return Err("temperature: must be a number from 0 to 2".to_owned()),
        },
    };
    if body
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return Err("n: only 1 choice per request is supported".to_owned());
    }
    if body.get("tools").is_some_and(|t| !t.is_null()) {
        return Err("tools: tool calls are not supported by this server".to_owned());
    }
    Ok(CompletionBody {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        temperature,
    })
}

fn start_error(error: &StartError) -> HttpResponse {
    match error {
        StartError::NoModels => openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no_models",
            "No assistant models are configured on this server.",
        ),
        StartError::UnknownModel(name) => openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &format!("The model {name:?} does not exist; GET /v1/models lists the ones that do."),
        ),
        StartError::TooLong { .. } => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
            &error.to_string(),
        ),
        StartError::Unavailable(provider) => provider_error(provider),
        StartError::Quota(exceeded) => HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
            .insert_header((header::RETRY_AFTER, exceeded.retry_after_secs().to_string()))
            .json(json!({
                "error": {
                    "message": exceeded.message(),
                    "type": "insufficient_quota",
                    "param": Value::Null,
                    "code": "quota_exceeded",
                    "limit": exceeded.limit,
                    "allowed": exceeded.allowed,
                    "used": exceeded.used,
                    "plan": exceeded.plan,
                    "resets_at": exceeded.resets_at.to_rfc3339(),
                }
            })),
        StartError::Internal => openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            "The server cannot count usage right now; try again shortly.",
        ),
    }
}

fn provider_error(error: &ProviderError) -> HttpResponse {
    let (status, code) = match error {
        ProviderError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "provider_timeout"),
        ProviderError::Refused { status, .. } if *status == 429 => {
            (StatusCode::TOO_MANY_REQUESTS, "provider_rate_limited")
        }
        ProviderError::Refused { status, .. } if (400..500).contains(status) => {
            (StatusCode::BAD_REQUEST, "provider_refused")
        }
        ProviderError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable"),
        _ => (StatusCode::BAD_GATEWAY, "provider_error"),
    };
    openai_error(status, "server_error", code, &error.to_string())
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "OpenAI-compatible chat completion, for scripts and OpenAI SDKs (API token)",
    description = "OpenAI's request shape: `model`, `messages` (roles system, developer, user, assistant; text content as a string or text parts), `stream`, `stream_options.include_usage`, `max_tokens` or `max_completion_tokens`, `temperature`. Authenticate with `Authorization: Bearer <Conclave API token>` (write scope). Errors use OpenAI's shape, `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`, so SDKs show them.",
    request_body(content = Object, content_type = "application/json", example = json!({"model": "default", "messages": [{"role": "user", "content": "Hello"}], "stream": false})),
    responses(
        (status = 200, description = "A `chat.completion` object; with `stream: true`, `text/event-stream` of `chat.completion.chunk` objects ending with `data: [DONE]`", body = Object),
        (status = 400, description = "Invalid request", body = Object),
        (status = 401, description = "No or unknown API token", body = Object),
        (status = 403, description = "The token may not write", body = Object),
        (status = 404, description = "No such model", body = Object),
        (status = 422, description = "The request cannot be answered (e.g. too long for the model)", body = Object),
        (status = 429, description = "The daily quota is used up or too many requests; see Retry-After", body = Object),
        (status = 502, description = "The provider failed", body = Object),
        (status = 503, description = "No provider is available", body = Object),
        (status = 504, description = "The provider did not answer in time", body = Object)
    )
)]
async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let token = match token_caller(&state, &request, true).await {
        Ok(token) => token,
        Err(response) => return response,
    };
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid(message),
    };
    let ask = Ask {
        model: Some(body.model.clone()),
        messages: body.messages,
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        payer: Payer {
            user_id: Some(token.user_id),
            tenant_id: None,
            source: Source::Api,
        },
    };
    let generation = match state.assistant.start(ask).await {
        Ok(generation) => generation,
        Err(error) => return start_error(&error),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = chrono::Utc::now().timestamp();
    if body.stream {
        stream_answer(generation, id, created, body.include_usage)
    } else {
        whole_answer(generation, id, created).await
    }
}

async fn whole_answer(mut generation: Generation, id: String, created: i64) -> HttpResponse {
    let mut text = String::new();
    loop {
        match generation.next().await {
            Ok(Some(piece)) => text.push_str(&piece),
            Ok(None) => break,
            Err(error) => return provider_error(&error),
        }
    }
    let usage = generation.usage();
    HttpResponse::Ok().json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": generation.model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": Value::Null,
            "finish_reason": generation.finish_reason().unwrap_or("stop"),
        }],
        "usage": usage_json(usage),
    }))
}

fn usage_json(usage: super::Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
        "estimated": usage.estimated,
    })
}

fn sse(value: &Value) -> web::Bytes {
    web::Bytes::from(format!("data: {value}\n\n"))
}

/// Streams the answer as OpenAI's `chat.completion.chunk` events. The generation runs in its
/// own task, so a client that goes away is noticed at once (the channel closes) and the
/// provider call is dropped, not left running to its end.
fn stream_answer(
    mut generation: Generation,
    id: String,
    created: i64,
    include_usage: bool,
) -> HttpResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<web::Bytes>(64);
    let model = generation.model.clone();
    let usage_id = id.clone();
    // Every content chunk is the same JSON around the text: rendered once, so a token costs
    // one string escape and one copy instead of building and serializing a `Value`.
    let head = format!(
        "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{},\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":",
        json!(id),
        json!(model)
    );
    let content_head = head.clone();
    let content = move |text: &str| {
        let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        web::Bytes::from(format!(
            "{content_head}{{\"content\":{text}}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ))
    };
    let chunk = move |delta: Value, finish: Value| {
        web::Bytes::from(format!(
            "{head}{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        ))
    };
    tokio::spawn(async move {
        // The role chunk goes out with the first piece of content, in one write.
        let mut opening = Some(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        loop {
            let next = tokio::select! {
                next = generation.next() => next,
                () = tx.closed() => return, // dropping `generation` cancels and bills it
            };
            let bytes = match next {
                Ok(Some(text)) => {
                    let piece = content(&text);
                    match opening.take() {
                        Some(first) => web::Bytes::from([first, piece].concat()),
                        None => piece,
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = tx
                        .send(sse(&json!({"error": {
                            "message": error.to_string(),
                            "type": "server_error",
                            "code": "provider_error",
                        }})))
                        .await;
                    return;
                }
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        let finish = generation.finish_reason().unwrap_or("stop").to_owned();
        let mut tail: Vec<web::Bytes> = opening.take().into_iter().collect();
        tail.push(chunk(json!({}), json!(finish)));
        if include_usage {
            tail.push(sse(&json!({
                "id": usage_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": generation.model,
                "choices": [],
                "usage": usage_json(generation.usage()),
            })));
        }
        tail.push(web::Bytes::from_static(b"data: [DONE]\n\n"));
        for bytes in tail {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Already framed for streaming: compressing would hold tokens back in the encoder.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "OpenAI-compatible model list (API token)",
    responses(
        (status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \"created\", \"owned_by\", \"label\", \"tier\"}]}`", body = Object),
        (status = 401, description = "No or unknown API token", body = Object)
    )
)]
async fn list_models_openai(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    if let Err(response) = token_caller(&state, &request, false).await {
        return response;
    }
    let data: Vec<Value> = state
        .assistant
        .catalog()
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "conclave",
                "label": m.label,
                "tier": m.tier,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ModelList {
    models: Vec<super::catalog::ModelInfo>,
    /// The model used when none is picked.
    default: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/assistant/models",
    tag = "assistant",
    summary = "The models you can pick (name, label, tier)",
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "Not signed in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_models(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let catalog = state.assistant.catalog();
    HttpResponse::Ok().json(ModelList {
        models: catalog.models(),
        default: catalog.default_model().map(|m| m.alias.clone()),
    })
}

#[derive(Deserialize)]
struct UsageQuery {
    days: Option<u32>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct UsageReport {
    days: Vec<super::usage::DailyUsage>,
}

#[utoipa::path(
    get,
    path = "/api/v1/me/usage",
    tag = "assistant",
    summary = "Your assistant usage per day, model and variant",
    params(("days" = Option<u32>, Query, description = "How many days back, 1 to 366 (default 30)", minimum = 1, maximum = 366)),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "days out of range", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn my_usage(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, AppError> {
    let days = query.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(AppError::BadRequest(
            "days: must be between 1 and 366".to_owned(),
        ));
    }
    let user = caller.user_id;
    let days = state
        .db
        .run(move |conn| super::usage::daily_of(conn, user, days).map_err(AppError::from))
        .await?;
    Ok(HttpResponse::Ok().json(UsageReport { days }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ProviderReport {
    providers: Vec<super::service::ProviderStatus>,
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/assistant/providers",
    tag = "assistant",
    summary = "Each LLM provider's circuit and last health check (deployment admins)",
    responses(
        (status = 200, body = ProviderReport),
        (status = 403, description = "Not an admin of the default workspace", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn provider_status(
    state: web::Data<AppState>,
    staff: crate::admin::Staff,
) -> Result<HttpResponse, AppError> {
    staff.require(crate::admin::Action::View)?;
    Ok(HttpResponse::Ok().json(ProviderReport {
        providers: state.assistant.providers(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/assistant/reload",
    tag = "assistant",
    summary = "Re-read the providers and models from the configuration (as SIGHUP does)",
    responses(
        (status = 200, description = "Reloaded; answers in flight continue"),
        (status = 403, description = "Not an admin of the default workspace", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The configuration has errors; nothing changed", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn reload(
    state: web::Data<AppState>,
    staff: crate::admin::Staff,
    request: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let models = reload_audited(&state, &staff, &request).await?;
    Ok(HttpResponse::Ok().json(json!({"reloaded": true, "models": models})))
}

/// Reloads the providers and models from the configuration (as SIGHUP does), audited with
/// the models before and after; a broken configuration changes nothing (422). The API and the
/// admin page's button both call this.
pub(crate) async fn reload_audited(
    state: &AppState,
    staff: &crate::admin::Staff,
    request: &HttpRequest,
) -> Result<usize, AppError> {
    staff.require(crate::admin::Action::Operate)?;
    let before: Vec<String> = state
        .assistant
        .catalog()
        .models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let assistant = state.assistant.clone();
    let models = web::block(move || assistant.reload())
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("reload task failed: {e}")))?
        .map_err(|e| AppError::Coded {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_config",
            message: format!("The configuration has errors; nothing changed: {e}"),
            retry_after_secs: None,
        })?;
    crate::audit::record_now(
        &state.db,
        crate::audit::AuditEvent {
            event: "assistant.reloaded",
            actor_user_id: Some(staff.user_id()),
            ip: crate::web::client_ip(request),
            details: json!({
                        "models": models,
                        "before": { "models": before },
                        "after": {
                            "models": state.assistant.catalog().models().into_iter().map(|m| m.name).collect::<Vec<_>>()
                        },
                    }),
            ..crate::audit::AuditEvent::default()
        },
    )
    .await?;
    Ok(models)
}

/// This module's part of the OpenAPI document (the `/v1` routes follow OpenAI's own spec).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    chat_completions,
    list_models_openai,
    list_models,
    my_usage,
    provider_status,
    reload
))]
pub struct ApiDoc;
