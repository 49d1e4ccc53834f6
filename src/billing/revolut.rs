//! Revolut Merchant API behind [`PaymentProvider`], and the webhook signature check.
//!
//! Orders: `POST /api/orders` (amount in minor units, currency, description, customer email,
//! redirect URL, our reference in `merchant_order_ext_ref` and `metadata`), `GET
//! /api/orders/{id}`, `POST /api/orders/{id}/refund`; webhooks: `POST /api/webhooks`. Every
//! call carries `Authorization: Bearer <secret key>` and `Revolut-Api-Version`.
//!
//! Webhook signatures: `Revolut-Signature: v1=<hex>[,v1=<hex>…]` (several while a secret is
//! rotated) over `v1.{Revolut-Request-Timestamp}.{raw body}` with HMAC-SHA256 under the signing
//! secret; compared in constant time; timestamps more than 5 minutes off are refused
//! ([`conclave_core::webhook`], where it is fuzzed).

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::settings::{RevolutEnvironment, RevolutSettings};

/// An order's state as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderState {
    Pending,
    Processing,
    Authorised,
    Completed,
    Cancelled,
    Failed,
}

impl ProviderState {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "pending" => Self::Pending,
            "processing" => Self::Processing,
            "authorised" | "authorized" => Self::Authorised,
            "completed" => Self::Completed,
            "cancelled" | "canceled" => Self::Cancelled,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Authorised => "authorised",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewProviderOrder {
    pub amount_minor: i64,
    pub currency: String,
    pub description: String,
    pub customer_email: String,
    pub redirect_url: String,
    /// Our order reference (a UUID), echoed in webhooks as `merchant_order_ext_ref`.
    pub reference: String,
}

#[derive(Debug, Clone)]
pub struct ProviderOrder {
    pub id: String,
    pub state: ProviderState,
    pub checkout_url: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebhookRegistration {
    pub id: String,
    pub signing_secret: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PaymentError {
    #[error("the payment provider cannot be reached: {0}")]
    Unreachable(String),
    #[error("the payment provider refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the payment provider sent something unexpected: {0}")]
    Malformed(String),
}

#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    /// `revolut` or `fake`, stored with each order.
    fn name(&self) -> &'static str;
    async fn create_order(&self, order: NewProviderOrder) -> Result<ProviderOrder, PaymentError>;
    async fn get_order(&self, id: &str) -> Result<ProviderOrder, PaymentError>;
    async fn refund(&self, id: &str, amount_minor: i64, currency: &str)
    -> Result<(), PaymentError>;
    async fn register_webhook(&self, url: &str) -> Result<WebhookRegistration, PaymentError>;
}

pub struct RevolutProvider {
    client: reqwest::Client,
    base_url: String,
    secret_key: SecretString,
    api_version: String,
}

impl RevolutProvider {
    pub fn new(settings: &RevolutSettings, secret_key: SecretString) -> Self {
        let base_url = settings.base_url.clone().unwrap_or_else(|| {
            match settings.environment {
                RevolutEnvironment::Sandbox => "https://sandbox-merchant.revolut.com",
                RevolutEnvironment::Production => "https://merchant.revolut.com",
            }
            .to_owned()
        });
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(settings.timeout_secs))
                // The API's answers are never redirects: one means a wrong base URL or someone
                // in the way, and is an error rather than a request sent elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("conclave/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key,
            api_version: settings.api_version.clone(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .headers(crate::telemetry::propagation_headers())
            .bearer_auth(self.secret_key.expose_secret())
            .header("Revolut-Api-Version", &self.api_version)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, PaymentError> {
        let response = request
            .send()
            .await
            .map_err(|e| PaymentError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| PaymentError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            return Err(PaymentError::Refused {
                status: status.as_u16(),
                message: message.chars().take(300).collect(),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| PaymentError::Malformed(e.to_string()))
    }
}

fn order_of(value: &Value) -> Result<ProviderOrder, PaymentError> {
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| PaymentError::Malformed("an order without an id".to_owned()))?;
    let state = value
        .get("state")
        .and_then(Value::as_str)
        .and_then(ProviderState::parse)
        .ok_or_else(|| PaymentError::Malformed(format!("order {id} has no known state")))?;
    Ok(ProviderOrder {
        id: id.to_owned(),
        state,
        checkout_url: value
            .get("checkout_url")
            .and_then(Value::as_str)
            .map(str::to_owned),
        amount_minor: value
            .get("amount")
            .or_else(|| value.get("order_amount").and_then(|a| a.get("value")))
            .and_then(Value::as_i64),
        currency: value
            .get("currency")
            .or_else(|| value.get("order_amount").and_then(|a| a.get("currency")))
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[async_trait::async_trait]
impl PaymentProvider for RevolutProvider {
    fn name(&self) -> &'static str {
        "revolut"
    }

    async fn create_order(&self, order: NewProviderOrder) -> Result<ProviderOrder, PaymentError> {
        let body = json!({
            "amount": order.amount_minor,
            "currency": order.currency,
            "description": order.description,
            "customer": { "email": order.customer_email },
            "redirect_url": order.redirect_url,
            "merchant_order_ext_ref": order.reference,
            "metadata": { "conclave_reference": order.reference },
        });
        let value = self
            .send(
                self.request(reqwest::Method::POST, "/api/orders")
                    .json(&body),
            )
            .await?;
        order_of(&value)
    }

    async fn get_order(&self, id: &str) -> Result<ProviderOrder, PaymentError> {
        let path = format!("/api/orders/{}", urlencode(id));
        let value = self.send(self.request(reqwest::Method::GET, &path)).await?;
        order_of(&value)
    }

    async fn refund(
        &self,
        id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<(), PaymentError> {
        let path = format!("/api/orders/{}/refund", urlencode(id));
        self.send(
            self.request(reqwest::Method::POST, &path)
                .json(&json!({ "amount": amount_minor, "currency": currency })),
        )
        .await
        .map(drop)
    }

    async fn register_webhook(&self, url: &str) -> Result<WebhookRegistration, PaymentError> {
        let value = self
            .send(self.request(reqwest::Method::POST, "/api/webhooks").json(&json!({
                "url": url,
                "events": ["ORDER_COMPLETED", "ORDER_AUTHORISED", "ORDER_CANCELLED", "ORDER_FAILED"],
            })))
            .await?;
        Ok(WebhookRegistration {
            id: value
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            signing_secret: value
                .get("signing_secret")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    PaymentError::Malformed(
                        "the webhook came back without a signing secret".to_owned(),
                    )
                })?
                .to_owned(),
        })
    }
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub use conclave_core::webhook::{SIGNATURE_TOLERANCE, SignatureError, sign, verify};
