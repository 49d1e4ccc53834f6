//! Layered settings, the documented example file, and the production safety checks.

use std::collections::BTreeSet;
use std::path::Path;

use conclave::settings::{Mode, Settings};
use secrecy::ExposeSecret as _;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/conclave.example.toml");
const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every leaf key of the settings struct, e.g. `server.listen`.
fn struct_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk(
        "",
        &serde_json::to_value(Settings::default()).unwrap(),
        &mut keys,
    );
    // Providers are a map (empty by default): every provider has these keys.
    walk(
        "oidc.providers.*",
        &serde_json::to_value(conclave::settings::OidcProviderSettings::default()).unwrap(),
        &mut keys,
    );
    walk(
        "assistant.providers.*",
        &serde_json::to_value(conclave::settings::LlmProviderSettings::default()).unwrap(),
        &mut keys,
    );
    walk(
        "billing.plans.*",
        &serde_json::to_value(conclave::settings::PlanSettings::default()).unwrap(),
        &mut keys,
    );
    walk(
        "assistant.models.*",
        &serde_json::to_value(conclave::settings::LlmModelSettings::default()).unwrap(),
        &mut keys,
    );
    keys
}

/// Every key the example file sets or shows commented out (`# key = value`).
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
        // Sections may be commented out too (examples of map entries such as providers).
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            section = [
                "oidc.providers",
                "assistant.providers",
                "assistant.models",
                "billing.plans",
            ]
            .into_iter()
            .find(|map| name.starts_with(&format!("{map}.")))
            .map_or_else(|| name.to_owned(), |map| format!("{map}.*"));
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            continue;
        }
        keys.insert(if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        });
    }
    keys
}

#[test]
fn the_example_file_documents_exactly_the_keys_of_the_struct() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let documented = documented_keys(&text);
    let actual = struct_keys();
    let undocumented: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from conclave.example.toml: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "conclave.example.toml documents keys that do not exist: {stale:?}"
    );
}

#[test]
fn the_example_file_loads_and_matches_the_defaults() {
    let settings =
        Settings::load_from(Some(Path::new(EXAMPLE)), env(&[])).expect("example file loads");
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    assert_eq!(
        serde_json::to_value(&settings).unwrap(),
        defaults,
        "the example shows the defaults"
    );
}

#[test]
fn environment_overrides_the_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        "[server]\nlisten = \"127.0.0.1:9000\"\nworkers = 3\n[jobs]\nconcurrency = 2\n",
    );
    let settings = Settings::load_from(
        Some(&file),
        env(&[
            ("CONCLAVE__SERVER__LISTEN", "0.0.0.0:7000"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(
        settings.server.listen.to_string(),
        "0.0.0.0:7000",
        "env wins"
    );
    assert_eq!(settings.server.workers, 3, "file wins over default");
    assert_eq!(settings.jobs.concurrency, 2);
    assert_eq!(settings.jobs.max_attempts, 8, "default stays");
}

#[test]
fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(dir.path(), "key", &format!("{KEY}\n"));
    let settings = Settings::load_from(
        None,
        env(&[(
            "CONCLAVE__SECURITY__SECRET_KEY_FILE",
            key_file.to_str().unwrap(),
        )]),
    )
    .unwrap();
    assert_eq!(settings.security.secret_key.unwrap().expose_secret(), KEY);

    let missing = Settings::load_from(
        None,
        env(&[("CONCLAVE__SECURITY__SECRET_KEY_FILE", "/nonexistent/key")]),
    )
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("security.secret_key: cannot read secret file /nonexistent/key"),
        "{missing}"
    );
}

#[test]
fn secrets_never_appear_in_debug_output_or_serialized_settings() {
    let settings = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__SECURITY__SECRET_KEY", KEY),
            (
                "CONCLAVE__DATABASE__URL",
                "postgres://app:hunter2@db/conclave",
            ),
        ]),
    )
    .unwrap();
    let debug = format!("{settings:?}");
    let json = serde_json::to_string(&settings).unwrap();
    for text in [&debug, &json] {
        assert!(!text.contains(KEY) && !text.contains("hunter2"), "{text}");
    }
}

#[test]
fn unknown_keys_are_errors_that_name_the_key_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.toml", "[server]\nlissen = \"127.0.0.1:1\"\n");
    let error = Settings::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("server.lissen: unknown field"), "{error}");
    assert!(error.contains("c.toml"), "{error}");

    let error = Settings::load_from(None, env(&[("CONCLAVE__JOBS__CONCURENCY", "3")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("jobs.concurency: unknown field"), "{error}");
    assert!(error.contains("CONCLAVE__JOBS__CONCURENCY"), "{error}");

    let error = Settings::load_from(None, env(&[("CONCLAVE__JOBS__CONCURRENCY", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("jobs.concurrency: invalid type"), "{error}");
}

#[test]
fn database_urls_pick_the_backend_and_unknown_schemes_are_refused() {
    use conclave::settings::DatabaseTarget;
    let target = |url: &str| {
        Settings::load_from(None, env(&[("CONCLAVE__DATABASE__URL", url)]))
            .map(|s| s.database_target().unwrap())
    };
    assert_eq!(
        target("sqlite://x/y.db").unwrap(),
        DatabaseTarget::Sqlite("x/y.db".into())
    );
    assert_eq!(
        target("/var/lib/conclave/c.db").unwrap(),
        DatabaseTarget::Sqlite("/var/lib/conclave/c.db".into())
    );
    assert!(matches!(
        target("postgres://u@h/db").unwrap(),
        DatabaseTarget::Postgres(_)
    ));
    assert!(matches!(
        target("postgresql://u@h/db").unwrap(),
        DatabaseTarget::Postgres(_)
    ));
    let error = target("mysql://u@h/db").unwrap_err().to_string();
    assert!(
        error.contains("database.url: unsupported scheme \"mysql\""),
        "{error}"
    );
    let default = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(
        default.database_target().unwrap(),
        DatabaseTarget::Sqlite("data/conclave.db".into())
    );
}

#[test]
fn production_refuses_to_start_without_a_secret_key_or_with_plain_http() {
    let error = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__MODE", "production"),
            ("CONCLAVE__SERVER__PUBLIC_URL", "https://c.example.com"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("security.secret_key: production mode needs an explicit secret key"),
        "{error}"
    );

    let error = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__MODE", "production"),
            ("CONCLAVE__SECURITY__SECRET_KEY", KEY),
            ("CONCLAVE__SERVER__PUBLIC_URL", "http://c.example.com"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("server.public_url: http://c.example.com/ is not https"),
        "{error}"
    );

    let allowed = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__MODE", "production"),
            ("CONCLAVE__SECURITY__SECRET_KEY", KEY),
            ("CONCLAVE__SERVER__PUBLIC_URL", "http://c.internal"),
            ("CONCLAVE__SERVER__ALLOW_INSECURE_PUBLIC_URL", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(allowed.mode, Mode::Production);

    let good = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__MODE", "production"),
            ("CONCLAVE__SECURITY__SECRET_KEY", KEY),
            ("CONCLAVE__SERVER__PUBLIC_URL", "https://c.example.com"),
        ]),
    );
    assert!(good.is_ok(), "{good:?}");
}

#[test]
fn malformed_secret_keys_are_refused() {
    for (key, expected) in [
        ("short", "must be"),
        ("AAAA", "must decode to 32 bytes, got 3"),
    ] {
        let error = Settings::load_from(None, env(&[("CONCLAVE__SECURITY__SECRET_KEY", key)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("security.secret_key") && error.contains(expected),
            "{key}: {error}"
        );
    }
}

#[test]
fn a_secret_file_wins_over_a_plain_variable_whatever_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(dir.path(), "key", KEY);
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for pairs in [
        [
            (
                "CONCLAVE__SECURITY__SECRET_KEY_FILE",
                key_file.to_str().unwrap(),
            ),
            ("CONCLAVE__SECURITY__SECRET_KEY", other),
        ],
        [
            ("CONCLAVE__SECURITY__SECRET_KEY", other),
            (
                "CONCLAVE__SECURITY__SECRET_KEY_FILE",
                key_file.to_str().unwrap(),
            ),
        ],
    ] {
        let settings = Settings::load_from(None, env(&pairs)).unwrap();
        assert_eq!(settings.security.secret_key.unwrap().expose_secret(), KEY);
    }
}

#[test]
fn string_settings_that_look_like_numbers_stay_strings_and_are_never_echoed() {
    let settings =
        Settings::load_from(None, env(&[("CONCLAVE__MAIL__SMTP__PASSWORD", "12345678")])).unwrap();
    assert_eq!(
        settings.mail.smtp.password.unwrap().expose_secret(),
        "12345678"
    );
    let settings =
        Settings::load_from(None, env(&[("CONCLAVE__MAIL__SMTP__USERNAME", "true")])).unwrap();
    assert_eq!(settings.mail.smtp.username.as_deref(), Some("true"));
    // Numbers still parse where the field is a number.
    let settings = Settings::load_from(None, env(&[("CONCLAVE__SERVER__WORKERS", "3")])).unwrap();
    assert_eq!(settings.server.workers, 3);
}

#[test]
fn job_settings_outside_safe_ranges_are_refused() {
    for (key, value, expected) in [
        (
            "CONCLAVE__JOBS__LEASE_SECS",
            "0",
            "jobs.lease_secs: must be between 5 and 604800, got 0",
        ),
        (
            "CONCLAVE__JOBS__KEEP_SUCCEEDED_HOURS",
            "99999999999",
            "jobs.keep_succeeded_hours: must be between",
        ),
        (
            "CONCLAVE__JOBS__CONCURRENCY",
            "0",
            "jobs.concurrency: must be between 1 and 1024, got 0",
        ),
    ] {
        let error = Settings::load_from(None, env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{key}={value}: {error}");
    }
}

#[test]
fn sign_in_providers_come_from_the_environment_and_bad_ones_are_explained() {
    let settings = Settings::load_from(
        None,
        env(&[
            ("CONCLAVE__OIDC__PROVIDERS__GITHUB__KIND", "github"),
            ("CONCLAVE__OIDC__PROVIDERS__GITHUB__CLIENT_ID", "Iv1.abc"),
            ("CONCLAVE__OIDC__PROVIDERS__GITHUB__CLIENT_SECRET", "12345"),
        ]),
    )
    .expect("a GitHub provider from variables");
    let github = &settings.oidc.providers["github"];
    assert_eq!(github.client_id, "Iv1.abc");
    assert_eq!(
        github.client_secret.as_ref().unwrap().expose_secret(),
        "12345"
    );
    assert_eq!(github.label("github"), "GitHub");

    for (pairs, expected) in [
        (
            vec![("CONCLAVE__OIDC__PROVIDERS__SSO__CLIENT_ID", "c")],
            "oidc.providers.sso.issuer_url: must be set for kind = \"oidc\"",
        ),
        (
            vec![
                ("CONCLAVE__OIDC__PROVIDERS__SSO__CLIENT_ID", "c"),
                ("CONCLAVE__OIDC__PROVIDERS__SSO__ISSUER_URL", "not a url"),
            ],
            "oidc.providers.sso.issuer_url: not a valid URL",
        ),
        (
            vec![(
                "CONCLAVE__OIDC__PROVIDERS__SSO__ISSUER_URL",
                "https://id.example.com",
            )],
            "oidc.providers.sso.client_id: must be set",
        ),
        (
            vec![
                ("CONCLAVE__OIDC__PROVIDERS__SSO__KIND", "saml"),
                ("CONCLAVE__OIDC__PROVIDERS__SSO__CLIENT_ID", "c"),
            ],
            "oidc.providers.sso.kind",
        ),
        (
            vec![("CONCLAVE__CAPTCHA__MAX_NUMBER", "10")],
            "captcha.max_number: must be between 1000 and 100000000, got 10",
        ),
    ] {
        let error = Settings::load_from(None, env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{pairs:?}: {error}");
    }
    let text = "[oidc.providers.\"Bad Name\"]\nkind = \"github\"\nclient_id = \"c\"\n";
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "conclave.toml", text);
    let error = Settings::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the name must be 1 to 32 lowercase letters"),
        "{error}"
    );
}

#[test]
fn assistant_providers_take_keys_from_files_and_bad_routes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "anthropic.key", "sk-ant-from-file\n");
    let config = write(
        dir.path(),
        "conclave.toml",
        "[assistant.providers.claude]\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\n\n\
         [assistant.models.smart]\nroutes = [{ provider = \"claude\", model = \"claude-sonnet\", weight = 2 }]\n",
    );
    let settings = Settings::load_from(
        Some(&config),
        env(&[(
            "CONCLAVE__ASSISTANT__PROVIDERS__CLAUDE__API_KEY_FILE",
            key.to_str().unwrap(),
        )]),
    )
    .expect("a key from a file completes the provider");
    let provider = &settings.assistant.providers["claude"];
    assert_eq!(
        provider.api_key.as_ref().unwrap().expose_secret().trim(),
        "sk-ant-from-file"
    );
    assert_eq!(settings.assistant.models["smart"].routes[0].weight, 2);
    assert_eq!(settings.source.as_deref(), Some(config.as_path()));
    let printed = serde_json::to_string(&settings).unwrap();
    assert!(!printed.contains("sk-ant-from-file"), "keys are redacted");

    let bad = write(
        dir.path(),
        "bad.toml",
        "[assistant.providers.claude]\nkind = \"anthropic\"\nbase_url = \"ftp://x\"\n\n\
         [assistant.models.smart]\nroutes = [{ provider = \"gpt\", model = \"x\" }]\nfallback = \"smart\"\n\
         max_output_tokens = 100000\n",
    );
    let problems = Settings::load_from(Some(&bad), env(&[]))
        .unwrap_err()
        .problems
        .join("\n");
    for expected in [
        "assistant.providers.claude.base_url",
        "assistant.providers.claude.api_key",
        "assistant.models.smart.routes: provider \"gpt\"",
        "assistant.models.smart.fallback",
        "assistant.models.smart.max_output_tokens",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not in:\n{problems}"
        );
    }
}
