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
}
