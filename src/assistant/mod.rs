//! The assistant: LLM providers behind [`LlmProvider`], the configured models people pick
//! from and how each routes to provider models, provider health with a circuit breaker, usage
//! records, and the OpenAI-compatible API for scripts (`/v1/chat/completions`, `/v1/models`).
//!
//! - Providers ([`openai`], [`ollama`], [`anthropic`]) turn one request into a stream of
//!   [`Delta`]s. They never buffer an answer: a token the provider sends is a token the caller
//!   gets. Dropping the stream closes the provider connection (that is cancellation).
//! - The [`catalog::Catalog`] is built from `[assistant]` settings and swapped whole on reload
//!   (SIGHUP or the admin API); a stream in flight keeps the provider it started with, so a
//!   reload never cuts an answer.
//! - [`service::Assistant`] is what other modules use: pick a route (weights, breaker, fallback),
//!   fit the conversation into the model's window, stream, and record usage when it ends,
//!   however it ends.

pub mod admin;
pub mod anthropic;
pub mod artifacts;
pub mod catalog;
pub mod chat_api;
pub mod chats;
pub mod gateway;
pub mod guests;
pub mod health;
pub mod ollama;
pub mod openai;
pub mod pages;
pub mod prompt;
pub mod replies;
pub mod service;
pub mod sse;
pub mod usage;

use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub use catalog::Catalog;
pub use service::Assistant;

/// Who said a turn of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// One call to a provider model.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The provider's own model name (not the alias).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

/// Tokens a call used. `estimated` when the provider did not say and we counted ourselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub estimated: bool,
}

/// What a provider stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The next piece of the answer.
    Text(String),
    /// What the provider reports the call cost (may come before or after `Finish`).
    Usage { prompt: u32, completion: u32 },
    /// The answer is complete; `reason` as the provider gave it (`stop`, `length`, …).
    Finish { reason: String },
}

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<Delta, ProviderError>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Could not connect, or the connection broke.
    #[error("the provider cannot be reached: {0}")]
    Unreachable(String),
    #[error("the provider did not answer in time ({0})")]
    Timeout(&'static str),
    /// The provider answered with an error status.
    #[error("the provider refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The provider sent something that is not its protocol.
    #[error("the provider sent a malformed answer: {0}")]
    Malformed(String),
    /// The stream ended before the provider said the answer was complete.
    #[error("the provider's answer was cut off")]
    Incomplete,
}

impl ProviderError {
    /// Whether the failure says something about the provider's health (a 4xx about our
    /// request does not, except throttling).
    pub fn counts_against_provider(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 401,
            _ => true,
        }
    }
}

/// A provider of chat completions.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync {
    /// Starts a streamed completion. Errors before the first byte come back here; errors
    /// after it come through the stream.
    async fn stream(&self, request: CompletionRequest) -> Result<DeltaStream, ProviderError>;

    /// A cheap call that says whether the provider answers (its model list).
    async fn check(&self) -> Result<(), ProviderError>;
}

/// About four characters a token for the languages and tokenizers people use most; used only
/// when a provider reports no usage, and such usage is marked estimated.
pub fn estimate_tokens(text: &str) -> u32 {
    tokens_for_chars(u32::try_from(text.chars().count()).unwrap_or(u32::MAX))
}

/// [`estimate_tokens`] from a character count (a stream counts as it goes).
pub fn tokens_for_chars(chars: u32) -> u32 {
    chars.div_ceil(4)
}

/// Tokens a prompt takes, estimated: the text plus a few tokens of framing per message.
pub fn estimate_prompt_tokens(messages: &[ChatMessage]) -> u32 {
    messages
        .iter()
        .map(|m| estimate_tokens(&m.content).saturating_add(4))
        .fold(2, u32::saturating_add)
}

/// A shared HTTP client for providers: connection pooling, the connect timeout of the provider
/// settings applied per request.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("conclave/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        // A provider's URL is configured; a redirect elsewhere (a captive portal, a hijacked
        // DNS name) is an error, not a place to send prompts to.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Sends a streamed completion request: at most `timeout` to connect and get the answer's
/// headers; an error status is the provider's refusal, with its reason.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: std::time::Duration,
) -> Result<reqwest::Response, ProviderError> {
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| ProviderError::Timeout("connect"))?
        .map_err(|e| transport_error(&e))?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(refusal(response).await)
    }
}

/// The body of a failed answer, shortened for error messages (providers may send pages).
pub(crate) async fn refusal(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or(text);
    ProviderError::Refused {
        status,
        message: message.chars().take(300).collect(),
    }
}

pub(crate) fn transport_error(error: &reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout("connect")
    } else {
        // reqwest's Display names the URL; the chain says why.
        let mut why = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            why = format!("{why}: {cause}");
            source = cause.source();
        }
        ProviderError::Unreachable(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_round_up_and_count_characters_not_bytes() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééééé"), 2);
        let prompt = [ChatMessage::new(Role::User, "abcd")];
        assert_eq!(estimate_prompt_tokens(&prompt), 7);
    }
}
