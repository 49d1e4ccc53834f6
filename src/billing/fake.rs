//! The fake payment provider of development: with no Revolut key configured (and not in
//! production), orders are "paid" on a clearly labelled page of Conclave itself. Completing or
//! cancelling there sends a webhook signed exactly as Revolut signs them to our own webhook
//! endpoint, so everything after the provider call — signature check, re-reading the order,
//! activation, receipt — runs the production code.
//!
//! Orders live in this process's memory: one node, development only.

use std::collections::HashMap;
use std::sync::Mutex;

use secrecy::{ExposeSecret as _, SecretString};

use super::revolut::{
    NewProviderOrder, PaymentError, PaymentProvider, ProviderOrder, ProviderState,
    WebhookRegistration, sign,
};

#[derive(Debug, Clone)]
pub struct FakeOrder {
    pub id: String,
    pub state: ProviderState,
    pub amount_minor: i64,
    pub currency: String,
    pub description: String,
    pub redirect_url: String,
    pub reference: String,
}

pub struct FakeProvider {
    public_url: String,
    webhook_secret: SecretString,
    orders: Mutex<HashMap<String, FakeOrder>>,
    client: reqwest::Client,
}

impl FakeProvider {
    pub fn new(public_url: &str, webhook_secret: SecretString) -> Self {
        Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
            webhook_secret,
            orders: Mutex::new(HashMap::new()),
            client: reqwest::Client::new(),
        }
    }

    fn orders(&self) -> std::sync::MutexGuard<'_, HashMap<String, FakeOrder>> {
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn order(&self, id: &str) -> Option<FakeOrder> {
        self.orders().get(id).cloned()
    }

    /// The person chose on the fake checkout page: the order settles, and the webhook goes
    /// out as Revolut would send it. Answers where to send the person next.
    pub async fn settle(&self, id: &str, complete: bool) -> Result<String, PaymentError> {
        let (order, event) = {
            let mut orders = self.orders();
            let order = orders.get_mut(id).ok_or_else(|| PaymentError::Refused {
                status: 404,
                message: "no such order".to_owned(),
            })?;
            if order.state != ProviderState::Pending {
                return Ok(order.redirect_url.clone());
            }
            order.state = if complete {
                ProviderState::Completed
            } else {
                ProviderState::Cancelled
            };
            let event = if complete {
                "ORDER_COMPLETED"
            } else {
                "ORDER_CANCELLED"
            };
            (order.clone(), event)
        };
        let body = serde_json::json!({
            "event": event,
            "order_id": order.id,
            "merchant_order_ext_ref": order.reference,
        })
        .to_string();
        let timestamp = chrono::Utc::now().timestamp_millis();
        let signature = sign(
            self.webhook_secret.expose_secret(),
            timestamp,
            body.as_bytes(),
        );
        let delivered = self
            .client
            .post(format!(
                "{}/api/v1/billing/webhooks/revolut",
                self.public_url
            ))
            .header("content-type", "application/json")
            .header("Revolut-Request-Timestamp", timestamp.to_string())
            .header("Revolut-Signature", signature)
            .body(body)
            .send()
            .await;
        // Like Revolut, a failed delivery is not the payer's problem: reconciliation catches up.
        if let Err(error) = delivered {
            tracing::warn!(error = %error, order = id, "fake provider: webhook not delivered");
        }
        Ok(order.redirect_url)
    }
}

#[async_trait::async_trait]
impl PaymentProvider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create_order(&self, order: NewProviderOrder) -> Result<ProviderOrder, PaymentError> {
        let id = uuid::Uuid::new_v4().to_string();
        let checkout_url = format!("{}/billing/fake-checkout/{id}", self.public_url);
        self.orders().insert(
            id.clone(),
            FakeOrder {
                id: id.clone(),
                state: ProviderState::Pending,
                amount_minor: order.amount_minor,
                currency: order.currency.clone(),
                description: order.description,
                redirect_url: order.redirect_url,
                reference: order.reference,
            },
        );
        Ok(ProviderOrder {
            id,
            state: ProviderState::Pending,
            checkout_url: Some(checkout_url),
            amount_minor: Some(order.amount_minor),
            currency: Some(order.currency),
        })
    }

    async fn get_order(&self, id: &str) -> Result<ProviderOrder, PaymentError> {
        let order = self.order(id).ok_or_else(|| PaymentError::Refused {
            status: 404,
            message: "no such order".to_owned(),
        })?;
        Ok(ProviderOrder {
            id: order.id,
            state: order.state,
            checkout_url: None,
            amount_minor: Some(order.amount_minor),
            currency: Some(order.currency),
        })
    }

    async fn refund(&self, id: &str, _amount: i64, _currency: &str) -> Result<(), PaymentError> {
        match self.orders().get(id) {
            Some(order) if order.state == ProviderState::Completed => Ok(()),
            Some(_) => Err(PaymentError::Refused {
                status: 400,
                message: "only completed orders can be refunded".to_owned(),
            }),
            None => Err(PaymentError::Refused {
                status: 404,
                message: "no such order".to_owned(),
            }),
        }
    }

    async fn register_webhook(&self, _url: &str) -> Result<WebhookRegistration, PaymentError> {
        Ok(WebhookRegistration {
            id: "fake".to_owned(),
            signing_secret: self.webhook_secret.expose_secret().to_owned(),
        })
    }
}
