//! The suite's shared report: each benchmark records its headline rows
//! (`docs/benchmarks/results/<bench>.json`), from which the summary table at the top of
//! docs/benchmarks.md is rebuilt after every benchmark, and draws its latency distributions as
//! SVG charts (`docs/benchmarks/<chart>.svg`).
//!
//! The charts are written by hand rather than with plotters: plotters lays out its labels with
//! a font backend (`ttf` or `ab_glyph`, plus a font file to ship), while a percentile chart is a
//! few polylines and `<text>` elements that the browser lays out itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The benchmarks in the order the summary lists them.
const ORDER: &[&str] = &[
    "startup",
    "login_storm",
    "http",
    "history",
    "realtime",
    "devices",
    "assistant",
    "page_weight",
];

/// One headline figure: ours against the baseline (or peer) of the same run.
pub struct Row {
    pub scenario: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: String,
}

impl Row {
    pub fn new(
        scenario: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
    ) -> Self {
        Self {
            scenario: scenario.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio: String::new(),
            target: String::new(),
            verdict: String::new(),
        }
    }

    /// `ours / baseline` as `1.23×`.
    pub fn ratio(mut self, ours: f64, baseline: f64) -> Self {
        if baseline > 0.0 {
            self.ratio = format!("{:.2}×", ours / baseline);
        }
        self
    }

    /// A target and whether it was met.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.verdict = if met { "met" } else { "MISSED" }.to_owned();
        self
    }
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// The machine, for the summary's last column: CPU model and cores.
pub fn machine() -> String {
    // The machine's, not this process's: benchmarks pin themselves to one CPU.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
        .max(1);
    format!("{}, {cores} cores", super::cpu_model())
}

/// Records `bench`'s headline rows and rebuilds the summary table in docs/benchmarks.md.
pub fn record(bench: &str, rows: &[Row]) {
    if super::profiling() {
        return;
    }
    let results = docs().join("benchmarks/results");
    std::fs::create_dir_all(&results).expect("docs/benchmarks/results");
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "scenario": r.scenario, "ours": r.ours, "baseline": r.baseline,
                "ratio": r.ratio, "target": r.target, "verdict": r.verdict,
            })
        })
        .collect();
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let recorded = json!({ "bench": bench, "machine": machine(), "date": date, "rows": rows });
    std::fs::write(
        results.join(format!("{bench}.json")),
        serde_json::to_string_pretty(&recorded).expect("json") + "\n",
    )
    .expect("write the results");
    rebuild_summary();
}

fn rebuild_summary() {
    let results = docs().join("benchmarks/results");
    let mut table = String::from(
        "<!-- summary:begin -->\n## Summary\n\nThe headline figure of every scenario, from the latest run of its benchmark (each \
         section below has the detail). Ratios are ours divided by the baseline or peer measured in the same run.\n\n\
         | scenario | Conclave | baseline / peer | ratio | target | verdict | machine, date |\n|---|---|---|---|---|---|---|\n",
    );
    let mut missing = Vec::new();
    for bench in ORDER {
        let Ok(text) = std::fs::read_to_string(results.join(format!("{bench}.json"))) else {
            missing.push(*bench);
            continue;
        };
        let recorded: Value = serde_json::from_str(&text).expect("a results file");
        for row in recorded["rows"].as_array().into_iter().flatten() {
            let cell = |name: &str| row[name].as_str().unwrap_or("").replace('|', "\\|");
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {}, {} |",
                cell("scenario"),
                cell("ours"),
                cell("baseline"),
                cell("ratio"),
                cell("target"),
                cell("verdict"),
                recorded["machine"].as_str().unwrap_or(""),
                recorded["date"].as_str().unwrap_or(""),
            );
        }
    }
    if !missing.is_empty() {
        let _ = writeln!(
            table,
            "\nNot in the summary yet (their benchmark has not run since it was added; their sections below are from earlier runs): {}.",
            missing.join(", ")
        );
    }
    table.push_str("<!-- summary:end -->");
    super::write_into_benchmarks_md("summary", &table);
}

/// One curve of a latency chart: its label and its samples in milliseconds.
pub struct Series<'a> {
    pub label: &'a str,
    pub samples: &'a [f64],
}

const COLOURS: &[&str] = &[
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a",
];

/// Draws the latency distribution of each series (latency at every percentile, the tail
/// stretched: the x axis is in "nines", so p50, p90, p99 and p99.9 are evenly spaced) into
/// docs/benchmarks/`name`.svg; answers the Markdown that shows it.
pub fn latency_chart(name: &str, title: &str, series: &[Series<'_>]) -> String {
    const WIDTH: f64 = 820.0;
    const HEIGHT: f64 = 360.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 280.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    // x: -log10(1 - p), p up to 0.999 (3 nines); the maximum is drawn at the right edge.
    const NINES: f64 = 3.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| !s.samples.is_empty())
        .map(|s| {
            let mut sorted = s.samples.to_vec();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            let points = (0..n)
                .map(|i| {
                    let p = i as f64 / n as f64;
                    let nines = (-(1.0 - p).log10()).min(NINES);
                    (nines, sorted[i])
                })
                .collect();
            (s.label, points)
        })
        .collect();
    let top = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, y)| *y))
        .fold(0.0_f64, f64::max);
    let y_max = nice_ceiling(top.max(0.001));
    let x = |nines: f64| LEFT + nines / NINES * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="system-ui, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="14" font-weight="600">{}</text>
"##,
        escape(title)
    );
    for (label, nines) in [
        ("p0", 0.0),
        ("p50", 0.301),
        ("p90", 1.0),
        ("p99", 2.0),
        ("p99.9", 3.0),
    ] {
        let px = x(nines);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#d0d7de"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    // Round steps: 5 of a 1 or 5 maximum (0.2, 1), 4 of a 2 (0.5).
    let steps = if (y_max / 10_f64.powf(y_max.log10().floor()) - 2.0).abs() < 1e-9 {
        4
    } else {
        5
    };
    for step in 0..=steps {
        let ms = y_max * f64::from(step) / f64::from(steps);
        let py = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#d0d7de"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            format_ms(ms)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (tail stretched)</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">latency</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        TOP + plot_h / 2.0
    );
    for (index, (label, points)) in curves.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let mut path = String::new();
        for (nines, ms) in points {
            let _ = write!(path, "{:.1},{:.1} ", x(*nines), y(*ms));
        }
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.trim_end()
        );
        let ly = TOP + 10.0 + index as f64 * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let p99 = super::percentile(&points.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(), 99.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} (p99 {})</text>"##,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(label),
            format_ms(p99)
        );
    }
    svg.push_str("</svg>\n");
    let dir = docs().join("benchmarks");
    std::fs::create_dir_all(&dir).expect("docs/benchmarks");
    if !super::profiling() {
        std::fs::write(dir.join(format!("{name}.svg")), svg).expect("write the chart");
    }
    format!("![{}](benchmarks/{name}.svg)", escape(title))
}

/// 1, 2 or 5 times a power of ten, at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
