//! Sweep files, seeds' mean and range, and the reuse check.

use serde_json::{Value, json};

use crate::run_dir::RunDir;

use super::table::{interval_beside, lookup};
use super::*;

#[test]
fn pointers_with_wildcards() {
    let v = json!({"learn": {"grpo": {"pass@1_after": 0.5}}, "a": [1, 2]});
    assert_eq!(lookup(&v, "/learn/*/pass@1_after"), Some(json!(0.5)));
    assert_eq!(lookup(&v, "/a/1"), Some(json!(2)));
    assert_eq!(lookup(&v, "/learn/ppo/pass@1_after"), None);
    // A paired change named through its value brings its interval.
    let v = json!({"learn": {"grpo": {"change": {"value": 0.1, "low": 0.05, "high": 0.15}, "after": 0.5}}});
    assert_eq!(interval_beside(&v, "/learn/*/change/value"), Some(json!([0.05, 0.15])));
    assert_eq!(interval_beside(&v, "/learn/*/after"), None);
}

#[test]
fn set_path_replaces_tables_and_makes_missing_ones() {
    let mut t: toml::Table = "[search]\nkind = \"mcts\"\nwidth = 3\n".parse().expect("toml");
    let beam: toml::Table = "kind = \"beam\"".parse().expect("toml");
    set_path(&mut t, "search", toml::Value::Table(beam)).expect("set");
    assert_eq!(t["search"].as_table().map(|t| t.len()), Some(1));
    set_path(&mut t, "pipeline.rl.iterations", toml::Value::Integer(3)).expect("set");
    assert_eq!(t["pipeline"]["rl"]["iterations"].as_integer(), Some(3));
    assert!(set_path(&mut t, "search.kind.x", toml::Value::Integer(1)).is_err());
}

#[test]
fn every_shipped_sweep_loads_with_valid_run_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sweeps");
    let registry = Registry::builtin();
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("configs/sweeps") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sweep = Sweep::load(&path, &registry).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(!sweep.runs.is_empty(), "{}: no runs", path.display());
            loaded.push(sweep.runs.len());
        }
    }
    assert!(loaded.len() >= 5, "the shipped sweeps: {loaded:?}");
}

#[test]
fn a_seed_grid_gets_the_mean_and_range_of_every_metric_over_finished_seeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    let out = tmp.path().join("out");
    let file = tmp.path().join("s.toml");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nbase = {base:?}\nout_dir = {out:?}\n[set]\n\"pipeline.stages\" = [\"datagen\"]\n\
             [grid]\n\"task.digits\" = [1, 2]\n\"run.seed\" = [1, 2, 3]\n\
             [metrics]\n\"score\" = \"/score\"\n"
        ),
    )
    .expect("write");
    let sweep = Sweep::load(&file, &Registry::builtin()).expect("load");
    // Seeds 1 and 2 of one digit finished with scores 0.2 and 0.6; seed 3 did not; of two
    // digits only seed 1 finished, too few for a summary.
    for r in &sweep.runs {
        let value = |key: &str| {
            r.values
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.as_integer())
        };
        let (number, seed) = (value("task.digits"), value("run.seed"));
        let score = match (number, seed) {
            (Some(1), Some(1)) => 0.2,
            (Some(1), Some(2)) => 0.6,
            (Some(2), Some(1)) => 0.9,
            _ => continue,
        };
        let dir = RunDir::new(sweep.dir.join(&r.name));
        std::fs::create_dir_all(dir.root.join("stages")).expect("mkdir");
        dir.record(&crate::run_dir::StageRecord {
            stage: "datagen".into(),
            results: json!({}),
            seconds: 1.0,
            commit: None,
        })
        .expect("record");
        dir.write_json("results.json", &json!({"score": score}))
            .expect("results");
    }
    let table = sweep.collect().expect("collect");
    let summary_rows: Vec<&str> = table.lines().filter(|l| l.contains("over seeds")).collect();
    assert_eq!(summary_rows.len(), 1, "{table}");
    assert!(
        summary_rows[0].starts_with("| mean (range) over seeds 1, 2 |"),
        "{table}"
    );
    assert!(summary_rows[0].ends_with("| 0.400 (0.200–0.600) |"), "{table}");
    assert!(summary_rows[0].contains("| 1 |"), "{table}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(sweep.dir.join("sweep.json")).expect("sweep.json"))
            .expect("json");
    assert_eq!(
        written["over_seeds"][0]["metrics"]["score"]["values"],
        json!([0.2, 0.6])
    );
    assert_eq!(written["over_seeds"].as_array().map(Vec::len), Some(1));
}

#[test]
fn shared_stages_split_by_the_grid_keys_they_read_and_refuse_variants_that_change_them() {
    assert!(
        stage_inputs("reward")
            .iter()
            .any(|k| overlaps("pipeline.reward.steps", k))
    );
    assert!(!stage_inputs("reward").iter().any(|k| overlaps("learn.kind", k)));
    assert!(stage_inputs("init").iter().any(|k| overlaps("pipeline.data.style", k)));
    let dir = tempfile::tempdir().expect("tempdir");
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    std::fs::copy(&smoke, dir.path().join("smoke.toml")).expect("copy");
    let sweep = |variant: &str| {
        let path = dir.path().join("sweep.toml");
        std::fs::write(
            &path,
            format!(
                "[sweep]\nbase = \"smoke.toml\"\nreuse = [\"datagen\", \"init\", \"reward\"]\n\n[grid]\n\"run.seed\" = [1, 2]\n\n[[variants]]\nlabel = \"grpo\"\n\"learn\" = {{ kind = \"grpo\" }}\n\n[[variants]]\nlabel = \"other\"\n{variant}\n\n[metrics]\n\"x\" = \"/learn/x\"\n"
            ),
        )
        .expect("write");
        Sweep::load(&path, &Registry::builtin())
    };
    // The seed feeds every shared stage: one shared run per seed, each run copying its own.
    let s = sweep("\"learn\" = { kind = \"ppo\", process_rewards = true }\n\"reward\" = { kind = \"prime\" }")
        .expect("PRIME needs nothing from the reward stage");
    let names: Vec<&str> = s.bases.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["base_seed-1", "base_seed-2"]);
    assert_eq!(s.runs.len(), 4);
    for r in &s.runs {
        let seed = r.config["run"]["seed"].as_integer().expect("seed");
        assert_eq!(
            r.base.as_deref(),
            Some(format!("base_seed-{seed}").as_str()),
            "{}",
            r.name
        );
    }
    for b in &s.bases {
        assert_eq!(b.config["pipeline"]["stages"].as_array().map(Vec::len), Some(3));
    }
    // A variant may not change what a shared stage reads, nor need a reward model it did not train.
    let Err(err) = sweep("\"pipeline.init.steps\" = 7") else {
        panic!("a variant changed a shared stage's input");
    };
    assert!(
        format!("{err:#}").contains("a variant sets `pipeline.init.steps`"),
        "{err:#}"
    );
    let Err(err) = sweep("\"reward\" = { kind = \"prm\", labels = \"ground-truth\" }") else {
        panic!("a run needing another PRM was allowed to share the reward stage");
    };
    assert!(format!("{err:#}").contains("needs reward/prm"), "{err:#}");
}

#[test]
fn a_shared_reward_stage_must_train_what_every_run_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    std::fs::copy(&smoke, dir.path().join("smoke.toml")).expect("copy");
    let sweep = |orm: &str| {
        let path = dir.path().join("sweep.toml");
        std::fs::write(
            &path,
            format!(
                "[sweep]\nbase = \"smoke.toml\"\nreuse = [\"datagen\", \"init\", \"reward\"]\n\n[grid]\n\"pipeline.search_eval.searchers\" = [\n  [{{ label = \"a\", kind = \"best-of-n\" }}],\n  [{{ label = \"b\", kind = \"best-of-n\", selection = \"reward\", reward = {orm} }}],\n]\n\n[metrics]\n\"accuracy\" = \"/search/curves/b/0/accuracy\"\n"
            ),
        )
        .expect("write");
        Sweep::load(&path, &Registry::builtin())
    };
    // The base run trains the default list's ORM: a run that uses it may share the stage.
    sweep("{ kind = \"orm\" }").expect("the base run trains this ORM");
    // One that needs an ORM with other settings may not.
    let Err(err) = sweep("{ kind = \"orm\", likelihood = false }") else {
        panic!("a run needing another ORM was allowed to share the reward stage");
    };
    assert!(
        format!("{err:#}").contains("stage reward is shared, but run searchers-b needs reward/orm"),
        "{err:#}"
    );
}
