//! `conclave edge agent`: keeps a proxy on another host in step with the edge policy.
//!
//! Each round it fetches the rendered config (`GET /api/v1/admin/edge/render`, the version in
//! `X-Edge-Version`), and when the version changed: writes it next to the target and renames it
//! over (atomic), keeping the file it replaces as `<out>.previous`; runs the check command; on
//! failure puts the previous file back and reports `check_failed`; otherwise runs the reload
//! command and reports `applied`. A version whose check failed is not retried until a newer
//! one appears. The report (`PUT /api/v1/admin/edge/agents/{name}`) is shown in `/admin/edge`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::render::Format;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub server: String,
    pub token: String,
    pub format: Format,
    pub out: PathBuf,
    pub check: Option<String>,
    pub reload: Option<String>,
    pub name: String,
    pub interval: Duration,
    pub once: bool,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    Unchanged(i64),
    Applied(i64),
    /// The check refused this version; the previous file is back in place.
    CheckFailed {
        version: i64,
        output: String,
    },
    /// The file is in place and checked but reloading failed.
    ReloadFailed {
        version: i64,
        output: String,
    },
}

pub struct Agent {
    options: AgentOptions,
    client: reqwest::Client,
    /// The version in force on the proxy, and the last one refused (not retried).
    applied: Option<i64>,
    refused: Option<i64>,
    /// The first round compares the file in place instead of trusting `applied`.
    started: bool,
}

impl Agent {
    pub fn new(options: AgentOptions) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("conclave-edge-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            options,
            client,
            applied: None,
            refused: None,
            started: false,
        })
    }

    /// Runs rounds until stopped (or one with `--once`). With `--once`, a refused version is
    /// an error (exit status), so scripts and tests can tell.
    pub async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let outcome = self.round().await;
            match &outcome {
                Ok(Round::Unchanged(_)) => {}
                Ok(round) => tracing::info!(?round, "edge agent round"),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "edge agent round failed")
                }
            }
            if self.options.once {
                return match outcome? {
                    Round::CheckFailed { version, output } => Err(anyhow::anyhow!(
                        "version {version} failed the check and was rolled back: {output}"
                    )),
                    Round::ReloadFailed { version, output } => Err(anyhow::anyhow!(
                        "version {version} is in place but the reload failed: {output}"
                    )),
                    Round::Applied(version) | Round::Unchanged(version) => {
                        println!(
                            "edge policy version {version} in force at {}",
                            self.options.out.display()
                        );
                        Ok(())
                    }
                };
            }
            tokio::time::sleep(self.options.interval).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.options.server.trim_end_matches('/'))
    }

    pub async fn round(&mut self) -> anyhow::Result<Round> {
        let response = self
            .client
            .get(self.url(&format!(
                "/api/v1/admin/edge/render?format={}",
                self.options.format.as_str()
            )))
            .bearer_auth(&self.options.token)
            .send()
            .await
            .context("cannot reach the Conclave server")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the server answered {status}: {}", body.trim());
        }
        let version: i64 = response
            .headers()
            .get("x-edge-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("the server's answer has no X-Edge-Version")?;
        let config = response.text().await?;
        if !self.started {
            self.started = true;
            // First round: the file in place says which version it is (the agent restarted,
            // or another one wrote it).
            let current = tokio::fs::read_to_string(&self.options.out).await.ok();
            self.applied = current.as_deref().and_then(version_in);
            if current.as_deref() == Some(config.as_str()) {
                self.report(version, "applied", None).await;
                return Ok(Round::Unchanged(version));
            }
        } else if self.applied == Some(version) || self.refused == Some(version) {
            return Ok(Round::Unchanged(self.applied.unwrap_or(version)));
        }
        let round = self.apply(version, &config).await?;
        match &round {
            Round::Applied(_) => {
                self.applied = Some(version);
                self.report(version, "applied", None).await;
            }
            Round::CheckFailed { output, .. } => {
                self.refused = Some(version);
                let kept = self.applied;
                self.report_version(kept, "check_failed", Some(output.clone()))
                    .await;
            }
            Round::ReloadFailed { output, .. } => {
                self.applied = Some(version);
                self.report(version, "error", Some(output.clone())).await;
            }
            Round::Unchanged(_) => {}
        }
        Ok(round)
    }

    async fn apply(&self, version: i64, config: &str) -> anyhow::Result<Round> {
        let out = self.options.out.clone();
        let previous = sibling(&out, "previous");
        let had_previous = write_keeping_previous(&out, &previous, config)?;
        if let Some(check) = &self.options.check
            && let Err(output) = shell(check).await
        {
            restore(&out, &previous, had_previous)?;
            return Ok(Round::CheckFailed { version, output });
        }
        if let Some(reload) = &self.options.reload
            && let Err(output) = shell(reload).await
        {
            return Ok(Round::ReloadFailed { version, output });
        }
        Ok(Round::Applied(version))
    }

    async fn report(&self, version: i64, status: &str, error: Option<String>) {
        self.report_version(Some(version), status, error).await;
    }

    async fn report_version(&self, version: Option<i64>, status: &str, error: Option<String>) {
        let url = self.url(&format!("/api/v1/admin/edge/agents/{}", self.options.name));
        let body = serde_json::json!({
            "format": self.options.format.as_str(),
            "applied_version": version,
            "status": status,
            "error": error,
        });
        let sent = self
            .client
            .put(url)
            .bearer_auth(&self.options.token)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the server refused the agent's report")
            }
            Err(error) => tracing::warn!(%error, "cannot report to the server"),
        }
    }
}

/// The version a rendered config names in its first line (`edge::render`'s header).
fn version_in(config: &str) -> Option<i64> {
    let first = config.lines().next()?;
    let rest = first.split("version ").nth(1)?;
    rest.split(['.', ' ']).next()?.parse().ok()
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Writes `config` to `out` atomically (a temporary file in the same directory, synced, then
/// renamed over), after copying the current `out` to `previous`. Returns whether there was one.
fn write_keeping_previous(out: &Path, previous: &Path, config: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let had_previous = out.exists();
    if had_previous {
        std::fs::copy(out, previous)
            .with_context(|| format!("cannot keep a copy of {}", out.display()))?;
    }
    let temporary = sibling(out, "new");
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(config.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, out)
        .with_context(|| format!("cannot move the new config into {}", out.display()))?;
    Ok(had_previous)
}

fn restore(out: &Path, previous: &Path, had_previous: bool) -> anyhow::Result<()> {
    if had_previous {
        std::fs::rename(previous, out)
            .with_context(|| format!("cannot put {} back", out.display()))?;
    } else {
        std::fs::remove_file(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    Ok(())
}

/// Runs `command` with `sh -c`; Err carries its output when it fails.
async fn shell(command: &str) -> Result<(), String> {
    let command = command.to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
    })
    .await;
    match outcome {
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            let text: String = text.trim().chars().take(2000).collect();
            Err(format!("{} ({})", text, output.status))
        }
        Ok(Err(error)) => Err(format!("cannot run it: {error}")),
        Err(error) => Err(format!("cannot run it: {error}")),
    }
}
