//! The third-party binary lists and uses its own task kind.

use std::process::Command;

#[test]
fn the_extension_kind_is_listed_and_generates_data() {
    let bin = env!("CARGO_BIN_EXE_ponder-extended");
    let o = Command::new(bin).arg("list").output().expect("runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("sorting") && out.contains("[ponder-example-extension]"),
        "{out}"
    );
    assert!(out.contains("countdown"), "built-ins are still there: {out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sort.jsonl");
    let o = Command::new(bin)
        .args([
            "datagen", "--task", "sorting", "--set", "length=4", "--n", "50", "--seed", "3",
        ])
        .arg("--out")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let examples = ponder_datagen::dataset::read_examples(&file).expect("reads");
    assert_eq!(examples.len(), 50);
    let task = {
        let mut registry = ponder_runtime::Registry::builtin();
        ponder_example_extension::register(&mut registry).expect("registers");
        ponder_runtime::config::parse_task(&registry, "sorting", &[])
            .expect("parses")
            .build(&())
            .expect("builds")
    };
    for e in &examples {
        assert_eq!(e.problem.task, "sorting");
        assert!(task.verify(&e.problem, &e.trace()).expect("verifies").correct);
    }
}

#[test]
fn registering_twice_is_refused() {
    let mut registry = ponder_runtime::Registry::builtin();
    ponder_example_extension::register(&mut registry).expect("first time");
    assert!(ponder_example_extension::register(&mut registry).is_err());
}

fn extended(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ponder-extended"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs")
}

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn the_extension_searcher_runs_in_the_whole_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = extended(
        &[
            "run",
            &configs().join("adaptive.toml").to_string_lossy(),
            "--set",
            "run.out_dir=runs",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/extension-adaptive");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).expect("results")).expect("JSON");
    let curves = &results["search"]["curves"];
    let adaptive = curves["adaptive"].as_array().expect("the adaptive searcher's curve");
    let majority = curves["majority"].as_array().expect("majority's curve");
    assert_eq!(adaptive.len(), 3);
    // Stopping early: at the largest budget it spends fewer tokens than majority voting.
    let tokens = |c: &[serde_json::Value]| c[2]["tokens_per_problem"].as_f64().expect("tokens");
    assert!(
        tokens(adaptive) < tokens(majority),
        "{} vs {}",
        tokens(adaptive),
        tokens(majority)
    );
    assert!(results["learn"]["bc"]["pass@1_after"].is_number(), "{results}");
    // It recorded its searches through the public API: leaves carry the round they were drawn in.
    let trees = std::fs::read_to_string(run.join("search_trees.jsonl")).expect("search_trees.jsonl");
    let recorded: Vec<serde_json::Value> = (trees.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|l| l["searcher"] == "adaptive")
        .collect();
    assert!(!recorded.is_empty(), "the adaptive searcher's searches are recorded");
    for line in &recorded {
        let nodes = line["nodes"].as_array().expect("nodes");
        assert!(nodes.iter().any(|n| n["round"].is_number()), "{line}");
        let chosen_answer = nodes
            .iter()
            .filter(|n| n["chosen"] == true)
            .find_map(|n| n["answer"].as_str());
        assert_eq!(chosen_answer, line["answer"].as_str(), "the chosen leaf is the answer");
    }
    assert!(
        std::fs::read_to_string(run.join("report.md"))
            .expect("report")
            .contains("adaptive")
    );
}

#[test]
fn the_extension_sweep_compares_its_searcher_with_the_builtins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sweep = configs().join("sweep.toml");
    // Into the temporary directory: a copy of the sweep with its out_dir there.
    let text = std::fs::read_to_string(&sweep).expect("sweep file");
    let local = dir.path().join("sweep.toml");
    std::fs::copy(configs().join("adaptive.toml"), dir.path().join("adaptive.toml")).expect("copy base");
    std::fs::write(&local, text.replace("[sweep]\n", "[sweep]\nout_dir = \"out\"\n")).expect("write");
    let o = extended(&["sweep", &local.to_string_lossy()], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("out/sweep");
    let table = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    assert_eq!(table.lines().count(), 2 + 6, "{table}");
    assert!(table.contains("adaptive") && table.contains("majority"), "{table}");
    assert!(!table.contains("not run"), "{table}");
    let csv = std::fs::read_to_string(out.join("table.csv")).expect("table.csv");
    assert_eq!(csv.lines().count(), 1 + 6);
    for plot in ["accuracy", "tokens_per_problem"] {
        let bytes = std::fs::read(out.join("plots").join(format!("{plot}.png"))).expect("plot");
        assert_eq!(&bytes[..4], b"\x89PNG");
    }
    // The shared stages ran once: the policy of every run is the base run's.
    let base = std::fs::read(out.join("base/policy/init/model.safetensors")).expect("base policy");
    let one =
        std::fs::read(out.join("searchers-adaptive_budgets-8/policy/init/model.safetensors")).expect("a run's policy");
    assert_eq!(base, one);
    // Resumable: a second invocation finds everything done.
    let again = extended(&["sweep", &local.to_string_lossy()], dir.path());
    assert!(again.status.success());
    let log = std::fs::read_to_string(out.join("logs/searchers-adaptive_budgets-8.log")).expect("log");
    assert_eq!(log.matches("stage search-eval done").count(), 1, "{log}");
}

#[test]
fn the_extension_reward_model_and_learner_run_in_the_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = configs().join("adaptive.toml");
    let o = extended(
        &[
            "run",
            &config.to_string_lossy(),
            "--set",
            "run.out_dir=runs",
            "--set",
            "run.name=extension-kinds",
            "--set",
            "reward.kind=short-orm",
            "--set",
            "reward.per_step=0.05",
            "--set",
            "learn.kind=reinforce",
            "--set",
            "pipeline.stages=[\"datagen\",\"init\",\"reward\",\"search-eval\",\"rl\"]",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/extension-kinds");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).expect("results")).expect("JSON");
    // short-orm asked the reward stage for ponder's ORM through its capabilities, and loaded it.
    assert_eq!(results["reward"]["trained"], serde_json::json!(["orm"]), "{results}");
    assert!(run.join("reward/orm/config.json").exists());
    // It guided search-eval's reward-weighted vote and the search inside RL.
    assert!(results["search"]["curves"]["weighted-orm"].is_array(), "{results}");
    let learned = &results["learn"]["reinforce"];
    assert!(learned["pass@1_after"].is_number(), "{results}");
    // The learner trained on the sampled tokens (a learner that returned at once trains none).
    assert!(learned["train_tokens"].as_u64().is_some_and(|t| t > 0), "{learned}");
    // A bad setting of the new kind is reported at its key.
    let o = extended(
        &[
            "check",
            &config.to_string_lossy(),
            "--set",
            "reward.kind=short-orm",
            "--set",
            "reward.per_step=2",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reward.per_step: must be in [0, 1], not 2"), "{err}");
}
