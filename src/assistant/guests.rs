//! Guest mode (`assistant.guests_enabled`, off by default): visitors without an account talk
//! to the assistant at `/guest`. A visitor is a random id in a cookie — stable across visits,
//! never derived from their address — and their conversation is ephemeral: kept in this
//! node's memory for an hour of inactivity, never written anywhere. A strict quota applies:
//! messages per guest per day, shorter answers, and a cap on guest messages per minute for
//! the whole server (cookies are free to throw away; the server's capacity is not).
//!
//! Answers stream over the HTTP response (`POST /api/v1/guest/messages`, server-sent events):
//! guests have no session, so the realtime socket is not theirs.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use chrono::{NaiveDate, Utc};
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::json;

use super::service::Ask;
use super::usage::{Payer, Source};
use super::{ChatMessage, Role};
use crate::error::AppError;
use crate::settings::AssistantSettings;
use crate::web::pages::{Page, html};
use crate::web::{AppState, get, resource};

const COOKIE: &str = "conclave_guest";
/// Turns a guest conversation keeps (older ones are forgotten).
const KEEP_TURNS: usize = 40;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/guest", guest_page))
        .service(resource("/guest/messages").post(send_form))
        .service(resource("/guest/reset").post(reset_form))
        .service(resource("/api/v1/guest/messages").post(send_streamed));
}

#[derive(Default)]
struct Conversation {
    messages: Vec<ChatMessage>,
    /// (UTC day, messages sent that day).
    sent: Option<(NaiveDate, u32)>,
}

/// The guests of this node.
#[derive(Clone)]
pub struct Guests {
    conversations: moka::sync::Cache<String, Arc<Mutex<Conversation>>>,
    server_limit: Arc<governor::DefaultDirectRateLimiter>,
}

impl Guests {
    pub fn new(settings: &AssistantSettings) -> Self {
        let per_minute =
            NonZeroU32::new(settings.guest_messages_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            conversations: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(3_600))
                .build(),
            server_limit: Arc::new(governor::RateLimiter::direct(governor::Quota::per_minute(
                per_minute,
            ))),
        }
    }

    fn conversation(&self, guest: &str) -> Arc<Mutex<Conversation>> {
        self.conversations.get_with(guest.to_owned(), || {
            Arc::new(Mutex::new(Conversation::default()))
        })
    }
}

fn lock(conversation: &Mutex<Conversation>) -> std::sync::MutexGuard<'_, Conversation> {
    conversation
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn enabled(state: &AppState) -> Result<(), AppError> {
    if state.settings.assistant.guests_enabled {
        Ok(())
    } else {
        Err(AppError::NotFound(
            "Guest mode is off on this server; sign in to use the assistant.".to_owned(),
        ))
    }
}

/// The guest id of the request, or a new one (with the cookie to set).
fn guest_of(state: &AppState, request: &HttpRequest) -> (String, Option<Cookie<'static>>) {
    if let Some(cookie) = request.cookie(COOKIE)
        && cookie.value().len() == 22
        && cookie
            .value()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return (cookie.value().to_owned(), None);
    }
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let cookie = Cookie::build(COOKIE, id.clone())
        .path("/")
        .http_only(true)
        .secure(crate::auth::identity::secure_cookies(state))
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::days(365))
        .finish();
    (id, Some(cookie))
}

fn remaining(settings: &AssistantSettings, conversation: &Conversation) -> u32 {
    let today = Utc::now().date_naive();
    let used = match conversation.sent {
        Some((day, count)) if day == today => count,
        _ => 0,
    };
    settings.guest_messages_per_day.saturating_sub(used)
}

fn until_tomorrow() -> u64 {
    let now = Utc::now();
    let tomorrow = (now.date_naive() + chrono::TimeDelta::days(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    tomorrow.map_or(3_600, |t| (t - now).num_seconds().max(1).unsigned_abs())
}

/// Takes one message of the guest's quota and the server's, and adds the message to the
/// conversation; answers the conversation to send.
fn admit(
    state: &AppState,
    guests: &Guests,
    guest: &str,
    body: &str,
) -> Result<(Vec<ChatMessage>, Arc<Mutex<Conversation>>), AppError> {
    let settings = &state.settings.assistant;
    let body = body.trim();
    if body.is_empty() {
        return Err(AppError::BadRequest("body: write a message".to_owned()));
    }
    if body.len() > settings.guest_max_message_bytes {
        return Err(AppError::PayloadTooLarge(format!(
            "body: guests may send at most {} bytes",
            settings.guest_max_message_bytes
        )));
    }
    let conversation = guests.conversation(guest);
    let mut held = lock(&conversation);
    if remaining(settings, &held) == 0 {
        return Err(AppError::Coded {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "guest_quota",
            message: format!(
                "Guests may send {} messages a day; sign up for more, or come back tomorrow.",
                settings.guest_messages_per_day
            ),
            retry_after_secs: Some(until_tomorrow()),
        });
    }
    if guests.server_limit.check().is_err() {
        return Err(AppError::Coded {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "guests_busy",
            message: "Many guests are talking to the assistant right now; try again in a minute."
                .to_owned(),
            retry_after_secs: Some(60),
        });
    }
    let today = Utc::now().date_naive();
    held.sent = Some(match held.sent {
        Some((day, count)) if day == today => (day, count + 1),
        _ => (today, 1),
    });
    held.messages.push(ChatMessage::new(
        Role::User,
        super::prompt::strip_control(body),
    ));
    let excess = held.messages.len().saturating_sub(KEEP_TURNS);
    held.messages.drain(..excess);
    let mut messages = vec![ChatMessage::new(
        Role::System,
        format!(
            "{}\n\nYou are talking with a guest visitor without an account.",
            settings.system_prompt
        ),
    )];
    messages.extend(held.messages.iter().cloned());
    drop(held);
    Ok((messages, conversation))
}

fn ask(settings: &AssistantSettings, messages: Vec<ChatMessage>) -> Ask {
    Ask {
        model: (!settings.guest_model.is_empty()).then(|| settings.guest_model.clone()),
        messages,
        max_tokens: Some(settings.guest_max_output_tokens),
        temperature: None,
        payer: Payer {
            user_id: None,
            tenant_id: None,
            source: Source::Guest,
        },
    }
}

fn keep_answer(conversation: &Mutex<Conversation>, text: String) {
    if !text.trim().is_empty() {
        lock(conversation)
            .messages
            .push(ChatMessage::new(Role::Assistant, text));
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct GuestMessage {
    body: String,
}

/// `POST /api/v1/guest/messages`: the answer as server-sent events — `{"text": …}` pieces,
/// then `{"done": true, "state": "completed"|"failed", "remaining": n}`.
#[utoipa::path(
    post,
    path = "/api/v1/guest/messages",
    tag = "assistant",
    summary = "Guest mode: ask the assistant without an account (the answer as server-sent events)",
    request_body = GuestMessage,
    responses(
        (status = 200, description = "text/event-stream: text pieces, then done with state and remaining"),
        (status = 400, description = "Empty message", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Guest mode is off", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Message too long", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Quota used up (guest_quota) or guests busy (guests_busy); see Retry-After", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn send_streamed(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: crate::web::Json<GuestMessage>,
) -> Result<HttpResponse, AppError> {
    enabled(&state)?;
    let (guest, cookie) = guest_of(&state, &request);
    let (messages, conversation) = admit(&state, &state.guests, &guest, &body.body)?;
    let settings = state.settings.assistant.clone();
    let left = remaining(&settings, &lock(&conversation));
    let generation = state.assistant.start(ask(&settings, messages)).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<web::Bytes>(64);
    let event = |value: serde_json::Value| web::Bytes::from(format!("data: {value}\n\n"));
    tokio::spawn(async move {
        let mut generation = match generation {
            Ok(generation) => generation,
            Err(error) => {
                let _ = tx
                    .send(event(json!({"done": true, "state": "failed", "error": error.to_string(), "remaining": left})))
                    .await;
                return;
            }
        };
        let mut text = String::new();
        let state = loop {
            let next = tokio::select! {
                next = generation.next() => next,
                () = tx.closed() => break "cancelled",
            };
            match next {
                Ok(Some(piece)) => {
                    text.push_str(&piece);
                    if tx.send(event(json!({ "text": piece }))).await.is_err() {
                        break "cancelled";
                    }
                }
                Ok(None) => break "completed",
                Err(error) => {
                    let _ = tx.send(event(json!({"error": error.to_string()}))).await;
                    break "failed";
                }
            }
        };
        drop(generation);
        keep_answer(&conversation, text);
        let _ = tx
            .send(event(
                json!({"done": true, "state": state, "remaining": left}),
            ))
            .await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_ENCODING, "identity"));
    if let Some(cookie) = cookie {
        response.cookie(cookie);
    }
    Ok(response.streaming(body))
}

#[derive(Deserialize)]
struct NoticeQuery {
    error: Option<String>,
}

async fn guest_page(
    state: web::Data<AppState>,
    page: Page,
    request: HttpRequest,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, AppError> {
    enabled(&state)?;
    if page.identity.is_some() {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/assistant"))
            .finish());
    }
    let (guest, cookie) = guest_of(&state, &request);
    let conversation = state.guests.conversation(&guest);
    let (messages, left) = {
        let held = lock(&conversation);
        let messages: Vec<_> = held
            .messages
            .iter()
            .map(|m| {
                json!({
                    "assistant": m.role == Role::Assistant,
                    "html": crate::chat::markdown::render(&m.content),
                })
            })
            .collect();
        (messages, remaining(&state.settings.assistant, &held))
    };
    let mut context = page.context(&state);
    context.insert("messages", &messages);
    context.insert("remaining", &left);
    context.insert("per_day", &state.settings.assistant.guest_messages_per_day);
    context.insert(
        "max_bytes",
        &state.settings.assistant.guest_max_message_bytes,
    );
    context.insert("available", &!state.assistant.catalog().is_empty());
    if let Some(error) = &query.error {
        context.insert("error", error);
    }
    let mut response = html(&state, "assistant/guest.html", &context, StatusCode::OK)?;
    if let Some(cookie) = cookie {
        response
            .add_cookie(&cookie)
            .map_err(|e| AppError::internal(anyhow::anyhow!("{e}")))?;
    }
    Ok(response)
}

#[derive(Deserialize)]
struct SendForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    body: String,
}

/// Without JavaScript: waits for the whole answer, then shows the page again.
async fn send_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    form: web::Form<SendForm>,
) -> Result<HttpResponse, AppError> {
    enabled(&state)?;
    let (guest, cookie) = guest_of(&state, &request);
    let outcome = async {
        let (messages, conversation) = admit(&state, &state.guests, &guest, &form.body)?;
        let mut generation = state
            .assistant
            .start(ask(&state.settings.assistant, messages))
            .await
            .map_err(|e| AppError::Unavailable(e.to_string()))?;
        let mut text = String::new();
        while let Some(piece) = generation
            .next()
            .await
            .map_err(|e| AppError::Unavailable(e.to_string()))?
        {
            text.push_str(&piece);
        }
        keep_answer(&conversation, text);
        Ok::<_, AppError>(())
    }
    .await;
    let location = match outcome {
        Ok(()) => "/guest#compose".to_owned(),
        Err(
            error @ (AppError::BadRequest(_)
            | AppError::PayloadTooLarge(_)
            | AppError::Coded { .. }
            | AppError::Unavailable(_)),
        ) => {
            let message: String =
                url::form_urlencoded::byte_serialize(error.public_detail().as_bytes()).collect();
            format!("/guest?error={message}")
        }
        Err(other) => return Err(other),
    };
    let mut response = HttpResponse::SeeOther();
    response.insert_header((header::LOCATION, location));
    if let Some(cookie) = cookie {
        response.cookie(cookie);
    }
    Ok(response.finish())
}

async fn reset_form(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, AppError> {
    enabled(&state)?;
    let (guest, _) = guest_of(&state, &request);
    // The quota stays: starting over is not a new day.
    lock(&state.guests.conversation(&guest)).messages.clear();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/guest"))
        .finish())
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(send_streamed))]
pub struct ApiDoc;
