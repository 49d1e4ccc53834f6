//! Billing: plans every workspace is on, payments through Revolut Merchant behind
//! [`revolut::PaymentProvider`] (a labelled fake one in development), the credits ledger, and
//! usage metering with daily quotas behind [`gate::UsageGate`].
//!
//! - Buying: a workspace owner or admin picks a plan → an order row (our reference) → the
//!   provider's order → its checkout page. The plan or credits are granted only when the
//!   provider confirms — a signed webhook or the reconciliation job, both re-reading the order
//!   from the provider first — and exactly once per order.
//! - Quotas: the assistant asks the gate before each call and settles after; over a limit the
//!   call is refused with 429, which limit and when it resets.

pub mod fake;
pub mod gate;
pub mod handlers;
pub mod ledger;
pub mod orders;
pub mod plans;
pub mod revolut;

use std::sync::Arc;

use diesel::prelude::*;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

use self::gate::{DbUsageGate, UsageGate};
use self::orders::{Applied, Order};
use self::revolut::{NewProviderOrder, PaymentError, PaymentProvider, ProviderState};
use crate::db::{Db, DbError};
use crate::error::AppError;
use crate::jobs::{JobError, JobRegistry, Queue};
use crate::settings::{BillingSettings, Mode, PlanPeriod, Settings};

pub const RECONCILE_JOB: &str = "billing.reconcile";

#[derive(Clone)]
pub struct Billing {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    settings: Arc<BillingSettings>,
    provider: Arc<dyn PaymentProvider>,
    /// Set when payments go to the development fake (its checkout page needs it).
    fake: Option<Arc<fake::FakeProvider>>,
    webhook_secret: SecretString,
    gate: DbUsageGate,
    queue: Queue,
    templates: Arc<crate::web::Templates>,
    public_url: String,
    /// Paid plans can be bought: Revolut is configured, or this is development (the fake).
    sells: bool,
}

impl From<PaymentError> for AppError {
    fn from(error: PaymentError) -> Self {
        tracing::warn!(error = %error, "payment provider call failed");
        AppError::Unavailable(
            "The payment provider is not answering right now; nothing was charged. Try again in a minute."
                .to_owned(),
        )
    }
}

impl Billing {
    /// `provider` replaces Revolut (tests); otherwise Revolut with a secret key, else the fake.
    pub fn new(
        settings: &Settings,
        db: Db,
        queue: Queue,
        templates: Arc<crate::web::Templates>,
        public_url: &str,
        provider: Option<Arc<dyn PaymentProvider>>,
    ) -> Self {
        let billing = Arc::new(settings.billing.clone());
        let webhook_secret = billing.revolut.webhook_secret.clone().unwrap_or_else(|| {
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            SecretString::from(format!(
                "wsk_dev_{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
        });
        let (provider, fake, sells): (Arc<dyn PaymentProvider>, _, _) =
            match (provider, &billing.revolut.secret_key) {
                (Some(provider), _) => (provider, None, true),
                (None, Some(key)) => (
                    Arc::new(revolut::RevolutProvider::new(&billing.revolut, key.clone())),
                    None,
                    true,
                ),
                (None, None) => {
                    let fake =
                        Arc::new(fake::FakeProvider::new(public_url, webhook_secret.clone()));
                    (fake.clone(), Some(fake), settings.mode == Mode::Development)
                }
            };
        Self {
            inner: Arc::new(Inner {
                gate: DbUsageGate::new(db.clone(), billing.clone()),
                db,
                settings: billing,
                provider,
                fake,
                webhook_secret,
                queue,
                templates,
                public_url: public_url.trim_end_matches('/').to_owned(),
                sells,
            }),
        }
    }

    pub fn settings(&self) -> &BillingSettings {
        &self.inner.settings
    }

    pub fn gate(&self) -> Arc<dyn UsageGate> {
        Arc::new(self.inner.gate.clone())
    }

    /// Paid monthly plans one may choose when signing up (none when nothing is sold).
    pub fn signup_plans(&self) -> Vec<plans::PlanView> {
        if !self.inner.sells {
            return Vec::new();
        }
        plans::effective(&self.inner.settings)
            .iter()
            .filter(|(_, p)| p.price_minor > 0 && p.period == PlanPeriod::Monthly)
            .map(|(name, p)| plans::view(name, p))
            .collect()
    }

    /// The plan chosen on the sign-up form: `None` for free, or a paid monthly plan.
    pub fn signup_plan(&self, chosen: Option<&str>) -> Result<Option<String>, String> {
        match chosen.map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(name) if name == self.inner.settings.default_plan => Ok(None),
            Some(name) if self.signup_plans().iter().any(|p| p.name == name) => {
                Ok(Some(name.to_owned()))
            }
            Some(name) => Err(format!("plan: {name:?} is not a plan you can sign up for")),
        }
    }

    /// Forgets the cached quota state of a workspace (its plan or credits changed).
    pub fn gate_forget(&self, tenant_id: i64) {
        self.inner.gate.forget(tenant_id);
    }

    /// The quota gate's cache of workspaces over a limit (admin's caches page).
    pub fn gate_cache(&self) -> &DbUsageGate {
        &self.inner.gate
    }

    pub fn fake(&self) -> Option<&Arc<fake::FakeProvider>> {
        self.inner.fake.as_ref()
    }

    pub fn provider_name(&self) -> &'static str {
        self.inner.provider.name()
    }

    pub fn sells(&self) -> bool {
        self.inner.sells
    }

    pub fn webhook_secret(&self) -> &SecretString {
        &self.inner.webhook_secret
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn register_jobs(&self, registry: &mut JobRegistry) {
        let this = self.clone();
        registry.register(RECONCILE_JOB, move |_job| {
            let this = this.clone();
            async move {
                this.reconcile().await;
                let minutes = this.inner.settings.reconcile_minutes;
                let queue = this.inner.queue.clone();
                this.inner
                    .db
                    .run(move |conn| {
                        queue
                            .ensure_scheduled_in(
                                conn,
                                RECONCILE_JOB,
                                chrono::Utc::now()
                                    + chrono::TimeDelta::minutes(
                                        i64::try_from(minutes).unwrap_or(5),
                                    ),
                                false,
                            )
                            .map(drop)
                            .map_err(DbError::from)
                    })
                    .await
                    .map_err(|e| JobError::Retry(e.into()))
            }
        });
    }

    pub async fn schedule(&self) -> Result<(), DbError> {
        self.inner
            .queue
            .schedule_recurring(RECONCILE_JOB, chrono::TimeDelta::minutes(1))
            .await
    }

    /// Starts buying `plan` for `tenant_id`: the order here, then at the provider. Answers
    /// the order with its checkout URL. A provider that fails leaves the order `failed`.
    pub async fn checkout(
        &self,
        user_id: i64,
        email: &str,
        tenant_id: i64,
        plan_name: &str,
    ) -> Result<Order, AppError> {
        if !self.inner.sells {
            return Err(AppError::Conflict(
                "This server does not take payments (no payment provider is configured)."
                    .to_owned(),
            ));
        }
        let plans = plans::effective(&self.inner.settings);
        let plan = plans
            .get(plan_name)
            .filter(|p| p.price_minor > 0)
            .ok_or_else(|| {
                AppError::BadRequest(format!("plan: {plan_name:?} is not a plan you can buy"))
            })?
            .clone();
        let reference = uuid::Uuid::new_v4().to_string();
        let provider_name = self.inner.provider.name();
        let (plan_key, currency, amount, reference_row) = (
            plan_name.to_owned(),
            plan.currency.clone(),
            plan.price_minor,
            reference.clone(),
        );
        let order_id = self
            .inner
            .db
            .run(move |conn| {
                orders::insert(
                    conn,
                    tenant_id,
                    user_id,
                    &plan_key,
                    amount,
                    &currency,
                    provider_name,
                    &reference_row,
                )
                .map_err(AppError::from)
            })
            .await?;
        let label = plans::view(plan_name, &plan).label;
        let created = self
            .inner
            .provider
            .create_order(NewProviderOrder {
                amount_minor: plan.price_minor,
                currency: plan.currency.clone(),
                description: match plan.period {
                    PlanPeriod::Monthly => format!("Conclave {label}, one month"),
                    PlanPeriod::CreditPack => format!("Conclave {label}"),
                },
                customer_email: email.to_owned(),
                redirect_url: format!("{}/billing/orders/{order_id}", self.inner.public_url),
                reference,
            })
            .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                let _ = self
                    .inner
                    .db
                    .run(move |conn| orders::set_failed(conn, order_id).map_err(DbError::from))
                    .await;
                return Err(error.into());
            }
        };
        let (provider_id, state, checkout) = (
            created.id.clone(),
            created.state,
            created.checkout_url.clone(),
        );
        self.inner
            .db
            .run(move |conn| {
                orders::set_provider_order(
                    conn,
                    order_id,
                    &provider_id,
                    state,
                    checkout.as_deref(),
                )?;
                orders::find(conn, order_id).map_err(AppError::from)
            })
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("order {order_id} vanished")))
    }

    /// Re-reads an order from the provider and applies its state; on completion, sends the
    /// receipt. Safe to call any number of times, in any order.
    pub async fn sync_order(&self, order: &Order) -> Result<Applied, AppError> {
        let Some(provider_id) = order.provider_order_id.clone() else {
            return Ok(Applied::Updated);
        };
        let remote = self.inner.provider.get_order(&provider_id).await?;
        let (settings, id) = (self.inner.settings.clone(), order.id);
        let applied = self
            .inner
            .db
            .run(move |conn| {
                orders::apply(conn, &settings, id, remote.state).map_err(AppError::from)
            })
            .await?;
        if applied == Applied::Activated {
            self.inner.gate.forget(order.tenant_id);
            metrics::counter!("billing_orders_completed_total").increment(1);
            if let Err(error) = self.send_receipt(order.id).await {
                tracing::error!(error = %error, order = order.id, "cannot queue the receipt");
            }
        }
        Ok(applied)
    }

    /// A webhook named this provider order: find ours and sync it. Unknown orders are
    /// acknowledged (another system's, or a test event) and otherwise ignored.
    pub async fn webhook(&self, provider_order_id: String) -> Result<(), AppError> {
        let order = self
            .inner
            .db
            .run(move |conn| {
                orders::by_provider_id(conn, &provider_order_id).map_err(AppError::from)
            })
            .await?;
        match order {
            Some(order) => self.sync_order(&order).await.map(drop),
            None => Ok(()),
        }
    }

    /// Orders still open at the provider after `reconcile_minutes`: asked again.
    pub async fn reconcile(&self) {
        let after = self.inner.settings.reconcile_after_secs;
        let stuck = match self
            .inner
            .db
            .run(move |conn| orders::stuck(conn, after).map_err(DbError::from))
            .await
        {
            Ok(stuck) => stuck,
            Err(error) => {
                tracing::warn!(error = %error, "cannot list orders to reconcile");
                return;
            }
        };
        for order in stuck {
            if let Err(error) = self.sync_order(&order).await {
                tracing::warn!(error = %error, order = order.id, "cannot reconcile an order");
            }
        }
    }

    async fn send_receipt(&self, order_id: i64) -> anyhow::Result<()> {
        let found = self
            .inner
            .db
            .run(move |conn| {
                let Some(order) = orders::find(conn, order_id)? else {
                    return Ok(None);
                };
                let email: Option<String> = match order.user_id {
                    Some(user) => crate::schema::users::table
                        .find(user)
                        .select(crate::schema::users::email)
                        .first(conn)
                        .optional()?,
                    None => None,
                };
                Ok::<_, DbError>(email.map(|email| (order, email)))
            })
            .await?;
        let Some((order, email)) = found else {
            return Ok(());
        };
        let plans = plans::effective(&self.inner.settings);
        let label = plans
            .get(&order.plan)
            .map_or_else(|| order.plan.clone(), |p| plans::view(&order.plan, p).label);
        let mut context = tera::Context::new();
        context.insert("plan", &label);
        context.insert("amount", &plans::money(order.amount_minor, &order.currency));
        context.insert("reference", &order.reference);
        context.insert(
            "date",
            &order
                .completed_at
                .unwrap_or(order.created_at)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string(),
        );
        context.insert(
            "receipt_url",
            &format!(
                "{}/billing/orders/{}/receipt",
                self.inner.public_url, order.id
            ),
        );
        let mail =
            crate::mail::OutgoingMail::compose(&self.inner.templates, "receipt", &email, &context)?;
        self.inner.queue.enqueue(mail.into_job()?).await?;
        Ok(())
    }

    /// Refunds a completed order through the provider and takes back what it gave.
    pub async fn refund(&self, actor: i64, order: &Order) -> Result<(), AppError> {
        if order.state != "completed" {
            return Err(AppError::Conflict(
                "Only completed orders can be refunded.".to_owned(),
            ));
        }
        let provider_id = order.provider_order_id.clone().ok_or_else(|| {
            AppError::Conflict("The order never reached the provider.".to_owned())
        })?;
        self.inner
            .provider
            .refund(&provider_id, order.amount_minor, &order.currency)
            .await?;
        let (settings, order_row) = (self.inner.settings.clone(), order.clone());
        self.inner
            .db
            .run(move |conn| {
                orders::refunded(conn, &settings, &order_row, actor).map_err(AppError::from)
            })
            .await?;
        self.inner.gate.forget(order.tenant_id);
        Ok(())
    }

    pub fn verify_webhook(
        &self,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
    ) -> Result<(), revolut::SignatureError> {
        revolut::verify(
            self.inner.webhook_secret.expose_secret(),
            timestamp,
            signatures,
            body,
            chrono::Utc::now().timestamp_millis(),
        )
    }

    /// Registers our webhook URL with the provider; answers the signing secret to configure.
    pub async fn register_webhook(&self) -> Result<revolut::WebhookRegistration, PaymentError> {
        self.inner
            .provider
            .register_webhook(&format!(
                "{}/api/v1/billing/webhooks/revolut",
                self.inner.public_url
            ))
            .await
    }

    /// Whether the provider state means the payer is done (for pages).
    pub fn settled(state: &str) -> bool {
        ProviderState::parse(state).is_some_and(|s| {
            matches!(
                s,
                ProviderState::Completed | ProviderState::Cancelled | ProviderState::Failed
            )
        }) || state == "refunded"
    }
}
