//! The edge policy document and its validation.
//!
//! One document (JSON, stored per version in `edge_policies`) says what the edge does: extra
//! response headers and CSP sources, IP allowlists and rate limits per path prefix, the proxies
//! whose `X-Forwarded-For` is believed, WAF rules, the front proxy's TLS, and the host
//! firewall. Conclave enforces it in-process (`edge::enforce`) and renders it for Caddy, nginx
//! and nftables (`edge::render`).
//!
//! Every value that reaches a rendered config is validated here first, against a narrow
//! alphabet: a quote, newline, brace, semicolon or `$` in a path, name or address is refused
//! with the field's name, never escaped into a config where it could end a directive. The only
//! free text — header values — is rendered inside double quotes, so it may hold `;` and `,`
//! but never `"`, `\`, braces, `$` or control characters.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The version of the document's shape. Older shapes are migrated on read (`EdgePolicy::parse`).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EdgePolicy {
    pub schema: u32,
    /// Response headers added to (or replacing those of) every response.
    pub headers: Vec<HeaderRule>,
    /// Sources added to Conclave's Content-Security-Policy (enforced in-process only: the CSP
    /// carries a per-request nonce no proxy can produce).
    pub csp: Vec<CspAddition>,
    /// Paths only reachable from some networks, e.g. `/admin` from `100.64.0.0/10`.
    pub allowlists: Vec<Allowlist>,
    /// Request rates per path prefix, per client IP or per signed-in user.
    pub rate_limits: Vec<RateLimit>,
    /// Peers whose `X-Forwarded-For` names the client (the proxy in front). Empty: the TCP
    /// peer is the client.
    #[schema(value_type = Vec<String>)]
    pub trusted_proxies: Vec<IpNet>,
    pub waf: Waf,
    pub proxy: ProxyTls,
    pub firewall: Firewall,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            headers: Vec::new(),
            csp: Vec::new(),
            allowlists: Vec::new(),
            rate_limits: Vec::new(),
            trusted_proxies: Vec::new(),
            waf: Waf::default(),
            proxy: ProxyTls::default(),
            firewall: Firewall::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CspAddition {
    /// A fetch or navigation directive, e.g. `img-src`.
    pub directive: String,
    /// `'self'`, a scheme (`https:`), or a host (`https://cdn.example.com`, `*.example.com`).
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    /// `/admin` covers `/admin` and everything under `/admin/`, not `/administrators`.
    pub path_prefix: String,
    #[schema(value_type = Vec<String>)]
    pub cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    Ip,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub path_prefix: String,
    /// `ip`, or `user` (signed-in people by account, API tokens each by itself, anonymous
    /// requests by IP).
    pub key: LimitKey,
    pub per_minute: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Waf {
    /// Path patterns refused with 403; `*` matches any characters (`/wp-*`, `*.php`).
    pub deny_paths: Vec<String>,
    /// Methods refused with 405, e.g. `TRACE`.
    pub deny_methods: Vec<String>,
    /// Case-insensitive User-Agent substrings refused with 403, e.g. `sqlmap`.
    pub deny_user_agents: Vec<String>,
    /// Largest request body; larger ones are refused with 413 before they are read.
    pub max_body_bytes: Option<u64>,
    /// Refuse `..`, encoded dots and backslashes in the path.
    pub block_path_traversal: bool,
    /// Refuse the paths vulnerability scanners probe (`/.env`, `/.git/`, `/wp-login.php`, …).
    pub block_scanner_probes: bool,
}

impl Default for Waf {
    fn default() -> Self {
        Self {
            deny_paths: Vec::new(),
            deny_methods: vec!["TRACE".to_owned(), "TRACK".to_owned()],
            deny_user_agents: Vec::new(),
            max_body_bytes: None,
            block_path_traversal: true,
            block_scanner_probes: true,
        }
    }
}

/// What scanners probe for on every server they find. Conclave serves none of these.
pub const SCANNER_PROBES: &[&str] = &[
    "/.env*",
    "/.git*",
    "/.svn*",
    "/.hg*",
    "/.aws*",
    "/.ssh*",
    "/.DS_Store",
    "/wp-*",
    "/wordpress*",
    "/xmlrpc.php",
    "/phpmyadmin*",
    "/pma*",
    "/cgi-bin*",
    "/vendor/phpunit*",
    "/actuator*",
    "/server-status*",
    "/boaform*",
    "*.php",
    "*.asp",
    "*.aspx",
    "*.jsp",
    "*.cgi",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The front proxy: where it listens, how it does TLS, where it forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyTls {
    /// The public host name, e.g. `chat.example.com`.
    pub domain: String,
    /// Where Conclave listens, as the proxy reaches it: `127.0.0.1:8080`.
    pub upstream: String,
    pub min_tls_version: TlsVersion,
    /// `Strict-Transport-Security` max-age; 0 sends none.
    pub hsts_max_age_secs: u64,
    /// Certificate and key files; unset: Caddy gets one from Let's Encrypt, nginx uses the
    /// certbot paths for `domain`.
    pub certificate: Option<String>,
    pub certificate_key: Option<String>,
    /// The ACME account's contact address (Caddy).
    pub acme_email: Option<String>,
}

impl Default for ProxyTls {
    fn default() -> Self {
        Self {
            domain: "chat.example.com".to_owned(),
            upstream: "127.0.0.1:8080".to_owned(),
            min_tls_version: TlsVersion::Tls12,
            hsts_max_age_secs: 63_072_000,
            certificate: None,
            certificate_key: None,
            acme_email: None,
        }
    }
}

/// The host firewall (nftables): HTTP(S) for everyone, SSH and the admin listener for some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Firewall {
    pub ssh_port: u16,
    /// Networks SSH is open to; empty: everyone.
    #[schema(value_type = Vec<String>)]
    pub ssh_from: Vec<IpNet>,
    /// The port of `server.admin_listen`, opened only to the `/admin` allowlist's networks.
    pub admin_port: Option<u16>,
    /// New HTTP(S) connections per second one address may open; 0: unlimited.
    pub new_connections_per_second: u32,
}

impl Default for Firewall {
    fn default() -> Self {
        Self {
            ssh_port: 22,
            ssh_from: Vec::new(),
            admin_port: None,
            new_connections_per_second: 50,
        }
    }
}

/// A refused field: where it is, in the document's own terms, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of a document at once, so an editor can fix them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// Headers a policy may not set: they frame the HTTP message itself or belong to sessions.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "content-type",
    "content-encoding",
    "content-security-policy",
    "date",
    "host",
    "keep-alive",
    "location",
    "proxy-connection",
    "set-cookie",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];

pub const CSP_DIRECTIVES: &[&str] = &[
    "connect-src",
    "font-src",
    "form-action",
    "frame-ancestors",
    "frame-src",
    "img-src",
    "manifest-src",
    "media-src",
    "script-src",
    "style-src",
    "worker-src",
];

const MAX_ITEMS: usize = 100;
const MAX_HEADER_VALUE: usize = 1024;
const MAX_PATH: usize = 200;

impl EdgePolicy {
    /// Reads a stored or submitted document: migrates older shapes, refuses unknown keys and
    /// bad values with every problem named.
    pub fn parse(json: &str) -> Result<Self, Invalid> {
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            Invalid(vec![FieldError {
                field: "policy".to_owned(),
                message: format!("not valid JSON: {e}"),
            }])
        })?;
        migrate(&mut value);
        let policy: Self = serde_json::from_value(value).map_err(|e| {
            Invalid(vec![FieldError {
                field: "policy".to_owned(),
                message: e.to_string(),
            }])
        })?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errors = Errors::default();
        if self.schema != SCHEMA_VERSION {
            errors.push(
                "schema",
                format!("must be {SCHEMA_VERSION} (this server's policy version)"),
            );
        }
        errors.count("headers", self.headers.len());
        let mut seen = BTreeSet::new();
        for (i, rule) in self.headers.iter().enumerate() {
            let at = format!("headers[{i}]");
            if let Err(message) = header_name(&rule.name) {
                errors.push(format!("{at}.name"), message);
            } else if !seen.insert(rule.name.to_ascii_lowercase()) {
                errors.push(format!("{at}.name"), format!("{} is set twice", rule.name));
            }
            if let Err(message) = quoted_text(&rule.value, MAX_HEADER_VALUE) {
                errors.push(format!("{at}.value"), message);
            }
        }
        errors.count("csp", self.csp.len());
        for (i, addition) in self.csp.iter().enumerate() {
            let at = format!("csp[{i}]");
            if !CSP_DIRECTIVES.contains(&addition.directive.as_str()) {
                errors.push(
                    format!("{at}.directive"),
                    format!(
                        "{:?} is not one of {}",
                        shorten(&addition.directive),
                        CSP_DIRECTIVES.join(", ")
                    ),
                );
            }
            if addition.sources.is_empty() {
                errors.push(
                    format!("{at}.sources"),
                    "add at least one source".to_owned(),
                );
            }
            for (j, source) in addition.sources.iter().enumerate() {
                if let Err(message) = csp_source(source) {
                    errors.push(format!("{at}.sources[{j}]"), message);
                }
            }
        }
        errors.count("allowlists", self.allowlists.len());
        let mut prefixes = BTreeSet::new();
        for (i, list) in self.allowlists.iter().enumerate() {
            let at = format!("allowlists[{i}]");
            if let Err(message) = path_prefix(&list.path_prefix) {
                errors.push(format!("{at}.path_prefix"), message);
            } else if !prefixes.insert(list.path_prefix.clone()) {
                errors.push(
                    format!("{at}.path_prefix"),
                    format!("{} has two allowlists; merge them", list.path_prefix),
                );
            }
            if list.cidrs.is_empty() {
                errors.push(
                    format!("{at}.cidrs"),
                    "add at least one network (an empty list would lock everyone out)".to_owned(),
                );
            }
            errors.count(&format!("{at}.cidrs"), list.cidrs.len());
        }
        errors.count("rate_limits", self.rate_limits.len());
        for (i, limit) in self.rate_limits.iter().enumerate() {
            let at = format!("rate_limits[{i}]");
            if let Err(message) = path_prefix(&limit.path_prefix) {
                errors.push(format!("{at}.path_prefix"), message);
            }
            if !(1..=1_000_000).contains(&limit.per_minute) {
                errors.push(
                    format!("{at}.per_minute"),
                    "must be between 1 and 1000000".to_owned(),
                );
            }
            if !(1..=100_000).contains(&limit.burst) {
                errors.push(
                    format!("{at}.burst"),
                    "must be between 1 and 100000".to_owned(),
                );
            }
        }
        errors.count("trusted_proxies", self.trusted_proxies.len());
        self.waf.validate(&mut errors);
        self.proxy.validate(&mut errors);
        errors.count("firewall.ssh_from", self.firewall.ssh_from.len());
        if self.firewall.ssh_port == 0 {
            errors.push(
                "firewall.ssh_port",
                "must be a port number (1-65535)".to_owned(),
            );
        }
        if self.firewall.admin_port == Some(0) {
            errors.push(
                "firewall.admin_port",
                "must be a port number (1-65535)".to_owned(),
            );
        }
        if self.firewall.admin_port.is_some() && self.admin_networks().is_none() {
            errors.push(
                "firewall.admin_port",
                "needs an allowlist for /admin: the admin port is opened to its networks only"
                    .to_owned(),
            );
        }
        errors.into_result()
    }

    /// The networks of the `/admin` allowlist, which the firewall opens the admin port to.
    pub fn admin_networks(&self) -> Option<&[IpNet]> {
        self.allowlists
            .iter()
            .find(|list| list.path_prefix == "/admin")
            .map(|list| list.cidrs.as_slice())
    }

    /// The WAF's path patterns: the operator's, then the built-in scanner probes if on.
    pub fn denied_path_patterns(&self) -> Vec<&str> {
        let mut patterns: Vec<&str> = self.waf.deny_paths.iter().map(String::as_str).collect();
        if self.waf.block_scanner_probes {
            patterns.extend(SCANNER_PROBES);
        }
        patterns
    }
}

impl Waf {
    fn validate(&self, errors: &mut Errors) {
        errors.count("waf.deny_paths", self.deny_paths.len());
        for (i, pattern) in self.deny_paths.iter().enumerate() {
            if let Err(message) = path_pattern(pattern) {
                errors.push(format!("waf.deny_paths[{i}]"), message);
            }
        }
        for (i, method) in self.deny_methods.iter().enumerate() {
            let ok = !method.is_empty()
                && method.len() <= 20
                && method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                errors.push(
                    format!("waf.deny_methods[{i}]"),
                    "a method is 1-20 capital letters, e.g. TRACE".to_owned(),
                );
            }
        }
        errors.count("waf.deny_user_agents", self.deny_user_agents.len());
        for (i, agent) in self.deny_user_agents.iter().enumerate() {
            let ok = (2..=100).contains(&agent.len())
                && agent
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b" ._/+-".contains(&b))
                && agent.trim() == agent;
            if !ok {
                errors.push(
                    format!("waf.deny_user_agents[{i}]"),
                    "2-100 characters of letters, digits, space and . _ / + - (no leading or \
                     trailing space)"
                        .to_owned(),
                );
            }
        }
        if self.max_body_bytes == Some(0) {
            errors.push(
                "waf.max_body_bytes",
                "must be at least 1 (leave it out for no limit)".to_owned(),
            );
        }
    }
}

impl ProxyTls {
    fn validate(&self, errors: &mut Errors) {
        if let Err(message) = host_name(&self.domain) {
            errors.push("proxy.domain", message);
        }
        if let Err(message) = upstream(&self.upstream) {
            errors.push("proxy.upstream", message);
        }
        for (field, path) in [
            ("proxy.certificate", &self.certificate),
            ("proxy.certificate_key", &self.certificate_key),
        ] {
            if let Some(path) = path
                && let Err(message) = file_path(path)
            {
                errors.push(field, message);
            }
        }
        if self.certificate.is_some() != self.certificate_key.is_some() {
            errors.push(
                "proxy.certificate_key",
                "set both the certificate and its key, or neither".to_owned(),
            );
        }
        if let Some(email) = &self.acme_email {
            let ok = email.len() <= 254
                && email.split_once('@').is_some_and(|(local, host)| {
                    !local.is_empty()
                        && local
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
                        && host_name(host).is_ok()
                });
            if !ok {
                errors.push(
                    "proxy.acme_email",
                    "an address like ops@example.com (letters, digits, . _ + -)".to_owned(),
                );
            }
        }
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: String) {
        self.0.push(FieldError {
            field: field.into(),
            message,
        });
    }

    fn count(&mut self, field: &str, len: usize) {
        if len > MAX_ITEMS {
            self.push(field, format!("at most {MAX_ITEMS} entries"));
        }
    }

    fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// Moves a stored document of an older shape to the current one. There is one shape so far;
/// a document without `schema` is taken as it.
fn migrate(value: &mut serde_json::Value) {
    if let Some(object) = value.as_object_mut() {
        object
            .entry("schema")
            .or_insert_with(|| serde_json::Value::from(SCHEMA_VERSION));
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

fn describe_bad(text: &str, allowed: impl Fn(char) -> bool) -> Option<String> {
    text.chars().find(|c| !allowed(*c)).map(|c| match c {
        '\n' | '\r' => "line breaks are not allowed".to_owned(),
        c if c.is_control() => "control characters are not allowed".to_owned(),
        c => format!("{c:?} is not allowed here"),
    })
}

fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a header name is 1-64 characters".to_owned());
    }
    if let Some(problem) = describe_bad(name, |c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("{problem} (letters, digits and - only)"));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{name} is managed by Conclave itself and cannot be set here"
        ));
    }
    Ok(())
}

/// Text rendered inside double quotes in every config format.
fn quoted_text(text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > max {
        return Err(format!("at most {max} characters"));
    }
    if let Some(problem) = describe_bad(text, |c| {
        (' '..='~').contains(&c) && !matches!(c, '"' | '\\' | '{' | '}' | '$' | '`')
    }) {
        return Err(format!(
            "{problem} (printable ASCII without \" \\ {{ }} $ `)"
        ));
    }
    Ok(())
}

fn path_chars(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~')
}

/// A path prefix: `/`, or `/segment[/segment…]` without a trailing slash.
fn path_prefix(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with /".to_owned());
    }
    if path.len() > MAX_PATH {
        return Err(format!("at most {MAX_PATH} characters"));
    }
    if let Some(problem) = describe_bad(path, path_chars) {
        return Err(format!("{problem} (letters, digits and / . _ - ~ only)"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("leave out the trailing / (the prefix covers what is under it)".to_owned());
    }
    if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
        return Err("empty, . and .. segments are not allowed".to_owned());
    }
    Ok(())
}

fn path_pattern(pattern: &str) -> Result<(), String> {
    if !(pattern.starts_with('/') || pattern.starts_with('*')) {
        return Err("must start with / or *".to_owned());
    }
    if pattern.len() > MAX_PATH {
        return Err(format!("at most {MAX_PATH} characters"));
    }
    if pattern.chars().all(|c| c == '*' || c == '/') {
        return Err("would match every path".to_owned());
    }
    if let Some(problem) = describe_bad(pattern, |c| path_chars(c) || c == '*') {
        return Err(format!("{problem} (letters, digits, / . _ - ~ and * only)"));
    }
    Ok(())
}

fn csp_source(source: &str) -> Result<(), String> {
    const KEYWORDS: &[&str] = &["'self'", "'wasm-unsafe-eval'"];
    const SCHEMES: &[&str] = &["https:", "wss:", "data:", "blob:"];
    if KEYWORDS.contains(&source) || SCHEMES.contains(&source) {
        return Ok(());
    }
    if source.starts_with('\'') {
        return Err(format!(
            "{:?}: of the quoted keywords only 'self' and 'wasm-unsafe-eval' may be added \
             (inline code runs only with the page's nonce)",
            shorten(source)
        ));
    }
    let host = source
        .strip_prefix("https://")
        .or_else(|| source.strip_prefix("wss://"))
        .unwrap_or(source);
    let host = host.strip_prefix("*.").unwrap_or(host);
    let (host, path) = host.split_once('/').unwrap_or((host, ""));
    let (host, port) = host.split_once(':').unwrap_or((host, ""));
    let ok = host_name(host).is_ok()
        && port.bytes().all(|b| b.is_ascii_digit())
        && path.chars().all(path_chars);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a source: use 'self', https:, wss:, data:, blob:, or a host such as \
             https://cdn.example.com or *.example.com",
            shorten(source)
        ))
    }
}

fn host_name(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a host name (letters, digits, - and dots)",
            shorten(host)
        ))
    }
}

fn upstream(address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let ok = address.rsplit_once(':').is_some_and(|(host, port)| {
        host_name(host).is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)",
            shorten(address)
        ))
    }
}

fn file_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path".to_owned());
    }
    if path.len() > 255 {
        return Err("at most 255 characters".to_owned());
    }
    if let Some(problem) = describe_bad(path, path_chars) {
        return Err(format!("{problem} (letters, digits and / . _ - ~ only)"));
    }
    if path.split('/').any(|s| s == "..") {
        return Err(".. is not allowed".to_owned());
    }
    Ok(())
}

/// Whether `path` is `prefix` or lies under it (`/admin` covers `/admin/x`, not `/adminx`).
pub fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut EdgePolicy)) -> Result<(), Invalid> {
        let mut policy = EdgePolicy::default();
        edit(&mut policy);
        policy.validate()
    }

    fn fields(result: Result<(), Invalid>) -> Vec<String> {
        result.err().map_or_else(Vec::new, |invalid| {
            invalid.0.into_iter().map(|e| e.field).collect()
        })
    }

    #[test]
    fn the_default_policy_is_valid() {
        assert_eq!(EdgePolicy::default().validate(), Ok(()));
    }

    #[test]
    fn quotes_newlines_braces_semicolons_and_dollars_are_refused_where_they_could_break_out() {
        for bad in [
            "a\"b", "a\nb", "a}b", "a{b", "a;b", "a$b", "a b", "a\\b", "a'b",
        ] {
            assert_eq!(
                fields(with(|p| p.headers.push(HeaderRule {
                    name: bad.to_owned(),
                    value: "v".to_owned()
                }))),
                ["headers[0].name"],
                "{bad:?}"
            );
            for prefix in [format!("/x{bad}"), format!("/{bad}")] {
                assert_eq!(
                    fields(with(|p| p.allowlists.push(Allowlist {
                        path_prefix: prefix.clone(),
                        cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
                    }))),
                    ["allowlists[0].path_prefix"],
                    "{prefix:?}"
                );
            }
            assert_eq!(
                fields(with(|p| p.waf.deny_paths.push(format!("/x{bad}")))),
                ["waf.deny_paths[0]"]
            );
            if bad != "a b" {
                assert_eq!(
                    fields(with(|p| p.waf.deny_user_agents.push(format!("x{bad}y")))),
                    ["waf.deny_user_agents[0]"],
                    "{bad:?}"
                );
            }
            assert_eq!(
                fields(with(|p| p.proxy.domain = format!("chat{bad}example.com"))),
                ["proxy.domain"]
            );
            assert_eq!(
                fields(with(|p| p.proxy.upstream = format!("127.0.0.1{bad}:80"))),
                ["proxy.upstream"]
            );
            assert_eq!(
                fields(with(|p| {
                    p.proxy.certificate = Some(format!("/etc/x{bad}.pem"));
                    p.proxy.certificate_key = Some("/etc/k.pem".to_owned());
                })),
                ["proxy.certificate"]
            );
            assert_eq!(
                fields(with(|p| p.csp.push(CspAddition {
                    directive: "img-src".to_owned(),
                    sources: vec![format!("https://cdn{bad}.example.com")],
                }))),
                ["csp[0].sources[0]"]
            );
        }
        // Header values are rendered quoted: ; and , are fine, a quote or a line break is not.
        for bad in [
            "a\"b", "a\nb", "a\rb", "a}b", "a{b", "a$b", "a\\b", "\u{7f}",
        ] {
            assert_eq!(
                fields(with(|p| p.headers.push(HeaderRule {
                    name: "X-Ok".to_owned(),
                    value: bad.to_owned()
                }))),
                ["headers[0].value"],
                "{bad:?}"
            );
        }
        assert_eq!(
            with(|p| p.headers.push(HeaderRule {
                name: "Cache-Control".to_owned(),
                value: "no-store; private, max-age=0".to_owned()
            })),
            Ok(())
        );
    }

    #[test]
    fn cidrs_are_parsed_and_bad_ones_name_their_field() {
        let bad = r#"{"allowlists":[{"path_prefix":"/admin","cidrs":["100.64.0.0/33"]}]}"#;
        let error = EdgePolicy::parse(bad).expect_err("refused");
        assert!(error.to_string().contains("invalid IP address"), "{error}");
        let injected = r#"{"trusted_proxies":["10.0.0.0/8; drop"]}"#;
        assert!(EdgePolicy::parse(injected).is_err());
        let good = r#"{"allowlists":[{"path_prefix":"/admin","cidrs":["100.64.0.0/10","fd7a:115c:a1e0::/48"]}]}"#;
        let policy = EdgePolicy::parse(good).expect("valid");
        assert_eq!(policy.admin_networks().map(<[IpNet]>::len), Some(2));
        assert_eq!(
            policy.schema, SCHEMA_VERSION,
            "a document without schema migrates"
        );
    }

    #[test]
    fn unknown_keys_and_reserved_headers_are_refused() {
        assert!(EdgePolicy::parse(r#"{"headerz":[]}"#).is_err());
        assert_eq!(
            fields(with(|p| p.headers.push(HeaderRule {
                name: "Set-Cookie".to_owned(),
                value: "a=b".to_owned()
            }))),
            ["headers[0].name"]
        );
        assert_eq!(
            fields(with(|p| p.csp.push(CspAddition {
                directive: "script-src".to_owned(),
                sources: vec!["'unsafe-inline'".to_owned()],
            }))),
            ["csp[0].sources[0]"]
        );
    }

    #[test]
    fn the_admin_port_needs_an_admin_allowlist() {
        assert_eq!(
            fields(with(|p| p.firewall.admin_port = Some(9443))),
            ["firewall.admin_port"]
        );
    }

    #[test]
    fn prefixes_cover_whole_segments() {
        assert!(covers("/admin", "/admin"));
        assert!(covers("/admin", "/admin/users"));
        assert!(!covers("/admin", "/administrators"));
        assert!(covers("/", "/anything"));
    }
}
