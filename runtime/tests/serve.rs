//! `ponder serve` against real HTTP clients: reqwest, ponder's own remote policy, and the
//! official `openai` Python client. The served run is the smoke pipeline, trained in the test.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ponder_policy_init::remote::{RemoteConfig, RemotePolicy};
use ponder_policy_init::{GenRequest, Policy, Sampling, Stop, TransformerPolicy};
use ponder_runtime::serve::{serve_on, state_from_run};
use ponder_runtime::{Layers, Registry};
use serde_json::{Value, json};

mod common;
use common::{metric_sum, metrics_text_of};

/// The smoke run, trained once per test process; `PONDER_SERVE_TEST_RUN=runs/NAME` serves a
/// finished run instead (for load figures with a real model).
fn run_dir() -> &'static Path {
    static DIR: OnceLock<(Option<tempfile::TempDir>, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("PONDER_SERVE_TEST_RUN") {
            return (None, PathBuf::from(dir));
        }
        let tmp = tempfile::tempdir().expect("temporary directory");
        let registry = Registry::builtin();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
        let out = format!("run.out_dir={}", tmp.path().display());
        let run = Layers::from_file(&config)
            .expect("smoke config")
            .with_overrides(&[out, "run.name=served".into()])
            .load(&registry)
            .expect("smoke config loads");
        ponder_runtime::pipeline::run(&run, &registry, false).expect("the smoke pipeline runs");
        let dir = run.run_dir();
        (Some(tmp), dir)
    })
    .1
}

/// Starts a server on a free loopback port; it runs until `stop` is dropped or sent.
fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    start_with(&[])
}

/// [`start`] with config overrides (`key=value`) on the served run's config.
fn start_with(overrides: &[String]) -> (String, tokio::sync::oneshot::Sender<()>) {
    let state = Arc::new(state_from_run(run_dir(), &Registry::builtin(), overrides).expect("server state"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addr_tx
                .send(listener.local_addr().expect("address"))
                .expect("send address");
            serve_on(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("serves");
        });
    });
    let addr = addr_rx.recv().expect("the server starts");
    (format!("http://{addr}"), stop)
}

/// The shared server for most tests.
fn server() -> &'static str {
    static SERVER: OnceLock<(String, tokio::sync::oneshot::Sender<()>)> = OnceLock::new();
    &SERVER.get_or_init(start).0
}

/// The served model's id: `ponder-` and the run's name.
fn model() -> &'static str {
    static MODEL: OnceLock<String> = OnceLock::new();
    MODEL.get_or_init(|| {
        let name = run_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("ponder-{name}")
    })
}

/// A held-out problem of the served run.
fn problem(i: usize) -> String {
    let text = std::fs::read_to_string(run_dir().join("data/test.jsonl")).expect("test problems");
    let line = text.lines().nth(i).expect("enough test problems");
    let v: Value = serde_json::from_str(line).expect("a JSON line");
    v["prompt"].as_str().expect("a prompt").to_string()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    post_to(server(), path, body)
}

fn chat(effort: &str, seed: u64, prompt: &str) -> Value {
    let (status, body) = post(
        "/v1/chat/completions",
        &json!({"model": model(), "messages": [{"role": "user", "content": prompt}], "reasoning_effort": effort, "seed": seed}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn chat_answers_without_the_chain_of_thought_and_thinks_longer_at_higher_effort() {
    let mut hidden = Vec::new();
    for effort in ["low", "medium", "high"] {
        let mut total = 0;
        for i in 0..3 {
            let body = chat(effort, 7 + i as u64, &problem(i));
            assert_eq!(body["object"], "chat.completion");
            let content = body["choices"][0]["message"]["content"].as_str().expect("content");
            // Only the answer comes back: no steps, no newlines.
            assert!(!content.contains('\n'), "the chain of thought leaked: {content:?}");
            let usage = &body["usage"];
            let reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .expect("reasoning tokens");
            let completion = usage["completion_tokens"].as_u64().expect("completion tokens");
            assert!(reasoning > 0 && completion >= reasoning, "{usage}");
            assert_eq!(
                usage["total_tokens"].as_u64(),
                Some(completion + usage["prompt_tokens"].as_u64().unwrap_or(0))
            );
            total += reasoning;
        }
        hidden.push(total);
    }
    assert!(
        hidden[0] < hidden[1] && hidden[1] < hidden[2],
        "reasoning tokens by effort: {hidden:?}"
    );
}

#[test]
fn a_request_without_an_effort_searches_with_the_runs_searcher_at_the_default_budget() {
    // `low` is set to the run's `[search]` at budget 3, `medium` to it at budget 1: a request
    // naming no effort must answer as `low` does, seed for seed, whatever the defaults say.
    // (Overrides merge into the tables they name, so every table names its selection.)
    let search = "{search = {kind = \"best-of-n\", selection = \"majority\"}, budget = 3}";
    let (url, _stop) = start_with(&[
        "search={kind=\"best-of-n\", selection=\"majority\"}".into(),
        "serve.default_budget=3".into(),
        format!("serve.efforts.low={search}"),
        format!("serve.efforts.medium={}", search.replace("budget = 3", "budget = 1")),
    ]);
    let ask = |effort: Option<&str>, seed: u64| {
        let mut body = json!({"model": model(), "messages": [{"role": "user", "content": problem(5)}], "seed": seed});
        if let Some(e) = effort {
            body["reasoning_effort"] = json!(e);
        }
        let r = client()
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().expect("json");
        (v["choices"][0]["message"]["content"].clone(), v["usage"].clone())
    };
    let reasoning = |usage: &Value| {
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .expect("tokens")
    };
    for seed in [11, 12] {
        let (default, low, medium) = (ask(None, seed), ask(Some("low"), seed), ask(Some("medium"), seed));
        assert_eq!(default, low, "seed {seed}: no effort vs the run's searcher at budget 3");
        assert!(
            reasoning(&default.1) > reasoning(&medium.1),
            "seed {seed}: budget 3 thinks longer than budget 1: {} vs {}",
            reasoning(&default.1),
            reasoning(&medium.1)
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_answer_and_n_gives_several() {
    let a = chat("medium", 3, &problem(4));
    let b = chat("medium", 3, &problem(4));
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"]);
    let (status, body) = post(
        "/v1/chat/completions",
        &json!({"model": model(), "messages": [{"role": "user", "content": problem(4)}], "n": 3, "reasoning_effort": "low"}),
    );
    assert_eq!(status, 200);
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(3));
}

#[test]
fn streaming_sends_the_answer_as_server_sent_events() {
    let request = json!({"model": model(), "messages": [{"role": "user", "content": problem(5)}], "seed": 11,
                         "reasoning_effort": "medium", "stream": true, "stream_options": {"include_usage": true}});
    let r = client()
        .post(format!("{}/v1/chat/completions", server()))
        .json(&request)
        .send()
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let text = r.text().expect("body");
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON chunk"))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("a usage chunk");
    let mut plain = request.clone();
    plain["stream"] = json!(false);
    plain.as_object_mut().map(|o| o.remove("stream_options"));
    let (_, whole) = post("/v1/chat/completions", &plain);
    assert_eq!(
        Some(streamed.as_str()),
        whole["choices"][0]["message"]["content"].as_str()
    );
    assert_eq!(usage["usage"], whole["usage"]);
}

#[test]
fn every_bad_request_gets_an_openai_error_with_a_4xx_status() {
    let good = problem(0);
    let raw = |body: &str, path: &str| {
        let r = client()
            .post(format!("{}{path}", server()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("request");
        (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null))
    };
    let huge = "9".repeat(200_000);
    let cases: Vec<(String, &str, u16)> = vec![
        ("{not json".into(), "/v1/chat/completions", 400),
        ("[]".into(), "/v1/chat/completions", 400),
        (json!({"model": model()}).to_string(), "/v1/chat/completions", 400),
        (
            json!({"model": model(), "messages": 5}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": good}]}).to_string(),
            "/v1/chat/completions",
            404,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": good}], "reasoning_effort": "max"})
                .to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": good}], "n": 0}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": good}], "temperature": 9}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": good}], "max_completion_tokens": 0})
                .to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": good}], "seed": "x"}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": "hello there"}]}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "system", "content": "hi"}]}).to_string(),
            "/v1/chat/completions",
            400,
        ),
        (
            json!({"model": model(), "messages": [{"role": "user", "content": huge}]}).to_string(),
            "/v1/chat/completions",
            413,
        ),
        (
            json!({"model": model(), "prompt": 3}).to_string(),
            "/v1/completions",
            400,
        ),
        (
            json!({"model": model(), "prompt": "1", "max_tokens": 1_000_000}).to_string(),
            "/v1/completions",
            400,
        ),
        (
            json!({"model": model(), "prompt": "1", "top_p": 0}).to_string(),
            "/v1/completions",
            400,
        ),
        (json!({"prompt": good, "traces": "none"}).to_string(), "/v1/score", 400),
        ("{}".into(), "/v1/nothing", 404),
    ];
    for (body, path, status) in &cases {
        let (got, answer) = raw(body, path);
        let shown: String = body.chars().take(80).collect();
        assert_eq!(got, *status, "{path} {shown}: {answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path} {shown}: {answer}"
        );
        assert!(error["type"].is_string(), "{answer}");
    }
    // Wrong types name the field.
    let (_, answer) = raw(
        &json!({"model": model(), "messages": [{"role": "user", "content": good}], "n": "two"}).to_string(),
        "/v1/chat/completions",
    );
    assert_eq!(answer["error"]["param"], "n", "{answer}");
    // The server is still up.
    chat("low", 1, &good);
}

#[test]
fn models_and_metrics_describe_the_service() {
    let models: Value = client()
        .get(format!("{}/v1/models", server()))
        .send()
        .and_then(|r| r.json())
        .expect("models");
    assert_eq!(models["data"][0]["id"], model());
    chat("medium", 2, &problem(1));
    let text = metrics_text();
    let value = |name: &str| metric_sum(&text, name);
    assert!(
        value("ponder_requests_total{endpoint=\"chat.completions\",status=\"200\"}") >= 1.0,
        "{text}"
    );
    assert!(value("ponder_request_seconds_count") >= 1.0, "{text}");
    assert!(value("ponder_hidden_tokens_total") > 0.0, "{text}");
    assert!(value("ponder_generated_tokens_total") > 0.0, "{text}");
    assert!(value("ponder_batches_total") >= 1.0, "{text}");
    assert!(text.contains("# TYPE ponder_request_seconds histogram"));
}

#[test]
fn ponders_remote_policy_can_drive_ponder_serve() {
    let remote = RemotePolicy::new(RemoteConfig {
        endpoints: vec![format!("{}/v1", server())],
        model: model().into(),
        ..RemoteConfig::default()
    })
    .expect("remote policy");
    let prompt = problem(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sampling = Sampling::default();
    let requests: Vec<GenRequest> = (0..4)
        .map(|i| GenRequest::new(prompt.clone(), Stop::StepEnd, 40, sampling, i))
        .collect();
    let generations = rt.block_on(remote.generate(&requests)).expect("remote generations");
    assert_eq!(generations.len(), 4);
    for g in &generations {
        assert!(!g.text.is_empty());
        assert!(!g.text.trim_end().contains('\n'), "one step only: {:?}", g.text);
    }
    // Scoring through the server matches the model in this process.
    let (weights, tokenizer) = ponder_policy_init::hf::load_pretrained(&policy_dir()).expect("the served weights");
    let local = TransformerPolicy::new(&weights, tokenizer);
    let continuation = generations[0].text.clone();
    let there = rt
        .block_on(remote.logprobs(&prompt, &continuation))
        .expect("remote log-probs");
    let here = rt
        .block_on(local.logprobs(&prompt, &continuation))
        .expect("local log-probs");
    assert_eq!(there.len(), here.len());
    for (a, b) in there.iter().zip(&here) {
        assert!((a - b).abs() < 1e-3, "{there:?} vs {here:?}");
    }
}

fn policy_dir() -> PathBuf {
    let rl = run_dir().join("policy/rl");
    if rl.join("config.json").exists() {
        rl
    } else {
        run_dir().join("policy/init")
    }
}

#[test]
fn the_binary_guards_the_api_with_a_bearer_token_and_shuts_down_gracefully() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args([
            "serve",
            "--port",
            "0",
            "--set",
            "serve.api_key_env=PONDER_TEST_SERVE_KEY",
            "--run",
        ])
        .arg(run_dir())
        .env("PONDER_TEST_SERVE_KEY", "sesame")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ponder serve starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let base = loop {
        line.clear();
        if stderr.read_line(&mut line).expect("stderr line") == 0 {
            panic!("ponder serve exited before serving");
        }
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    let body =
        json!({"model": model(), "messages": [{"role": "user", "content": problem(3)}], "reasoning_effort": "low"});
    let c = client();
    let status = |token: Option<&str>| {
        let mut r = c.post(format!("{base}/v1/chat/completions")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().expect("request").status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("sesame!")), 401);
    assert_eq!(status(Some("sesame")), 200);
    // A request in flight when SIGTERM arrives still gets its answer.
    let in_flight = {
        let (base, mut body) = (base.clone(), body.clone());
        body["reasoning_effort"] = json!("high");
        std::thread::spawn(move || {
            client()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth("sesame")
                .json(&body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    // Wait until the request is being worked on, then send SIGTERM.
    let in_flight_now = || {
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        metric_sum(&text, "ponder_in_flight_requests") >= 1.0
    };
    let waited = Instant::now();
    while !in_flight_now() && waited.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    assert_eq!(in_flight.join().expect("client thread").ok(), Some(200));
    let exit = child.wait().expect("ponder serve exits");
    assert!(exit.success(), "ponder serve exited with {exit}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert!(rest.contains("shut down"), "{rest}");
}

#[test]
fn a_loopback_load_test_with_malformed_requests_never_breaks_the_server() {
    let total = 300;
    let prompts: Vec<String> = (0..8).map(problem).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let started = Instant::now();
    let results: Vec<(bool, u16, f64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..total)
            .map(|i| {
                let client = client.clone();
                let url = format!("{}/v1/chat/completions", server());
                let malformed = i % 5 == 0;
                let body = if malformed {
                    match i % 3 {
                        0 => "{\"model\": ".to_string(),
                        1 => json!({"model": model(), "messages": "nope"}).to_string(),
                        _ => json!({"model": "other", "messages": [{"role": "user", "content": prompts[i % 8]}]})
                            .to_string(),
                    }
                } else {
                    json!({"model": model(), "messages": [{"role": "user", "content": prompts[i % 8]}],
                           "reasoning_effort": "low", "seed": i})
                    .to_string()
                };
                tokio::spawn(async move {
                    let t = Instant::now();
                    let status = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    (malformed, status, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out
    });
    let wall = started.elapsed().as_secs_f64();
    for (malformed, status, _) in &results {
        if *malformed {
            assert!((400..500).contains(status), "a malformed request got {status}");
        } else {
            assert_eq!(*status, 200, "a good request failed");
        }
    }
    let mut latencies: Vec<f64> = results.iter().map(|r| r.2).collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "load test: {total} requests ({} malformed) in {wall:.2} s = {:.0} requests/s; p50 {:.1} ms, p99 {:.1} ms",
        total / 5,
        total as f64 / wall,
        at(0.5) * 1e3,
        at(0.99) * 1e3
    );
    // Concurrent requests were batched: fewer model batches than requests in them.
    let text = metrics_text();
    let value = |name: &str| metric_sum(&text, name);
    assert!(
        value("ponder_batched_requests_total") > 2.0 * value("ponder_batches_total"),
        "no batching: {text}"
    );
    // Still serving.
    chat("low", 1, &prompts[0]);
}

fn metrics_text() -> String {
    metrics_text_of(server())
}

#[test]
fn the_official_openai_python_client_talks_to_ponder_serve() {
    let has_openai = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var("PONDER_REQUIRE_OPENAI").is_err(),
            "PONDER_REQUIRE_OPENAI is set but python3 cannot import openai (pip install openai)"
        );
        eprintln!("skipped: python3 has no openai package (pip install openai)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("{}/v1", server()))
        .arg(model())
        .arg(problem(6))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("a JSON report");
    let tokens: Vec<u64> = ["low", "medium", "high"]
        .iter()
        .map(|e| report["reasoning_tokens"][e].as_u64().expect("reasoning tokens"))
        .collect();
    assert!(tokens[0] < tokens[1] && tokens[1] < tokens[2], "{report}");
    assert_eq!(report["streamed"], report["answers"]["medium"], "{report}");
}

#[test]
fn a_rollout_server_returns_what_it_sampled_token_for_token_and_takes_new_weights() {
    let (url, _stop) = start_with(&["serve.weight_updates=true".into()]);
    let (_, tokenizer) = ponder_policy_init::hf::load_pretrained(&policy_dir()).expect("the served tokenizer");
    let remote = RemotePolicy::new(RemoteConfig {
        endpoints: vec![format!("{url}/v1")],
        model: model().into(),
        token_ids: true,
        ..RemoteConfig::default()
    })
    .expect("remote policy")
    .with_tokenizer(tokenizer);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let requests: Vec<GenRequest> = (0..4)
        .map(|i| GenRequest::new(problem(3), Stop::TraceEnd, 60, Sampling::default(), 7 + i))
        .collect();
    // The server samples what this process samples with the same weights and seeds: the
    // same tokens, with their log-probs, cut after the answer line as a local policy stops.
    let same_as_local = |dir: &Path| {
        let (weights, tokenizer) = ponder_policy_init::hf::load_pretrained(dir).expect("weights");
        let local = TransformerPolicy::new(&weights, tokenizer.clone());
        let here = rt.block_on(local.generate(&requests)).expect("local generations");
        let there = rt.block_on(remote.generate(&requests)).expect("remote generations");
        assert_eq!(there.len(), here.len());
        for (a, b) in there.iter().zip(&here) {
            assert!(
                !a.token_ids.is_empty() && a.token_ids.len() == a.logprobs.len(),
                "{a:?}"
            );
            assert_eq!(tokenizer.decode(&a.token_ids), a.text);
            assert_eq!((&a.token_ids, &a.text, a.finish), (&b.token_ids, &b.text, b.finish));
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", a.logprobs, b.logprobs);
            }
        }
        there
    };
    let served = same_as_local(&policy_dir());
    // New weights: the earliest initialisation checkpoint the run keeps, before RL.
    let checkpoints = run_dir().join("checkpoints/init");
    let first = std::fs::read_dir(&checkpoints)
        .expect("init checkpoints")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").exists())
        .min()
        .unwrap_or_else(|| run_dir().join("policy/init"));
    let (status, body) = post_to(&url, "/update_weights_from_disk", &json!({"model_path": first}));
    assert_eq!((status, &body["success"]), (200, &json!(true)), "{body}");
    let reloaded = same_as_local(&first);
    assert_ne!(
        served.iter().map(|g| &g.logprobs).collect::<Vec<_>>(),
        reloaded.iter().map(|g| &g.logprobs).collect::<Vec<_>>(),
        "the new weights are served"
    );
    assert_eq!(metric_sum(&metrics_text_of(&url), "ponder_weight_updates_total"), 1.0);
    // A path without a policy: a 400 naming the field, and the old weights stay.
    let (status, body) = post_to(
        &url,
        "/update_weights_from_disk",
        &json!({"model_path": "/nonexistent"}),
    );
    assert_eq!((status, &body["error"]["param"]), (400, &json!("model_path")), "{body}");
    same_as_local(&first);
    // A server without `serve.weight_updates` refuses.
    let (status, body) = post("/update_weights_from_disk", &json!({"model_path": first}));
    assert_eq!(status, 403, "{body}");
}

fn post_to(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}
