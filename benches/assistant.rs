//! Assistant benchmark (`make bench`): what Conclave's OpenAI-compatible endpoint adds on top
//! of the provider it relays, against calling that provider directly (the baseline), same run.
//!
//! - First token: sequential streamed requests; time from sending the request to the first
//!   piece of content, p50/p99, direct and through Conclave. Target: ≤ 5 ms added at p50.
//! - Many streams: 500 concurrent streams, the provider sending 50 tokens/s each; the gaps
//!   between tokens as the client sees them, p50/p99, direct and through Conclave. Target:
//!   ≤ 20 ms added at p99. Conclave's CPU per streamed token (from /proc/<pid>/stat).
//!
//! The fake provider is an actix-web server in this process that streams OpenAI chunks on a
//! timer; it and the clients run on CPU 0, Conclave on CPU 1. `BENCH_QUICK=1` shortens it.

mod common;

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use common::{
    GENERATOR_CPU, SERVER_CPU, ServerWithUser, cpu_model, cpu_seconds, percentile, pin_self,
    refuse_if_busy, report, sign_in_for_token, write_into_benchmarks_md,
};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery staple";
const STREAMS: usize = 500;
const TOKEN_GAP: Duration = Duration::from_millis(20);

/// The fake provider: `tokens` tokens `gap` apart (`gap` 0: all at once), from the `model`
/// name `t<tokens>g<gap ms>`.
async fn completions(body: web::Json<Value>) -> HttpResponse {
    let model = body["model"].as_str().unwrap_or("t5g0").to_owned();
    let (tokens, gap) = model
        .strip_prefix('t')
        .and_then(|rest| rest.split_once('g'))
        .and_then(|(t, g)| Some((t.parse::<usize>().ok()?, g.parse::<u64>().ok()?)))
        .unwrap_or((5, 0));
    let chunk = move |i: usize| {
        let data = json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
        web::Bytes::from(format!("data: {data}\n\n"))
    };
    let end = web::Bytes::from(format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}})
    ));
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let end = end.clone();
        async move {
            if i > tokens {
                return None;
            }
            if i == tokens {
                return Some((Ok::<_, std::convert::Infallible>(end), i + 1));
            }
            if i > 0 && gap > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            Some((Ok(chunk(i)), i + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(stream)
}

fn start_fake() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(|| {
                App::new()
                    .route("/v1/chat/completions", web::post().to(completions))
                    .route("/v1/models", web::get().to(HttpResponse::Ok))
            })
            .workers(1)
            .backlog(4096)
            .max_connections(50_000)
            .disable_signals()
            .listen(listener)
            .expect("listen")
            .run()
            .await
            .expect("fake provider");
        });
    });
    url
}

/// One streamed request: (time to the first content, the gaps between later contents, tokens).
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    model: &str,
) -> (Duration, Vec<f64>, usize) {
    let mut request = client.post(url).json(&json!({
        "model": model, "stream": true,
        "messages": [{"role": "user", "content": "benchmark"}],
    }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let started = Instant::now();
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.bytes_stream();
    let mut first = None;
    let mut last: Option<Instant> = None;
    let mut gaps = Vec::new();
    let mut tokens = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        let now = Instant::now();
        // A read may hold several events; count the contents in it.
        let contents = String::from_utf8_lossy(&chunk)
            .matches("\"content\":\"tok")
            .count();
        if contents == 0 {
            continue;
        }
        tokens += contents;
        if first.is_none() {
            first = Some(now - started);
        }
        if let Some(previous) = last {
            gaps.push((now - previous).as_secs_f64() * 1_000.0);
        }
        last = Some(now);
    }
    (first.unwrap_or_default(), gaps, tokens)
}

struct FirstToken {
    p50: f64,
    p99: f64,
    samples: Vec<f64>,
}

async fn first_tokens(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    rounds: usize,
) -> FirstToken {
    for _ in 0..20 {
        one_stream(client, url, token, "t5g0").await; // warm up connections
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (first, _, _) = one_stream(client, url, token, "t5g0").await;
        times.push(first.as_secs_f64() * 1_000.0);
    }
    FirstToken {
        p50: percentile(&times, 50.0),
        p99: percentile(&times, 99.0),
        samples: times,
    }
}

struct Streams {
    p50: f64,
    p99: f64,
    tokens: usize,
    seconds: f64,
    gaps: Vec<f64>,
}

async fn many_streams(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tokens: usize,
) -> Streams {
    let model = format!("t{tokens}g{}", TOKEN_GAP.as_millis());
    let started = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (client, url, token, model) = (
                client.clone(),
                url.to_owned(),
                token.map(str::to_owned),
                model.clone(),
            );
            tokio::spawn(async move { one_stream(&client, &url, token.as_deref(), &model).await })
        })
        .collect();
    let mut gaps = Vec::new();
    let mut delivered = 0;
    for task in tasks {
        let (_, stream_gaps, count) = task.await.expect("stream task");
        gaps.extend(stream_gaps);
        delivered += count;
    }
    assert_eq!(delivered, STREAMS * tokens, "every token arrived");
    Streams {
        p50: percentile(&gaps, 50.0),
        p99: percentile(&gaps, 99.0),
        tokens: delivered,
        seconds: started.elapsed().as_secs_f64(),
        gaps,
    }
}

fn main() {
    conclave::crypto::install_tls_provider();
    refuse_if_busy();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let (rounds, tokens) = if quick { (100, 50) } else { (500, 150) };
    let fake = start_fake();
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(
        config.path(),
        format!(
            "[assistant]\nhealth_interval_secs = 3600\n\n\
             [billing.plans.free]\nlabel = \"Benchmark (no limits)\"\n\n\
             [assistant.providers.fake]\nkind = \"openai\"\nbase_url = \"{fake}\"\n\n\
             [assistant.models.t5g0]\nroutes = [{{ provider = \"fake\", model = \"t5g0\" }}]\n\n\
             [assistant.models.t{tokens}g{gap}]\nroutes = [{{ provider = \"fake\", model = \"t{tokens}g{gap}\" }}]\n",
            gap = TOKEN_GAP.as_millis()
        ),
    )
    .expect("write config");
    let config_path = config.path().to_string_lossy().into_owned();
    let server = ServerWithUser::start_on(
        EMAIL,
        PASSWORD,
        &[
            ("CONCLAVE_CONFIG", config_path.as_str()),
            ("CONCLAVE__SERVER__WORKERS", "1"),
        ],
        Some(SERVER_CPU),
    );
    pin_self(GENERATOR_CPU);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let token = sign_in_for_token(&server.base, EMAIL, PASSWORD).await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(STREAMS * 2)
            .build()
            .expect("client");
        let direct = format!("{fake}/chat/completions");
        let ours = format!("{}/v1/chat/completions", server.base);

        eprintln!("first token: {rounds} sequential requests each way");
        let base_first = first_tokens(&client, &direct, None, rounds).await;
        let our_first = first_tokens(&client, &ours, Some(&token), rounds).await;

        eprintln!("{STREAMS} concurrent streams of {tokens} tokens at 50 tokens/s, each way");
        let base_streams = many_streams(&client, &direct, None, tokens).await;
        let cpu_before = cpu_seconds(server.pid());
        let our_streams = many_streams(&client, &ours, Some(&token), tokens).await;
        let cpu = cpu_seconds(server.pid()) - cpu_before;
        let cpu_per_token_us = cpu / our_streams.tokens as f64 * 1e6;

        let added_first = our_first.p50 - base_first.p50;
        let added_gap = our_streams.p99 - base_streams.p99;
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let first_chart = report::latency_chart(
            "assistant_first_token",
            "Assistant: time to the first token",
            &[
                report::Series {
                    label: "through Conclave",
                    samples: &our_first.samples,
                },
                report::Series {
                    label: "provider directly",
                    samples: &base_first.samples,
                },
            ],
        );
        let gap_chart = report::latency_chart(
            "assistant_gaps",
            "Assistant: gaps between tokens (50 tokens/s sent)",
            &[
                report::Series {
                    label: "through Conclave",
                    samples: &our_streams.gaps,
                },
                report::Series {
                    label: "provider directly",
                    samples: &base_streams.gaps,
                },
            ],
        );
        if !quick {
            report::record(
                "assistant",
                &[
                    report::Row::new(
                        "assistant: first token p50",
                        format!("{:.2} ms", our_first.p50),
                        format!("{:.2} ms (provider directly)", base_first.p50),
                    )
                    .ratio(our_first.p50, base_first.p50)
                    .target("≤ 5 ms added", added_first <= 5.0),
                    report::Row::new(
                        format!("assistant: gap between tokens p99, {STREAMS} streams"),
                        format!("{:.2} ms", our_streams.p99),
                        format!("{:.2} ms (provider directly)", base_streams.p99),
                    )
                    .ratio(our_streams.p99, base_streams.p99)
                    .target("≤ 20 ms added", added_gap <= 20.0),
                ],
            );
        }
        let section = format!(
            "<!-- assistant:begin -->\n## Assistant: the OpenAI-compatible endpoint\n\n\
             `cargo bench --bench assistant`{quick_note} on {cpu_name}: Conclave (release build, one \
             HTTP worker) pinned to CPU {SERVER_CPU}, the fake provider and the clients on CPU \
             {GENERATOR_CPU}. The baseline calls the same fake provider directly.\n\n\
             | measure | direct (baseline) | through Conclave | added | target |\n\
             |---|---|---|---|---|\n\
             | first token p50 ({rounds} sequential streams) | {b50:.2} ms | {o50:.2} ms | {added_first:.2} ms | ≤ 5 ms: {v1} |\n\
             | first token p99 | {b99:.2} ms | {o99:.2} ms | {d99:.2} ms | |\n\
             | gap between tokens p50 ({STREAMS} streams × {tokens} tokens at 50/s) | {g50:.2} ms | {h50:.2} ms | {dg50:.2} ms | |\n\
             | gap between tokens p99 | {g99:.2} ms | {h99:.2} ms | {added_gap:.2} ms | ≤ 20 ms: {v2} |\n\
             | wall time of the stream phase | {bs:.2} s | {os:.2} s | | |\n\n\
             Conclave's CPU per streamed token: **{cpu_per_token_us:.1} µs** ({tok} tokens, {cpu:.2} s \
             of CPU; that includes parsing the provider's SSE, re-framing it for the client, and one \
             usage row per stream).\n\n{first_chart}\n\n{gap_chart}\n<!-- assistant:end -->",
            quick_note = if quick { " (BENCH_QUICK)" } else { "" },
            cpu_name = cpu_model(),
            b50 = base_first.p50,
            o50 = our_first.p50,
            v1 = verdict(added_first <= 5.0),
            b99 = base_first.p99,
            o99 = our_first.p99,
            d99 = our_first.p99 - base_first.p99,
            g50 = base_streams.p50,
            h50 = our_streams.p50,
            dg50 = our_streams.p50 - base_streams.p50,
            g99 = base_streams.p99,
            h99 = our_streams.p99,
            v2 = verdict(added_gap <= 20.0),
            bs = base_streams.seconds,
            os = our_streams.seconds,
            tok = our_streams.tokens,
        );
        println!("{section}");
        if !quick {
            write_into_benchmarks_md("assistant", &section);
        }
    });
}
