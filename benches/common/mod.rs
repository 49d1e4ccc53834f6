//! Helpers shared by the benchmarks (`mod common;` in each).
#![allow(dead_code)]

pub mod report;

use std::path::Path;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A benchmark on a busy machine measures the other load. Wait up to two minutes for the load
/// average to settle (a build that just finished keeps it high for a while), then refuse.
pub fn refuse_if_busy() {
    if std::env::var_os("BENCH_IGNORE_LOAD").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let one_minute: f64 = loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if one_minute <= cores * 0.5 {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "refusing to benchmark: load average {one_minute:.2} on {cores} cores (BENCH_IGNORE_LOAD=1 overrides)"
            );
            std::process::exit(2);
        }
        eprintln!("waiting for the machine to settle: load average {one_minute:.2}");
        std::thread::sleep(Duration::from_secs(10));
    }
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Replaces the section between `<!-- NAME:begin -->` and `<!-- NAME:end -->` of
/// docs/benchmarks.md (or appends it); `section` includes the markers.
pub fn write_into_benchmarks_md(name: &str, section: &str) {
    if profiling() {
        eprintln!(
            "the server ran under a profiler: docs/benchmarks.md is left as it was\n{section}"
        );
        return;
    }
    let (begin_marker, end_marker) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let updated = match (current.find(&begin_marker), current.find(&end_marker)) {
        (Some(begin), Some(end)) => {
            let end = end + end_marker.len();
            format!("{}{}{}", &current[..begin], section, &current[end..])
        }
        _ => format!("{}\n\n{}\n", current.trim_end(), section),
    };
    std::fs::write(&path, updated).expect("write docs/benchmarks.md");
    eprintln!("wrote {}", path.display());
}

/// The CPU model, for the report.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Waits for the server at `base`, signs in as `email` and makes a personal API token with
/// the `write` scope.
pub async fn sign_in_for_token(base: &str, email: &str, password: &str) -> String {
    use reqwest::cookie::CookieStore as _;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let login = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200, "{:?}", login.text().await);
    http.get(format!("{base}/api/v1/me"))
        .send()
        .await
        .expect("me");
    let url: reqwest::Url = base.parse().expect("base url");
    let cookies = jar
        .cookies(&url)
        .and_then(|c| c.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    let csrf = cookies
        .split("; ")
        .find_map(|c| c.strip_prefix("conclave_csrf="))
        .expect("a CSRF cookie")
        .to_owned();
    let created = http
        .post(format!("{base}/api/v1/me/tokens"))
        .header("X-CSRF-Token", csrf)
        .json(&serde_json::json!({ "name": "bench", "scopes": ["write"] }))
        .send()
        .await
        .expect("token");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let created: serde_json::Value = created.json().await.expect("token json");
    created["token"].as_str().expect("token").to_owned()
}

/// Pins this process (every thread) to `cpu`, with `taskset`.
pub fn pin_self(cpu: usize) {
    pin(std::process::id(), cpu);
}

/// Pins process `pid` (every thread it has now) to `cpu`, with `taskset`.
pub fn pin(pid: u32, cpu: usize) {
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    if !pinned.is_ok_and(|s| s.success()) {
        eprintln!("could not pin process {pid} to CPU {cpu} (is taskset installed?)");
    }
}

/// Where load benchmarks run the server, and their load generator (and in-process baseline).
pub const SERVER_CPU: usize = 1;
pub const GENERATOR_CPU: usize = 0;

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    resident_kib(pid).total
}

/// Resident memory of a process, in KiB, from `/proc/<pid>/status` (one read).
pub struct Resident {
    /// `VmRSS`.
    pub total: u64,
    /// `RssAnon`: the process's own memory (heap, stacks).
    pub private: u64,
    /// `RssFile` + `RssShmem`: mapped from files or shared memory (the executable's code,
    /// libraries, SQLite's `-shm` index). Clean pages shared with the page cache.
    pub mapped: u64,
}

pub fn resident_kib(pid: u32) -> Resident {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Resident {
        total: field("VmRSS:"),
        private: field("RssAnon:"),
        mapped: field("RssFile:") + field("RssShmem:"),
    }
}

/// CPU time process `pid` has used so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the rest follows the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Whether the server runs under a profiler (`BENCH_PROFILE_SERVER`): its figures measure the
/// profiler too, so they are printed, not written into the docs.
pub fn profiling() -> bool {
    std::env::var_os("BENCH_PROFILE_SERVER").is_some_and(|v| !v.is_empty())
}

/// A release `conclave serve` with one verified user, on its own port and temp data dir;
/// killed when dropped.
pub struct ServerWithUser {
    pub base: String,
    pub data: tempfile::TempDir,
    child: std::process::Child,
    env: Vec<(String, String)>,
}

impl ServerWithUser {
    /// `env` adds settings (`CONCLAVE__…`) for both the user creation and the server.
    pub fn start(email: &str, password: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(email, password, env, None)
    }

    /// Like [`Self::start`], the server pinned to `cpu` (with `taskset`) and allowed 20,000
    /// open files.
    pub fn start_on(email: &str, password: &str, env: &[(&str, &str)], cpu: Option<usize>) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let password_file = data.path().join("password");
        std::fs::write(&password_file, password).expect("password file");
        let mut create = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
        configure(&mut create, data.path(), free_port(), &env);
        let created = create
            .args(["user", "create", "--email", email, "--password-file"])
            .arg(&password_file)
            .output()
            .expect("conclave user create");
        assert!(created.status.success(), "{created:?}");
        let (base, child) = serve(data.path(), &env, cpu);
        Self {
            base,
            data,
            child,
            env,
        }
    }

    /// Another node with the same settings and data directory (so the same secret key): with
    /// a PostgreSQL `CONCLAVE__DATABASE__URL`, a second node of the same cluster.
    pub fn another_node(&self, cpu: Option<usize>) -> (String, std::process::Child) {
        serve(self.data.path(), &self.env, cpu)
    }
}

fn configure(
    command: &mut std::process::Command,
    data: &Path,
    port: u16,
    env: &[(String, String)],
) {
    command
        .current_dir(data)
        .env("CONCLAVE__DATA_DIR", data)
        .env("CONCLAVE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CONCLAVE__TELEMETRY__LOG_FILTER", "error")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

/// `conclave serve` on a free port (pinned to `cpu` if given); its base URL and process.
fn serve(
    data: &Path,
    env: &[(String, String)],
    cpu: Option<usize>,
) -> (String, std::process::Child) {
    let port = free_port();
    // `BENCH_PROFILE_SERVER="heaptrack -o /tmp/ht"` (or `perf record -g -o …`) runs the server
    // under a profiler; the figures of such a run are not published (see [`profiling`]).
    let profiler: Vec<String> = std::env::var("BENCH_PROFILE_SERVER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // [prlimit … taskset -c CPU] [profiler …] conclave: each wrapper runs the rest.
    let mut line: Vec<String> = match cpu {
        Some(cpu) => [
            "prlimit",
            "--nofile=20000:20000",
            "taskset",
            "-c",
            &cpu.to_string(),
        ]
        .map(str::to_owned)
        .to_vec(),
        None => Vec::new(),
    };
    line.extend(profiler.iter().cloned());
    line.push(env!("CARGO_BIN_EXE_conclave").to_owned());
    let mut command = std::process::Command::new(&line[0]);
    command.args(&line[1..]);
    configure(&mut command, data, port, env);
    if !profiler.is_empty() {
        // A process group of its own: a profiler runs the server as its child, and both stop
        // together (see `Drop`).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
    }
    let child = command
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start conclave");
    (format!("http://127.0.0.1:{port}"), child)
}

impl ServerWithUser {
    /// The server's process id (`prlimit` and `taskset` exec it, so it keeps this one).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerWithUser {
    fn drop(&mut self) {
        if profiling() {
            // The whole group, gently: the profiler writes its data out when the server ends.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
