//! The smoke pipeline end to end through the `ponder` binary: every stage, the report, the
//! determinism of `results.json`, skipping finished stages, and kill-and-resume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

mod common;
use common::{metric_sum, metrics_text_of};

fn smoke_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml")
}

fn out_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
        .path()
}

/// `ponder run configs/smoke.toml` into a run of this name, with extra arguments and
/// environment variables.
fn run(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    run_config(&smoke_config(), name, extra, env)
}

/// `ponder run CONFIG` into a run of this name.
fn run_config(config: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ponder"));
    c.arg("run")
        .arg(config)
        .arg("--set")
        .arg(format!("run.out_dir={}", out_dir().display()))
        .arg("--set")
        .arg(format!("run.name={name}"))
        .args(extra)
        .env_remove("PONDER_CRASH_AT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("ponder runs")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "ponder failed: {err}");
    err
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

/// A run's `results.json` without its timings (which vary; see `docs/results.md`).
fn results(name: &str) -> Value {
    ponder_runtime::results::without_timings(&read_json(&out_dir().join(name).join("results.json")))
}

/// The uninterrupted reference run, made once.
fn reference() -> &'static Value {
    static RESULTS: OnceLock<Value> = OnceLock::new();
    RESULTS.get_or_init(|| {
        ok(&run("reference", &[], &[]));
        results("reference")
    })
}

#[test]
fn the_smoke_pipeline_runs_every_stage_and_writes_the_report() {
    let r = reference();
    let dir = out_dir().join("reference");
    assert_eq!(r["task"], "arithmetic");
    let init = &r["policy_init"];
    for key in [
        "pass@1",
        "pass@1_ci",
        "pass@1_sampled",
        "pass@4",
        "maj@4",
        "maj@4_ci",
        "train_tokens",
        "params",
    ] {
        assert!(!init[key].is_null(), "policy_init.{key} missing: {init}");
    }
    assert!(init["pass@1"].as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)));
    assert!(r["reward"].is_object(), "{r}");
    let prm = &r["reward"]["prm"];
    for key in ["first_error_f1", "calibration_ece"] {
        let ci = prm[format!("{key}_ci")].as_array().expect("an interval");
        assert!(
            ci[0].as_f64() <= prm[key].as_f64() && prm[key].as_f64() <= ci[1].as_f64(),
            "reward.prm.{key}: {prm}"
        );
    }
    // The no-training baseline, the policy's own likelihood, against the same labels (null where
    // the smoke policy's traces are all wrong: an AUROC needs both classes).
    let likelihood = r["reward"]["likelihood"].as_object().expect("reward.likelihood");
    for key in ["step_auroc", "outcome_auroc"] {
        assert!(likelihood.contains_key(key) && likelihood.contains_key(&format!("{key}_ci")));
        if let Some(value) = likelihood[key].as_f64() {
            let ci = likelihood[&format!("{key}_ci")].as_array().expect("an interval");
            assert!(
                (0.0..=1.0).contains(&value) && ci[0].as_f64() <= Some(value) && Some(value) <= ci[1].as_f64(),
                "reward.likelihood.{key}: {likelihood:?}"
            );
        }
    }
    let curves = r["search"]["curves"].as_object().expect("search curves");
    assert!(curves.len() >= 4, "{curves:?}");
    assert_eq!(
        r["search"]["sampling"]["temperature"].as_f64(),
        Some(1.0),
        "the searchers' sampling is recorded"
    );
    let within =
        |p: &Value| p["low"].as_f64() <= p["accuracy"].as_f64() && p["accuracy"].as_f64() <= p["high"].as_f64();
    for (label, points) in curves {
        let points = points.as_array().expect("points");
        assert_eq!(points.len(), 2, "{label}: one point per budget");
        assert!(
            points[1]["tokens_per_problem"].as_f64() > points[0]["tokens_per_problem"].as_f64(),
            "{label}"
        );
        assert!(points.iter().all(within), "{label}: {points:?}");
    }
    // Every curve's trend over budgets: its paired rise from the smallest budget to the largest
    // and whether any step falls significantly.
    let trends = r["search"]["trends"].as_object().expect("search trends");
    assert_eq!(trends.len(), curves.len());
    for (label, t) in trends {
        let rise = &t["rise"];
        assert_eq!(
            (rise["from_budget"].as_u64(), rise["to_budget"].as_u64()),
            (Some(1), Some(4)),
            "{label}: {t}"
        );
        let ci = rise["ci"].as_array().expect("rise interval");
        assert!(ci[0].as_f64() <= rise["difference"].as_f64() && rise["difference"].as_f64() <= ci[1].as_f64());
        assert!(
            t["falls_significantly"].is_boolean() && t["rises_significantly"].is_boolean(),
            "{label}: {t}"
        );
    }
    // The compute-optimal curve has intervals, and the comparison with best-of-N says whether
    // best-of-N's own gain over its budgets is significant.
    let optimal = r["search"]["compute_optimal"].as_array().expect("compute_optimal");
    assert_eq!(optimal.len(), 2);
    assert!(optimal.iter().all(within), "{optimal:?}");
    let gain = &r["search"]["compute_optimal_vs_best_of_n"]["reference"]["gain_over_budget"];
    assert!(gain["significant"].is_boolean(), "{gain}");
    let gain_ci = gain["ci"].as_array().expect("gain interval");
    assert!(gain_ci[0].as_f64() <= gain["difference"].as_f64() && gain["difference"].as_f64() <= gain_ci[1].as_f64());
    // Compute is FLOPs with the reward model's passes: a PRM-guided searcher costs more per
    // token than majority voting over its own samples' tokens alone.
    let flops_per_token = |label: &str| {
        let top = curves[label]
            .as_array()
            .and_then(|p| p.last().cloned())
            .expect("a point");
        top["flops_per_problem"].as_f64().unwrap_or(0.0) / top["tokens_per_problem"].as_f64().unwrap_or(1.0)
    };
    assert!(flops_per_token("majority") > 0.0);
    assert!(
        flops_per_token("best-of-n-prm") > flops_per_token("majority"),
        "{curves:?}"
    );
    // Compute-optimal with predicted difficulty, its prediction charged.
    let predictor = &r["search"]["difficulty_predictor"];
    assert!(
        predictor["flops_per_problem"].as_f64().is_some_and(|f| f > 0.0),
        "{predictor}"
    );
    let predicted = r["search"]["compute_optimal_predicted"]
        .as_array()
        .expect("compute_optimal_predicted");
    assert_eq!(predicted.len(), optimal.len());
    assert!(r["search"]["best_at_top_budget"]["gain_over_greedy"]["value"].is_number());
    let grpo = &r["learn"]["grpo"];
    for key in [
        "pass@1_before",
        "pass@1_after",
        "curve",
        "pass@1_sampled_change",
        "pass@1_change",
    ] {
        assert!(!grpo[key].is_null(), "learn.grpo.{key} missing: {grpo}");
    }
    // The update's forward-only passes (old policy where not recorded, reference) are counted.
    assert!(grpo["scored_tokens"].as_u64().is_some_and(|t| t > 0), "{grpo}");
    let curve = grpo["curve"].as_array().expect("learn.grpo.curve");
    let inside = |p: &Value| match (p["low"].as_f64(), p["pass@1"].as_f64(), p["high"].as_f64()) {
        (Some(low), Some(value), Some(high)) => low <= value && value <= high && low < high,
        _ => false,
    };
    assert!(
        curve.len() >= 2 && curve.iter().all(inside),
        "every train-time point has pass@1 inside its interval: {curve:?}"
    );
    let full = read_json(&dir.join("results.json"));
    assert!(full["wall_seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert!(
        full["policy_init"]["train_tokens_per_s"]
            .as_f64()
            .is_some_and(|s| s > 0.0)
    );
    assert!(r["wall_seconds"].is_null(), "timings are left out of the comparison");
    let manifest = read_json(&dir.join("manifest.json"));
    for key in [
        "ponder_version",
        "git_commit",
        "config_hash",
        "seed",
        "machine",
        "stages",
        "timings",
        "wall_seconds",
    ] {
        assert!(!manifest[key].is_null(), "manifest.{key} missing: {manifest}");
    }
    for stage in ["datagen", "init", "reward", "search-eval", "rl", "report"] {
        assert!(manifest["stages"][stage]["seconds"].is_number(), "{stage}: {manifest}");
        assert!(dir.join("stages").join(format!("{stage}.json")).exists());
        // In a git checkout, each stage names the commit it ran at.
        if manifest["git_commit"].is_string() {
            assert_eq!(manifest["stage_commits"][stage], manifest["git_commit"], "{stage}");
        }
    }
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    for heading in [
        "## 1. Policy initialisation",
        "## 2.",
        "## 3.",
        "## 4.",
        "## 6. The headline figures over seeds",
    ] {
        assert!(report.contains(heading), "report.md lacks `{heading}`");
    }
    // The room dense rewards have, counted from every trace the reward stage labelled.
    let room = &read_json(&dir.join("stages/report.json"))["results"]["sections"]["room_for_step_rewards"];
    let count = |k: &str| room[k].as_u64().unwrap_or_else(|| panic!("{k}: {room}"));
    assert_eq!(Some(count("traces")), r["reward"]["labelled_traces"].as_u64(), "{room}");
    assert!(count("steps") >= count("traces") && count("steps_unlike_outcome") <= count("steps"));
    assert!(count("failed_after_right_first_step") <= count("failed_traces"));
    let right = r["reward"]["right_traces"].as_u64().expect("reward.right_traces");
    assert_eq!(count("failed_traces"), count("traces") - right, "{room}");
    assert!(report.contains("Where step rewards can add to the outcome: of the "));
    // Sweeps the smoke run has not run: the report says which command fills each table.
    for sweep in [
        "learner_reward",
        "learners_numbers30",
        "rl_length",
        "rl_problem_space",
        "rl_init_length",
        "init_style",
        "retry_data",
        "seeds",
    ] {
        let command = format!("Not run yet: `cargo xtask sweep configs/sweeps/{sweep}.toml`");
        assert!(report.contains(&command), "report.md lacks `{command}`");
    }
    for label in trends.keys() {
        assert!(
            report.lines().any(|l| l.starts_with(&format!("| {label} | 1 to 4: "))),
            "no trend row for {label}:\n{report}"
        );
    }
    // RL's before/after table gives sampled pass@1 with an interval on both sides.
    let sampled = report
        .lines()
        .find(|l| l.starts_with("| sampled pass@1 |"))
        .unwrap_or_else(|| panic!("no sampled pass@1 row in the RL table:\n{report}"));
    assert_eq!(sampled.matches('[').count(), 2, "{sampled}");
    // The test-time table gives every point an interval, the compute-optimal curve included,
    // and the saving is qualified by the significance of best-of-N's own gain.
    for label in [
        "| compute-optimal, oracle difficulty (2-fold CV) |",
        "| compute-optimal, predicted difficulty (2-fold CV, prediction charged) |",
    ] {
        let optimal_row = report
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` row in the test-time table:\n{report}"));
        assert_eq!(optimal_row.matches('[').count(), 2, "{optimal_row}");
    }
    assert!(
        report.contains("With difficulty predicted as a deployed system could"),
        "{report}"
    );
    assert!(
        report.contains("does not rise significantly from budget") || report.contains("itself gains"),
        "{report}"
    );
    // Every image the report links exists and is a PNG.
    let mut images = 0;
    for link in report.split("](").skip(1) {
        let Some(end) = link.find(')') else { continue };
        let target = &link[..end];
        if target.ends_with(".png") {
            let bytes = std::fs::read(dir.join(target)).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{target}");
            images += 1;
        }
    }
    assert!(images >= 4, "the report shows {images} plots");
    let log = std::fs::read_to_string(dir.join("log.txt")).expect("log.txt");
    assert!(log.contains("pipeline done"));
}

#[test]
fn the_same_seed_gives_the_same_results_and_another_seed_does_not() {
    ok(&run("same-seed", &[], &[]));
    assert_eq!(&results("same-seed"), reference(), "same seed, different results.json");
    ok(&run(
        "other-seed",
        &["--set", "run.seed=2", "--set", "pipeline.stages=[\"datagen\",\"init\"]"],
        &[],
    ));
    assert_ne!(results("other-seed")["policy_init"], reference()["policy_init"]);
}

/// The smoke config with its `[reward]` table replaced, written into the output folder.
fn smoke_with_reward(name: &str, reward: &str) -> PathBuf {
    let smoke = std::fs::read_to_string(smoke_config()).expect("smoke config");
    let (head, rest) = smoke.split_once("[reward]\n").expect("a [reward] table");
    let tail = &rest[rest.find("\n[").expect("a table after [reward]")..];
    let path = out_dir().join(format!("{name}.toml"));
    std::fs::write(&path, format!("{head}[reward]\n{reward}\n{tail}")).expect("write config");
    path
}

#[test]
fn ppo_takes_its_step_rewards_from_the_configured_process_model() {
    // The exact step labels need no reward stage; a verifier has no step scores to give.
    let stages = "pipeline.stages=[\"datagen\",\"init\",\"rl\"]";
    let ppo = "learn={kind=\"ppo\",process_rewards=true}";
    let oracle = smoke_with_reward("ppo-oracle", "kind = \"oracle-process\"");
    ok(&run_config(
        &oracle,
        "ppo-oracle",
        &["--set", stages, "--set", ppo],
        &[],
    ));
    let learned = &results("ppo-oracle")["learn"]["ppo"];
    assert!(learned["pass@1_after"].is_number(), "{learned}");
    let verifier = smoke_with_reward("ppo-verifier", "kind = \"verifier\"");
    let o = run_config(&verifier, "ppo-verifier", &["--set", stages, "--set", ppo], &[]);
    assert!(!o.status.success(), "PPO with process rewards ran on a verifier");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("learn.process_rewards needs a process reward model"),
        "{err}"
    );
}

#[test]
fn ppo_with_prime_learns_the_implicit_prm_online_and_resumes_it_from_a_checkpoint() {
    let stages = "pipeline.stages=[\"datagen\",\"init\",\"rl\"]";
    let ppo = "learn={kind=\"ppo\",process_rewards=true}";
    let prime = smoke_with_reward("prime", "kind = \"prime\"\nbeta = 0.5\nlr = 0.001");
    ok(&run_config(&prime, "prime", &["--set", stages, "--set", ppo], &[]));
    let rl = &results("prime")["learn"]["ppo"];
    let model = &rl["reward_model"];
    assert!(
        model["describe"].as_str().is_some_and(|d| d.contains("PRIME")),
        "{model}"
    );
    // Before RL π_φ = π_ref scores every step σ(0); after, it has learned. (The smoke policy's
    // steps are nearly all wrong, so the AUROC itself may be undefined here.)
    let (before, after) = (&model["step_auroc_before"], &model["step_auroc_after"]);
    assert_eq!(before["mean_step_score"].as_f64(), Some(0.5), "{before}");
    assert!(after["mean_step_score"].as_f64().is_some_and(|a| a != 0.5), "{after}");
    assert!(before["labelled_steps"].as_u64().is_some_and(|n| n > 0), "{before}");
    assert_eq!(
        before["labelled_steps"], after["labelled_steps"],
        "the same held-out traces"
    );
    // Each iteration updated it, its passes are in RL's compute.
    assert_eq!(rl_metric("prime", "reward_model_loss").len(), 2);
    assert!(rl["reward_flops"].as_f64().is_some_and(|f| f > 0.0), "{rl}");
    assert!(rl["flops"].as_f64() > rl["reward_flops"].as_f64());
    // Killed after the first iteration's checkpoint, it resumes with the model's state.
    let crashed = run_config(
        &prime,
        "prime-killed",
        &["--set", stages, "--set", ppo],
        &[("PONDER_CRASH_AT", "rl:1")],
    );
    assert!(!crashed.status.success(), "the crash was not injected");
    ok(&run_config(
        &prime,
        "prime-killed",
        &["--set", stages, "--set", ppo, "--resume"],
        &[],
    ));
    assert_eq!(
        results("prime-killed")["learn"],
        results("prime")["learn"],
        "resumed results differ"
    );
}

#[test]
fn an_outcome_reward_model_config_trains_an_orm_and_nothing_else() {
    let config = smoke_with_reward("orm-only", "kind = \"orm\"\nlikelihood = false");
    let stages = "pipeline.stages=[\"datagen\",\"init\",\"reward\",\"report\"]";
    // The default searcher list's `reward = { kind = "orm" }` names only the run's own kind: it
    // is the run's ORM, settings and all, not a second one.
    ok(&run_config(&config, "orm-only", &["--set", stages], &[]));
    let dir = out_dir().join("orm-only");
    let reward = &results("orm-only")["reward"];
    assert_eq!(reward["trained"], serde_json::json!(["orm"]), "{reward}");
    // The smoke policy answers nothing right, so the AUROC itself is undefined (null).
    assert!(
        reward["orm"].is_object() && reward["best_of_n"]["orm"].is_object(),
        "{reward}"
    );
    assert!(reward["best_of_n"]["prm-last"].is_null(), "{reward}");
    assert!(
        reward["prm"].is_null() && reward["mc_label_accuracy"].is_null(),
        "{reward}"
    );
    assert_eq!(
        reward["monte_carlo_tokens"], 0,
        "Monte-Carlo labels were made for no PRM"
    );
    // The ORM's own setting reached it: no likelihood feature.
    assert_eq!(reward["training"]["orm"]["likelihood_weight"], 0.0, "{reward}");
    assert!(reward["training"]["prm"].is_null(), "{reward}");
    assert!(dir.join("reward/orm/config.json").exists());
    assert!(!dir.join("reward/prm").exists() && !dir.join("reward/prm_labels.jsonl").exists());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
    assert!(!metrics.contains("\"prm\""), "PRM training steps were logged");
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report");
    assert!(
        report.contains("| ORM (60 policy traces with outcome labels) | outcome AUROC |"),
        "{report}"
    );
    assert!(report.contains("| N | ORM | majority | pass@N |"), "{report}");
    assert!(
        !report.contains("| PRM") && !report.contains("Monte-Carlo step labels"),
        "{report}"
    );
    // The reference run names a PRM and a searcher's ORM: it trains both.
    assert_eq!(reference()["reward"]["trained"], serde_json::json!(["prm", "orm"]));
}

#[test]
fn the_runs_searcher_is_measured_by_search_eval_and_headlines_the_report() {
    // The smoke config's [search] is best-of-N with its default settings: the listed
    // `best-of-n-weighted` searcher is the same one, so it stands for [search].
    let r = reference();
    assert_eq!(
        r["search"]["run_searcher_at_top_budget"]["searcher"],
        "best-of-n-weighted"
    );
    assert!(r["search"]["curves"]["search"].is_null());
    // Another [search] is measured as a curve of its own and named in the report.
    let stages = "pipeline.stages=[\"datagen\",\"init\",\"reward\",\"search-eval\",\"report\"]";
    ok(&run(
        "beam-search",
        &["--set", stages, "--set", "search.kind=beam", "--set", "search.width=2"],
        &[],
    ));
    let search = &results("beam-search")["search"];
    assert_eq!(search["run_searcher_at_top_budget"]["searcher"], "search", "{search}");
    let curve = search["curves"]["search"].as_array().expect("a curve for [search]");
    assert_eq!(curve.len(), search["budgets"].as_array().map_or(0, Vec::len));
    assert_eq!(search["curves"]["beam-prm"].as_array().map(Vec::len), Some(curve.len()));
    let report = std::fs::read_to_string(out_dir().join("beam-search/report.md")).expect("report");
    assert!(
        report.contains("The run's searcher (`[search]`): search at budget 4"),
        "{report}"
    );
}

/// A `ponder serve` process, killed however the test ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference run served by a `ponder serve` process of its own on a free port (`extra`:
/// more arguments), and its base URL.
fn serve_reference(extra: &[&str]) -> (Server, String) {
    reference();
    serve_run(&out_dir().join("reference"), extra)
}

/// A run directory served by a `ponder serve` process of its own on a free port.
fn serve_run(dir: &Path, extra: &[&str]) -> (Server, String) {
    use std::io::BufRead;
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_ponder"))
            .args(["serve", "--run"])
            .arg(dir)
            .args(["--port", "0"])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ponder serve starts"),
    );
    let stderr = server.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split(" on ").nth(1).filter(|_| line.contains("serving")) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("ponder serve says where it serves");
    (server, url)
}

#[test]
fn search_eval_runs_against_a_remote_policy_served_by_another_ponder_process() {
    // The smoke run's policy, served by a `ponder serve` process of its own on a free port.
    let (server, url) = serve_reference(&[]);
    // The smoke config with `[policy] kind = "remote"`: no local weights, only the server.
    let smoke = std::fs::read_to_string(smoke_config()).expect("smoke config");
    let (head, rest) = smoke.split_once("[policy]\n").expect("a [policy] table");
    let tail = &rest[rest.find("\n[").expect("a table after [policy]")..];
    let remote = format!(
        "[policy]\nkind = \"remote\"\nendpoints = [\"{url}/v1\"]\nmodel = \"ponder-reference\"\nparams = 20000\nconcurrency = 4\n"
    );
    // Answers checked by the task's verifier: nothing to train on this side either.
    let text = format!("{head}{remote}{tail}");
    let (head, rest) = text.split_once("[reward]\n").expect("a [reward] table");
    let tail = &rest[rest.find("\n[").expect("a table after [reward]")..];
    let config = out_dir().join("remote.toml");
    std::fs::write(&config, format!("{head}[reward]\nkind = \"verifier\"\n{tail}")).expect("write config");
    let o = run_config(
        &config,
        "remote-policy",
        &[
            "--set",
            "pipeline.stages=[\"datagen\",\"search-eval\"]",
            "--set",
            "search={kind=\"best-of-n\",selection=\"majority\"}",
            "--set",
            "pipeline.search_eval.searchers=[{label=\"majority\",kind=\"best-of-n\",selection=\"majority\"},{label=\"verified\",kind=\"best-of-n\",selection=\"reward\"},{label=\"beam\",kind=\"beam\",width=2}]",
        ],
        &[],
    );
    ok(&o);
    let dir = out_dir().join("remote-policy");
    assert!(!dir.join("policy").exists(), "a remote run trains no policy of its own");
    // `ponder serve` on that run: a reasoner that searches here over the first server's
    // samples, with no weights of its own.
    let batched = |url: &str| metric_sum(&metrics_text_of(url), "ponder_batched_requests_total");
    let before = batched(&url);
    let (_proxy, proxy_url) = serve_run(&dir, &[]);
    let problem = std::fs::read_to_string(dir.join("data/test.jsonl")).expect("test problems");
    let prompt: Value = serde_json::from_str(problem.lines().next().expect("a problem")).expect("a JSON line");
    let answer: Value = reqwest::blocking::Client::new()
        .post(format!("{proxy_url}/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "ponder-remote-policy", "reasoning_effort": "medium",
               "messages": [{"role": "user", "content": prompt["prompt"]}]}),
        )
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("a chat completion through both servers");
    let hidden = &answer["usage"]["completion_tokens_details"]["reasoning_tokens"];
    assert!(hidden.as_u64().unwrap_or(0) > 0, "{answer}");
    assert!(batched(&url) > before, "the samples came from the first server");
    drop(server);
    let search = &results("remote-policy")["search"];
    for label in ["majority", "verified", "beam"] {
        let curve = search["curves"][label]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: {search}"));
        assert_eq!(curve.len(), 2, "{label}: {search}");
        for point in curve {
            let tokens = point["tokens_per_problem"].as_f64().unwrap_or(0.0);
            assert!(tokens > 0.0, "{label} generated nothing through the server: {point}");
            // FLOPs from the configured parameter count and the generated tokens (a lower bound).
            assert!(
                point["flops_per_problem"].as_f64().unwrap_or(0.0) >= 2.0 * 20000.0 * tokens * 0.99,
                "{point}"
            );
        }
    }
    assert_eq!(search["run_searcher_at_top_budget"]["searcher"], "majority", "{search}");
}

#[test]
fn rl_samples_on_a_ponder_serve_process_that_loads_the_weights_of_each_iteration() {
    let (_server, url) = serve_reference(&["--set", "serve.weight_updates=true"]);
    let remote =
        format!("pipeline.rl.rollout_server={{endpoints=[\"{url}/v1\"],model=\"ponder-reference\",concurrency=4}}");
    let stages = ["--set", "pipeline.stages=[\"datagen\",\"init\",\"rl\"]"];
    let weight_updates = || metric_sum(&metrics_text_of(&url), "ponder_weight_updates_total");
    // Synchronous: the server loads the weights each iteration starts from and samples what
    // this process would have, token for token, so the updates are the reference run's.
    let mut sync = vec!["--set", remote.as_str()];
    sync.extend(stages);
    ok(&run("remote-rollouts", &sync, &[]));
    assert_eq!(weight_updates(), 2.0);
    reference();
    for key in ["loss", "reward", "kl", "entropy", "response_tokens"] {
        assert_eq!(rl_metric("remote-rollouts", key), rl_metric("reference", key), "{key}");
    }
    // Sampling compute: each position once. This process runs every sampled token but the last
    // through the model, and the prompts once per group (a shared prefix); the server reads
    // each of the 8 prompts once per request and counts every token it generated.
    let samples = 8.0 * 4.0;
    let generated = rl_metric("reference", "response_tokens")[0] * samples;
    let (here, there) = (
        rl_metric("reference", "sample_tokens")[0],
        rl_metric("remote-rollouts", "sample_tokens")[0],
    );
    assert!(
        here > generated - samples && here < there && there < generated * 1.5,
        "{here} {there} {generated}"
    );
    assert_eq!(
        results("remote-rollouts")["learn"]["grpo"]["rollout_server"],
        serde_json::json!([format!("{url}/v1")])
    );
    assert!(!out_dir().join("remote-rollouts/rollout-weights").exists());
    // One update stale, killed before the third iteration and resumed: the resumed run hands
    // the second iteration's weights over again and ends as the uninterrupted run does.
    let mut stale = sync.clone();
    stale.extend([
        "--set",
        "pipeline.rl.max_staleness=1",
        "--set",
        "pipeline.rl.iterations=3",
    ]);
    ok(&run("remote-stale", &stale, &[]));
    assert_eq!(rl_metric("remote-stale", "staleness"), vec![0.0, 1.0, 1.0]);
    let crashed = run("remote-stale-killed", &stale, &[("PONDER_CRASH_AT", "rl:2")]);
    assert!(!crashed.status.success(), "the crash was not injected");
    stale.push("--resume");
    ok(&run("remote-stale-killed", &stale, &[]));
    assert_eq!(
        results("remote-stale-killed")["learn"],
        results("remote-stale")["learn"],
        "resumed results differ"
    );
}

/// Each RL iteration's `key` from a run's metrics.
fn rl_metric(name: &str, key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(out_dir().join(name).join("metrics.jsonl")).expect("metrics");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["stage"] == "rl")
        .filter_map(|v| v[key].as_f64())
        .collect()
}

#[test]
fn dapo_refills_its_batch_with_fresh_problems_for_the_groups_without_signal() {
    // The smoke policy answers almost nothing right, so most groups' rewards are all equal.
    let dapo = ["--set", "learn.kind=\"dapo\""];
    ok(&run("dapo", &dapo, &[]));
    let mut without = dapo.to_vec();
    without.extend(["--set", "pipeline.rl.refill_rounds=0"]);
    ok(&run("dapo-no-refill", &without, &[]));
    assert_eq!(rl_metric("dapo-no-refill", "refill_rounds"), vec![0.0, 0.0]);
    assert_eq!(rl_metric("dapo-no-refill", "groups"), vec![8.0, 8.0]);
    let (rounds, groups) = (rl_metric("dapo", "refill_rounds"), rl_metric("dapo", "groups"));
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert!(rounds.iter().all(|&r| (1.0..=3.0).contains(&r)), "{rounds:?}");
    assert!(groups.iter().all(|&g| g > 8.0), "{groups:?}");
    // The refill's samples are counted: the first iteration sampled more than without it.
    let sampled = |name: &str| rl_metric(name, "sample_tokens")[0];
    assert!(sampled("dapo") > sampled("dapo-no-refill"));
}

#[test]
fn rl_stops_at_its_flops_budget() {
    // The reference run's two iterations cost `spent`; with room for ten iterations and a
    // budget of three quarters of that, RL stops after the second.
    let spent = reference()["learn"]["grpo"]["flops"].as_f64().expect("flops");
    let budget = format!("pipeline.rl.flops_budget={}", 0.75 * spent);
    ok(&run(
        "budget",
        &[
            "--set",
            "pipeline.rl.iterations=10",
            "--set",
            &budget,
            "--set",
            "pipeline.stages=[\"datagen\",\"init\",\"rl\"]",
        ],
        &[],
    ));
    let rl = &results("budget")["learn"]["grpo"];
    assert_eq!(rl["iterations"], 2, "{rl}");
    assert_eq!(rl["flops"].as_f64(), Some(spent));
    assert_eq!(rl_metric("budget", "loss").len(), 2);
    let curve = rl["curve"].as_array().expect("curve");
    assert_eq!(curve.last().map(|p| &p["iteration"]), Some(&serde_json::json!(2)));
}

#[test]
fn asynchronous_rollouts_sample_one_snapshot_behind_and_resume_with_it() {
    let stale = [
        "--set",
        "pipeline.rl.max_staleness=1",
        "--set",
        "pipeline.rl.iterations=3",
        "--set",
        "pipeline.stages=[\"datagen\",\"init\",\"rl\"]",
    ];
    ok(&run("stale", &stale, &[]));
    assert_eq!(rl_metric("stale", "staleness"), vec![0.0, 1.0, 1.0]);
    // The first batch is the synchronous run's (the same weights); the later ones are corrected
    // by truncated importance weights, which the first needs none of.
    reference();
    assert_eq!(rl_metric("stale", "loss")[0], rl_metric("reference", "loss")[0]);
    let weights = rl_metric("stale", "tis_weight_mean");
    assert_eq!(weights.len(), 2, "{weights:?}");
    assert!(
        weights.iter().all(|w| w.is_finite() && *w > 0.0 && *w != 1.0),
        "{weights:?}"
    );
    // Killed before the third iteration, which samples with the second's weights: the resumed
    // run takes that snapshot from the checkpoint and ends with the same results.
    let crashed = run("stale-killed", &stale, &[("PONDER_CRASH_AT", "rl:2")]);
    assert!(!crashed.status.success(), "the crash was not injected");
    let mut resume = stale.to_vec();
    resume.push("--resume");
    ok(&run("stale-killed", &resume, &[]));
    assert_eq!(
        results("stale-killed")["learn"],
        results("stale")["learn"],
        "resumed results differ"
    );
    // Two updates stale: the third iteration samples with the first weights.
    let mut two = stale.to_vec();
    two[1] = "pipeline.rl.max_staleness=2";
    ok(&run("stale-2", &two, &[]));
    assert_eq!(rl_metric("stale-2", "staleness"), vec![0.0, 1.0, 2.0]);
}

#[test]
fn prorl_resets_start_the_kl_afresh_and_a_killed_run_resumes_with_them() {
    let resets = [
        "--set",
        "pipeline.rl.reset_reference_every=1",
        "--set",
        "pipeline.rl.reset_optimizer_every=1",
    ];
    ok(&run("resets", &resets, &[]));
    // After the first iteration the reference is the policy that samples the second, so the
    // second iteration's KL starts from 0 instead of from the initialisation's distance.
    reference();
    let (with, without) = (rl_metric("resets", "kl"), rl_metric("reference", "kl"));
    assert!(with.len() == 2 && without.len() == 2, "{with:?} {without:?}");
    assert_eq!(with[0], without[0], "the first iteration is the same");
    assert!(with[1] < without[1], "KL with a reset {with:?}, without {without:?}");
    // A kill after the first iteration's checkpoint resumes with the reset reference and the
    // cleared optimizer, to the same results.
    let crashed = run("resets-killed", &resets, &[("PONDER_CRASH_AT", "rl:1")]);
    assert!(!crashed.status.success(), "the crash was not injected");
    let mut resume = resets.to_vec();
    resume.push("--resume");
    ok(&run("resets-killed", &resume, &[]));
    assert_eq!(results("resets-killed"), results("resets"), "resumed results differ");
    // The smoke policy answers nothing right, so the update's own numbers are the check that
    // the resumed iteration ran against the reset reference.
    assert_eq!(
        rl_metric("resets-killed", "kl"),
        rl_metric("resets", "kl"),
        "the resumed KL differs"
    );
    assert_eq!(results("resets")["learn"]["grpo"]["reset_reference_every"], 1);
}

#[test]
fn the_burn_backend_runs_the_smoke_pipeline_and_reaches_the_cpu_backends_losses() {
    // Every training stage (init, reward, RL) on burn's autodiff, and every policy's decoding
    // (curves, Monte-Carlo labels, search, rollouts) on burn's KV-cached decoder.
    ok(&run("burn", &["--set", "run.backend=\"burn\""], &[]));
    let (burn, cpu) = (results("burn"), reference());
    // Same gradients up to float rounding: close, but not bit-equal (which would mean the
    // setting changed nothing).
    let init = |r: &Value| r["policy_init"]["final_loss"].as_f64().expect("init final loss");
    let (b, c) = (init(&burn), init(cpu));
    assert!((b - c).abs() < 1e-2 * c.abs(), "init: burn {b} vs cpu {c}");
    assert_ne!(b, c, "run.backend made no difference");
    let prm = |r: &Value| {
        r["reward"]["training"]["prm"]["final_loss"]
            .as_f64()
            .expect("PRM final loss")
    };
    let (b, c) = (prm(&burn), prm(cpu));
    assert!((b - c).abs() < 5e-2 * c.abs(), "PRM: burn {b} vs cpu {c}");
    assert!(burn["learn"]["grpo"]["pass@1_after"].is_number(), "{}", burn["learn"]);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir().join("burn/manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(manifest["backend"], "burn");
}

#[test]
fn a_finished_run_is_skipped_and_a_changed_config_is_refused() {
    reference();
    let again = ok(&run("reference", &[], &[]));
    assert!(!again.contains("done in"), "finished stages ran again: {again}");
    assert_eq!(&results("reference"), reference());
    let changed = run("reference", &["--set", "pipeline.init.steps=41"], &[]);
    assert!(!changed.status.success());
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(err.contains("different config (pipeline.init.steps was"), "{err}");
    // An optional setting given where the run had none is another config too.
    let set = run("reference", &["--set", "policy.from=\"elsewhere\""], &[]);
    let err = String::from_utf8_lossy(&set.stderr);
    assert!(err.contains("different config (policy.from set"), "{err}");
    // A setting a later ponder adds, at its default, is accepted: the directory's config
    // without one of today's settings stands for a run made before it existed.
    let path = out_dir().join("reference/config.toml");
    let text = std::fs::read_to_string(&path).expect("config.toml");
    let older: String = text
        .lines()
        .filter(|l| !l.starts_with("tis_cap ="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(older, text);
    std::fs::write(&path, older).expect("write config.toml");
    let again = ok(&run("reference", &[], &[]));
    assert!(!again.contains("done in"), "finished stages ran again: {again}");
    let log = std::fs::read_to_string(out_dir().join("reference/log.txt")).expect("log");
    assert!(log.contains("pipeline.rl.tis_cap"), "the added setting is logged");
}

#[test]
fn search_eval_run_again_on_a_finished_run_reads_the_policy_it_read_the_first_time() {
    // A run of its own (the reference run may be written by another test meanwhile), then a
    // copy of it without search-eval's record: the pipeline runs search-eval alone, with RL's
    // policy on disk beside the initialised one it searched with before.
    ok(&run("search-eval-first", &[], &[]));
    let reference = results("search-eval-first");
    let name = "search-eval-again";
    let dir = out_dir().join(name);
    let copied = Command::new("cp")
        .arg("-r")
        .arg(out_dir().join("search-eval-first"))
        .arg(&dir)
        .status()
        .expect("cp runs");
    assert!(copied.success());
    let config = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
    assert!(config.contains("name = \"search-eval-first\""), "{config}");
    std::fs::write(
        dir.join("config.toml"),
        config.replace("name = \"search-eval-first\"", &format!("name = \"{name}\"")),
    )
    .expect("config.toml");
    assert!(
        dir.join("policy/rl/config.json").exists(),
        "the reference run has no RL policy"
    );
    std::fs::remove_file(dir.join("stages/search-eval.json")).expect("search-eval record");
    std::fs::remove_dir_all(dir.join("checkpoints/search-eval")).expect("search-eval checkpoints");
    let again = ok(&run(name, &[], &[]));
    assert!(
        again.contains("stage search-eval done"),
        "search-eval did not run: {again}"
    );
    assert!(!again.contains("stage rl done"), "RL ran again: {again}");
    let again = results(name);
    let tokens = |r: &Value| -> Vec<(String, Vec<f64>)> {
        let curves = r["search"]["curves"].as_object().expect("search curves");
        curves
            .iter()
            .map(|(k, c)| {
                let points = c.as_array().expect("points");
                (
                    k.clone(),
                    points.iter().filter_map(|p| p["tokens_per_problem"].as_f64()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(
        tokens(&again),
        tokens(&reference),
        "search-eval searched another policy"
    );
    assert!(
        again["search"] == reference["search"],
        "search-eval gave other figures the second time"
    );
}

#[test]
fn a_pipeline_killed_in_any_stage_resumes_to_the_same_results() {
    let reference = reference();
    // Each point lies after a checkpoint of its stage, and the resumed run must say that it
    // continued from it: init at step 30 (its last checkpoint is step 20), the PRM at step 15 of
    // 20 (checkpoint at 10), search-eval after its first searchers (a checkpoint after each),
    // RL at the start of its second iteration (a checkpoint after every iteration).
    for (i, (point, resumed)) in [
        ("init:30", "policy initialisation resumed"),
        ("reward:15", "reward model training resumed"),
        ("search-eval:3", "search-eval resumes from its checkpoint"),
        ("rl:1", "RL resumed"),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("killed-{i}");
        let crashed = run(&name, &[], &[("PONDER_CRASH_AT", point)]);
        assert!(!crashed.status.success(), "{point}: the crash was not injected");
        let err = String::from_utf8_lossy(&crashed.stderr);
        assert!(err.contains("PONDER_CRASH_AT reached"), "{point}: {err}");
        ok(&run(&name, &["--resume"], &[]));
        let log = std::fs::read_to_string(out_dir().join(&name).join("log.txt")).expect("log");
        assert!(
            log.contains(resumed),
            "{point}: the log does not say `{resumed}`:\n{log}"
        );
        assert_eq!(&results(&name), reference, "{point}: resumed results differ");
    }
}

#[test]
fn a_run_directory_in_use_is_refused_with_a_clear_message() {
    let name = "locked";
    let dir = ponder_runtime::run_dir::RunDir::new(out_dir().join(name));
    std::fs::create_dir_all(&dir.root).expect("run directory");
    let held = dir.lock().expect("the test holds the lock");
    let refused = run(name, &[], &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("in use by another run"), "{err}");
    assert!(!dir.path("config.toml").exists(), "the refused run wrote its config");
    drop(held);
}

/// The number-set of each problem in a countdown data file, and its problem ids.
fn countdown_lines(path: &Path) -> Vec<(String, Vec<u64>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let mut numbers: Vec<u64> = v["meta"]["numbers"]
                .as_array()
                .expect("countdown numbers")
                .iter()
                .map(|n| n.as_u64().expect("a number"))
                .collect();
            numbers.sort_unstable();
            (v["id"].as_str().expect("an id").to_string(), numbers)
        })
        .collect()
}

#[test]
fn the_default_data_holds_no_held_out_number_set_in_training() {
    use std::collections::HashSet;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/default.toml");
    let name = "default-data";
    ok(&run_config(
        &config,
        name,
        &["--set", "pipeline.stages=[\"datagen\"]"],
        &[],
    ));
    let data = out_dir().join(name).join("data");
    let default: toml::Table = toml::from_str(&std::fs::read_to_string(&config).expect("config")).expect("TOML");
    let expert_lines = default["pipeline"]["data"]["train_examples"]
        .as_integer()
        .expect("train_examples") as usize;
    let train = countdown_lines(&data.join("train.jsonl"));
    let rl = countdown_lines(&data.join("rl.jsonl"));
    assert!(!rl.is_empty(), "the default keeps problems apart for RL");
    let expert_ids: HashSet<&str> = train[..expert_lines].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(expert_ids.len(), expert_lines, "a training problem repeats");
    let all_train_ids: HashSet<&str> = train.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        rl.iter().all(|(id, _)| !all_train_ids.contains(id.as_str())),
        "an RL problem is in train.jsonl"
    );
    let seen: HashSet<&Vec<u64>> = train.iter().chain(&rl).map(|(_, n)| n).collect();
    let validation = countdown_lines(&data.join("validation.jsonl"));
    let test = countdown_lines(&data.join("test.jsonl"));
    assert_eq!((validation.len(), test.len()), (200, 200));
    let held_out = |lines: &[(String, Vec<u64>)]| lines.iter().map(|(_, n)| n.clone()).collect::<HashSet<_>>();
    let (validation, test) = (held_out(&validation), held_out(&test));
    assert_eq!(validation.iter().filter(|n| seen.contains(n)).count(), 0);
    assert_eq!(test.iter().filter(|n| seen.contains(n)).count(), 0);
    assert!(validation.is_disjoint(&test));
    let record = read_json(&out_dir().join(name).join("stages/datagen.json"));
    assert_eq!(record["results"]["held_out"]["test"]["families_in_training"], 0);
    // At most once among the expert lines and once among the revision lines.
    assert!(
        record["results"]["train_max_lines_per_problem"].as_u64() <= Some(2),
        "{record}"
    );
}

/// `ponder run` of the smoke config, resuming, as a child process that the test can kill.
fn spawn_resuming(name: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
        .arg("run")
        .arg(smoke_config())
        .arg("--set")
        .arg(format!("run.out_dir={}", out_dir().display()))
        .arg("--set")
        .arg(format!("run.name={name}"))
        .arg("--resume")
        .env_remove("PONDER_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ponder starts")
}

#[test]
fn a_pipeline_killed_at_random_moments_resumes_to_the_same_results() {
    let reference = reference();
    let manifest = read_json(&out_dir().join("reference").join("manifest.json"));
    let wall = manifest["wall_seconds"]
        .as_f64()
        .expect("the reference's wall time")
        .max(1.0);
    let name = "killed-at-random";
    // Five kills (SIGKILL, as `kill -9`) at moments drawn with a fixed seed from the span of an
    // uninterrupted run, each resumed by the next start.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut interrupted = 0;
    for _ in 0..5 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let fraction = (state >> 11) as f64 / (1u64 << 53) as f64;
        let mut child = spawn_resuming(name);
        std::thread::sleep(std::time::Duration::from_secs_f64(0.2 + fraction * wall));
        if child.try_wait().is_ok_and(|status| status.is_none()) {
            interrupted += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(interrupted >= 1, "no kill landed while the pipeline was running");
    ok(&run(name, &["--resume"], &[]));
    assert_eq!(&results(name), reference, "the run killed five times ended elsewhere");
    for key in [
        "/policy_init/final_loss",
        "/reward/training/prm/final_loss",
        "/reward/training/orm/final_loss",
    ] {
        assert!(
            results(name).pointer(key).is_some_and(Value::is_number),
            "{key} is missing"
        );
    }
}
