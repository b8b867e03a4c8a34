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
