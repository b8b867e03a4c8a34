//! Section 3: test-time compute, every searcher over a ladder of budgets.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Report, figure, num, pct, pct_with_range, points_with_ci, sampling_note, sweep_table};
use crate::plots::{Chart, Series};
use crate::stages::Context;

pub(super) fn section(report: &mut Report) -> anyhow::Result<()> {
    let Report { ctx, r, out, figures } = report;
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
        search_plots(ctx, search, out)?;
        // The run's own searcher first: chosen in the config before the held-out side was
        // read, its figure carries no selection; the best of all curves is picked after.
        for (key, what) in [
            ("run_searcher_at_top_budget", "The run's searcher (`[search]`)"),
            (
                "best_at_top_budget",
                "The most accurate searcher at the largest budget (picked on these problems, so its figure is optimistic)",
            ),
        ] {
            let top = &search[key];
            if !top.is_object() {
                continue;
            }
            let gain = &top["gain_over_greedy"];
            writeln!(
                out,
                "{what}: {} at budget {}, {}{}.\n",
                top["searcher"].as_str().unwrap_or("?"),
                top["budget"],
                pct_with_range(&top["accuracy"], &top["low"], &top["high"]),
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
        sweep_table(ctx, "searcher_budget", out)?;
        figures.insert("search".into(), json!(true));
    }

    Ok(())
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
    figure(
        ctx,
        out,
        ("test_time_scaling.png", "test-time scaling"),
        &[chart],
        (900, 560),
    )?;
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
            x_label: "FLOPs per problem (log)".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series,
            y_range: Some((0.0, 1.0)),
            x_categories: Vec::new(),
        });
    }
    figure(
        ctx,
        out,
        ("test_time_scaling_quintiles.png", "per quintile"),
        &panels,
        (420, 380),
    )
}
