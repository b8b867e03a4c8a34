//! `ponder view` on the smoke run, rendered in headless Chromium with the network cut off: the
//! search-tree explorer draws a recorded MCTS search with as many nodes as its record and marks
//! the chosen path, the figures have their series, and the RL page shows traces before and after.
//! A screenshot of each page is left in Cargo's test folder (`target/tmp/view-*.png`).
//!
//! Chromium comes from Debian's `chromium` package (`.ci/run` installs it). Where it is missing the
//! test says so and passes, unless `PONDER_REQUIRE_CHROMIUM=1` makes its absence a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("PONDER_CHROMIUM").ok().map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

/// Chromium, or `None` after saying the test is skipped (a failure under
/// `PONDER_REQUIRE_CHROMIUM=1`).
fn chromium_or_skip() -> Option<PathBuf> {
    let exe = chromium();
    if exe.is_none() {
        assert!(
            std::env::var("PONDER_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "PONDER_REQUIRE_CHROMIUM=1 but there is no chromium (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium, or set PONDER_CHROMIUM)");
    }
    exe
}

/// Chromium, headless, with no network: every connection goes to a closed loopback port.
fn browser(exe: &Path, profile: &Path) -> Command {
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=8000",
        "--window-size=1400,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page's DOM after its scripts ran, at `fragment`.
fn dump_dom(exe: &Path, profile: &Path, page: &Path, fragment: &str) -> String {
    let out = browser(exe, profile)
        .arg("--dump-dom")
        .arg(format!("file://{}#{fragment}", page.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-ready=\"true\""),
        "the page's script did not finish at #{fragment}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        &dom[..dom.len().min(2000)]
    );
    dom
}

fn screenshot(exe: &Path, profile: &Path, page: &Path, fragment: &str, name: &str) -> PathBuf {
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&png);
    let out = browser(exe, profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}#{fragment}", page.display()))
        .output()
        .expect("chromium runs");
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "no screenshot at {}: {}",
        png.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshot: {}", png.display());
    png
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// The opening tag of the element with this id.
fn tag_with_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let start = dom[..at].rfind('<').expect("a tag");
    let end = at + dom[at..].find('>').expect("a tag's end");
    &dom[start..=end]
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

#[test]
fn the_view_draws_the_smoke_runs_search_trees_figures_and_rl_in_a_browser() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let out = tempfile::tempdir().expect("temporary directory");
    let run = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .arg("run")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml"))
        .args([
            "--set",
            &format!("run.out_dir={}", out.path().display()),
            "--set",
            "run.name=smoke",
        ])
        .output()
        .expect("ponder runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let dir = out.path().join("smoke");

    let view = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .arg("view")
        .arg(&dir)
        .output()
        .expect("ponder view runs");
    assert!(view.status.success(), "{}", String::from_utf8_lossy(&view.stderr));
    let page = dir.join("view/index.html");
    assert_eq!(String::from_utf8_lossy(&view.stdout).trim(), page.display().to_string());
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.len() < 5 << 20, "the page weighs {} bytes", html.len());
    for outside in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "<link",
        "<script src",
    ] {
        assert!(!html.contains(outside), "the page fetches something: `{outside}`");
    }

    // The recorded MCTS searches.
    let lines: Vec<Value> = std::fs::read_to_string(dir.join("search_trees.jsonl"))
        .expect("search_trees.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let mcts = (lines.iter())
        .filter(|l| l["searcher"] == "mcts")
        .max_by_key(|l| l["nodes"].as_array().map_or(0, Vec::len))
        .expect("a recorded MCTS search");
    let nodes = mcts["nodes"].as_array().expect("nodes");
    assert!(nodes.len() > 3, "a tree worth drawing: {} nodes", nodes.len());
    let chosen = nodes.iter().filter(|n| n["chosen"] == true).count();
    assert!(chosen >= 2, "a chosen path from the root");
    let fragment = format!(
        "tab=trees&searcher=mcts&budget={}&problem={}",
        mcts["budget"], mcts["problem"]
    );

    let profile = tempfile::tempdir().expect("a browser profile");
    let dom = dump_dom(&exe, profile.path(), &page, &fragment);
    let svg = tag_with_id(&dom, "tree-svg");
    assert_eq!(
        attribute(svg, "data-node-count"),
        Some(nodes.len().to_string()),
        "{svg}"
    );
    assert_eq!(
        attribute(svg, "data-drawn-nodes"),
        Some(nodes.len().to_string()),
        "{svg}"
    );
    let drawn = count(&dom, "<g class=\"node") - count(&dom, "<g class=\"nodes\"");
    assert_eq!(drawn, nodes.len(), "one drawn node per recorded node");
    assert_eq!(
        count(&dom, "<g class=\"node chosen"),
        chosen,
        "the chosen path's nodes are marked"
    );
    assert_eq!(count(&dom, "class=\"edge chosen"), chosen - 1, "and its edges");
    let labelled = nodes
        .iter()
        .filter(|n| n["labels"].as_array().is_some_and(|l| !l.is_empty()))
        .count();
    let coloured = count(&dom, "data-label=\"right\"") + count(&dom, "data-label=\"wrong\"");
    assert!(
        coloured >= labelled && coloured > 0,
        "nodes coloured by their exact labels: {coloured} of {labelled}"
    );
    screenshot(&exe, profile.path(), &page, &fragment, "view-tree.png");

    // The figures: the test-time plot has a series per searcher curve.
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("results")).expect("JSON");
    let dom = dump_dom(&exe, profile.path(), &page, "tab=figures");
    let plot_at = dom.find("data-plot=\"test-time\"").expect("the test-time plot");
    let plot = &dom[plot_at..plot_at + dom[plot_at..].find("</svg>").expect("its svg")];
    for label in results["search"]["curves"].as_object().expect("curves").keys() {
        assert!(
            plot.contains(&format!("<g class=\"series\" data-series=\"{label}\"")),
            "no `{label}` series"
        );
        assert!(
            dom.contains(&format!("data-series=\"{label}\" aria-pressed=\"true\"")),
            "no legend for `{label}`"
        );
    }
    screenshot(&exe, profile.path(), &page, "tab=figures", "view-figures.png");

    // RL: its metrics, and the same problems before and after.
    let dom = dump_dom(&exe, profile.path(), &page, "tab=rl");
    assert!(dom.contains("data-plot=\"rl-reward\""), "the RL reward plot");
    let pairs = count(&dom, "<div class=\"pair\"");
    assert!(pairs > 0, "traces before and after RL");
    screenshot(&exe, profile.path(), &page, "tab=rl", "view-rl.png");
}

#[test]
fn the_view_of_a_sweep_sorts_its_table_in_a_browser() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let row = |run: &str, seed: u64, v: f64| {
        serde_json::json!({"run": run, "run.seed": seed, "finished": true,
            "metrics": {"greedy pass@1": {"value": v, "ci": [v - 0.05, v + 0.05]}}})
    };
    let sweep = serde_json::json!({
        "sweep": "fixture",
        "keys": ["run.seed"],
        "rows": [row("seed-1", 1, 0.2), row("seed-2", 2, 0.9), row("seed-3", 3, 0.5)],
        "over_seeds": [{"seeds": [1, 2, 3], "metrics": {"greedy pass@1": {"mean": 0.533, "min": 0.2, "max": 0.9, "values": [0.2, 0.9, 0.5]}}}],
    });
    std::fs::write(dir.path().join("sweep.json"), sweep.to_string()).expect("writes");
    let view = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .arg("view")
        .arg(dir.path())
        .output()
        .expect("ponder view runs");
    assert!(view.status.success(), "{}", String::from_utf8_lossy(&view.stderr));
    let page = dir.path().join("view/index.html");
    let profile = tempfile::tempdir().expect("a browser profile");
    // Column 2 (after run and run.seed) is greedy pass@1: descending puts seed-2, seed-3, seed-1.
    let dom = dump_dom(&exe, profile.path(), &page, "tab=table&sort=2:desc");
    assert!(
        at_in(&dom, "seed-2") < at_in(&dom, "seed-3") && at_in(&dom, "seed-3") < at_in(&dom, "seed-1"),
        "sorted by the figure, descending"
    );
    assert!(dom.contains("aria-sort=\"descending\""), "the sorted column says so");
    assert!(dom.contains("mean (range) over seeds"), "the mean and range over seeds");
    let dom = dump_dom(&exe, profile.path(), &page, "tab=table&sort=2:asc");
    assert!(at_in(&dom, "seed-1") < at_in(&dom, "seed-3") && at_in(&dom, "seed-3") < at_in(&dom, "seed-2"));
    let dom = dump_dom(&exe, profile.path(), &page, "tab=figures");
    assert!(
        dom.contains("<g class=\"series\" data-series=\"greedy pass@1\""),
        "the figure's plot"
    );
}

fn at_in(dom: &str, run: &str) -> usize {
    dom.find(&format!("<td data-v=\"{run}\">"))
        .unwrap_or_else(|| panic!("no row {run}"))
}
