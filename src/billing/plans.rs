//! Plans: what a workspace may use (daily requests and tokens, monthly tokens, seats, devices)
//! and what it costs. Every workspace is on one; new ones on `billing.default_plan`.

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConnection;
use crate::schema::tenants;
use crate::settings::{BillingSettings, PlanPeriod, PlanSettings};

/// The configured plans, or the built-in ones when none are configured.
pub fn effective(settings: &BillingSettings) -> BTreeMap<String, PlanSettings> {
    settings.effective_plans()
}

/// A plan as pages and the API show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub name: String,
    pub label: String,
    pub price_minor: i64,
    pub currency: String,
    /// `monthly` or `credit_pack`.
    #[schema(value_type = String)]
    pub period: PlanPeriod,
    pub daily_requests: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    pub seats: Option<u64>,
    pub devices: Option<u64>,
    pub credits: u64,
    /// "€15.00" and the like.
    pub price: String,
}

pub fn view(name: &str, plan: &PlanSettings) -> PlanView {
    PlanView {
        name: name.to_owned(),
        label: if plan.label.is_empty() {
            name.to_owned()
        } else {
            plan.label.clone()
        },
        price_minor: plan.price_minor,
        currency: plan.currency.clone(),
        period: plan.period,
        daily_requests: plan.daily_requests,
        daily_tokens: plan.daily_tokens,
        monthly_tokens: plan.monthly_tokens,
        seats: plan.seats,
        devices: plan.devices,
        credits: plan.credits,
        price: money(plan.price_minor, &plan.currency),
    }
}

/// `1500, "EUR"` → "€15.00"; other currencies as "15.00 CHF". Every currency we sell in has two
/// decimals (Revolut's minor unit); a currency without (JPY) would need its own exponent.
pub fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    let amount = format!("{}.{:02}", minor / 100, minor % 100);
    match currency {
        "EUR" => format!("{sign}€{amount}"),
        "GBP" => format!("{sign}£{amount}"),
        "USD" => format!("{sign}${amount}"),
        other => format!("{sign}{amount} {other}"),
    }
}

/// The plan a workspace is on (the default plan if it names one that no longer exists).
pub fn plan_of(
    conn: &mut DbConnection,
    settings: &BillingSettings,
    tenant_id: i64,
) -> QueryResult<(String, PlanSettings)> {
    let name: String = tenants::table
        .find(tenant_id)
        .select(tenants::plan)
        .first(conn)?;
    let plans = effective(settings);
    match plans.get(&name) {
        Some(plan) => Ok((name, plan.clone())),
        None => {
            let default = settings.default_plan.clone();
            let plan = plans.get(&default).cloned().unwrap_or_default();
            Ok((default, plan))
        }
    }
}

pub fn set_plan(
    conn: &mut DbConnection,
    tenant_id: i64,
    plan: &str,
    until: Option<NaiveDateTime>,
) -> QueryResult<()> {
    diesel::update(tenants::table.find(tenant_id))
        .set((
            tenants::plan.eq(plan),
            tenants::plan_renews_at.eq(until),
            tenants::plan_changed_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)
        .map(drop)
}

/// Seats a workspace uses: its members and the invitations still open.
pub fn seats_used(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<u64> {
    use crate::schema::{invitations, memberships};
    let members: i64 = memberships::table
        .filter(memberships::tenant_id.eq(tenant_id))
        .count()
        .get_result(conn)?;
    let invited: i64 = invitations::table
        .filter(invitations::tenant_id.eq(tenant_id))
        .filter(invitations::accepted_at.is_null())
        .filter(invitations::expires_at.gt(Utc::now().naive_utc()))
        .count()
        .get_result(conn)?;
    Ok((members + invited).max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_like_a_price() {
        assert_eq!(money(1_500, "EUR"), "€15.00");
        assert_eq!(money(5, "GBP"), "£0.05");
        assert_eq!(money(123_456, "CHF"), "1234.56 CHF");
        assert_eq!(money(-250, "USD"), "-$2.50");
    }
}
