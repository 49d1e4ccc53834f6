//! The edge: one policy (headers, CSP additions, IP allowlists, rate limits, trusted proxies,
//! WAF rules, the front proxy's TLS, the host firewall) that Conclave enforces in-process and
//! renders for Caddy, nginx and nftables.
//!
//! Policies are stored as versions in `edge_policies` (append-only; the newest is active; a
//! rollback stores an old document again). Every node polls the newest version number every
//! `edge.reload_secs` and swaps in the new policy, so a change made on one node is enforced on
//! all of them within that time (the saving node swaps at once).

pub mod agent;
pub mod enforce;
pub mod handlers;
pub mod policy;
pub mod render;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;

use crate::audit::{self, AuditEvent};
use crate::db::{Db, DbConnection, DbError};
use crate::error::AppError;
use crate::schema::{edge_agents, edge_policies};

pub use policy::EdgePolicy;

/// The policy in force, compiled for the middleware.
pub struct Active {
    /// 0 for the built-in default (nothing saved yet).
    pub version: i64,
    pub policy: EdgePolicy,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) denied_paths: Option<regex::Regex>,
    pub(crate) denied_agents: Option<regex::Regex>,
    pub(crate) limiters: Vec<Limiter>,
}

pub(crate) struct Limiter {
    pub rule: policy::RateLimit,
    pub keyed: DefaultKeyedRateLimiter<String>,
}

impl Active {
    fn compile(version: i64, policy: EdgePolicy) -> Result<Self, anyhow::Error> {
        let headers = policy
            .headers
            .iter()
            .map(|h| {
                Ok((
                    HeaderName::from_bytes(h.name.as_bytes())?,
                    HeaderValue::from_str(&h.value)?,
                ))
            })
            .collect::<Result<Vec<_>, anyhow::Error>>()?;
        // The same expressions the proxies get (edge::render), compiled once per version.
        let denied_paths = render::paths_regex(&policy.denied_path_patterns())
            .map(|re| regex::RegexBuilder::new(&re).case_insensitive(true).build())
            .transpose()?;
        let denied_agents = render::agents_regex(&policy.waf.deny_user_agents)
            .map(|re| regex::RegexBuilder::new(&re).case_insensitive(true).build())
            .transpose()?;
        let limiters = policy
            .rate_limits
            .iter()
            .filter_map(|rule| {
                let per_minute = NonZeroU32::new(rule.per_minute)?;
                let burst = NonZeroU32::new(rule.burst)?;
                Some(Limiter {
                    rule: rule.clone(),
                    keyed: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
                })
            })
            .collect();
        Ok(Self {
            version,
            policy,
            headers,
            denied_paths,
            denied_agents,
            limiters,
        })
    }

    /// The client's address: the TCP peer, or — when the peer is a trusted proxy — the
    /// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.policy.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let Some(header) = forwarded_for else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in header.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // A garbled hop: stop at the last address we could trust to have written it.
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        Some(client)
    }
}

#[derive(Clone)]
pub struct Edge {
    db: Db,
    active: Arc<RwLock<Arc<Active>>>,
    /// `server.admin_listen`: when set, `/admin` answers only there.
    pub admin_listen: Option<SocketAddr>,
}

/// One stored version, as the admin history shows it.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = edge_policies)]
pub struct Version {
    pub version: i64,
    #[serde(skip)]
    pub document: String,
    pub comment: String,
    pub rolled_back_from: Option<i64>,
    pub created_by: Option<i64>,
    #[schema(value_type = String)]
    pub created_at: NaiveDateTime,
}

/// What an edge agent last reported.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = edge_agents)]
pub struct AgentReport {
    pub name: String,
    pub format: String,
    pub applied_version: Option<i64>,
    pub status: String,
    pub error: Option<String>,
    pub address: Option<String>,
    #[schema(value_type = String)]
    pub reported_at: NaiveDateTime,
}

impl Edge {
    async fn query<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut DbConnection) -> QueryResult<T> + Send + 'static,
    ) -> Result<T, AppError> {
        self.db
            .run(move |conn| work(conn).map_err(AppError::from))
            .await
    }

    /// Loads the newest stored policy (or the built-in default).
    pub async fn load(db: Db, admin_listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        let active = Self::read_newest(&db).await?;
        Ok(Self {
            db,
            active: Arc::new(RwLock::new(Arc::new(active))),
            admin_listen,
        })
    }

    async fn read_newest(db: &Db) -> anyhow::Result<Active> {
        let newest: Option<(i64, String)> = db
            .run(|conn| {
                edge_policies::table
                    .order(edge_policies::version.desc())
                    .select((edge_policies::version, edge_policies::document))
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?;
        match newest {
            None => Active::compile(0, EdgePolicy::default()),
            Some((version, document)) => {
                let policy = EdgePolicy::parse(&document)
                    .map_err(|e| anyhow::anyhow!("stored edge policy {version} is invalid: {e}"))?;
                Active::compile(version, policy)
            }
        }
    }

    pub fn active(&self) -> Arc<Active> {
        match self.active.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, active: Active) {
        tracing::info!(version = active.version, "edge policy in force");
        metrics::gauge!("edge_policy_version").set(active.version as f64);
        let active = Arc::new(active);
        match self.active.write() {
            Ok(mut guard) => *guard = active,
            Err(poisoned) => *poisoned.into_inner() = active,
        }
    }

    /// Polls for a newer version every `every`, so a change saved on another node is enforced
    /// here too. A stored version that does not compile (it was validated when saved, so only
    /// a newer server's document could) is logged and the current policy kept.
    pub fn spawn_watcher(&self, every: Duration) {
        let edge = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let newest: Result<Option<i64>, DbError> = edge
                    .db
                    .run(|conn| {
                        edge_policies::table
                            .select(diesel::dsl::max(edge_policies::version))
                            .first(conn)
                            .map_err(DbError::from)
                    })
                    .await;
                match newest {
                    Ok(newest) if newest.unwrap_or(0) != edge.active().version => {
                        match Self::read_newest(&edge.db).await {
                            Ok(active) => edge.swap(active),
                            Err(error) => {
                                tracing::error!(error = %format!("{error:#}"), "cannot load the new edge policy; keeping the current one");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot check for a new edge policy"),
                }
            }
        });
    }

    /// Validates and stores `policy` as the next version, audited with before and after, and
    /// puts it in force on this node at once.
    pub async fn save(
        &self,
        policy: EdgePolicy,
        comment: &str,
        actor: Option<i64>,
        ip: Option<String>,
        rolled_back_from: Option<i64>,
    ) -> Result<i64, AppError> {
        policy
            .validate()
            .map_err(|invalid| AppError::BadRequest(format!("The policy is invalid: {invalid}")))?;
        let comment = comment.trim().chars().take(200).collect::<String>();
        let document = serde_json::to_string(&policy).map_err(AppError::internal)?;
        let before = self.active();
        let before_json = serde_json::to_value(&before.policy).map_err(AppError::internal)?;
        let after_json = serde_json::to_value(&policy).map_err(AppError::internal)?;
        let now = chrono::Utc::now().naive_utc();
        let version = self
            .db
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let version: i64 = diesel::insert_into(edge_policies::table)
                        .values((
                            edge_policies::document.eq(&document),
                            edge_policies::comment.eq(&comment),
                            edge_policies::rolled_back_from.eq(rolled_back_from),
                            edge_policies::created_by.eq(actor),
                            edge_policies::created_at.eq(now),
                        ))
                        .returning(edge_policies::version)
                        .get_result(conn)?;
                    audit::record(
                        conn,
                        &AuditEvent {
                            event: if rolled_back_from.is_some() {
                                "edge.policy_rolled_back"
                            } else {
                                "edge.policy_saved"
                            },
                            actor_user_id: actor,
                            subject: Some(format!("edge_policy:{version}")),
                            ip,
                            details: serde_json::json!({
                                "version": version,
                                "comment": comment,
                                "rolled_back_from": rolled_back_from,
                                "before": before_json,
                                "after": after_json,
                            }),
                            ..AuditEvent::default()
                        },
                        now,
                    )?;
                    Ok::<_, AppError>(version)
                })
            })
            .await?;
        let active = Active::compile(version, policy).map_err(AppError::internal)?;
        self.swap(active);
        Ok(version)
    }

    /// Stores version `to` (0: the built-in default) again as the newest version. `actor` is
    /// `None` from the command line (the host's operator).
    pub async fn rollback(
        &self,
        to: i64,
        actor: Option<i64>,
        ip: Option<String>,
    ) -> Result<i64, AppError> {
        if to == 0 {
            return self
                .save(
                    EdgePolicy::default(),
                    "Back to the built-in default",
                    actor,
                    ip,
                    Some(0),
                )
                .await;
        }
        let document: Option<String> = self
            .query(move |conn| {
                edge_policies::table
                    .find(to)
                    .select(edge_policies::document)
                    .first(conn)
                    .optional()
            })
            .await?;
        let document =
            document.ok_or_else(|| AppError::NotFound(format!("There is no version {to}.")))?;
        let policy = EdgePolicy::parse(&document)
            .map_err(|e| AppError::Conflict(format!("Version {to} cannot be restored: {e}")))?;
        self.save(
            policy,
            &format!("Rollback to version {to}"),
            actor,
            ip,
            Some(to),
        )
        .await
    }

    /// The newest versions first.
    pub async fn history(&self, limit: i64) -> Result<Vec<Version>, AppError> {
        self.query(move |conn| {
            edge_policies::table
                .order(edge_policies::version.desc())
                .limit(limit)
                .select(Version::as_select())
                .load(conn)
        })
        .await
    }

    pub async fn version(&self, version: i64) -> Result<EdgePolicy, AppError> {
        if version == 0 {
            return Ok(EdgePolicy::default());
        }
        let document: Option<String> = self
            .query(move |conn| {
                edge_policies::table
                    .find(version)
                    .select(edge_policies::document)
                    .first(conn)
                    .optional()
            })
            .await?;
        let document = document
            .ok_or_else(|| AppError::NotFound(format!("There is no version {version}.")))?;
        EdgePolicy::parse(&document)
            .map_err(|e| AppError::Conflict(format!("Version {version} is unreadable: {e}")))
    }

    /// Records what an agent applied (or failed to).
    pub async fn report(&self, report: AgentReport) -> Result<(), AppError> {
        let metric_status = report.status.clone();
        self.query(move |conn| {
            diesel::delete(edge_agents::table.find(&report.name)).execute(conn)?;
            diesel::insert_into(edge_agents::table)
                .values((
                    edge_agents::name.eq(&report.name),
                    edge_agents::format.eq(&report.format),
                    edge_agents::applied_version.eq(report.applied_version),
                    edge_agents::status.eq(&report.status),
                    edge_agents::error.eq(&report.error),
                    edge_agents::address.eq(&report.address),
                    edge_agents::reported_at.eq(report.reported_at),
                ))
                .execute(conn)
        })
        .await?;
        metrics::counter!("edge_agent_reports_total", "status" => metric_status).increment(1);
        Ok(())
    }

    pub async fn agents(&self) -> Result<Vec<AgentReport>, AppError> {
        self.query(|conn| {
            edge_agents::table
                .order(edge_agents::name)
                .select(AgentReport::as_select())
                .load(conn)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(trusted: &[&str]) -> Active {
        let policy = EdgePolicy {
            trusted_proxies: trusted.iter().map(|c| c.parse().expect("cidr")).collect(),
            ..EdgePolicy::default()
        };
        Active::compile(1, policy).expect("compiles")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let edge = active(&["10.0.0.0/8"]);
        // An untrusted peer's header is ignored: it could name anyone.
        assert_eq!(
            edge.client_ip(Some(ip("203.0.113.9")), Some("1.2.3.4")),
            Some(ip("203.0.113.9"))
        );
        // A trusted proxy's: the right-most untrusted hop is the client; hops a client
        // wrote itself (left of it) are ignored.
        assert_eq!(
            edge.client_ip(
                Some(ip("10.0.0.2")),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.5")
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            edge.client_ip(Some(ip("10.0.0.2")), Some("garbage, 198.51.100.7")),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            edge.client_ip(Some(ip("10.0.0.2")), Some("198.51.100.7, garbage")),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            edge.client_ip(Some(ip("10.0.0.2")), None),
            Some(ip("10.0.0.2"))
        );
    }
}
