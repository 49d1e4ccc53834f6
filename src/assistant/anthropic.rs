//! Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`), streamed as
//! named server-sent events: `message_start` (input tokens), `content_block_delta` (text),
//! `message_delta` (stop reason, output tokens), `message_stop`, `ping`, `error`.
//!
//! The API takes the system prompt apart from the turns, and wants turns that alternate and
//! start with the user; [`shape`] makes any conversation fit that.

use std::collections::VecDeque;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::sse::{Parser, SseDecoder};
use super::{
    ChatMessage, CompletionRequest, Delta, DeltaStream, LlmProvider, ProviderError, Role, refusal,
};

const API_VERSION: &str = "2023-06-01";

pub struct AnthropicProvider {
    client: reqwest::Client,
    /// e.g. `https://api.anthropic.com`, without a trailing slash or `/v1`.
    base_url: String,
    api_key: Option<SecretString>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl AnthropicProvider {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<SecretString>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            client,
            base_url: base.strip_suffix("/v1").unwrap_or(base).to_owned(),
            api_key,
            connect_timeout,
            idle_timeout,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .headers(crate::telemetry::propagation_headers())
            .header("anthropic-version", API_VERSION);
        match &self.api_key {
            Some(key) => request.header("x-api-key", key.expose_secret()),
            None => request,
        }
    }
}

/// The system prompt (all system turns joined) and turns that alternate, starting with the
/// user: consecutive turns of one role are merged.
pub fn shape(messages: &[ChatMessage]) -> (String, Vec<ChatMessage>) {
    let mut system = Vec::new();
    let mut turns: Vec<ChatMessage> = Vec::new();
    for message in messages {
        if message.role == Role::System {
            system.push(message.content.as_str());
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == message.role => {
                last.content.push_str("\n\n");
                last.content.push_str(&message.content);
            }
            _ => turns.push(message.clone()),
        }
    }
    if turns.first().is_some_and(|t| t.role == Role::Assistant) {
        turns.insert(0, ChatMessage::new(Role::User, "(conversation continues)"));
    }
    (system.join("\n\n"), turns)
}

#[async_trait::async_trait]
impl LlmProvider for AnthropicProvider {
    async fn stream(&self, request: CompletionRequest) -> Result<DeltaStream, ProviderError> {
        let (system, turns) = shape(&request.messages);
        let mut body = json!({
            "model": request.model,
            "messages": turns,
            "max_tokens": request.max_tokens,
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system);
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let response = super::send(
            self.request(reqwest::Method::POST, "/v1/messages")
                .json(&body),
            self.connect_timeout,
        )
        .await?;
        Ok(super::sse::drive(
            response,
            self.idle_timeout,
            EventParser::default(),
        ))
    }

    async fn check(&self) -> Result<(), ProviderError> {
        let response = self
            .request(reqwest::Method::GET, "/v1/models")
            .timeout(self.connect_timeout)
            .send()
            .await
            .map_err(|e| super::transport_error(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(refusal(response).await)
        }
    }
}

#[derive(Default)]
pub(crate) struct EventParser {
    events: SseDecoder,
    prompt: Option<u32>,
    completion: Option<u32>,
    stop_reason: Option<String>,
    stopped: bool,
}

fn tokens(value: Option<&Value>) -> Option<u32> {
    value
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

impl EventParser {
    fn event(&mut self, name: &str, data: &str, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if self.stopped {
            return;
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!(
                    "a {name:?} event is not JSON ({e})"
                ))));
                return;
            }
        };
        // The event name is repeated in `type`; servers that omit `event:` still work.
        let kind = value.get("type").and_then(Value::as_str).unwrap_or(name);
        match kind {
            "message_start" => {
                self.prompt = tokens(value.pointer("/message/usage/input_tokens"));
                self.completion = tokens(value.pointer("/message/usage/output_tokens"));
            }
            "content_block_delta" => {
                if let Some(text) = value.pointer("/delta/text").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    out.push_back(Ok(Delta::Text(text.to_owned())));
                }
            }
            "message_delta" => {
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(count) = tokens(value.pointer("/usage/output_tokens")) {
                    self.completion = Some(count);
                }
                if let Some(count) = tokens(value.pointer("/usage/input_tokens")) {
                    self.prompt = Some(count);
                }
            }
            "message_stop" => self.stop(out),
            "error" => {
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                out.push_back(Err(ProviderError::Refused {
                    status: 502,
                    message: message.chars().take(300).collect(),
                }));
            }
            _ => {} // ping, content_block_start/stop, and whatever comes later
        }
    }

    fn stop(&mut self, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        self.stopped = true;
        if let (Some(prompt), Some(completion)) = (self.prompt, self.completion) {
            out.push_back(Ok(Delta::Usage { prompt, completion }));
        }
        let reason = match self.stop_reason.as_deref() {
            Some("max_tokens") => "length",
            Some("end_turn" | "stop_sequence") | None => "stop",
            Some(other) => other,
        };
        out.push_back(Ok(Delta::Finish {
            reason: reason.to_owned(),
        }));
    }
}

impl Parser for EventParser {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<Delta, ProviderError>>) {
        for event in self.events.feed(bytes) {
            self.event(&event.name, &event.data, out);
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if let Some(event) = self.events.finish() {
            self.event(&event.name, &event.data, out);
        }
        if !self.stopped {
            // A stop reason without `message_stop` is a complete answer whose last event was
            // lost; without either, the answer was cut off.
            if self.stop_reason.is_some() {
                self.stop(out);
            } else {
                out.push_back(Err(ProviderError::Incomplete));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_text_usage_and_a_finish() {
        let input = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut parser = EventParser::default();
        let mut out = VecDeque::new();
        for chunk in input.as_bytes().chunks(11) {
            parser.feed(chunk, &mut out);
        }
        parser.finish(&mut out);
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(
            out,
            vec![
                Ok(Delta::Text("Hello".into())),
                Ok(Delta::Usage {
                    prompt: 25,
                    completion: 15
                }),
                Ok(Delta::Finish {
                    reason: "length".into()
                }),
            ]
        );
    }

    #[test]
    fn turns_alternate_and_start_with_the_user() {
        let (system, turns) = shape(&[
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::Assistant, "Hi!"),
            ChatMessage::new(Role::User, "a"),
            ChatMessage::new(Role::User, "b"),
        ]);
        assert_eq!(system, "Be brief.");
        let roles: Vec<Role> = turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
        assert_eq!(turns[2].content, "a\n\nb");
    }
}
