//! Deployment files: the systemd unit passes `systemd-analyze verify` and scores as well
//! hardened; the Dockerfile keeps its promises (multi-stage, non-root, volume, healthcheck).

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn unit_pointing_at_the_built_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(format!("{ROOT}/config/conclave.service")).unwrap();
    // verify checks that ExecStart exists; point it at this build instead of /usr/local/bin.
    let unit = unit.replace("/usr/local/bin/conclave", env!("CARGO_BIN_EXE_conclave"));
    let path = dir.join("conclave.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_pointing_at_the_built_binary(dir.path());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (scripts/ensure-tools.sh)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Messages about the host's own units are not ours; anything naming our unit is.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("conclave.service"))
        .collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_systemd_unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_pointing_at_the_built_binary(dir.path());
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let score_line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure score: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let score: f64 = score_line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {score_line}"));
    assert!(
        score <= 2.0,
        "exposure {score} is above 2.0 ('OK' is below 4):\n{stdout}"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=conclave",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.contains(directive), "missing {directive}");
    }
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_unprivileged_with_a_healthcheck() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build");
    let user = dockerfile
        .lines()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(dockerfile.contains("VOLUME [\"/var/lib/conclave\"]"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    // Everything the binary embeds at compile time is copied into the build stage.
    for dir in ["migrations", "templates", "static", "src"] {
        assert!(
            dockerfile.contains(&format!("COPY {dir} {dir}")),
            "Dockerfile does not copy {dir}/"
        );
    }
    // And every path dependency, before the dependency build.
    let manifest = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).unwrap();
    let paths: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.split("path = \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|p| !p.starts_with("src"))
        .collect();
    assert!(paths.contains(&"firmware/protocol"), "{paths:?}");
    let first_build = dockerfile.find("cargo build").expect("a build");
    for path in paths {
        let copy = dockerfile
            .find(&format!("COPY {path} {path}"))
            .unwrap_or_else(|| panic!("Dockerfile does not copy the path dependency {path}"));
        assert!(
            copy < first_build,
            "{path} is copied before the first cargo build"
        );
    }
}

fn checked(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} is installed (scripts/ensure-tools.sh): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what}: {text}");
    text
}

#[test]
fn the_compose_file_is_valid_and_conclave_waits_for_a_healthy_database() {
    let text = checked(
        Command::new("docker-compose")
            .args(["-f", "config/compose.yaml", "config"])
            .current_dir(ROOT)
            .env("POSTGRES_PASSWORD", "pw")
            .env("CONCLAVE_SECRET_KEY", "sk")
            .env("CONCLAVE_KEK", "kek")
            .env("GRAFANA_PASSWORD", "gp"),
        "docker-compose",
    );
    let compose: serde_json::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let services = compose["services"].as_object().expect("services");
    for name in ["conclave", "postgres", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "{name} in compose.yaml");
    }
    assert_eq!(
        compose["services"]["conclave"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert!(compose["services"]["postgres"]["healthcheck"]["test"].is_array());
    // Every file the services mount exists.
    for service in services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            if let Some(source) = volume["source"].as_str().filter(|s| s.starts_with('/')) {
                assert!(std::path::Path::new(source).exists(), "{source} exists");
            }
        }
    }
}

#[test]
fn the_kubernetes_manifests_pass_schema_validation_and_keep_their_promises() {
    let dir = format!("{ROOT}/config/kubernetes");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    let text = checked(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(&files),
        "kubernetes-validate",
    );
    for kind in [
        "deployment/conclave",
        "service/conclave",
        "configmap/conclave-config",
        "secret/conclave-secrets",
        "horizontalpodautoscaler/conclave",
        "poddisruptionbudget/conclave",
        "job/conclave-migrate",
        "cronjob/conclave-backup",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    let deployment: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{dir}/deployment.yaml")).unwrap(),
    )
    .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );

    // The ConfigMap's configuration is one Conclave accepts.
    let configmap: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{dir}/configmap.yaml")).unwrap())
            .unwrap();
    let toml = configmap["data"]["conclave.toml"]
        .as_str()
        .expect("conclave.toml");
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("conclave.toml");
    std::fs::write(&path, toml).unwrap();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    checked(
        Command::new(env!("CARGO_BIN_EXE_conclave"))
            .arg("--config")
            .arg(&path)
            .args(["config", "check"])
            .env(
                "CONCLAVE__DATABASE__URL",
                "postgres://conclave:pw@postgres/conclave",
            )
            .env("CONCLAVE__SECURITY__SECRET_KEY", key)
            .env("CONCLAVE__KEYS__KEK", key),
        "conclave config check",
    );
}

#[test]
fn the_caddyfile_example_validates() {
    checked(
        Command::new("caddy")
            .args([
                "validate",
                "--config",
                "config/Caddyfile",
                "--adapter",
                "caddyfile",
            ])
            .current_dir(ROOT),
        "caddy",
    );
}
