//! Section 2: the reward models the run trained, against exact step labels.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Report, figure, pct, pct_with_range, three_digits_with_ci};
use crate::plots::{Chart, Series};
use crate::stages::Context;

/// The best-of-N columns: key in the reward stage's results, heading.
const BEST_OF_N: [(&str, &str); 7] = [
    ("prm-last", "PRM (last)"),
    ("prm-min", "PRM (min)"),
    ("prm-product", "PRM (product)"),
    ("prm-weighted", "PRM weighted vote"),
    ("orm", "ORM"),
    ("majority", "majority"),
    ("pass@n", "pass@N"),
];

pub(super) fn section(report: &mut Report) -> anyhow::Result<()> {
    let Report { ctx, r, out, figures } = report;
    let reward = &r["reward"];
    let (prm, orm, likelihood) = (&reward["prm"], &reward["orm"], &reward["likelihood"]);
    if prm.is_null() && orm.is_null() {
        return Ok(());
    }
    writeln!(out, "## 2. Reward models against exact step labels\n")?;
    monte_carlo_labels(ctx, reward, out)?;
    writeln!(out, "| model | measure | ponder |\n|---|---|---|")?;
    // The trained weight of a model's likelihood feature, when it has one.
    let feature = |model: &str| {
        reward["training"][model]["likelihood_weight"]
            .as_f64()
            .filter(|w| *w != 0.0)
            .map(|w| format!("likelihood feature, weight {w:.2}"))
    };
    let with_likelihood = feature("prm").is_some() || feature("orm").is_some();
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
        feature("prm").map_or(String::new(), |f| format!("; {f}"))
    );
    let orm_name = format!(
        "ORM ({policy_traces} policy traces with outcome labels{})",
        feature("orm").map_or(String::new(), |f| format!("; {f}"))
    );
    // (model, measure, record, key): the value at `key`, its interval at `key_ci`.
    let mut rows = Vec::new();
    if !prm.is_null() {
        rows.extend([
            (prm_name.as_str(), "step AUROC vs exact labels", prm, "step_auroc"),
            ("PRM", "first-error F1 (ProcessBench style)", prm, "first_error_f1"),
            ("PRM", "expected calibration error", prm, "calibration_ece"),
            ("PRM", "outcome AUROC (answer score)", prm, "outcome_auroc"),
        ]);
    }
    if !orm.is_null() {
        rows.push((orm_name.as_str(), "outcome AUROC", orm, "auroc"));
    }
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
            if with_likelihood {
                " Here the reward models start from that ranking (their logit adds a learned multiple of their backbone's log-likelihood of the trace so far) and train from there."
            } else {
                ""
            }
        )?;
    }
    writeln!(out)?;
    let matched = if prm.is_null() || orm.is_null() {
        String::new()
    } else if synthetic == 0 {
        format!(
            "Data-matched: the PRM and the ORM learn from the same {policy_traces} policy traces, from the same starting weights for the same steps; only the labels differ (one per step against one per trace)."
        )
    } else {
        format!(
            "Not data-matched: the PRM also learns from {synthetic} synthetic traces with exact step labels that the ORM does not see (`pipeline.reward.synthetic_traces = 0` gives the data-matched pair)."
        )
    };
    writeln!(
        out,
        "Best-of-N over the same samples (Lightman et al., best-of-1860 on MATH: PRM 78.2%, ORM 72.4%, majority 69.6%). {matched}\n"
    )?;
    best_of_n(ctx, reward, out)?;
    figures.insert("reward".into(), json!(true));
    Ok(())
}

/// Monte-Carlo label accuracy against exact labels, when the stage measured it.
fn monte_carlo_labels(ctx: &Context, reward: &Value, out: &mut String) -> anyhow::Result<()> {
    let Some(mc) = reward["mc_label_accuracy"].as_object().filter(|m| !m.is_empty()) else {
        return Ok(());
    };
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
    figure(
        ctx,
        out,
        ("mc_label_accuracy.png", "MC label accuracy"),
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
        (700, 450),
    )
}

/// The best-of-N table and plot, with a column for each selection the stage measured.
fn best_of_n(ctx: &Context, reward: &Value, out: &mut String) -> anyhow::Result<()> {
    let curve = reward["best_of_n_curve"].as_array().cloned().unwrap_or_default();
    let columns: Vec<(&str, &str)> = BEST_OF_N
        .into_iter()
        .filter(|(key, _)| curve.iter().any(|row| !row["accuracy"][*key].is_null()))
        .collect();
    let headings: Vec<&str> = columns.iter().map(|c| c.1).collect();
    writeln!(
        out,
        "| N | {} |\n|---|{}",
        headings.join(" | "),
        "---|".repeat(columns.len())
    )?;
    let mut lines: Vec<Series> = columns.iter().map(|(key, _)| Series::new(*key, Vec::new())).collect();
    for row in &curve {
        let n = row["n"].as_u64().unwrap_or(0);
        let cells: Vec<String> = columns
            .iter()
            .map(|(key, _)| {
                let e = &row["accuracy"][*key];
                pct_with_range(&e["value"], &e["low"], &e["high"])
            })
            .collect();
        writeln!(out, "| {n} | {} |", cells.join(" | "))?;
        for (s, (key, _)) in lines.iter_mut().zip(&columns) {
            s.points
                .push((n as f64, row["accuracy"][*key]["value"].as_f64().unwrap_or(f64::NAN)));
        }
    }
    let title = match (reward["prm"].is_null(), reward["orm"].is_null()) {
        (false, false) => "PRM vs ORM vs majority",
        (false, true) => "PRM vs majority",
        _ => "ORM vs majority",
    };
    figure(
        ctx,
        out,
        ("prm_orm_majority.png", title),
        &[Chart {
            title: title.into(),
            x_label: "N samples (log)".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series: lines,
            y_range: Some((0.0, 1.0)),
            x_categories: Vec::new(),
        }],
        (800, 500),
    )
}
