//! One renderer from the edge policy to the configs of the front proxy and the host firewall:
//! a Caddyfile, an nginx `http`-context include (rate-limit zones + server blocks), and an
//! nftables ruleset. The admin preview, `conclave edge render` and the edge agent all call
//! [`render`], so what an operator previews is byte for byte what gets deployed.
//!
//! Only validated policies reach here (`EdgePolicy::validate` refuses every character that
//! could end a directive), and free text is written inside double quotes.
//!
//! Matching follows Conclave's in-process enforcement: the most specific allowlist covering a
//! path applies; every rate limit covering it applies; WAF patterns match the path alone.
//! What a format cannot express is said in a comment at its top (Caddy 2.6 has no rate
//! limiter; no proxy can add to a CSP that carries a per-request nonce).

use std::fmt::Write as _;

use ipnet::IpNet;

use super::policy::{EdgePolicy, LimitKey, TlsVersion, covers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Caddy,
    Nginx,
    Nftables,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Caddy, Format::Nginx, Format::Nftables];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caddy => "caddy",
            Self::Nginx => "nginx",
            Self::Nftables => "nftables",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| format!("format: {text:?} is not one of caddy, nginx, nftables"))
    }
}

/// The config text for `format` of `policy` at `version`.
pub fn render(policy: &EdgePolicy, version: i64, format: Format) -> String {
    match format {
        Format::Caddy => caddy(policy, version),
        Format::Nginx => nginx(policy, version),
        Format::Nftables => nftables(policy, version),
    }
}

fn header(out: &mut String, comment: &str, version: i64, format: Format, notes: &[&str]) {
    let _ = writeln!(
        out,
        "{comment} Conclave edge policy, version {version}. Rendered by `conclave edge render --format {}`.",
        format.as_str()
    );
    let _ = writeln!(
        out,
        "{comment} Edit the policy in Conclave (/admin/edge), not this file: the edge agent overwrites it."
    );
    for note in notes {
        let _ = writeln!(out, "{comment} {note}");
    }
}

/// A regular expression matching a whole path against any of the WAF's glob patterns (`*`
/// is any run of characters). Patterns are validated to letters, digits and `/ . _ - ~ *`,
/// so the only metacharacters to neutralise are `.` (as `[.]`) and `*`.
pub fn paths_regex(patterns: &[&str]) -> Option<String> {
    if patterns.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = patterns
        .iter()
        .map(|p| p.replace('.', "[.]").replace('*', ".*"))
        .collect();
    Some(format!("^({})$", alternatives.join("|")))
}

/// A regular expression matching any of the (validated) User-Agent substrings.
pub fn agents_regex(agents: &[String]) -> Option<String> {
    if agents.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = agents
        .iter()
        .map(|a| a.replace('.', "[.]").replace('+', "[+]"))
        .collect();
    Some(format!("({})", alternatives.join("|")))
}

/// Traversal in a raw (still percent-encoded) path: `..`, encoded dots, encoded backslashes.
pub const TRAVERSAL_REGEX: &str = "([.][.]|%2e|%5c)";

/// The prefixes a proxy needs a location for: those of allowlists and per-IP rate limits.
fn prefixes(policy: &EdgePolicy) -> Vec<String> {
    let mut prefixes: Vec<String> = policy
        .allowlists
        .iter()
        .map(|a| a.path_prefix.clone())
        .chain(
            policy
                .rate_limits
                .iter()
                .filter(|l| l.key == LimitKey::Ip)
                .map(|l| l.path_prefix.clone()),
        )
        .filter(|p| p != "/")
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// The most specific allowlist covering `path`, as nginx and Conclave pick it.
fn allowlist_for<'a>(policy: &'a EdgePolicy, path: &str) -> Option<&'a [IpNet]> {
    policy
        .allowlists
        .iter()
        .filter(|a| covers(&a.path_prefix, path))
        .max_by_key(|a| a.path_prefix.len())
        .map(|a| a.cidrs.as_slice())
}

fn caddy(policy: &EdgePolicy, version: i64) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "#",
        version,
        Format::Caddy,
        &[
            "Rate limits and CSP additions are enforced by Conclave itself (Caddy 2.6 has no rate limiter).",
            "List this proxy's address in the policy's trusted_proxies so Conclave sees client addresses.",
        ],
    );
    let tls = &policy.proxy;
    if let Some(email) = &tls.acme_email {
        let _ = writeln!(out, "{{\n\temail {email}\n}}\n");
    }
    let _ = writeln!(out, "{} {{", tls.domain);
    let protocols = match tls.min_tls_version {
        TlsVersion::Tls12 => "tls1.2 tls1.3",
        TlsVersion::Tls13 => "tls1.3",
    };
    match (&tls.certificate, &tls.certificate_key) {
        (Some(cert), Some(key)) => {
            let _ = writeln!(
                out,
                "\ttls {cert} {key} {{\n\t\tprotocols {protocols}\n\t}}"
            );
        }
        _ => {
            let _ = writeln!(out, "\ttls {{\n\t\tprotocols {protocols}\n\t}}");
        }
    }
    if let Some(max) = policy.waf.max_body_bytes {
        let _ = writeln!(out, "\trequest_body {{\n\t\tmax_size {max}\n\t}}");
    }
    if !policy.waf.deny_methods.is_empty() {
        let _ = writeln!(
            out,
            "\t@edge_methods method {}\n\trespond @edge_methods \"Method not allowed\" 405",
            policy.waf.deny_methods.join(" ")
        );
    }
    if policy.waf.block_path_traversal {
        let _ = writeln!(
            out,
            "\t@edge_traversal expression {{http.request.orig_uri.path}}.matches(\"(?i){TRAVERSAL_REGEX}\")\n\trespond @edge_traversal \"Bad request\" 400"
        );
    }
    if let Some(regex) = paths_regex(&policy.denied_path_patterns()) {
        let _ = writeln!(
            out,
            "\t@edge_paths path_regexp \"{regex}\"\n\trespond @edge_paths \"Forbidden\" 403"
        );
    }
    if let Some(regex) = agents_regex(&policy.waf.deny_user_agents) {
        let _ = writeln!(
            out,
            "\t@edge_agents header_regexp User-Agent \"(?i){regex}\"\n\trespond @edge_agents \"Forbidden\" 403"
        );
    }
    let mut lists: Vec<&super::policy::Allowlist> = policy.allowlists.iter().collect();
    lists.sort_by_key(|a| std::cmp::Reverse(a.path_prefix.len()));
    for (i, list) in lists.iter().enumerate() {
        // A path is judged by the most specific list covering it: exclude the more specific
        // prefixes (already judged above) from this one.
        let paths = if list.path_prefix == "/" {
            "*".to_owned()
        } else {
            format!("{0} {0}/*", list.path_prefix)
        };
        let _ = writeln!(out, "\t@edge_allow_{i} {{\n\t\tpath {paths}");
        for inner in &lists[..i] {
            if covers(&list.path_prefix, &inner.path_prefix) {
                let _ = writeln!(out, "\t\tnot path {0} {0}/*", inner.path_prefix);
            }
        }
        let cidrs: Vec<String> = list.cidrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\t\tnot remote_ip {}\n\t}}\n\trespond @edge_allow_{i} \"Forbidden\" 403",
            cidrs.join(" ")
        );
    }
    let mut headers: Vec<(String, String)> = policy
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    if tls.hsts_max_age_secs > 0 {
        headers.push((
            "Strict-Transport-Security".to_owned(),
            format!("max-age={}; includeSubDomains", tls.hsts_max_age_secs),
        ));
    }
    // Deferred, so the proxy's value replaces Conclave's instead of adding a second header.
    let _ = writeln!(out, "\theader {{\n\t\tdefer\n\t\t-Server");
    for (name, value) in &headers {
        let _ = writeln!(out, "\t\t{name} \"{value}\"");
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(
        out,
        "\treverse_proxy {} {{\n\t\tflush_interval -1\n\t}}\n}}",
        tls.upstream
    );
    out
}

fn nginx(policy: &EdgePolicy, version: i64) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "#",
        version,
        Format::Nginx,
        &[
            "Include it in the http {} context (e.g. /etc/nginx/conf.d/conclave.conf).",
            "Per-user rate limits and CSP additions are enforced by Conclave itself.",
            "List this proxy's address in the policy's trusted_proxies so Conclave sees client addresses.",
        ],
    );
    let ip_limits: Vec<(usize, &super::policy::RateLimit)> = policy
        .rate_limits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.key == LimitKey::Ip)
        .collect();
    for (i, limit) in &ip_limits {
        let _ = writeln!(
            out,
            "limit_req_zone $binary_remote_addr zone=conclave_edge_{i}:10m rate={}r/m;",
            limit.per_minute
        );
    }
    let _ = writeln!(
        out,
        "map $http_upgrade $conclave_connection {{\n\tdefault upgrade;\n\t\"\" close;\n}}\n"
    );
    let tls = &policy.proxy;
    let _ = writeln!(
        out,
        "server {{\n\tlisten 80;\n\tlisten [::]:80;\n\tserver_name {};\n\treturn 301 https://$host$request_uri;\n}}\n",
        tls.domain
    );
    let (cert, key) = match (&tls.certificate, &tls.certificate_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => (
            format!("/etc/letsencrypt/live/{}/fullchain.pem", tls.domain),
            format!("/etc/letsencrypt/live/{}/privkey.pem", tls.domain),
        ),
    };
    let protocols = match tls.min_tls_version {
        TlsVersion::Tls12 => "TLSv1.2 TLSv1.3",
        TlsVersion::Tls13 => "TLSv1.3",
    };
    let _ = writeln!(
        out,
        "server {{\n\tlisten 443 ssl http2;\n\tlisten [::]:443 ssl http2;\n\tserver_name {};\n\
         \tssl_certificate {cert};\n\tssl_certificate_key {key};\n\tssl_protocols {protocols};\n\
         \tssl_prefer_server_ciphers off;\n\tssl_session_cache shared:conclave_tls:10m;\n\
         \tssl_session_timeout 1d;\n\tssl_session_tickets off;\n\tserver_tokens off;\n\
         \tlimit_req_status 429;",
        tls.domain
    );
    // 0 = no limit at the proxy: Conclave refuses what is over its own payload limits.
    let _ = writeln!(
        out,
        "\tclient_max_body_size {};",
        policy.waf.max_body_bytes.unwrap_or(0)
    );
    if !policy.waf.deny_methods.is_empty() {
        let _ = writeln!(
            out,
            "\tif ($request_method ~ \"^({})$\") {{\n\t\treturn 405;\n\t}}",
            policy.waf.deny_methods.join("|")
        );
    }
    if policy.waf.block_path_traversal {
        // $request_uri is the raw request line target; only its path part is judged.
        let _ = writeln!(
            out,
            "\tif ($request_uri ~* \"^[^?]*{TRAVERSAL_REGEX}\") {{\n\t\treturn 400;\n\t}}"
        );
    }
    if let Some(regex) = paths_regex(&policy.denied_path_patterns()) {
        let _ = writeln!(out, "\tif ($uri ~* \"{regex}\") {{\n\t\treturn 403;\n\t}}");
    }
    if let Some(regex) = agents_regex(&policy.waf.deny_user_agents) {
        let _ = writeln!(
            out,
            "\tif ($http_user_agent ~* \"{regex}\") {{\n\t\treturn 403;\n\t}}"
        );
    }
    for prefix in prefixes(policy) {
        // `= /admin` and `^~ /admin/`: the prefix itself and what is under it, not `/adminx`.
        for location in [format!("= {prefix}"), format!("^~ {prefix}/")] {
            let _ = writeln!(out, "\tlocation {location} {{");
            nginx_location(&mut out, policy, &ip_limits, &prefix);
            let _ = writeln!(out, "\t}}");
        }
    }
    let _ = writeln!(out, "\tlocation / {{");
    nginx_location(&mut out, policy, &ip_limits, "/");
    let _ = writeln!(out, "\t}}\n}}");
    out
}

fn nginx_location(
    out: &mut String,
    policy: &EdgePolicy,
    ip_limits: &[(usize, &super::policy::RateLimit)],
    prefix: &str,
) {
    if let Some(cidrs) = allowlist_for(policy, prefix) {
        for cidr in cidrs {
            let _ = writeln!(out, "\t\tallow {cidr};");
        }
        let _ = writeln!(out, "\t\tdeny all;");
    }
    for (i, limit) in ip_limits {
        if covers(&limit.path_prefix, prefix) {
            let _ = writeln!(
                out,
                "\t\tlimit_req zone=conclave_edge_{i} burst={} nodelay;",
                limit.burst
            );
        }
    }
    let tls = &policy.proxy;
    let _ = writeln!(
        out,
        "\t\tproxy_pass http://{};\n\t\tproxy_http_version 1.1;\n\t\tproxy_set_header Host $host;\n\
         \t\tproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \t\tproxy_set_header X-Forwarded-Proto $scheme;\n\
         \t\tproxy_set_header Upgrade $http_upgrade;\n\
         \t\tproxy_set_header Connection $conclave_connection;\n\
         \t\tproxy_buffering off;\n\t\tproxy_read_timeout 1h;",
        tls.upstream
    );
    let mut headers: Vec<(&str, String)> = policy
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.clone()))
        .collect();
    if tls.hsts_max_age_secs > 0 {
        headers.push((
            "Strict-Transport-Security",
            format!("max-age={}; includeSubDomains", tls.hsts_max_age_secs),
        ));
    }
    // add_header in a location replaces the server's, so each location carries them all;
    // proxy_hide_header keeps Conclave's own value from being sent as a second header.
    for (name, value) in headers {
        let _ = writeln!(
            out,
            "\t\tproxy_hide_header {name};\n\t\tadd_header {name} \"{value}\" always;"
        );
    }
}

fn nftables(policy: &EdgePolicy, version: i64) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "#",
        version,
        Format::Nftables,
        &[
            "Load with `nft -f`; it replaces only the `inet conclave` table.",
            "Paths, headers and rate limits per path are enforced by the proxy and Conclave.",
        ],
    );
    let _ = writeln!(
        out,
        "table inet conclave\ndelete table inet conclave\ntable inet conclave {{"
    );
    let fw = &policy.firewall;
    let sets = |name: &str, networks: &[IpNet], out: &mut String| {
        let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) =
            networks.iter().partition(|n| matches!(n, IpNet::V4(_)));
        for (family, kind, list) in [("v4", "ipv4_addr", v4), ("v6", "ipv6_addr", v6)] {
            if list.is_empty() {
                continue;
            }
            let elements: Vec<String> = list.iter().map(|n| n.trunc().to_string()).collect();
            let _ = writeln!(
                out,
                "\tset {name}_{family} {{\n\t\ttype {kind}\n\t\tflags interval\n\t\tauto-merge\n\t\telements = {{ {} }}\n\t}}",
                elements.join(", ")
            );
        }
    };
    sets("ssh", &fw.ssh_from, &mut out);
    let admin = fw
        .admin_port
        .and_then(|port| policy.admin_networks().map(|nets| (port, nets)));
    if let Some((_, networks)) = admin {
        sets("admin", networks, &mut out);
    }
    if fw.new_connections_per_second > 0 {
        for (family, kind) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
            let _ = writeln!(
                out,
                "\tset http_flood_{family} {{\n\t\ttype {kind}\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t}}"
            );
        }
    }
    let _ = writeln!(
        out,
        "\tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\t\tct state invalid drop\n\
         \t\tiifname \"lo\" accept\n\t\tmeta l4proto {{ icmp, ipv6-icmp }} accept"
    );
    let rule_for = |port: u16, set: &str, networks: &[IpNet], out: &mut String| {
        if networks.iter().any(|n| matches!(n, IpNet::V4(_))) {
            let _ = writeln!(out, "\t\ttcp dport {port} ip saddr @{set}_v4 accept");
        }
        if networks.iter().any(|n| matches!(n, IpNet::V6(_))) {
            let _ = writeln!(out, "\t\ttcp dport {port} ip6 saddr @{set}_v6 accept");
        }
    };
    if fw.ssh_from.is_empty() {
        let _ = writeln!(out, "\t\ttcp dport {} accept", fw.ssh_port);
    } else {
        rule_for(fw.ssh_port, "ssh", &fw.ssh_from, &mut out);
    }
    if fw.new_connections_per_second > 0 {
        let rate = fw.new_connections_per_second;
        let _ = writeln!(
            out,
            "\t\ttcp dport {{ 80, 443 }} ct state new add @http_flood_v4 {{ ip saddr limit rate over {rate}/second }} drop\n\
             \t\ttcp dport {{ 80, 443 }} ct state new add @http_flood_v6 {{ ip6 saddr limit rate over {rate}/second }} drop"
        );
    }
    let _ = writeln!(
        out,
        "\t\ttcp dport {{ 80, 443 }} accept\n\t\tudp dport 443 accept"
    );
    if let Some((port, networks)) = admin {
        rule_for(port, "admin", networks, &mut out);
    }
    let _ = writeln!(out, "\t}}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::policy::{Allowlist, HeaderRule, RateLimit};

    fn sample() -> EdgePolicy {
        let mut policy = EdgePolicy::default();
        policy.allowlists.push(Allowlist {
            path_prefix: "/admin".to_owned(),
            cidrs: vec!["100.64.0.0/10".parse().expect("cidr")],
        });
        policy.rate_limits.push(RateLimit {
            path_prefix: "/login".to_owned(),
            key: LimitKey::Ip,
            per_minute: 30,
            burst: 5,
        });
        policy.headers.push(HeaderRule {
            name: "X-Robots-Tag".to_owned(),
            value: "noindex; nofollow".to_owned(),
        });
        policy.firewall.admin_port = Some(9443);
        policy
    }

    #[test]
    fn every_format_names_its_version() {
        for format in Format::ALL {
            let text = render(&sample(), 7, format);
            assert!(text.contains("version 7"), "{format:?}");
        }
    }

    #[test]
    fn nginx_guards_the_prefix_on_segment_boundaries() {
        let text = render(&sample(), 1, Format::Nginx);
        assert!(text.contains("location = /admin {"), "{text}");
        assert!(text.contains("location ^~ /admin/ {"), "{text}");
        assert!(text.contains("allow 100.64.0.0/10;"));
        assert!(text.contains("limit_req zone=conclave_edge_0 burst=5 nodelay;"));
        assert!(text.contains("add_header X-Robots-Tag \"noindex; nofollow\" always;"));
    }

    #[test]
    fn nftables_opens_the_admin_port_to_the_admin_networks_only() {
        let text = render(&sample(), 1, Format::Nftables);
        assert!(text.contains("elements = { 100.64.0.0/10 }"), "{text}");
        assert!(text.contains("tcp dport 9443 ip saddr @admin_v4 accept"));
        assert!(!text.contains("@admin_v6"));
    }

    #[test]
    fn glob_patterns_become_anchored_regexes() {
        assert_eq!(
            paths_regex(&["/.env*", "*.php"]).as_deref(),
            Some("^(/[.]env.*|.*[.]php)$")
        );
    }
}
