//! Sign-in through OpenID Connect providers, and GitHub (which speaks OAuth 2 only).
//!
//! - Authorization code flow with PKCE (S256), a random `state` and, for OpenID Connect, a
//!   nonce checked in the verified ID token (the `openidconnect` crate does discovery, JWKS,
//!   signature, issuer, audience, expiry and nonce checks).
//! - The flow lives in `oidc_flows` (10 minutes, single use) keyed by SHA-256 of `state`;
//!   the browser holds `state` in a cookie too, so a callback URL made by someone else (login
//!   CSRF: an attacker's code sent to a victim) does not match.
//! - Accounts: a known provider account signs in as its user; a new address creates a verified
//!   user (if sign-up is open); an address that already has an account is **not** linked by
//!   email alone: the person signs in the usual way first and connects the provider from the
//!   security page, which proves they own both.
//! - Provider tokens are sealed at rest (AES-256-GCM, purpose `oidc-tokens`, bound to
//!   provider + subject). The second factor still applies to federated sign-ins.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreProviderMetadata,
    CoreUserInfoClaims,
};
use openidconnect::{
    AsyncHttpClient, AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    HttpClientError, HttpRequest, HttpResponse, IssuerUrl, JsonWebKeySet, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _, TokenUrl,
};
use secrecy::ExposeSecret as _;
use serde::Serialize;

use super::Email;
use super::users::{self, CreateUserError, CreatedVia, NewUser};
use crate::audit::{self, AuditEvent, events};
use crate::crypto::Sealer;
use crate::db::{Db, DbConnection, DbError};
use crate::schema::{oidc_flows, user_identities, users as users_table};
use crate::settings::{OidcProviderSettings, ProviderKind};

/// How long a started sign-in may take at the provider.
pub const FLOW_MINUTES: i64 = 10;
/// Largest answer read from a provider (discovery documents, keys, tokens, profiles).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("There is no sign-in provider called \"{0}\" on this server.")]
    UnknownProvider(String),
    #[error("This sign-in attempt has expired or was already used; please start again.")]
    FlowExpired,
    #[error("{provider} did not sign you in: {reason}")]
    Refused { provider: String, reason: String },
    #[error(
        "{provider} could not be reached or gave an answer we cannot trust; please try again later."
    )]
    Provider {
        provider: String,
        #[source]
        source: anyhow::Error,
    },
    #[error(
        "{provider} did not confirm an email address for your account; verify one there, then try again."
    )]
    EmailUnverified { provider: String },
    #[error(
        "An account with this email address already exists. Sign in with your password, then connect {provider} on the Security page."
    )]
    NeedsProof { provider: String, email: String },
    #[error("This {provider} account is already connected to another Conclave account.")]
    LinkedElsewhere { provider: String },
    #[error("Sign-up is closed on this server; ask an administrator for an invitation.")]
    SignupClosed,
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for OidcError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}

/// A provider people can sign in with, as the pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderButton {
    pub name: String,
    pub label: String,
}

/// A started sign-in: where to send the browser, and the `state` its cookie must carry.
pub struct Started {
    pub authorize_url: url::Url,
    pub state: String,
}

/// What a finished round trip at the provider means.
pub enum Finished {
    /// Sign this user in (the login service applies 2FA and the usual checks).
    SignIn { user_id: i64, next: String },
    /// A signed-in person connected the provider to their account.
    Connected { user_id: i64 },
}

/// A connected provider account, as listed on the security page.
#[derive(Debug, Clone, Queryable)]
pub struct LinkedIdentity {
    pub id: i64,
    pub provider: String,
    pub email: String,
    pub created_at: NaiveDateTime,
    pub last_login_at: Option<NaiveDateTime>,
}

/// Who the provider says this is.
struct Profile {
    subject: String,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
    tokens: serde_json::Value,
}

#[derive(Clone)]
pub struct Federation {
    db: Db,
    providers: Arc<BTreeMap<String, OidcProviderSettings>>,
    http: Http,
    discovered: moka::future::Cache<String, Arc<CoreProviderMetadata>>,
    sealer: Arc<Sealer>,
    public_url: String,
    signup_enabled: bool,
}

impl Federation {
    /// Cached discovery documents of the OIDC providers (admin's caches page).
    pub fn discovery_entries(&self) -> u64 {
        self.discovered.entry_count()
    }

    /// Forgets the discovery documents: the next sign-in fetches them again.
    pub fn clear_discovery(&self) {
        self.discovered.invalidate_all();
    }

    pub fn new(
        db: Db,
        providers: BTreeMap<String, OidcProviderSettings>,
        sealer: Sealer,
        public_url: String,
        signup_enabled: bool,
    ) -> anyhow::Result<Self> {
        // No redirects: a provider endpoint that redirects is misconfigured, and following
        // one could carry a client secret somewhere else.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("Conclave/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            db,
            providers: Arc::new(providers),
            http: Http(client),
            discovered: moka::future::Cache::builder()
                .max_capacity(64)
                .time_to_live(Duration::from_secs(15 * 60))
                .build(),
            sealer: Arc::new(sealer),
            public_url,
            signup_enabled,
        })
    }

    /// The configured providers, in name order.
    pub fn buttons(&self) -> Vec<ProviderButton> {
        self.providers
            .iter()
            .map(|(name, provider)| ProviderButton {
                name: name.clone(),
                label: provider.label(name),
            })
            .collect()
    }

    pub fn label(&self, name: &str) -> String {
        self.providers
            .get(name)
            .map_or_else(|| name.to_owned(), |p| p.label(name))
    }

    fn provider(&self, name: &str) -> Result<&OidcProviderSettings, OidcError> {
        self.providers
            .get(name)
            .ok_or_else(|| OidcError::UnknownProvider(name.to_owned()))
    }

    fn redirect_url(&self, name: &str) -> Result<RedirectUrl, OidcError> {
        RedirectUrl::new(format!("{}/login/oidc/{name}/callback", self.public_url))
            .map_err(|e| self.provider_error(name, anyhow::anyhow!("bad redirect URL: {e}")))
    }

    fn provider_error(&self, name: &str, source: anyhow::Error) -> OidcError {
        tracing::warn!(
            provider = name,
            error = format!("{source:#}"),
            "sign-in provider failed"
        );
        metrics::counter!("oidc_provider_errors_total", "provider" => name.to_owned()).increment(1);
        OidcError::Provider {
            provider: self.label(name),
            source,
        }
    }

    /// Starts a sign-in (or, with `link_user_id`, connecting a provider to that account).
    pub async fn begin(
        &self,
        name: &str,
        next: String,
        link_user_id: Option<i64>,
    ) -> Result<Started, OidcError> {
        let provider = self.provider(name)?;
        let redirect = self.redirect_url(name)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = CsrfToken::new_random();
        let nonce = Nonce::new_random();
        let authorize_url = match provider.kind {
            ProviderKind::Oidc => {
                let client = self.oidc_client(name, provider).await?;
                let mut request = client
                    .authorize_url(
                        CoreAuthenticationFlow::AuthorizationCode,
                        {
                            let state = state.clone();
                            move || state
                        },
                        {
                            let nonce = nonce.clone();
                            move || nonce
                        },
                    )
                    .add_scope(Scope::new("email".to_owned()))
                    .add_scope(Scope::new("profile".to_owned()))
                    .set_pkce_challenge(challenge);
                for scope in provider.extra_scopes.split_whitespace() {
                    request = request.add_scope(Scope::new(scope.to_owned()));
                }
                request.url().0
            }
            ProviderKind::Github => {
                // GitHub is not an OpenID provider: its authorize URL is built by hand (the
                // OIDC client would add the `openid` scope and a nonce GitHub ignores).
                let mut url = url::Url::parse(&format!(
                    "{}/login/oauth/authorize",
                    provider.github_url.trim_end_matches('/')
                ))
                .map_err(|e| self.provider_error(name, e.into()))?;
                let mut scopes = vec!["read:user", "user:email"];
                scopes.extend(provider.extra_scopes.split_whitespace());
                url.query_pairs_mut()
                    .append_pair("client_id", &provider.client_id)
                    .append_pair("redirect_uri", redirect.as_str())
                    .append_pair("scope", &scopes.join(" "))
                    .append_pair("state", state.secret())
                    .append_pair("code_challenge", challenge.as_str())
                    .append_pair("code_challenge_method", "S256")
                    .append_pair("allow_signup", "true");
                url
            }
        };
        let id = super::sessions::token_id(state.secret());
        let verifier_sealed = self
            .sealer
            .seal(verifier.secret().as_bytes(), id.as_bytes());
        let (provider_name, nonce) = (name.to_owned(), nonce.secret().clone());
        self.db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                diesel::insert_into(oidc_flows::table)
                    .values((
                        oidc_flows::id.eq(&id),
                        oidc_flows::provider.eq(&provider_name),
                        oidc_flows::verifier_sealed.eq(&verifier_sealed),
                        oidc_flows::nonce.eq(&nonce),
                        oidc_flows::next_path.eq(&next),
                        oidc_flows::link_user_id.eq(link_user_id),
                        oidc_flows::created_at.eq(now),
                        oidc_flows::expires_at.eq(now + TimeDelta::minutes(FLOW_MINUTES)),
                    ))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await?;
        Ok(Started {
            authorize_url,
            state: state.secret().clone(),
        })
    }

    /// Finishes the round trip: checks `state` against the browser's cookie, spends the flow,
    /// exchanges the code and decides which account this is.
    pub async fn finish(
        &self,
        name: &str,
        code: String,
        state: &str,
        cookie_state: Option<&str>,
        client_ip: Option<String>,
    ) -> Result<Finished, OidcError> {
        let provider = self.provider(name)?.clone();
        let same_browser = cookie_state.is_some_and(|cookie| {
            subtle::ConstantTimeEq::ct_eq(cookie.as_bytes(), state.as_bytes()).into()
        });
        if !same_browser {
            return Err(OidcError::FlowExpired);
        }
        let id = super::sessions::token_id(state);
        let provider_name = name.to_owned();
        let flow_id = id.clone();
        let flow: Option<(String, String, String, Option<i64>)> = self
            .db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let flow = oidc_flows::table
                        .find(&flow_id)
                        .filter(oidc_flows::provider.eq(&provider_name))
                        .filter(oidc_flows::expires_at.gt(now))
                        .select((
                            oidc_flows::verifier_sealed,
                            oidc_flows::nonce,
                            oidc_flows::next_path,
                            oidc_flows::link_user_id,
                        ))
                        .first(tx)
                        .optional()?;
                    diesel::delete(oidc_flows::table.find(&flow_id)).execute(tx)?;
                    Ok::<_, diesel::result::Error>(flow)
                })
                .map_err(DbError::from)
            })
            .await?;
        let Some((verifier_sealed, nonce, next, link_user_id)) = flow else {
            return Err(OidcError::FlowExpired);
        };
        let verifier = self
            .sealer
            .open(&verifier_sealed, id.as_bytes())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(OidcError::FlowExpired)?;
        let profile = match provider.kind {
            ProviderKind::Oidc => {
                self.oidc_profile(name, &provider, code, verifier, nonce)
                    .await?
            }
            ProviderKind::Github => self.github_profile(name, &provider, code, verifier).await?,
        };
        self.resolve(name, profile, link_user_id, next, client_ip)
            .await
    }

    async fn metadata(
        &self,
        name: &str,
        provider: &OidcProviderSettings,
    ) -> Result<Arc<CoreProviderMetadata>, OidcError> {
        let issuer = provider.issuer_url.clone().unwrap_or_default();
        let http = self.http.clone();
        self.discovered
            .try_get_with(name.to_owned(), async move {
                let issuer = IssuerUrl::new(issuer)?;
                let metadata = CoreProviderMetadata::discover_async(issuer, &http).await?;
                Ok::<_, anyhow::Error>(Arc::new(metadata))
            })
            .await
            .map_err(|e| self.provider_error(name, anyhow::anyhow!("discovery: {e:#}")))
    }

    async fn oidc_client(
        &self,
        name: &str,
        provider: &OidcProviderSettings,
    ) -> Result<OidcClient, OidcError> {
        let metadata = self.metadata(name, provider).await?;
        // Prefer HTTP Basic client authentication; use the request body when the provider
        // only offers that.
        let post_only = metadata
            .token_endpoint_auth_methods_supported()
            .is_some_and(|methods| {
                !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && methods.contains(&CoreClientAuthMethod::ClientSecretPost)
            });
        let client = CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(provider.client_id.clone()),
            provider
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose_secret().to_owned())),
        )
        .set_redirect_uri(self.redirect_url(name)?);
        Ok(if post_only {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        })
    }

    async fn oidc_profile(
        &self,
        name: &str,
        provider: &OidcProviderSettings,
        code: String,
        verifier: String,
        nonce: String,
    ) -> Result<Profile, OidcError> {
        let fail = |e: anyhow::Error| self.provider_error(name, e);
        let client = self.oidc_client(name, provider).await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| fail(e.into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| fail(anyhow::anyhow!("token exchange: {e}")))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| fail(anyhow::anyhow!("the token response has no ID token")))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce))
            .map_err(|e| fail(anyhow::anyhow!("ID token rejected: {e}")))?;
        let subject = claims.subject().to_string();
        let mut email = claims.email().map(|e| e.to_string());
        let mut email_verified = claims.email_verified().unwrap_or(false);
        let mut name_claim = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string());
        // Some providers put the email only in the user-info answer.
        if email.is_none()
            && let Ok(request) = client.user_info(token.access_token().clone(), None)
        {
            let info: CoreUserInfoClaims = request
                .request_async(&self.http)
                .await
                .map_err(|e| fail(anyhow::anyhow!("user info: {e}")))?;
            if info.subject().as_str() == subject {
                email = info.email().map(|e| e.to_string());
                email_verified = info.email_verified().unwrap_or(false);
                name_claim = name_claim
                    .or_else(|| info.name().and_then(|n| n.get(None)).map(|n| n.to_string()));
            }
        }
        Ok(Profile {
            subject,
            email,
            email_verified,
            name: name_claim,
            tokens: serde_json::json!({
                "access_token": token.access_token().secret(),
                "refresh_token": token.refresh_token().map(|t| t.secret().clone()),
                "expires_in": token.expires_in().map(|d| d.as_secs()),
            }),
        })
    }

    async fn github_profile(
        &self,
        name: &str,
        provider: &OidcProviderSettings,
        code: String,
        verifier: String,
    ) -> Result<Profile, OidcError> {
        let fail = |e: anyhow::Error| self.provider_error(name, e);
        let base = provider.github_url.trim_end_matches('/');
        let token_url = TokenUrl::new(format!("{base}/login/oauth/access_token"))
            .map_err(|e| fail(e.into()))?;
        let issuer = IssuerUrl::new(base.to_owned()).map_err(|e| fail(e.into()))?;
        let client = CoreClient::new(
            ClientId::new(provider.client_id.clone()),
            issuer,
            JsonWebKeySet::default(),
        )
        .set_client_secret(ClientSecret::new(
            provider
                .client_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
                .unwrap_or_default(),
        ))
        .set_token_uri(token_url)
        .set_redirect_uri(self.redirect_url(name)?)
        .set_auth_type(AuthType::RequestBody);
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| fail(anyhow::anyhow!("token exchange: {e}")))?;
        let access = token.access_token().secret().clone();
        let api = provider.github_api_url.trim_end_matches('/');
        let user: GithubUser = self
            .github_get(&format!("{api}/user"), &access)
            .await
            .map_err(fail)?;
        let emails: Vec<GithubEmail> = self
            .github_get(&format!("{api}/user/emails"), &access)
            .await
            .map_err(fail)?;
        let primary = emails.iter().find(|e| e.primary && e.verified);
        Ok(Profile {
            subject: user.id.to_string(),
            email: primary
                .or_else(|| emails.iter().find(|e| e.primary))
                .map(|e| e.email.clone()),
            email_verified: primary.is_some(),
            name: user
                .name
                .filter(|n| !n.trim().is_empty())
                .or(Some(user.login)),
            tokens: serde_json::json!({ "access_token": access }),
        })
    }

    async fn github_get<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .0
            .get(url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await?;
        let status = response.status();
        let body = read_limited(response).await?;
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
        Ok(serde_json::from_slice(&body)?)
    }

    /// Decides which account the provider's answer belongs to, in one transaction.
    async fn resolve(
        &self,
        name: &str,
        profile: Profile,
        link_user_id: Option<i64>,
        next: String,
        client_ip: Option<String>,
    ) -> Result<Finished, OidcError> {
        let label = self.label(name);
        let provider = name.to_owned();
        let tokens_sealed = self.sealer.seal(
            profile.tokens.to_string().as_bytes(),
            format!("{provider}:{}", profile.subject).as_bytes(),
        );
        let signup_enabled = self.signup_enabled;
        self.db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let existing: Option<i64> = user_identities::table
                        .filter(user_identities::provider.eq(&provider))
                        .filter(user_identities::subject.eq(&profile.subject))
                        .select(user_identities::user_id)
                        .first(tx)
                        .optional()?;
                    let record = |tx: &mut DbConnection, event, user_id: i64| {
                        audit::record(
                            tx,
                            &AuditEvent {
                                event,
                                actor_user_id: Some(user_id),
                                subject: Some(format!("user:{user_id}")),
                                ip: client_ip.clone(),
                                details: serde_json::json!({
                                    "provider": provider,
                                    "email": profile.email,
                                }),
                                ..AuditEvent::default()
                            },
                            now,
                        )
                    };
                    if let Some(user_id) = existing {
                        if link_user_id.is_some_and(|me| me != user_id) {
                            return Err(OidcError::LinkedElsewhere { provider: label });
                        }
                        diesel::update(
                            user_identities::table
                                .filter(user_identities::provider.eq(&provider))
                                .filter(user_identities::subject.eq(&profile.subject)),
                        )
                        .set((
                            user_identities::tokens_sealed.eq(Some(&tokens_sealed)),
                            user_identities::last_login_at.eq(Some(now)),
                            user_identities::email.eq(profile.email.clone().unwrap_or_default()),
                        ))
                        .execute(tx)?;
                        return Ok(match link_user_id {
                            Some(_) => Finished::Connected { user_id },
                            None => Finished::SignIn { user_id, next },
                        });
                    }
                    let insert = |tx: &mut DbConnection, user_id: i64| {
                        diesel::insert_into(user_identities::table)
                            .values((
                                user_identities::user_id.eq(user_id),
                                user_identities::provider.eq(&provider),
                                user_identities::subject.eq(&profile.subject),
                                user_identities::email
                                    .eq(profile.email.clone().unwrap_or_default()),
                                user_identities::tokens_sealed.eq(Some(&tokens_sealed)),
                                user_identities::created_at.eq(now),
                                user_identities::last_login_at.eq(Some(now)),
                            ))
                            .execute(tx)
                    };
                    if let Some(user_id) = link_user_id {
                        // Signed in already: being here proves they own both accounts.
                        insert(tx, user_id)?;
                        record(tx, events::IDENTITY_LINKED, user_id)?;
                        return Ok(Finished::Connected { user_id });
                    }
                    let email = match (&profile.email, profile.email_verified) {
                        (Some(email), true) => {
                            Email::parse(email).map_err(|_| OidcError::EmailUnverified {
                                provider: label.clone(),
                            })?
                        }
                        _ => return Err(OidcError::EmailUnverified { provider: label }),
                    };
                    if users::find_by_email(tx, &email)?.is_some() {
                        return Err(OidcError::NeedsProof {
                            provider: label,
                            email: email.as_str().to_owned(),
                        });
                    }
                    if !signup_enabled {
                        return Err(OidcError::SignupClosed);
                    }
                    let display_name = profile
                        .name
                        .as_deref()
                        .and_then(|n| users::parse_display_name(n).ok())
                        .unwrap_or_else(|| {
                            email
                                .as_str()
                                .split('@')
                                .next()
                                .unwrap_or_default()
                                .to_owned()
                        });
                    let (user, _) = users::create(
                        tx,
                        NewUser {
                            email: email.clone(),
                            display_name,
                            password_hash: None,
                            verified: true,
                            role: None,
                            via: CreatedVia::Provider,
                        },
                    )
                    .map_err(|e| match e {
                        // Someone signed up with the address a moment ago.
                        CreateUserError::EmailTaken => OidcError::NeedsProof {
                            provider: label.clone(),
                            email: email.as_str().to_owned(),
                        },
                        CreateUserError::Database(e) => e.into(),
                    })?;
                    insert(tx, user.id)?;
                    record(tx, events::IDENTITY_LINKED, user.id)?;
                    Ok(Finished::SignIn {
                        user_id: user.id,
                        next,
                    })
                })
            })
            .await
    }

    /// The provider accounts connected to a user.
    pub async fn linked(&self, user_id: i64) -> Result<Vec<LinkedIdentity>, DbError> {
        self.db
            .run(move |conn| {
                user_identities::table
                    .filter(user_identities::user_id.eq(user_id))
                    .order(user_identities::id)
                    .select((
                        user_identities::id,
                        user_identities::provider,
                        user_identities::email,
                        user_identities::created_at,
                        user_identities::last_login_at,
                    ))
                    .load(conn)
                    .map_err(DbError::from)
            })
            .await
    }

    /// Disconnects a provider account, unless it is the only way left to sign in.
    /// `Ok(false)`: no such connection of this user.
    pub async fn unlink(
        &self,
        user_id: i64,
        identity_id: i64,
        ip: Option<String>,
    ) -> Result<bool, UnlinkError> {
        self.db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let provider: Option<String> = user_identities::table
                        .find(identity_id)
                        .filter(user_identities::user_id.eq(user_id))
                        .select(user_identities::provider)
                        .first(tx)
                        .optional()?;
                    let Some(provider) = provider else {
                        return Ok(false);
                    };
                    let has_password: Option<String> = users_table::table
                        .find(user_id)
                        .select(users_table::password_hash)
                        .first(tx)?;
                    let others: i64 = user_identities::table
                        .filter(user_identities::user_id.eq(user_id))
                        .filter(user_identities::id.ne(identity_id))
                        .count()
                        .get_result(tx)?;
                    if has_password.is_none() && others == 0 {
                        return Err(UnlinkError::LastWayIn);
                    }
                    diesel::delete(user_identities::table.find(identity_id)).execute(tx)?;
                    audit::record(
                        tx,
                        &AuditEvent {
                            ip: ip.clone(),
                            details: serde_json::json!({ "provider": provider }),
                            ..AuditEvent::by_user(events::IDENTITY_UNLINKED, user_id)
                        },
                        Utc::now().naive_utc(),
                    )?;
                    Ok(true)
                })
            })
            .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnlinkError {
    #[error(
        "This is the only way you can sign in: set a password (Forgot password on the sign-in page) before disconnecting it."
    )]
    LastWayIn,
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for UnlinkError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}

/// Deletes flows nobody finished.
pub fn sweep_flows(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(oidc_flows::table.filter(oidc_flows::expires_at.le(now))).execute(conn)
}

type OidcClient = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

#[derive(serde::Deserialize)]
struct GithubUser {
    id: u64,
    login: String,
    name: Option<String>,
}

#[derive(serde::Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

/// The HTTP client the `openidconnect` crate calls through. Its own reqwest integration is
/// pinned to reqwest 0.12; this adapter lets it share our reqwest 0.13 (one TLS stack, one
/// connection pool) and caps the size of what a provider may send back.
#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(Box::new)?;
            let response = self.0.execute(request).await.map_err(Box::new)?;
            let mut builder = openidconnect::http::Response::builder()
                .status(response.status())
                .version(response.version());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = read_limited(response)
                .await
                .map_err(|e| HttpClientError::Other(format!("{e:#}")))?;
            Ok(builder.body(body)?)
        })
    }
}

async fn read_limited(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        anyhow::ensure!(
            body.len() + chunk.len() <= MAX_RESPONSE_BYTES,
            "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
