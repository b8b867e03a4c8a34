//! `report`: `report.md`, a miniature o1 paper — for each phenomenon ponder's figure beside
//! the published one — and its plots in `plots/`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Context;
use crate::plots::{Chart, Series, draw};

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

/// The test-time scaling plots: all problems, and one panel per difficulty quintile.
fn search_plots(ctx: &Context, search: &Value, out: &mut String) -> anyhow::Result<()> {
    let Some(curves) = search["curves"].as_object() else {
        return Ok(());
    };
    let greedy = search["greedy_pass@1"].as_f64();
    // A curve's points, with their intervals: (FLOPs per problem, accuracy), (low, high).
    let series = |name: &str, points: &Value| {
        let pts = points.as_array().cloned().unwrap_or_default();
        let field = |p: &Value, key: &str| p[key].as_f64().unwrap_or(f64::NAN);
        let xy = pts
            .iter()
            .map(|p| (field(p, "flops_per_problem"), field(p, "accuracy")))
            .collect();
        let intervals = pts.iter().map(|p| (field(p, "low"), field(p, "high"))).collect();
        Series::new(name, xy).with_intervals(intervals)
    };
    let mut all: Vec<Series> = curves.iter().map(|(name, points)| series(name, points)).collect();
    if search["compute_optimal"].is_array() {
        all.push(series(
            "compute-optimal (oracle difficulty)",
            &search["compute_optimal"],
        ));
    }
    if search["compute_optimal_predicted"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        all.push(series(
            "compute-optimal (predicted difficulty)",
            &search["compute_optimal_predicted"],
        ));
    }
    if let Some(g) = greedy {
        all.push(Series::horizontal("greedy pass@1", g));
    }
    let chart = Chart {
        title: "Test-time scaling".into(),
        x_label: "FLOPs per problem: policy and reward-model passes (log)".into(),
        y_label: "accuracy".into(),
        log_x: true,
        series: all,
        y_range: Some((0.0, 1.0)),
        x_categories: Vec::new(),
    };
    draw(&ctx.dir.path("plots/test_time_scaling.png"), &[chart], 900, 560)?;
    let mut panels = Vec::new();
    for q in 0..5 {
        let mut series = Vec::new();
        for (name, points) in curves {
            let pts = points.as_array().cloned().unwrap_or_default();
            series.push(Series::new(
                name.clone(),
                pts.iter()
                    .map(|p| {
                        (
                            p["flops_per_problem"].as_f64().unwrap_or(f64::NAN),
                            p["quintiles"][q].as_f64().unwrap_or(f64::NAN),
                        )
                    })
                    .collect(),
            ));
        }
        panels.push(Chart {
            title: format!(
                "quintile {} ({})",
                q + 1,
                ["easiest", "easy", "middle", "hard", "hardest"][q]
            ),
            x_label: "tokens (log)".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series,
            y_range: Some((0.0, 1.0)),
            x_categories: Vec::new(),
        });
    }
    draw(
        &ctx.dir.path("plots/test_time_scaling_quintiles.png"),
        &panels,
        420,
        380,
    )?;
    writeln!(
        out,
        "![test-time scaling](plots/test_time_scaling.png)\n\n![per quintile](plots/test_time_scaling_quintiles.png)\n"
    )?;
    Ok(())
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
    let mut figures = serde_json::Map::new();

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

    // Reward models.
    let reward = &r["reward"];
    if !reward.is_null() {
        writeln!(out, "## 2. Reward models against exact step labels\n")?;
        let mc = reward["mc_label_accuracy"].as_object().cloned().unwrap_or_default();
        let mut ns: Vec<(usize, f64)> = mc
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_f64()?)))
            .collect();
        ns.sort_by_key(|x| x.0);
        writeln!(
            out,
            "Monte-Carlo step labels (hard: a step is right when any of N rollouts from it reaches a right answer) against the task's exact labels:\n"
        )?;
        writeln!(
            out,
            "| N rollouts | accuracy [95% Wilson interval] | false positives | false negatives |\n|---|---|---|---|"
        )?;
        for (n, acc) in &ns {
            let d = &reward["mc_label_details"][n.to_string()]["hard"];
            let steps = d["n"].as_u64().unwrap_or(0) as usize;
            let e = ponder_policy_init::eval::wilson(acc * steps as f64, steps);
            writeln!(
                out,
                "| {n} | {:.1}% [{:.1}, {:.1}] | {} | {} |",
                acc * 100.0,
                e.low * 100.0,
                e.high * 100.0,
                pct(&d["false_positive_rate"]),
                pct(&d["false_negative_rate"])
            )?;
        }
        writeln!(
            out,
            "\nMath-Shepherd measured 86% at N = 4, falling for larger N as false positives grow. "
        )?;
        draw(
            &ctx.dir.path("plots/mc_label_accuracy.png"),
            &[Chart {
                title: "Monte-Carlo label accuracy".into(),
                x_label: "rollouts N (log)".into(),
                y_label: "accuracy vs exact labels".into(),
                log_x: true,
                series: vec![
                    Series::new("hard labels", ns.iter().map(|&(n, a)| (n as f64, a)).collect()),
                    Series::horizontal("Math-Shepherd at N=4", 0.86),
                ],
                y_range: Some((0.5, 1.0)),
                x_categories: Vec::new(),
            }],
            700,
            450,
        )?;
        writeln!(out, "![MC label accuracy](plots/mc_label_accuracy.png)\n")?;
        let prm = &reward["prm"];
        writeln!(out, "| model | measure | ponder |\n|---|---|---|")?;
        // The trained weight of a model's likelihood feature, when it has one.
        let feature = |model: &str| {
            reward["training"][model]["likelihood_weight"]
                .as_f64()
                .filter(|w| *w != 0.0)
                .map(|w| format!("likelihood feature, weight {w:.2}"))
        };
        let prm_feature = feature("prm");
        // Each model's row names its data, as counted by the reward stage.
        let policy_traces = reward["labelled_traces"].as_u64().unwrap_or(0);
        let synthetic = reward["synthetic_traces"].as_u64().unwrap_or(0);
        let prm_name = format!(
            "PRM ({policy_traces} policy traces with {} labels, N = {}{}{})",
            reward["labels"].as_str().unwrap_or("?"),
            reward["rollouts"],
            if synthetic > 0 {
                format!(", and {synthetic} synthetic traces with exact step labels")
            } else {
                String::new()
            },
            prm_feature.as_ref().map_or(String::new(), |f| format!("; {f}"))
        );
        let orm_name = format!(
            "ORM ({policy_traces} policy traces with outcome labels{})",
            feature("orm").map_or(String::new(), |f| format!("; {f}"))
        );
        let (orm, likelihood) = (&reward["orm"], &reward["likelihood"]);
        // (model, measure, record, key): the value at `key`, its interval at `key_ci`.
        let mut rows = vec![
            (prm_name.as_str(), "step AUROC vs exact labels", prm, "step_auroc"),
            ("PRM", "first-error F1 (ProcessBench style)", prm, "first_error_f1"),
            ("PRM", "expected calibration error", prm, "calibration_ece"),
            ("PRM", "outcome AUROC (answer score)", prm, "outcome_auroc"),
            (orm_name.as_str(), "outcome AUROC", orm, "auroc"),
        ];
        if !likelihood.is_null() {
            rows.push((
                "policy likelihood (no training: the baseline)",
                "step AUROC",
                likelihood,
                "step_auroc",
            ));
            rows.push(("policy likelihood", "outcome AUROC", likelihood, "outcome_auroc"));
        }
        for (model, measure, record, key) in rows {
            let value = three_digits_with_ci(&record[key], &record[format!("{key}_ci")]);
            writeln!(out, "| {model} | {measure} | {value} |")?;
        }
        if !likelihood.is_null() {
            writeln!(
                out,
                "\nThe baseline scores a step by the policy's own likelihood of the trace up to it: a trained model that ranks no better has learned nothing the generator did not already know.{}",
                if prm_feature.is_some() {
                    " Here the PRM and ORM start from that ranking (their logit adds a learned multiple of their backbone's log-likelihood of the trace so far) and train from there."
                } else {
                    ""
                }
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "Best-of-N over the same samples (Lightman et al., best-of-1860 on MATH: PRM 78.2%, ORM 72.4%, majority 69.6%). {}\n",
            if synthetic == 0 {
                format!(
                    "Data-matched: the PRM and the ORM learn from the same {policy_traces} policy traces, from the same starting weights for the same steps; only the labels differ (one per step against one per trace)."
                )
            } else {
                format!(
                    "Not data-matched: the PRM also learns from {synthetic} synthetic traces with exact step labels that the ORM does not see (`pipeline.reward.synthetic_traces = 0` gives the data-matched pair)."
                )
            }
        )?;
        writeln!(
            out,
            "| N | PRM (last) | PRM (min) | PRM (product) | PRM weighted vote | ORM | majority | pass@N |\n|---|---|---|---|---|---|---|---|"
        )?;
        let mut lines: Vec<Series> = Vec::new();
        let names = [
            "prm-last",
            "prm-min",
            "prm-product",
            "prm-weighted",
            "orm",
            "majority",
            "pass@n",
        ];
        for name in names {
            lines.push(Series::new(name, Vec::new()));
        }
        for row in reward["best_of_n_curve"].as_array().cloned().unwrap_or_default() {
            let n = row["n"].as_u64().unwrap_or(0);
            let cell = |name: &str| {
                let e = &row["accuracy"][name];
                pct_with_range(&e["value"], &e["low"], &e["high"])
            };
            writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                cell("prm-last"),
                cell("prm-min"),
                cell("prm-product"),
                cell("prm-weighted"),
                cell("orm"),
                cell("majority"),
                cell("pass@n")
            )?;
            for (s, name) in lines.iter_mut().zip(names) {
                s.points
                    .push((n as f64, row["accuracy"][name]["value"].as_f64().unwrap_or(f64::NAN)));
            }
        }
        draw(
            &ctx.dir.path("plots/prm_orm_majority.png"),
            &[Chart {
                title: "PRM vs ORM vs majority".into(),
                x_label: "N samples (log)".into(),
                y_label: "accuracy".into(),
                log_x: true,
                series: lines,
                y_range: Some((0.0, 1.0)),
                x_categories: Vec::new(),
            }],
            800,
            500,
        )?;
        writeln!(out, "\n![PRM vs ORM vs majority](plots/prm_orm_majority.png)\n")?;
        figures.insert("reward".into(), json!(true));
    }

    // Search.
    let search = &r["search"];
    if !search.is_null() {
        writeln!(out, "## 3. Test-time compute\n")?;
        writeln!(
            out,
            "Every searcher over a ladder of budgets on {} held-out problems; the x axis counts the FLOPs of every forward pass per problem, the policy's (prompts, samples, rollouts, lookahead) and the reward model's (every trace and prefix it scored), at 2 per parameter and token computed; the table also gives the tokens the policy generated. Greedy pass@1: {}; chance level: {}.{}\n",
            search["problems"],
            pct(&search["greedy_pass@1"]),
            pct(&search["chance_level"]),
            sampling_note(&search["sampling"])
        )?;
        search_plots(ctx, search, &mut out)?;
        let best = &search["best_at_top_budget"];
        if best.is_object() {
            let gain = &best["gain_over_greedy"];
            writeln!(
                out,
                "The most accurate searcher at the largest budget: {} at budget {}, {}{}.\n",
                best["searcher"].as_str().unwrap_or("?"),
                best["budget"],
                pct_with_range(&best["accuracy"], &best["low"], &best["high"]),
                if gain.is_object() {
                    format!(
                        ", {} over greedy decoding on the same problems (greedy {}; paired bootstrap)",
                        points_with_ci(&gain["value"], &json!([gain["low"], gain["high"]])),
                        pct(&gain["greedy_pass@1"])
                    )
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(
            out,
            "| searcher | budget: accuracy [95% interval] (FLOPs, tokens per problem) |\n|---|---|"
        )?;
        let row = |points: &Value| -> String {
            points
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{}: {} ({:.1e}, {:.0})",
                        p["budget"],
                        pct_with_range(&p["accuracy"], &p["low"], &p["high"]),
                        p["flops_per_problem"].as_f64().unwrap_or(0.0),
                        p["tokens_per_problem"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(curves) = search["curves"].as_object() {
            for (name, points) in curves {
                writeln!(out, "| {name} | {} |", row(points))?;
            }
        }
        writeln!(
            out,
            "| compute-optimal, oracle difficulty (2-fold CV) | {} |",
            row(&search["compute_optimal"])
        )?;
        if search["compute_optimal_predicted"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            writeln!(
                out,
                "| compute-optimal, predicted difficulty (2-fold CV, prediction charged) | {} |",
                row(&search["compute_optimal_predicted"])
            )?;
        }
        let m = &search["compute_optimal_vs_best_of_n"];
        let reference = &m["reference"];
        if reference.is_object() {
            write!(
                out,
                "\nCompute-optimal (the best searcher per difficulty quintile and budget, chosen on one half of the problems and measured on the other, both ways; the quintiles come from {} graded samples per problem, oracle information a deployed system would not have, and their cost is not counted) against the strongest best-of-N at the largest budget, {} at budget {}: {} at {:.2e} FLOPs ({} tokens) per problem. ",
                ctx.config.pipeline.init.samples,
                reference["searcher"].as_str().unwrap_or("best-of-N"),
                reference["budget"],
                pct_with_range(&reference["accuracy"], &reference["low"], &reference["high"]),
                reference["flops_per_problem"].as_f64().unwrap_or(0.0),
                num(&reference["tokens_per_problem"], 0)
            )?;
            let first = &m["first_match"];
            if first.is_object() {
                write!(
                    out,
                    "The compute-optimal curve first reaches it at budget {} ({:.2e} FLOPs per problem, {}x fewer; {}x fewer tokens; Snell et al. measured 4x), paired difference {}. ",
                    first["budget"],
                    first["flops_per_problem"].as_f64().unwrap_or(0.0),
                    num(&first["flops_ratio"], 1),
                    num(&first["token_ratio"], 1),
                    points_with_ci(&first["difference"], &first["difference_ci"])
                )?;
            } else {
                write!(out, "The compute-optimal curve does not reach it at any budget. ")?;
            }
            let gain = &reference["gain_over_budget"];
            if gain["significant"].as_bool() == Some(true) {
                writeln!(
                    out,
                    "{} itself gains {} from budget {} to {} (paired bootstrap over problems).\n",
                    reference["searcher"].as_str().unwrap_or("best-of-N"),
                    points_with_ci(&gain["difference"], &gain["ci"]),
                    gain["from_budget"],
                    reference["budget"]
                )?;
            } else {
                writeln!(
                    out,
                    "{} itself does not rise significantly from budget {} to {} ({}, paired bootstrap over problems), so at this sample size there is no measured gain for the compute-optimal curve to reach sooner.\n",
                    reference["searcher"].as_str().unwrap_or("best-of-N"),
                    gain["from_budget"],
                    reference["budget"],
                    points_with_ci(&gain["difference"], &gain["ci"])
                )?;
            }
        }
        let predictor = &search["difficulty_predictor"];
        let predicted = &search["compute_optimal_predicted_vs_best_of_n"];
        if predictor.is_object() && predicted["reference"].is_object() {
            let first = &predicted["first_match"];
            writeln!(
                out,
                "With difficulty predicted as a deployed system could ({}, {:.2e} FLOPs per problem, charged to every point of the curve; its quintiles agree with the oracle's on {} of the problems), {}\n",
                predictor["predictor"].as_str().unwrap_or("?"),
                predictor["flops_per_problem"].as_f64().unwrap_or(0.0),
                pct(&predictor["quintile_agreement_with_oracle"]),
                if first.is_object() {
                    format!(
                        "the compute-optimal curve first reaches the same reference at budget {} ({}x fewer FLOPs, {}x fewer tokens), paired difference {}.",
                        first["budget"],
                        num(&first["flops_ratio"], 1),
                        num(&first["token_ratio"], 1),
                        points_with_ci(&first["difference"], &first["difference_ci"])
                    )
                } else {
                    "the compute-optimal curve does not reach the reference at any budget.".to_string()
                }
            )?;
        }
        if let Some(trends) = search["trends"].as_object() {
            writeln!(
                out,
                "### Does accuracy rise with budget?\n\nPaired over the same problems (a larger budget extends a smaller one's samples and seeds, so the difference is the budget's doing): each curve's change from its smallest budget to its largest, and its largest step down between neighbouring budgets, with 95% bootstrap intervals. A fall counts only when its whole interval is below zero.\n\n| searcher | smallest to largest budget | largest step down | significant fall |\n|---|---|---|---|"
            )?;
            for (name, t) in trends {
                let rise = &t["rise"];
                let fall = &t["largest_fall"];
                let fall = if fall.is_object() {
                    format!(
                        "{} to {}: {}",
                        fall["from_budget"],
                        fall["to_budget"],
                        points_with_ci(&fall["difference"], &fall["ci"])
                    )
                } else {
                    "none".into()
                };
                writeln!(
                    out,
                    "| {name} | {} to {}: {} | {fall} | {} |",
                    rise["from_budget"],
                    rise["to_budget"],
                    points_with_ci(&rise["difference"], &rise["ci"]),
                    if t["falls_significantly"] == true { "yes" } else { "no" }
                )?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "### What guides the search\n\nFrom the `searcher_budget` sweep (on the policy and reward models of `configs/default.toml`): the same searchers guided by the learned reward models, by the task's exact step labels (`oracle-process`: the PRM's upper bound) and by the task's answer check as a test-time verifier (countdown's reads only the numbers and the target, as a unit test would; no gold answer). Where the oracle-guided curves rise and the PRM-guided ones do not, the reward model is what limits search.\n"
        )?;
        sweep_table(ctx, "searcher_budget", &mut out)?;
        figures.insert("search".into(), json!(true));
    }

    // RL.
    if let Some(learn) = r["learn"].as_object() {
        writeln!(out, "## 4. Reinforcement learning\n")?;
        for (kind, rl) in learn {
            writeln!(
                out,
                "Learner `{kind}` ({}), {} iterations.\n",
                rl["learner"].as_str().unwrap_or(""),
                rl["iterations"]
            )?;
            writeln!(out, "| | before RL | after RL |\n|---|---|---|")?;
            writeln!(
                out,
                "| greedy pass@1 | {} {} | {} {} |",
                pct(&rl["pass@1_before"]),
                ci(&rl["pass@1_before_ci"]),
                pct(&rl["pass@1_after"]),
                ci(&rl["pass@1_after_ci"])
            )?;
            for (label, key) in [
                ("sampled pass@1", "pass@1_sampled"),
                ("pass@8", "pass@8"),
                ("pass@32", "pass@32"),
            ] {
                writeln!(
                    out,
                    "| {label} | {} {} | {} {} |",
                    pct(&rl[format!("{key}_before")]),
                    ci(&rl[format!("{key}_before_ci")]),
                    pct(&rl[format!("{key}_after")]),
                    ci(&rl[format!("{key}_after_ci")])
                )?;
            }
            for (label, key) in [
                ("sampled pass@1", "pass@1_sampled_change"),
                ("greedy pass@1", "pass@1_change"),
            ] {
                let change = &rl[key];
                if change.is_object() {
                    writeln!(
                        out,
                        "| change in {label}, paired over problems | | {} |",
                        points_with_ci(&change["value"], &json!([change["low"], change["high"]]))
                    )?;
                }
            }
            writeln!(
                out,
                "\nSampled figures are at temperature 1 ({} samples per problem before RL, {} after). Greedy pass@1 turns on near-tied first choices and moves with floating-point rounding alone (the thread count, say); sampled pass@1 is the steadier measure of what RL changed.\n\nYue et al. found RL raises pass@1 while the base model overtakes it at large k: both are shown.\n",
                ctx.config.pipeline.init.samples, ctx.config.pipeline.rl.final_samples
            )?;
            let curve = rl["curve"].as_array().cloned().unwrap_or_default();
            let trained: Vec<&Value> = curve
                .iter()
                .filter(|p| p["flops"].as_f64().unwrap_or(0.0) > 0.0)
                .collect();
            let number = |p: &Value, key: &str| p[key].as_f64().unwrap_or(f64::NAN);
            let pts: Vec<(f64, f64)> = trained
                .iter()
                .map(|p| (number(p, "flops"), number(p, "pass@1")))
                .collect();
            // Runs recorded before the curve carried intervals draw points alone.
            let intervals: Vec<(f64, f64)> = trained
                .iter()
                .filter_map(|p| Some((p["low"].as_f64()?, p["high"].as_f64()?)))
                .collect();
            let mut series = Series::new(kind.clone(), pts);
            if intervals.len() == trained.len() {
                series = series.with_intervals(intervals);
            }
            let start = curve.first().and_then(|p| p["pass@1"].as_f64()).unwrap_or(0.0);
            draw(
                &ctx.dir.path("plots/train_time_scaling.png"),
                &[Chart {
                    title: "Train-time scaling".into(),
                    x_label: "RL compute, FLOPs (log)".into(),
                    y_label: "greedy pass@1 (held-out)".into(),
                    log_x: true,
                    series: vec![series, Series::horizontal("before RL", start)],
                    y_range: Some((0.0, 1.0)),
                    x_categories: Vec::new(),
                }],
                800,
                500,
            )?;
            writeln!(out, "![train-time scaling](plots/train_time_scaling.png)\n")?;
        }
        // Sweeps that each train policies of their own, shown when they have been run.
        let rl_sweeps: [(&str, &str, &[(&str, &str)]); 2] = [
            (
                "Learners side by side",
                "Math-Shepherd: PPO with per-step PRM rewards takes GSM8K from 77.9% to 84.1%, with the outcome reward alone to 81.8%",
                &[
                    (
                        "learner_reward",
                        "every learner for the pipeline's RL iterations from the run's initialised policy, PPO's step rewards from the learned PRM",
                    ),
                    (
                        "learners_numbers30",
                        "every learner for 100 iterations from one initialised policy on numbers up to 30, PPO's step rewards from the exact step labels",
                    ),
                ],
            ),
            (
                "More RL compute, problems the policy has not memorised, a longer initialisation",
                "o1's pass@1 rises about linearly in log(train-time RL compute); Yue et al.: RL lowers pass@k at large k",
                &[
                    ("rl_length", "GRPO for 20 and 100 iterations, with and without Dr. GRPO"),
                    (
                        "rl_problem_space",
                        "100 GRPO iterations on numbers up to 10, a space small enough for the training lines to repeat each problem, and on numbers up to 20 (the table gives the training lines per distinct problem, counted from each run's data)",
                    ),
                    (
                        "rl_init_length",
                        "100 GRPO iterations from initialisations of different lengths (the table's `pipeline.init.steps`)",
                    ),
                ],
            ),
        ];
        for (heading, published, sweeps) in rl_sweeps {
            writeln!(out, "### {heading}\n\nPublished: {published}.\n")?;
            for (name, what) in sweeps {
                writeln!(out, "From the `{name}` sweep ({what}):\n")?;
                sweep_table(ctx, name, &mut out)?;
            }
        }
        figures.insert("learn".into(), json!(true));
    }

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
