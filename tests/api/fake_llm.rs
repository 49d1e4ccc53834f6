//! A local fake LLM server speaking the three provider protocols (OpenAI chat completions,
//! Ollama's `/api/chat`, Anthropic Messages) with realistic streams — CRLF line endings,
//! keep-alive comments, events split across writes — and broken ones, chosen by model name:
//!
//! - `echo`: answers "You said: <last user message>", word by word, with usage when asked;
//! - `quiet`: the same without usage and without `[DONE]` (but with a finish reason);
//! - `cut`: two words, then the connection ends; `malformed`: a word, then a chunk that is
//!   not JSON; `broken`: HTTP 500; `slow`: 20 words, one per 100 ms; `stall`: a word, then
//!   silence for 30 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Seen {
    /// Requests per model name.
    pub calls: Mutex<HashMap<String, usize>>,
    /// The last request body per model name.
    pub bodies: Mutex<HashMap<String, Value>>,
    /// Every request body, in order.
    pub all: Mutex<Vec<Value>>,
    /// Streams whose client went away before the end.
    pub abandoned: AtomicUsize,
    /// Answer everything with 500/503 (a provider that is down).
    pub down: AtomicBool,
}

impl Seen {
    pub fn calls(&self, model: &str) -> usize {
        self.calls.lock().unwrap().get(model).copied().unwrap_or(0)
    }

    /// The `n`th request of all (0 is the first).
    pub fn nth(&self, n: usize) -> Value {
        self.all
            .lock()
            .unwrap()
            .get(n)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn body(&self, model: &str) -> Value {
        self.bodies
            .lock()
            .unwrap()
            .get(model)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

pub struct FakeLlm {
    pub url: String,
    pub seen: Arc<Seen>,
    _server: actix_web::dev::ServerHandle,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let data = web::Data::from(seen.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(openai))
                .route("/v1/models", web::get().to(models))
                .route("/api/chat", web::post().to(ollama))
                .route("/api/tags", web::get().to(models))
                .route("/v1/messages", web::post().to(anthropic))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            seen,
            _server: handle,
        }
    }
}

async fn models(seen: web::Data<Seen>) -> HttpResponse {
    if seen.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": [{"id": "echo"}]}))
}

fn note(seen: &Seen, body: &Value) -> String {
    let model = body["model"].as_str().unwrap_or("").to_owned();
    *seen.calls.lock().unwrap().entry(model.clone()).or_default() += 1;
    seen.bodies
        .lock()
        .unwrap()
        .insert(model.clone(), body.clone());
    seen.all.lock().unwrap().push(body.clone());
    model
}

fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        out.push(if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        });
    }
    out
}

/// Counts a stream as abandoned when it is dropped before its last piece was taken.
struct Watched {
    pieces: std::vec::IntoIter<(Duration, String)>,
    seen: Arc<Seen>,
    finished: bool,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.finished {
            self.seen.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A streamed body: each piece after its delay, as its own write.
fn streamed(seen: &web::Data<Seen>, pieces: Vec<(Duration, String)>, kind: &str) -> HttpResponse {
    let watched = Watched {
        pieces: pieces.into_iter(),
        seen: seen.clone().into_inner(),
        finished: false,
    };
    let body = futures_util::stream::unfold(watched, |mut watched| async move {
        let (delay, piece) = watched.pieces.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if watched.pieces.len() == 0 {
            watched.finished = true;
        }
        Some((
            Ok::<_, std::convert::Infallible>(web::Bytes::from(piece)),
            watched,
        ))
    });
    HttpResponse::Ok().content_type(kind).streaming(body)
}

/// Splits `event` in three writes, so parsers see JSON cut in the middle.
fn in_pieces(event: String) -> Vec<(Duration, String)> {
    let chars: Vec<char> = event.chars().collect();
    let (a, b) = (chars.len() / 3, 2 * chars.len() / 3);
    [&chars[..a], &chars[a..b], &chars[b..]]
        .into_iter()
        .filter(|part| !part.is_empty())
        .map(|part| (Duration::ZERO, part.iter().collect()))
        .collect()
}

async fn openai(seen: web::Data<Seen>, body: web::Json<Value>) -> HttpResponse {
    let model = note(&seen, &body);
    if seen.down.load(Ordering::SeqCst) || model == "broken" {
        return HttpResponse::InternalServerError()
            .json(json!({"error": {"message": "model exploded", "type": "server_error"}}));
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\r\n\r\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                   "usage": null})
        )
    };
    let reply = format!("You said: {}", last_user(&body));
    let mut pieces = in_pieces(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    pieces.push((Duration::ZERO, ": keep-alive\r\n\r\n".to_owned()));
    let (list, delay, limit) = match model.as_str() {
        "slow" => (
            (1..=20).map(|i| format!("w{i} ")).collect(),
            Duration::from_millis(100),
            usize::MAX,
        ),
        "cut" => (words(&reply), Duration::ZERO, 2),
        "malformed" | "stall" | "flood" => (words(&reply), Duration::ZERO, 1),
        _ => (words(&reply), Duration::ZERO, usize::MAX),
    };
    let sent: Vec<String> = list.into_iter().take(limit).collect();
    for word in &sent {
        let mut event = in_pieces(chunk(json!({"content": word}), Value::Null));
        event[0].0 = delay;
        pieces.extend(event);
    }
    match model.as_str() {
        "cut" => return streamed(&seen, pieces, "text/event-stream"),
        "malformed" => {
            pieces.push((
                Duration::ZERO,
                "data: {\"choices\": [oops\r\n\r\n".to_owned(),
            ));
            return streamed(&seen, pieces, "text/event-stream");
        }
        "stall" => {
            pieces.push((Duration::from_secs(30), ": too late\n\n".to_owned()));
            return streamed(&seen, pieces, "text/event-stream");
        }
        "flood" => {
            // An event that never ends: 6 MiB of one line.
            pieces.push((Duration::ZERO, "data: ".to_owned()));
            for _ in 0..96 {
                pieces.push((Duration::ZERO, "x".repeat(64 * 1024)));
            }
            return streamed(&seen, pieces, "text/event-stream");
        }
        _ => {}
    }
    pieces.extend(in_pieces(chunk(json!({}), json!("stop"))));
    let wants_usage = body["stream_options"]["include_usage"] == true;
    if model != "quiet" {
        if wants_usage {
            let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": sent.len(), "total_tokens": 11 + sent.len()}});
            pieces.push((Duration::ZERO, format!("data: {usage}\r\n\r\n")));
        }
        pieces.push((Duration::ZERO, "data: [DONE]\r\n\r\n".to_owned()));
    }
    streamed(&seen, pieces, "text/event-stream")
}

async fn ollama(seen: web::Data<Seen>, body: web::Json<Value>) -> HttpResponse {
    note(&seen, &body);
    if seen.down.load(Ordering::SeqCst) {
        return HttpResponse::InternalServerError().json(json!({"error": "down"}));
    }
    let reply = format!("You said: {}", last_user(&body));
    let sent = words(&reply);
    let mut pieces = Vec::new();
    for word in &sent {
        let line = json!({"model": body["model"], "message": {"role": "assistant", "content": word}, "done": false});
        pieces.extend(in_pieces(format!("{line}\n")));
    }
    let last = json!({"model": body["model"], "message": {"role": "assistant", "content": ""},
        "done": true, "done_reason": "stop", "prompt_eval_count": 21, "eval_count": sent.len()});
    pieces.push((Duration::ZERO, format!("{last}\n")));
    streamed(&seen, pieces, "application/x-ndjson")
}

async fn anthropic(
    seen: web::Data<Seen>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    if key != Some("sk-ant-test") || request.headers().get("anthropic-version").is_none() {
        return HttpResponse::Unauthorized().json(json!({"type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"}}));
    }
    note(&seen, &body);
    let reply = format!("You said: {}", last_user(&body));
    let sent = words(&reply);
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut pieces = in_pieces(event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 31, "output_tokens": 1}}}),
    ));
    pieces.push((Duration::ZERO, event("ping", json!({"type": "ping"}))));
    for word in &sent {
        pieces.extend(in_pieces(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
        )));
    }
    pieces.push((
        Duration::ZERO,
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": sent.len()}}),
        ),
    ));
    pieces.push((
        Duration::ZERO,
        event("message_stop", json!({"type": "message_stop"})),
    ));
    streamed(&seen, pieces, "text/event-stream")
}
