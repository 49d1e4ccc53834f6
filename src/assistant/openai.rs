//! OpenAI chat completions, streamed: OpenAI itself and everything that speaks its API (vLLM,
//! llama.cpp's server, LiteLLM, Ollama's `/v1`, LM Studio, …) at a configurable base URL.

use std::collections::VecDeque;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::sse::{Parser, SseDecoder};
use super::{CompletionRequest, Delta, DeltaStream, LlmProvider, ProviderError, refusal};

pub struct OpenAiProvider {
    client: reqwest::Client,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    base_url: String,
    api_key: Option<SecretString>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl OpenAiProvider {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<SecretString>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            connect_timeout,
            idle_timeout,
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorize(self.client.post(format!("{}{path}", self.base_url)))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.headers(crate::telemetry::propagation_headers());
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose_secret()),
            None => request,
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiProvider {
    async fn stream(&self, request: CompletionRequest) -> Result<DeltaStream, ProviderError> {
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": request.max_tokens,
        });
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let response = super::send(
            self.post("/chat/completions")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .json(&body),
            self.connect_timeout,
        )
        .await?;
        Ok(super::sse::drive(
            response,
            self.idle_timeout,
            ChunkParser::default(),
        ))
    }

    async fn check(&self) -> Result<(), ProviderError> {
        let response = self
            .authorize(self.client.get(format!("{}/models", self.base_url)))
            .timeout(self.connect_timeout)
            .send()
            .await
            .map_err(|e| super::transport_error(&e))?;
        // Some compatible servers (mock servers, bare llama.cpp builds) have no model list:
        // an answer at all still says the server is up.
        let status = response.status();
        if status.is_success()
            || status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
        {
            Ok(())
        } else {
            Err(refusal(response).await)
        }
    }
}

/// The parts of a `chat.completion.chunk` we read, borrowed from the event where possible:
/// a typed parse of only these fields is several times cheaper than a `Value` of the whole.
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    delta: Option<ChoiceDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChoiceDelta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// `chat.completion.chunk` events → deltas.
#[derive(Default)]
pub(crate) struct ChunkParser {
    events: SseDecoder,
    finished: bool,
    done: bool,
}

impl ChunkParser {
    fn event(&mut self, data: &str, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: Chunk<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!(
                    "a chunk is not a chat.completion.chunk ({e})"
                ))));
                return;
            }
        };
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            out.push_back(Err(ProviderError::Refused {
                status: 502,
                message: message.chars().take(300).collect(),
            }));
            return;
        }
        for choice in chunk.choices {
            // Only the first choice: we never ask for `n > 1`.
            if choice.index != 0 {
                continue;
            }
            if let Some(text) = choice.delta.and_then(|d| d.content)
                && !text.is_empty()
            {
                out.push_back(Ok(Delta::Text(text.into_owned())));
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push_back(Ok(Delta::Finish {
                    reason: reason.into_owned(),
                }));
            }
        }
        if let Some(usage) = chunk.usage {
            let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            out.push_back(Ok(Delta::Usage {
                prompt: count(usage.prompt_tokens),
                completion: count(usage.completion_tokens),
            }));
        }
    }
}

impl Parser for ChunkParser {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<Delta, ProviderError>>) {
        for event in self.events.feed(bytes) {
            self.event(&event.data, out);
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if let Some(event) = self.events.finish() {
            self.event(&event.data, out);
        }
        // A missing `[DONE]` is tolerated when the last choice said why it finished.
        if !self.finished && !self.done {
            out.push_back(Err(ProviderError::Incomplete));
        } else if !self.finished {
            out.push_back(Ok(Delta::Finish {
                reason: "stop".to_owned(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Vec<Result<Delta, ProviderError>> {
        let mut parser = ChunkParser::default();
        let mut out = VecDeque::new();
        for chunk in input.as_bytes().chunks(7) {
            parser.feed(chunk, &mut out);
        }
        parser.finish(&mut out);
        out.into_iter().collect()
    }

    #[test]
    fn text_finish_and_usage_come_out_in_order() {
        let out = parse(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n",
            ": keep-alive\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\r\n\r\n",
            "data: [DONE]\r\n\r\n",
        ));
        assert_eq!(
            out,
            vec![
                Ok(Delta::Text("Hel".into())),
                Ok(Delta::Text("lo".into())),
                Ok(Delta::Finish {
                    reason: "stop".into()
                }),
                Ok(Delta::Usage {
                    prompt: 9,
                    completion: 2
                }),
            ]
        );
    }

    #[test]
    fn a_missing_done_is_tolerated_only_after_a_finish_reason() {
        let finished = parse(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"length\"}]}\n\n",
        );
        assert!(finished.iter().all(Result::is_ok));
        let cut = parse("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        assert!(matches!(cut.last(), Some(Err(ProviderError::Incomplete))));
    }

    #[test]
    fn a_malformed_chunk_and_an_error_event_fail_the_stream() {
        let out = parse("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {oops\n\n");
        assert!(matches!(out[1], Err(ProviderError::Malformed(_))));
        let out = parse("data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
        assert!(
            matches!(&out[0], Err(ProviderError::Refused { message, .. }) if message == "overloaded")
        );
    }
}
