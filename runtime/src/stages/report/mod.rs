//! `report`: `report.md`, a miniature o1 paper — for each phenomenon ponder's figure beside
//! the published one — and its plots in `plots/`.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

mod reward;
mod rl;
mod search;

use super::Context;
use crate::plots::{Chart, draw};

/// What a section writes to: the run, its assembled results, the report's text so far, and
/// the sections that have figures.
struct Report<'r, 'c> {
    ctx: &'r Context<'c>,
    r: Value,
    out: String,
    figures: Map<String, Value>,
}

/// Draws `charts` side by side to `plots/{file}` (`width_each` by `height` pixels each) and
/// embeds the picture under `alt`.
fn figure(
    ctx: &Context,
    out: &mut String,
    (file, alt): (&str, &str),
    charts: &[Chart],
    (width_each, height): (u32, u32),
) -> anyhow::Result<()> {
    draw(&ctx.dir.path(&format!("plots/{file}")), charts, width_each, height)?;
    writeln!(out, "\n![{alt}](plots/{file})\n")?;
    Ok(())
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{:.1}%", x * 100.0))
}

fn ci(v: &Value) -> String {
    match (v.get(0).and_then(|x| x.as_f64()), v.get(1).and_then(|x| x.as_f64())) {
        (Some(a), Some(b)) => format!("[{:.1}, {:.1}]", a * 100.0, b * 100.0),
        _ => String::new(),
    }
}

/// An accuracy with its interval in whole points, for dense tables: `34.4% [23, 45]`.
fn pct_with_range(value: &Value, low: &Value, high: &Value) -> String {
    format!(
        "{} [{:.0}, {:.0}]",
        pct(value),
        low.as_f64().unwrap_or(0.0) * 100.0,
        high.as_f64().unwrap_or(0.0) * 100.0
    )
}

/// A difference of two accuracies in points, signed, with its interval.
fn points_with_ci(value: &Value, range: &Value) -> String {
    let p = |v: Option<f64>| v.map_or("—".into(), |x| format!("{:+.1}", x * 100.0));
    format!(
        "{} points [{}, {}]",
        p(value.as_f64()),
        p(range.get(0).and_then(|x| x.as_f64())),
        p(range.get(1).and_then(|x| x.as_f64()))
    )
}

/// An AUROC with its 95% interval (bootstrap over problems) when there is one.
fn three_digits_with_ci(value: &Value, range: &Value) -> String {
    match (
        range.get(0).and_then(|x| x.as_f64()),
        range.get(1).and_then(|x| x.as_f64()),
    ) {
        (Some(a), Some(b)) => format!("{} [{a:.3}, {b:.3}]", num(value, 3)),
        _ => num(value, 3),
    }
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.digits$}"))
}

/// " Searchers sample at temperature T (top-k, top-p when set)." from `search.sampling`; empty for
/// older results without it.
fn sampling_note(sampling: &Value) -> String {
    let Some(t) = sampling["temperature"].as_f64() else {
        return String::new();
    };
    let mut how = format!("temperature {}", num(&json!(t), 2));
    if let Some(k) = sampling["top_k"].as_u64().filter(|&k| k > 0) {
        how.push_str(&format!(", top-k {k}"));
    }
    if let Some(p) = sampling["top_p"].as_f64().filter(|&p| p < 1.0) {
        how.push_str(&format!(", top-p {}", num(&json!(p), 2)));
    }
    format!(" Searchers sample at {how}.")
}

/// A sweep's table (`runs/sweeps/NAME/table.md`) where it has been run, else how to run it;
/// whether it was there.
fn sweep_table(ctx: &Context, name: &str, out: &mut String) -> anyhow::Result<bool> {
    let dir = std::path::Path::new(&ctx.config.run.out_dir).join("sweeps").join(name);
    match std::fs::read_to_string(dir.join("table.md")) {
        Ok(t) => {
            writeln!(out, "{t}\n(from `{}`)\n", dir.display())?;
            Ok(true)
        }
        Err(_) => {
            writeln!(
                out,
                "Not run yet: `cargo xtask sweep configs/sweeps/{name}.toml` fills this table.\n"
            )?;
            Ok(false)
        }
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<Value> {
    let r = crate::results::assemble(ctx.config, ctx.earlier);
    let mut out = String::new();
    writeln!(
        out,
        "# ponder run `{}`: o1's phenomena in miniature\n",
        ctx.config.run.name
    )?;
    writeln!(
        out,
        "Task `{}` (seed {}), policy {:.2}M parameters, everything on {} in {:.0} s of stages. Figures are ponder's, measured on the held-out `{}` problems (settings are chosen on validation, the test side is read once: `docs/results.md`); the published ones they are set against, with their sources, are in `docs/references.md`. Intervals are 95% (Wilson for greedy accuracy, bootstrap over problems otherwise).\n",
        r["task"].as_str().unwrap_or("?"),
        r["seed"],
        r["policy_init"]["params"].as_f64().unwrap_or(0.0) / 1e6,
        ctx.config.run.device,
        ctx.earlier.values().map(|s| s.seconds).sum::<f64>(),
        ctx.config.pipeline.held_out,
    )?;
    let figures = Map::new();

    // Policy initialisation.
    let init = &r["policy_init"];
    if !init.is_null() {
        writeln!(out, "## 1. Policy initialisation\n")?;
        writeln!(
            out,
            "| | ponder | PyTorch reference (not a paper: a 0.84M GPT on countdown-3, numbers 1..10) |\n|---|---|---|"
        )?;
        writeln!(
            out,
            "| training tokens | {:.2}M at {:.0} tokens/s | PyTorch reference: 1 / 2 / 4M tokens |",
            init["train_tokens"].as_f64().unwrap_or(0.0) / 1e6,
            ctx.earlier
                .get("init")
                .and_then(|s| s.results["train_tokens_per_s"].as_f64())
                .unwrap_or(0.0)
        )?;
        for (label, key, published) in [
            ("greedy pass@1", "pass@1", "22.5 / 36.5 / 48.5%"),
            ("pass@8", "pass@8", "52 / 79 / 86%"),
            ("pass@32", "pass@32", "81.5 / 97 / 98.5%"),
            ("maj@32", "maj@32", "18.5 / 36 / 49.5%"),
        ] {
            writeln!(
                out,
                "| {label} | {} {} | {published} |",
                pct(&init[key]),
                ci(&init[format!("{key}_ci")])
            )?;
        }
        writeln!(out, "| chance level | {} | |\n", pct(&init["eval"]["chance_level"]))?;
    }

    let mut report = Report { ctx, r, out, figures };
    reward::section(&mut report)?;
    search::section(&mut report)?;
    rl::section(&mut report)?;
    let Report {
        mut out, mut figures, ..
    } = report;

    // Data ablations need policies of their own: they are sweeps, shown here when run.
    writeln!(out, "## 5. Data ablations\n")?;
    let ablations = [
        (
            "init_style",
            "Search-trace against optimal-trace initialisation at equal training tokens, before and after RL",
            "Stream of Search: +25% accuracy from search-trace training (countdown)",
        ),
        (
            "retry_data",
            "Data with corrected mistakes (`retry`) against clean data, modular dependency chains, equal tokens",
            "Physics of LMs 2.2: retry data beats clean data, more so at higher retry rates",
        ),
    ];
    for (name, what, published) in ablations {
        writeln!(out, "### {what}\n\nPublished: {published}.\n")?;
        if sweep_table(ctx, name, &mut out)? {
            figures.insert(format!("ablation_{name}"), json!(true));
        }
    }
    writeln!(out, "## 6. The headline figures over seeds\n")?;
    writeln!(
        out,
        "One seed is one draw. From the `seeds` sweep: the default config with seeds 1, 2 and 3 (the split and the held-out problems stay fixed; training data, initialisation, reward models, searches and RL change with the seed), each run's figures and their mean and range over the seeds.\n"
    )?;
    if sweep_table(ctx, "seeds", &mut out)? {
        figures.insert("seeds".into(), json!(true));
    }
    writeln!(
        out,
        "---\nMachine-readable figures: `results.json` (see `docs/results.md`); provenance: `manifest.json`; every step's numbers: `metrics.jsonl`."
    )?;
    ponder_datagen::io::write_atomic(ctx.dir.path("report.md"), out.as_bytes())?;
    Ok(json!({"report": "report.md", "sections": figures}))
}
