//! The configured providers and models, built from `[assistant]` settings. Immutable: a reload
//! builds a new catalog and swaps it in (see [`super::service::Assistant::reload`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::LlmProvider;
use super::anthropic::AnthropicProvider;
use super::ollama::OllamaProvider;
use super::openai::OpenAiProvider;
use crate::settings::{AssistantSettings, LlmProviderKind};

pub struct ProviderEntry {
    pub name: String,
    pub kind: LlmProviderKind,
    pub provider: Arc<dyn LlmProvider>,
}

/// One provider model an alias may route to.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: String,
    pub model: String,
    pub weight: u32,
}

impl Route {
    /// How usage names this A/B variant: `provider/model`.
    pub fn variant(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub alias: String,
    pub label: String,
    pub tier: String,
    pub routes: Vec<Route>,
    pub fallback: Option<String>,
    pub context_tokens: u32,
    pub max_output_tokens: u32,
}

/// What browsers and API clients may know of a model: never a key, URL or provider.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub label: String,
    pub tier: String,
}

pub struct Catalog {
    providers: BTreeMap<String, ProviderEntry>,
    models: BTreeMap<String, ModelEntry>,
    default_model: Option<String>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub health_interval: Duration,
    pub max_generation: Duration,
}

impl Catalog {
    /// Settings are validated at load, so every route names a provider that exists.
    pub fn from_settings(settings: &AssistantSettings, client: &reqwest::Client) -> Self {
        let providers = settings
            .providers
            .iter()
            .map(|(name, p)| {
                let connect = Duration::from_secs(p.connect_timeout_secs);
                let idle = Duration::from_secs(p.idle_timeout_secs);
                let provider: Arc<dyn LlmProvider> = match p.kind {
                    LlmProviderKind::Openai => Arc::new(OpenAiProvider::new(
                        client.clone(),
                        &p.base_url,
                        p.api_key.clone(),
                        connect,
                        idle,
                    )),
                    LlmProviderKind::Ollama => Arc::new(OllamaProvider::new(
                        client.clone(),
                        &p.base_url,
                        connect,
                        idle,
                    )),
                    LlmProviderKind::Anthropic => Arc::new(AnthropicProvider::new(
                        client.clone(),
                        &p.base_url,
                        p.api_key.clone(),
                        connect,
                        idle,
                    )),
                };
                let entry = ProviderEntry {
                    name: name.clone(),
                    kind: p.kind,
                    provider,
                };
                (name.clone(), entry)
            })
            .collect();
        let models: BTreeMap<String, ModelEntry> = settings
            .models
            .iter()
            .map(|(alias, m)| {
                let entry = ModelEntry {
                    alias: alias.clone(),
                    label: if m.label.trim().is_empty() {
                        alias.clone()
                    } else {
                        m.label.clone()
                    },
                    tier: m.tier.clone(),
                    routes: m
                        .routes
                        .iter()
                        .map(|r| Route {
                            provider: r.provider.clone(),
                            model: r.model.clone(),
                            weight: r.weight,
                        })
                        .collect(),
                    fallback: m.fallback.clone(),
                    context_tokens: m.context_tokens,
                    max_output_tokens: m.max_output_tokens,
                };
                (alias.clone(), entry)
            })
            .collect();
        let default_model = if settings.default_model.is_empty() {
            models.keys().next().cloned()
        } else {
            Some(settings.default_model.clone())
        };
        Self {
            providers,
            models,
            default_model,
            breaker_failures: settings.breaker_failures,
            breaker_cooldown: Duration::from_secs(settings.breaker_cooldown_secs),
            health_interval: Duration::from_secs(settings.health_interval_secs),
            max_generation: Duration::from_secs(settings.max_generation_secs),
        }
    }

    /// The sanitized list people pick from.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.models
            .values()
            .map(|m| ModelInfo {
                name: m.alias.clone(),
                label: m.label.clone(),
                tier: m.tier.clone(),
            })
            .collect()
    }

    pub fn model(&self, alias: &str) -> Option<&ModelEntry> {
        self.models.get(alias)
    }

    pub fn default_model(&self) -> Option<&ModelEntry> {
        self.default_model.as_deref().and_then(|a| self.model(a))
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderEntry> {
        self.providers.get(name)
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.providers.values()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// `routes` in the order to try them: a weighted draw without replacement, so the weights
/// decide the first choice (the A/B split) and the other variants are the next best.
pub fn weighted_order(routes: &[Route], rng: &mut impl rand::Rng) -> Vec<Route> {
    let mut left: Vec<Route> = routes.iter().filter(|r| r.weight > 0).cloned().collect();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|r| u64::from(r.weight)).sum();
        let mut ticket = rng.random_range(0..total);
        let index = left
            .iter()
            .position(|r| {
                let weight = u64::from(r.weight);
                if ticket < weight {
                    true
                } else {
                    ticket -= weight;
                    false
                }
            })
            .unwrap_or(0);
        order.push(left.remove(index));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_first_choices_in_proportion() {
        let routes = vec![
            Route {
                provider: "a".into(),
                model: "m".into(),
                weight: 3,
            },
            Route {
                provider: "b".into(),
                model: "m".into(),
                weight: 1,
            },
            Route {
                provider: "never".into(),
                model: "m".into(),
                weight: 0,
            },
        ];
        let mut rng = rand::rng();
        let mut firsts = 0;
        for _ in 0..4_000 {
            let order = weighted_order(&routes, &mut rng);
            assert_eq!(order.len(), 2, "weight 0 is never chosen");
            firsts += usize::from(order[0].provider == "a");
        }
        assert!((2_800..3_200).contains(&firsts), "{firsts} of 4000");
    }
}
