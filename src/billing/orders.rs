//! Orders: a workspace buying a plan or a credit pack. An order is activated — the plan set,
//! the credits added — exactly once, when the provider says it is completed (webhook or
//! reconciliation, both re-reading the order from the provider first). Cancelled and failed
//! orders change nothing but their own state.

use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::ledger::{self, EntryKind, NewEntry};
use super::revolut::ProviderState;
use crate::db::DbConnection;
use crate::schema::billing_orders;
use crate::settings::{BillingSettings, PlanPeriod};

#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct Order {
    pub id: i64,
    pub tenant_id: i64,
    #[serde(skip)]
    pub user_id: Option<i64>,
    pub plan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub provider: String,
    pub provider_order_id: Option<String>,
    pub reference: String,
    /// `created` (not yet at the provider), then the provider's state; `refunded` after a
    /// refund.
    pub state: String,
    #[serde(skip)]
    pub checkout_url: Option<String>,
    pub activated: bool,
    #[schema(value_type = String)]
    pub created_at: NaiveDateTime,
    #[schema(value_type = Option<String>)]
    pub completed_at: Option<NaiveDateTime>,
}

macro_rules! order_columns {
    () => {
        (
            billing_orders::id,
            billing_orders::tenant_id,
            billing_orders::user_id,
            billing_orders::plan,
            billing_orders::amount_minor,
            billing_orders::currency,
            billing_orders::provider,
            billing_orders::provider_order_id,
            billing_orders::reference,
            billing_orders::state,
            billing_orders::checkout_url,
            billing_orders::activated,
            billing_orders::created_at,
            billing_orders::completed_at,
        )
    };
}

#[expect(
    clippy::too_many_arguments,
    reason = "one column each; a struct would only rename them"
)]
pub fn insert(
    conn: &mut DbConnection,
    tenant_id: i64,
    user_id: i64,
    plan: &str,
    amount_minor: i64,
    currency: &str,
    provider: &str,
    reference: &str,
) -> QueryResult<i64> {
    let now = Utc::now().naive_utc();
    diesel::insert_into(billing_orders::table)
        .values((
            billing_orders::tenant_id.eq(tenant_id),
            billing_orders::user_id.eq(user_id),
            billing_orders::plan.eq(plan),
            billing_orders::amount_minor.eq(amount_minor),
            billing_orders::currency.eq(currency),
            billing_orders::provider.eq(provider),
            billing_orders::reference.eq(reference),
            billing_orders::state.eq("created"),
            billing_orders::activated.eq(false),
            billing_orders::created_at.eq(now),
            billing_orders::updated_at.eq(now),
        ))
        .returning(billing_orders::id)
        .get_result(conn)
}

pub fn set_provider_order(
    conn: &mut DbConnection,
    id: i64,
    provider_order_id: &str,
    state: ProviderState,
    checkout_url: Option<&str>,
) -> QueryResult<()> {
    diesel::update(billing_orders::table.find(id))
        .set((
            billing_orders::provider_order_id.eq(provider_order_id),
            billing_orders::state.eq(state.as_str()),
            billing_orders::checkout_url.eq(checkout_url),
            billing_orders::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)
        .map(drop)
}

/// An order the provider refused to create.
pub fn set_failed(conn: &mut DbConnection, id: i64) -> QueryResult<()> {
    diesel::update(billing_orders::table.find(id))
        .set((
            billing_orders::state.eq(ProviderState::Failed.as_str()),
            billing_orders::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)
        .map(drop)
}

pub fn find(conn: &mut DbConnection, id: i64) -> QueryResult<Option<Order>> {
    billing_orders::table
        .find(id)
        .select(order_columns!())
        .first(conn)
        .optional()
}

pub fn by_provider_id(
    conn: &mut DbConnection,
    provider_order_id: &str,
) -> QueryResult<Option<Order>> {
    billing_orders::table
        .filter(billing_orders::provider_order_id.eq(provider_order_id))
        .select(order_columns!())
        .first(conn)
        .optional()
}

pub fn of_tenant(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<Vec<Order>> {
    billing_orders::table
        .filter(billing_orders::tenant_id.eq(tenant_id))
        .order(billing_orders::id.desc())
        .limit(50)
        .select(order_columns!())
        .load(conn)
}

/// Orders still open at the provider, unchanged for `secs`: the reconciliation's work.
pub fn stuck(conn: &mut DbConnection, secs: u64) -> QueryResult<Vec<Order>> {
    let before = Utc::now().naive_utc() - TimeDelta::seconds(i64::try_from(secs).unwrap_or(86_400));
    billing_orders::table
        .filter(billing_orders::state.eq_any(["pending", "processing", "authorised"]))
        .filter(billing_orders::provider_order_id.is_not_null())
        .filter(billing_orders::updated_at.lt(before))
        .order(billing_orders::id.asc())
        .limit(100)
        .select(order_columns!())
        .load(conn)
}

/// What applying a provider state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order completed and was activated now (plan set or credits added).
    Activated,
    /// Its state changed (or not), nothing to activate.
    Updated,
}

/// Applies the state the provider reports for `order`, in one transaction. Activation
/// happens once: the `activated` flag flips false → true in the same statement that claims it.
/// States only move forward (a late `pending` never undoes `completed`).
pub fn apply(
    conn: &mut DbConnection,
    settings: &BillingSettings,
    order_id: i64,
    state: ProviderState,
) -> QueryResult<Applied> {
    crate::db::write_transaction(conn, |tx| {
        let Some(order) = find(tx, order_id)? else {
            return Ok(Applied::Updated);
        };
        let rank = |s: &str| match s {
            "created" => 0,
            "pending" => 1,
            "processing" => 2,
            "authorised" => 3,
            "completed" | "cancelled" | "failed" => 4,
            "refunded" => 5,
            _ => 0,
        };
        if rank(state.as_str()) < rank(&order.state) || order.state == "refunded" {
            return Ok(Applied::Updated);
        }
        let now = Utc::now().naive_utc();
        diesel::update(billing_orders::table.find(order_id))
            .set((
                billing_orders::state.eq(state.as_str()),
                billing_orders::updated_at.eq(now),
            ))
            .execute(tx)?;
        if state != ProviderState::Completed {
            return Ok(Applied::Updated);
        }
        let claimed = diesel::update(
            billing_orders::table
                .find(order_id)
                .filter(billing_orders::activated.eq(false)),
        )
        .set((
            billing_orders::activated.eq(true),
            billing_orders::completed_at.eq(now),
        ))
        .execute(tx)?;
        if claimed == 0 {
            return Ok(Applied::Updated);
        }
        let plans = super::plans::effective(settings);
        let plan = plans.get(&order.plan).cloned().unwrap_or_default();
        match plan.period {
            PlanPeriod::Monthly => {
                super::plans::set_plan(
                    tx,
                    order.tenant_id,
                    &order.plan,
                    Some(now + TimeDelta::days(31)),
                )?;
            }
            PlanPeriod::CreditPack => {
                ledger::append_clamped(
                    tx,
                    &NewEntry {
                        tenant_id: order.tenant_id,
                        kind: EntryKind::Purchase,
                        amount: i64::try_from(plan.credits).unwrap_or(i64::MAX),
                        order_id: Some(order.id),
                        user_id: order.user_id,
                        reason: &format!("order {}", order.reference),
                    },
                )?;
            }
        }
        crate::audit::record(
            tx,
            &crate::audit::AuditEvent {
                event: "billing.order_completed",
                actor_user_id: order.user_id,
                tenant_id: Some(order.tenant_id),
                subject: Some(format!("order:{}", order.id)),
                details: serde_json::json!({ "plan": order.plan, "amount_minor": order.amount_minor, "currency": order.currency }),
                ..crate::audit::AuditEvent::default()
            },
            now,
        )?;
        Ok(Applied::Activated)
    })
}

/// Marks an order refunded and takes back what it gave: the credits (as many as are left)
/// or the plan (back to the default).
pub fn refunded(
    conn: &mut DbConnection,
    settings: &BillingSettings,
    order: &Order,
    actor: i64,
) -> QueryResult<()> {
    crate::db::write_transaction(conn, |tx| {
        let now = Utc::now().naive_utc();
        diesel::update(billing_orders::table.find(order.id))
            .set((
                billing_orders::state.eq("refunded"),
                billing_orders::updated_at.eq(now),
            ))
            .execute(tx)?;
        let plans = super::plans::effective(settings);
        let plan = plans.get(&order.plan).cloned().unwrap_or_default();
        match plan.period {
            PlanPeriod::CreditPack => {
                ledger::append_clamped(
                    tx,
                    &NewEntry {
                        tenant_id: order.tenant_id,
                        kind: EntryKind::Refund,
                        amount: -i64::try_from(plan.credits).unwrap_or(i64::MAX),
                        order_id: Some(order.id),
                        user_id: Some(actor),
                        reason: &format!("refund of order {}", order.reference),
                    },
                )?;
            }
            PlanPeriod::Monthly => {
                super::plans::set_plan(tx, order.tenant_id, &settings.default_plan, None)?;
            }
        }
        crate::audit::record(
            tx,
            &crate::audit::AuditEvent {
                event: "billing.order_refunded",
                actor_user_id: Some(actor),
                tenant_id: Some(order.tenant_id),
                subject: Some(format!("order:{}", order.id)),
                details: serde_json::json!({ "amount_minor": order.amount_minor, "currency": order.currency }),
                ..crate::audit::AuditEvent::default()
            },
            now,
        )
    })
}
