//! Start-up benchmark: cold start to the first `200` from `/readyz` with a fresh SQLite file,
//! and resident memory once idle, for Conclave and for a bare actix-web server (the baseline,
//! `examples/baseline_server.rs`) measured the same way in the same run.
//!
//! Run with `make bench`. Servers are pinned to CPU 1 and this process to CPU 0 when `taskset`
//! exists; the run refuses to start on a busy machine. Results go to `docs/benchmarks.md`,
//! between the `startup` markers.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    cpu_model, free_port, percentile, refuse_if_busy, report, resident_kib,
    write_into_benchmarks_md,
};

const RUNS: usize = 15;
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(2);
const START_TARGET_MS: f64 = 300.0;
const RSS_TARGET_MB: f64 = 30.0;

struct Sample {
    ready_ms: f64,
    rss_mb: f64,
    /// The part of `rss_mb` that is the process's own memory (heap, stacks).
    anon_mb: f64,
    /// The part mapped from files or shared memory: the executable's code and data, shared
    /// libraries. Clean, shared with the page cache, and given back under memory pressure.
    file_mb: f64,
}

fn main() {
    let conclave = PathBuf::from(env!("CARGO_BIN_EXE_conclave"));
    let baseline = conclave
        .parent()
        .expect("target dir")
        .join("examples/baseline_server");
    assert!(
        baseline.exists(),
        "build the baseline first: cargo build --release --example baseline_server (make bench does)"
    );
    refuse_if_busy();

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // Interleave the two so drift on the machine affects both alike.
    for run in 0..RUNS {
        let port = free_port();
        let data = tempfile::tempdir().expect("temp dir");
        let mut command = pinned(&conclave);
        command
            .arg("serve")
            .current_dir(data.path())
            .env("CONCLAVE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("CONCLAVE__TELEMETRY__LOG_FILTER", "warn");
        ours.push(measure(command, port));

        let port = free_port();
        let mut command = pinned(&baseline);
        command.env("BASELINE_LISTEN", format!("127.0.0.1:{port}"));
        theirs.push(measure(command, port));
        eprintln!("run {}/{RUNS} done", run + 1);
    }

    let report = report(&ours, &theirs);
    println!("{report}");
    write_into_benchmarks_md("startup", &report);
}

fn measure(mut command: Command, port: u16) -> Sample {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut guard = Guard(child);
    loop {
        if readyz_ok(address) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server never became ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1_000.0;
    std::thread::sleep(IDLE_BEFORE_RSS);
    let resident = resident_kib(guard.0.id());
    let mb = |kib: u64| kib as f64 / 1024.0;
    let sample = Sample {
        ready_ms,
        rss_mb: mb(resident.total),
        anon_mb: mb(resident.private),
        file_mb: mb(resident.mapped),
    };
    guard.stop();
    sample
}

struct Guard(Child);

impl Guard {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn readyz_ok(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(50)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// Runs `program` on CPU 1 (when there are two and taskset exists), leaving CPU 0 to us.
fn pinned(program: &Path) -> Command {
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if two_cores && Command::new("taskset").arg("-V").output().is_ok() {
        let mut command = Command::new("taskset");
        command.arg("-c").arg("1").arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn report(ours: &[Sample], theirs: &[Sample]) -> String {
    let ready = |s: &[Sample]| s.iter().map(|x| x.ready_ms).collect::<Vec<_>>();
    let rss = |s: &[Sample]| s.iter().map(|x| x.rss_mb).collect::<Vec<_>>();
    let anon = |s: &[Sample]| percentile(&s.iter().map(|x| x.anon_mb).collect::<Vec<_>>(), 50.0);
    let file = |s: &[Sample]| percentile(&s.iter().map(|x| x.file_mb).collect::<Vec<_>>(), 50.0);
    let (our_ready, base_ready) = (ready(ours), ready(theirs));
    let (our_rss, base_rss) = (rss(ours), rss(theirs));
    let cpu = cpu_model();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let verdict = |value: f64, target: f64| if value < target { "met" } else { "MISSED" };
    let our_ready_p50 = percentile(&our_ready, 50.0);
    let our_ready_p90 = percentile(&our_ready, 90.0);
    let our_rss_max = percentile(&our_rss, 100.0);
    let chart = report::latency_chart(
        "startup",
        "Cold start to /readyz 200",
        &[
            report::Series {
                label: "Conclave",
                samples: &our_ready,
            },
            report::Series {
                label: "bare actix-web",
                samples: &base_ready,
            },
        ],
    );
    let our_rss_p50 = percentile(&our_rss, 50.0);
    report::record(
        "startup",
        &[
            report::Row::new(
                "start-up: cold start → `/readyz` 200, p50",
                format!("{our_ready_p50:.1} ms"),
                format!("{:.1} ms (bare actix-web)", percentile(&base_ready, 50.0)),
            )
            .ratio(our_ready_p50, percentile(&base_ready, 50.0))
            .target(
                format!("< {START_TARGET_MS:.0} ms"),
                our_ready_p50 < START_TARGET_MS,
            ),
            report::Row::new(
                "start-up: idle RSS, median",
                format!("{our_rss_p50:.1} MB"),
                format!("{:.1} MB (bare actix-web)", percentile(&base_rss, 50.0)),
            )
            .ratio(our_rss_p50, percentile(&base_rss, 50.0))
            .target(
                format!("< {RSS_TARGET_MB:.0} MB"),
                our_rss_p50 < RSS_TARGET_MB,
            ),
        ],
    );
    format!(
        "<!-- startup:begin -->\n\
         ### Start-up and idle memory\n\n\
         Measured by `make bench` (`benches/startup.rs`), {RUNS} interleaved runs each, release build, \
         fresh SQLite file per run, server pinned to CPU 1. Baseline: a bare actix-web server \
         with the same two workers (`examples/baseline_server.rs`). Machine: {cpu}, {cores} cores.\n\n\
         | scenario | Conclave | baseline (bare actix-web) | ratio | target | verdict |\n\
         |---|---|---|---|---|---|\n\
         | cold start → `/readyz` 200, p50 | {:.1} ms | {:.1} ms | {:.2}× | < {START_TARGET_MS:.0} ms | {} |\n\
         | cold start → `/readyz` 200, p90 | {:.1} ms | {:.1} ms | {:.2}× | < {START_TARGET_MS:.0} ms | {} |\n\
         | idle RSS after start, median | {:.1} MB | {:.1} MB | {:.2}× | < {RSS_TARGET_MB:.0} MB | {} |\n\
         | idle RSS after start, max | {:.1} MB | {:.1} MB | {:.2}× | < {RSS_TARGET_MB:.0} MB | {} |\n\
         | of the RSS, private memory (heap, stacks), median | {:.1} MB | {:.1} MB | {:.2}× | | |\n\
         | of the RSS, mapped from the executable and libraries, median | {:.1} MB | {:.1} MB | {:.2}× | | |\n\n\
         The file-backed part is code: start-up runs a little of every module (settings, \
         migrations, each service's set-up, the routes), and each first touch of a code page \
         makes the kernel map the 64 KiB around it (fault-around), so a few hundred scattered \
         first touches map most of the executable's text. Those pages are clean and shared \
         with the page cache (a second process of the same binary shares them, and the kernel \
         takes them back under pressure); the private memory is what each process costs.\n\n\
         {chart}\n\
         <!-- startup:end -->",
        our_ready_p50,
        percentile(&base_ready, 50.0),
        our_ready_p50 / percentile(&base_ready, 50.0),
        verdict(our_ready_p50, START_TARGET_MS),
        our_ready_p90,
        percentile(&base_ready, 90.0),
        our_ready_p90 / percentile(&base_ready, 90.0),
        verdict(our_ready_p90, START_TARGET_MS),
        percentile(&our_rss, 50.0),
        percentile(&base_rss, 50.0),
        percentile(&our_rss, 50.0) / percentile(&base_rss, 50.0),
        verdict(percentile(&our_rss, 50.0), RSS_TARGET_MB),
        our_rss_max,
        percentile(&base_rss, 100.0),
        our_rss_max / percentile(&base_rss, 100.0),
        verdict(our_rss_max, RSS_TARGET_MB),
        anon(ours),
        anon(theirs),
        anon(ours) / anon(theirs),
        file(ours),
        file(theirs),
        file(ours) / file(theirs),
    )
}
