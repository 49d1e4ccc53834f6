//! [`Assistant`]: what the rest of Conclave calls to get an answer streamed.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, ModelEntry, Route, weighted_order};
use super::health::{Breakers, ProviderHealth};
use super::usage::{Outcome, Payer, Record};
use super::{
    ChatMessage, CompletionRequest, Delta, DeltaStream, ProviderError, estimate_prompt_tokens,
};
use crate::billing::gate::{Admission, GateError, UsageGate};
use crate::db::Db;
use crate::settings::{AssistantSettings, Settings};

/// Why no answer could start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no assistant models are configured")]
    NoModels,
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    #[error("the conversation needs about {needed} tokens; the model takes {available}")]
    TooLong { needed: u32, available: u32 },
    /// Every route (and fallback) is down or refused.
    #[error("{0}")]
    Unavailable(ProviderError),
    /// The workspace is over a limit of its plan.
    #[error("{}", .0.message())]
    Quota(crate::billing::gate::Exceeded),
    /// Our own database failed us.
    #[error("the usage counters cannot be read right now")]
    Internal,
}

/// What a generation asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The alias; `None`: the default model.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// At most the model's `max_output_tokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub payer: Payer,
}

#[derive(Clone)]
pub struct Assistant {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: RwLock<Arc<Catalog>>,
    /// Quotas: asked before every call of a person (guests have their own).
    gate: Option<Arc<dyn UsageGate>>,
    breakers: Breakers,
    client: reqwest::Client,
    db: Db,
    /// The config file to re-read on reload.
    source: Option<PathBuf>,
    shutdown: CancellationToken,
}

/// A provider's state for the admin API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ProviderStatus {
    pub name: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub health: ProviderHealth,
}

impl Assistant {
    pub fn new(settings: &Settings, db: Db, gate: Option<Arc<dyn UsageGate>>) -> Self {
        let client = super::http_client();
        let catalog = Catalog::from_settings(&settings.assistant, &client);
        Self {
            inner: Arc::new(Inner {
                catalog: RwLock::new(Arc::new(catalog)),
                gate,
                breakers: Breakers::default(),
                client,
                db,
                source: settings.source.clone(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a catalog built from `settings`. Generations in flight keep the providers
    /// they started with.
    pub fn reload_from(&self, settings: &AssistantSettings) {
        let catalog = Arc::new(Catalog::from_settings(settings, &self.inner.client));
        *self
            .inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = catalog;
        metrics::counter!("assistant_reloads_total").increment(1);
        tracing::info!(
            models = settings.models.len(),
            providers = settings.providers.len(),
            "assistant configuration reloaded"
        );
    }

    /// Re-reads the configuration (the same file and environment as at start-up) and swaps
    /// in its `[assistant]` part. A configuration with errors changes nothing.
    pub fn reload(&self) -> Result<usize, crate::settings::ConfigError> {
        let settings = Settings::load(self.inner.source.as_deref())?;
        self.reload_from(&settings.assistant);
        Ok(settings.assistant.models.len())
    }

    pub fn providers(&self) -> Vec<ProviderStatus> {
        self.catalog()
            .providers()
            .map(|p| ProviderStatus {
                name: p.name.clone(),
                kind: p.kind.as_str(),
                health: self.inner.breakers.health(&p.name),
            })
            .collect()
    }

    /// Checks every provider now and then every `health_interval_secs`, until
    /// [`Assistant::stop`].
    pub fn spawn_health_checks(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let catalog = this.catalog();
                let checks = catalog.providers().map(|entry| {
                    let provider = entry.provider.clone();
                    let name = entry.name.clone();
                    let catalog = catalog.clone();
                    let breakers = &this.inner.breakers;
                    async move {
                        let result = provider.check().await.map_err(|e| e.to_string());
                        breakers.checked(
                            &name,
                            result,
                            catalog.breaker_failures,
                            catalog.breaker_cooldown,
                        );
                    }
                });
                futures_util::future::join_all(checks).await;
                tokio::select! {
                    () = tokio::time::sleep(catalog.health_interval) => {}
                    () = this.inner.shutdown.cancelled() => return,
                }
            }
        });
    }

    pub fn stop(&self) {
        self.inner.shutdown.cancel();
    }

    /// Starts an answer: picks the route (weights, open circuits skipped, then the fallback
    /// model), fits the conversation, and connects. Failures before the first byte move on to
    /// the next route; the error of the last one is returned.
    pub async fn start(&self, ask: Ask) -> Result<Generation, StartError> {
        let catalog = self.catalog();
        let requested = match &ask.model {
            Some(alias) => catalog
                .model(alias)
                .ok_or_else(|| StartError::UnknownModel(alias.clone()))?,
            None => catalog.default_model().ok_or(StartError::NoModels)?,
        };
        let admission = self.admit(&ask.payer).await?;
        // The workspace the gate billed is the one the usage record names (found once).
        let mut payer = ask.payer;
        if let Some((_, admitted)) = &admission {
            payer.tenant_id = Some(admitted.tenant_id);
        }
        let mut chain: Vec<&ModelEntry> = vec![requested];
        while let Some(next) = chain
            .last()
            .and_then(|m| m.fallback.as_deref())
            .and_then(|alias| catalog.model(alias))
        {
            if chain.iter().any(|m| m.alias == next.alias) {
                break;
            }
            chain.push(next);
        }
        let mut last_error = None;
        for model in chain {
            let max_tokens = ask.max_tokens.map_or(model.max_output_tokens, |n| {
                n.clamp(1, model.max_output_tokens)
            });
            let messages = super::prompt::fit(&ask.messages, model.context_tokens, max_tokens)
                .map_err(|e| StartError::TooLong {
                    needed: e.needed,
                    available: e.available,
                })?;
            let order = weighted_order(&model.routes, &mut rand::rng());
            for route in order {
                let Some(entry) = catalog.provider(&route.provider) else {
                    continue;
                };
                if !self.inner.breakers.allow(&route.provider) {
                    continue;
                }
                let request = CompletionRequest {
                    model: route.model.clone(),
                    messages: messages.clone(),
                    max_tokens,
                    temperature: ask.temperature,
                };
                let started = Instant::now();
                match entry.provider.stream(request).await {
                    Ok(stream) => {
                        return Ok(Generation {
                            assistant: self.clone(),
                            model: requested.alias.clone(),
                            route: route.clone(),
                            stream,
                            prompt_estimate: estimate_prompt_tokens(&messages),
                            reported: None,
                            completion_chars: 0,
                            finish: None,
                            error: None,
                            started,
                            first_token: None,
                            deadline: started + catalog.max_generation,
                            payer,
                            breaker: (catalog.breaker_failures, catalog.breaker_cooldown),
                            settled: false,
                            admission,
                        });
                    }
                    Err(error) => {
                        metrics::counter!(
                            "assistant_requests_total",
                            "model" => requested.alias.clone(),
                            "variant" => route.variant(),
                            "outcome" => "failed"
                        )
                        .increment(1);
                        if error.counts_against_provider() {
                            self.inner.breakers.failed(
                                &route.provider,
                                &error.to_string(),
                                catalog.breaker_failures,
                                catalog.breaker_cooldown,
                            );
                        } else {
                            // The provider answered: it is up, our request was the problem,
                            // and another route would refuse it the same way.
                            self.inner.breakers.succeeded(&route.provider);
                            self.record(Record {
                                payer,
                                model: requested.alias.clone(),
                                variant: route.variant(),
                                prompt_tokens: 0,
                                completion_tokens: 0,
                                estimated: true,
                                outcome: Outcome::Failed,
                                first_token_ms: None,
                            });
                            return Err(StartError::Unavailable(error));
                        }
                        last_error = Some((route.variant(), error));
                    }
                }
            }
        }
        let (variant, error) = last_error.unwrap_or_else(|| {
            (
                String::new(),
                ProviderError::Unreachable("every provider of this model is down".to_owned()),
            )
        });
        self.record(Record {
            payer,
            model: requested.alias.clone(),
            variant,
            prompt_tokens: 0,
            completion_tokens: 0,
            estimated: true,
            outcome: Outcome::Failed,
            first_token_ms: None,
        });
        Err(StartError::Unavailable(error))
    }

    /// Counts the call against its workspace's quotas (people only: guests have theirs).
    async fn admit(
        &self,
        payer: &Payer,
    ) -> Result<Option<(Arc<dyn UsageGate>, Admission)>, StartError> {
        let (Some(gate), Some(user)) = (&self.inner.gate, payer.user_id) else {
            return Ok(None);
        };
        let tenant = match payer.tenant_id {
            Some(tenant) => tenant,
            None => self
                .inner
                .db
                .run(move |conn| {
                    super::usage::home_tenant(conn, user).map_err(crate::db::DbError::from)
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot find the workspace to bill");
                    StartError::Internal
                })?,
        };
        match gate.admit(tenant, Some(user)).await {
            Ok(admission) => Ok(Some((gate.clone(), admission))),
            Err(GateError::Exceeded(exceeded)) => Err(StartError::Quota(exceeded)),
            Err(GateError::Db(e)) => {
                tracing::error!(error = %e, "cannot count usage");
                Err(StartError::Internal)
            }
        }
    }

    /// Writes a usage record without making the caller wait; a failure is logged (the
    /// answer was already given).
    fn record(&self, record: Record) {
        let db = self.inner.db.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(?record, "assistant usage dropped outside the runtime");
            return;
        };
        runtime.spawn(async move {
            let written = db
                .run(move |conn| {
                    super::usage::insert(conn, &record).map_err(crate::db::DbError::from)
                })
                .await;
            if let Err(error) = written {
                tracing::error!(error = %error, "cannot record assistant usage");
            }
        });
    }
}

/// An answer being streamed. Read it with [`Generation::next`]; when it ends — completed,
/// failed, or dropped half-way because the caller went away — its usage is recorded and the
/// provider's breaker told.
pub struct Generation {
    assistant: Assistant,
    /// The alias asked for (usage is billed to it even when a fallback answered).
    pub model: String,
    pub route: Route,
    stream: DeltaStream,
    prompt_estimate: u32,
    reported: Option<(u32, u32)>,
    /// Characters of the answer so far (to estimate its tokens when the provider reports none).
    completion_chars: u32,
    finish: Option<String>,
    error: Option<ProviderError>,
    started: Instant,
    first_token: Option<Duration>,
    deadline: Instant,
    payer: Payer,
    breaker: (u32, Duration),
    settled: bool,
    /// The quota this call was counted against; its tokens are added when it settles.
    admission: Option<(Arc<dyn UsageGate>, Admission)>,
}

impl Generation {
    /// The next piece of the answer: text, then `Ok(None)` at the end, or the error that
    /// ended it. Usage deltas are absorbed (see [`Generation::usage`]).
    pub async fn next(&mut self) -> Result<Option<String>, ProviderError> {
        if self.settled {
            return match &self.error {
                Some(error) => Err(error.clone()),
                None => Ok(None),
            };
        }
        loop {
            let next = tokio::time::timeout_at(self.deadline.into(), self.stream.next()).await;
            let item = match next {
                Err(_) => Some(Err(ProviderError::Timeout("generation"))),
                Ok(item) => item,
            };
            match item {
                Some(Ok(Delta::Text(text))) => {
                    if self.first_token.is_none() {
                        let waited = self.started.elapsed();
                        self.first_token = Some(waited);
                        metrics::histogram!("assistant_first_token_seconds")
                            .record(waited.as_secs_f64());
                    }
                    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
                    self.completion_chars = self.completion_chars.saturating_add(chars);
                    return Ok(Some(text));
                }
                Some(Ok(Delta::Usage { prompt, completion })) => {
                    self.reported = Some((prompt, completion));
                }
                Some(Ok(Delta::Finish { reason })) => self.finish = Some(reason),
                None => {
                    if self.finish.is_none() {
                        self.finish = Some("stop".to_owned());
                    }
                    self.settle(Outcome::Completed);
                    return Ok(None);
                }
                Some(Err(error)) => {
                    self.error = Some(error.clone());
                    let outcome = if self.completion_chars == 0 {
                        Outcome::Failed
                    } else {
                        Outcome::Incomplete
                    };
                    self.settle(outcome);
                    return Err(error);
                }
            }
        }
    }

    /// Why the answer finished (`stop`, `length`, …), once it has.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish.as_deref()
    }

    /// The usage so far: the provider's numbers if it sent them, else our estimate.
    pub fn usage(&self) -> super::Usage {
        match self.reported {
            Some((prompt, completion)) => super::Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                estimated: false,
            },
            None => super::Usage {
                prompt_tokens: self.prompt_estimate,
                completion_tokens: super::tokens_for_chars(self.completion_chars),
                estimated: true,
            },
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if self.settled {
            return;
        }
        self.settled = true;
        let provider = &self.route.provider;
        let breakers = &self.assistant.inner.breakers;
        match (&self.error, outcome) {
            (_, Outcome::Cancelled) => {}
            (None, _) => breakers.succeeded(provider),
            (Some(error), _) => {
                breakers.failed(provider, &error.to_string(), self.breaker.0, self.breaker.1);
            }
        }
        let usage = self.usage();
        metrics::counter!(
            "assistant_requests_total",
            "model" => self.model.clone(),
            "variant" => self.route.variant(),
            "outcome" => outcome.as_str()
        )
        .increment(1);
        metrics::counter!("assistant_tokens_total", "model" => self.model.clone(), "kind" => "prompt")
            .increment(u64::from(usage.prompt_tokens));
        metrics::counter!("assistant_tokens_total", "model" => self.model.clone(), "kind" => "completion")
            .increment(u64::from(usage.completion_tokens));
        if let Some((gate, admission)) = self.admission.take() {
            let tokens = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { gate.settle(admission, tokens).await });
            }
        }
        self.assistant.record(Record {
            payer: self.payer,
            model: self.model.clone(),
            variant: self.route.variant(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            estimated: usage.estimated,
            outcome,
            first_token_ms: self
                .first_token
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        });
    }
}

impl Drop for Generation {
    /// Dropped before its end: the caller stopped it (stop button, client gone). The
    /// provider connection closes with the stream; what was generated so far is billed.
    fn drop(&mut self) {
        self.settle(Outcome::Cancelled);
    }
}
