//! The `ponder` binary as a user drives it.

use std::path::Path;
use std::process::{Command, Output};

fn ponder(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .current_dir(dir)
        .env_remove("PONDER_RUN__SEED")
        .output()
        .expect("ponder runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn datagen_is_fast_and_deterministic_per_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generate = |seed: &str, out: &str| {
        let start = std::time::Instant::now();
        let o = ponder(
            &[
                "datagen",
                "--task",
                "countdown",
                "--n",
                "10000",
                "--seed",
                seed,
                "--style",
                "search",
                "--out",
                out,
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        start.elapsed()
    };
    let took = generate("1", "a.jsonl");
    generate("1", "b.jsonl");
    generate("2", "c.jsonl");
    let read = |f: &str| std::fs::read(dir.path().join(f)).expect("written");
    assert_eq!(read("a.jsonl"), read("b.jsonl"), "same seed, same bytes");
    assert_ne!(read("a.jsonl"), read("c.jsonl"), "another seed, another file");
    let lines = String::from_utf8(read("a.jsonl")).expect("utf8");
    assert_eq!(lines.lines().count(), 10_000);
    // Seconds, not minutes, even in a debug build (the release build takes well under one).
    assert!(took.as_secs() < 30, "datagen took {took:?}");
}

/// `ponder check` on `bad.toml` holding `text`: it must exit 2 and print every one of `expected`.
fn check_fails_saying(dir: &Path, text: &str, expected: &[&str]) {
    let config = dir.join("bad.toml");
    std::fs::write(&config, text).expect("write");
    let o = ponder(&["check", config.to_str().expect("utf8")], dir);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for e in expected {
        assert!(err.contains(e), "expected `{e}` in:\n{err}");
    }
}

#[test]
fn check_reports_every_mistake_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    // Three errors, each at its line and column, an unknown kind with the known ones listed.
    check_fails_saying(
        dir,
        "[run]\nname = \"x\"\nseed = \"one\"\n\n[task]\nkind = \"countdwn\"\n\n[pipeline.data]\ntrain_examples = 10\ncolour = 3\n",
        &[
            "3 errors",
            "bad.toml:3:1: run.seed",
            "task.kind",
            "unknown task kind `countdwn`",
            "arithmetic, chains, countdown",
            "bad.toml:10:1: pipeline.data.colour",
        ],
    );
    // Values that parse but make no sense are caught too.
    check_fails_saying(
        dir,
        "[pipeline.search_eval.sampling]\ntemperature = 0.0\ntop_p = 1.5\n",
        &[
            "pipeline.search_eval.sampling.temperature: must be above 0",
            "pipeline.search_eval.sampling.top_p: must be above 0 and at most 1",
        ],
    );
    // Mistakes inside the inline tables of an array are placed to the key.
    check_fails_saying(
        dir,
        "[pipeline.search_eval]\nsearchers = [\n  { label = \"a\", kind = \"mcts\" },\n  { label = \"b\", kind = \"best-of-n\", selection = \"nope\" },\n]\n",
        &["bad.toml:4:38: pipeline.search_eval.searchers.1.selection: unknown variant `nope`"],
    );
    // The new learners check their settings like every kind.
    check_fails_saying(
        dir,
        "[task]\nkind = \"countdown\"\n\n[learn]\nkind = \"dapo\"\nclip_low = 1.5\noverlong_buffer = 50\nmax_length = 20\n",
        &[
            "learn.clip_low: must be in [0, 1), not 1.5",
            "learn.overlong_buffer: must be at most max_length (20), not 50",
        ],
    );
    // A run trains one PRM: a searcher's own PRM table that would train another is refused
    // where it stands; one that only aggregates differently is not.
    check_fails_saying(
        dir,
        "[reward]\nkind = \"prm\"\n\n[pipeline.search_eval]\nsearchers = [\n  { kind = \"beam\", reward = { kind = \"prm\", labels = \"ground-truth\" } },\n]\n",
        &["pipeline.search_eval.searchers.0.reward: a run trains one prm (reward/prm), with the settings at `reward`"],
    );
    // Token ids are for RL's rollout servers; the run's remote policy has no tokenizer for them.
    check_fails_saying(
        dir,
        "[policy]\nkind = \"remote\"\nendpoints = [\"http://127.0.0.1:8000/v1\"]\ntoken_ids = true\n",
        &["bad.toml:4:1: policy.token_ids: the run's policy reads the servers' text"],
    );
    let fine = dir.join("fine.toml");
    std::fs::write(
        &fine,
        "[task]\nkind = \"countdown\"\n\n[reward]\nkind = \"prm\"\n\n[pipeline.search_eval]\nsearchers = [\n  { kind = \"beam\", reward = { kind = \"prm\", aggregation = \"min\" } },\n]\n",
    )
    .expect("write");
    let o = ponder(&["check", fine.to_str().expect("utf8")], dir);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_warns_about_settings_no_stage_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("unread.toml");
    std::fs::write(
        &config,
        "[task]\nkind = \"countdown\"\n\n[learn]\nkind = \"ppo\"\n\n[pipeline]\nstages = [\"datagen\", \"init\"]\n\n[pipeline.rl]\niterations = 3\n",
    )
    .expect("write");
    let o = ponder(&["check", config.to_str().expect("utf8")], dir.path());
    let err = stderr(&o);
    assert!(o.status.success(), "a warning is no error: {err}");
    assert!(
        err.contains("unread.toml:10:11: pipeline.rl: read by the rl stage only, which is not in pipeline.stages"),
        "{err}"
    );
    assert!(
        err.contains("unread.toml:4:2: learn: read by the rl stage only"),
        "{err}"
    );
    // The shipped configs set nothing that goes unread.
    for shipped in ["default", "smoke", "chains", "arithmetic"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/{shipped}.toml"));
        let o = ponder(&["check", path.to_str().expect("utf8")], dir.path());
        assert!(
            o.status.success() && !stderr(&o).contains("warning"),
            "{shipped}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn syntax_errors_name_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, "[run]\nseed = 1\nname = \"x\n").expect("write");
    let o = ponder(&["check", config.to_str().expect("utf8")], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("TOML syntax error") && err.contains("broken.toml:3:"),
        "{err}"
    );
}

#[test]
fn overrides_and_environment_layer_over_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ok.toml");
    std::fs::write(&config, "[run]\nname = \"x\"\n\n[task]\nkind = \"countdown\"\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(["check", config.to_str().expect("utf8"), "--set", "task.numbers=4"])
        .env("PONDER_RUN__SEED", "77")
        .env("PONDER_LOG", "not config")
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("seed 77"), "{out}");
    assert!(out.contains("numbers=4"), "{out}");
    let o = ponder(
        &["check", config.to_str().expect("utf8"), "--set", "task.numbers=many"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("task.numbers"), "{}", stderr(&o));
}

#[test]
fn list_shows_the_builtin_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = ponder(&["list"], dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    for kind in ["countdown", "chains", "arithmetic"] {
        assert!(out.contains(kind), "{out}");
    }
}

#[test]
fn bad_datagen_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = ponder(
        &[
            "datagen",
            "--task",
            "arithmetic",
            "--n",
            "3",
            "--style",
            "search",
            "--out",
            "x.jsonl",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("arithmetic writes optimal, retry, revision traces"),
        "{}",
        stderr(&o)
    );
    let o = ponder(
        &[
            "datagen",
            "--task",
            "countdown",
            "--set",
            "numbers=9",
            "--n",
            "3",
            "--out",
            "x.jsonl",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("task.numbers: must be 2 to 5"), "{}", stderr(&o));
    assert!(!dir.path().join("x.jsonl").exists());
}

#[test]
fn bench_writes_best_of_rounds_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bench.json");
    let out_arg = out.to_string_lossy().to_string();
    let o = ponder(
        &[
            "bench",
            "--presets",
            "tiny",
            "--seconds",
            "0.05",
            "--rounds",
            "2",
            "--no-reference",
            "--out",
            &out_arg,
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tiny, round 2 of 2"), "{}", stderr(&o));
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("written")).expect("json");
    assert_eq!(figures["rounds"], 2);
    let tiny = &figures["presets"]["tiny"];
    for key in ["train", "generate_b1", "generate_b32"] {
        assert!(
            tiny[key]["ponder_tokens_per_s"].as_f64().expect("a rate") > 0.0,
            "{key}"
        );
        assert!(tiny[key]["ratio"].is_null(), "no reference, no ratio: {key}");
    }
    assert!(tiny["kv_cache"]["speedup"].as_f64().expect("speed-up") > 1.0);
}
