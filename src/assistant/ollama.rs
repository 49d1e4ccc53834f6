//! Ollama's native API: `POST /api/chat` streams one JSON object per line; the last one has
//! `"done": true` and the token counts (`prompt_eval_count`, `eval_count`).

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};

use super::sse::{LineSplitter, Parser};
use super::{CompletionRequest, Delta, DeltaStream, LlmProvider, ProviderError, refusal};

pub struct OllamaProvider {
    client: reqwest::Client,
    /// e.g. `http://127.0.0.1:11434`, without a trailing slash.
    base_url: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl OllamaProvider {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            connect_timeout,
            idle_timeout,
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for OllamaProvider {
    async fn stream(&self, request: CompletionRequest) -> Result<DeltaStream, ProviderError> {
        let mut options = json!({ "num_predict": request.max_tokens });
        if let Some(temperature) = request.temperature {
            options["temperature"] = json!(temperature);
        }
        let body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": true,
            "options": options,
        });
        let response = super::send(
            self.client
                .post(format!("{}/api/chat", self.base_url))
                .headers(crate::telemetry::propagation_headers())
                .json(&body),
            self.connect_timeout,
        )
        .await?;
        Ok(super::sse::drive(
            response,
            self.idle_timeout,
            LineParser::default(),
        ))
    }

    async fn check(&self) -> Result<(), ProviderError> {
        let response = self
            .client
            .get(format!("{}/api/tags", self.base_url))
            .headers(crate::telemetry::propagation_headers())
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
pub(crate) struct LineParser {
    lines: LineSplitter,
    done: bool,
}

impl LineParser {
    fn line(&mut self, line: &str, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if line.trim().is_empty() || self.done {
            return;
        }
        let object: Value = match serde_json::from_str(line) {
            Ok(object) => object,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!(
                    "a line is not JSON ({e})"
                ))));
                return;
            }
        };
        if let Some(error) = object.get("error").and_then(Value::as_str) {
            out.push_back(Err(ProviderError::Refused {
                status: 502,
                message: error.chars().take(300).collect(),
            }));
            return;
        }
        if let Some(text) = object.pointer("/message/content").and_then(Value::as_str)
            && !text.is_empty()
        {
            out.push_back(Ok(Delta::Text(text.to_owned())));
        }
        if object.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            let count = |key: &str| {
                object
                    .get(key)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            if let (Some(prompt), Some(completion)) =
                (count("prompt_eval_count"), count("eval_count"))
            {
                out.push_back(Ok(Delta::Usage { prompt, completion }));
            }
            let reason = object
                .get("done_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop");
            out.push_back(Ok(Delta::Finish {
                reason: reason.to_owned(),
            }));
        }
    }
}

impl Parser for LineParser {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<Delta, ProviderError>>) {
        let mut lines = Vec::new();
        self.lines.feed(bytes, |line| lines.push(line.to_owned()));
        for line in lines {
            self.line(&line, out);
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Result<Delta, ProviderError>>) {
        if let Some(rest) = self.lines.finish() {
            self.line(&rest, out);
        }
        if !self.done {
            out.push_back(Err(ProviderError::Incomplete));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_text_then_usage_and_finish() {
        let mut parser = LineParser::default();
        let mut out = VecDeque::new();
        let input = concat!(
            "{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
            "{\"message\":{\"role\":\"assistant\",\"content\":\" there\"},\"done\":false}\n",
            "{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":12,\"eval_count\":2}"
        );
        for chunk in input.as_bytes().chunks(5) {
            parser.feed(chunk, &mut out);
        }
        parser.finish(&mut out);
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(
            out,
            vec![
                Ok(Delta::Text("Hi".into())),
                Ok(Delta::Text(" there".into())),
                Ok(Delta::Usage {
                    prompt: 12,
                    completion: 2
                }),
                Ok(Delta::Finish {
                    reason: "stop".into()
                }),
            ]
        );
    }

    #[test]
    fn a_stream_without_done_is_incomplete() {
        let mut parser = LineParser::default();
        let mut out = VecDeque::new();
        parser.feed(
            b"{\"message\":{\"content\":\"Hi\"},\"done\":false}\n",
            &mut out,
        );
        parser.finish(&mut out);
        assert!(matches!(out.back(), Some(Err(ProviderError::Incomplete))));
    }
}
