//! Section 4: reinforcement learning, before and after, and the RL sweeps.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Report, ci, figure, pct, points_with_ci, sweep_table};
use crate::plots::{Chart, Series};
use crate::stages::Context;

pub(super) fn section(report: &mut Report) -> anyhow::Result<()> {
    let Report { ctx, r, out, figures } = report;
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
            figure(
                ctx,
                out,
                ("train_time_scaling.png", "train-time scaling"),
                &[Chart {
                    title: "Train-time scaling".into(),
                    x_label: "RL compute, FLOPs (log)".into(),
                    y_label: "greedy pass@1 (held-out)".into(),
                    log_x: true,
                    series: vec![series, Series::horizontal("before RL", start)],
                    y_range: Some((0.0, 1.0)),
                    x_categories: Vec::new(),
                }],
                (800, 500),
            )?;
        }
        // Sweeps that each train policies of their own, shown when they have been run.
        let rl_sweeps: [(&str, &str, &[(&str, &str)]); 3] = [
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
                "The 2025 learners at equal RL compute, and process rewards without step labels",
                "DAPO: 50 points on AIME 2024 from Qwen2.5-32B base, above DeepSeek-R1-Zero-Qwen-32B with half its training steps; GSPO: more stable and efficient than GRPO, notably for mixture-of-experts models; PRIME: +15.1% on average over the SFT model with an implicit PRM learned online from outcome labels; ProRL: with KL control and reference resets, prolonged RL beats the base model at every pass@k, even where the base never succeeds",
                &[(
                    "learners_2025",
                    "GRPO, Dr. GRPO, DAPO, GSPO, REINFORCE++, PPO with the outcome reward and PPO with step rewards from the exact labels, the Monte-Carlo PRM and PRIME's implicit PRM, and GRPO with ProRL's resets, each stopped at the same RL FLOPs; one row per run (its seed named), then each learner's mean and range over the seeds it has finished; the PRIME rows give its step AUROC against the exact labels before and after RL beside the Monte-Carlo PRM's",
                )],
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
                sweep_table(ctx, name, out)?;
                if *name == "learners_2025"
                    && let Some(room) = room_for_step_rewards(ctx)?
                {
                    figures.insert("room_for_step_rewards".into(), room.clone());
                    writeln!(out, "{}\n", describe_room(&room))?;
                }
            }
        }
        figures.insert("learn".into(), json!(true));
    }

    Ok(())
}

/// How much a dense step reward can tell a learner that the outcome reward does not, counted
/// on the policy traces the reward stage labelled (`reward/prm_labels.jsonl`, sampled from the
/// initialised policy on training problems) with the task's exact step labels: a step whose
/// exact label equals its trace's outcome carries nothing the outcome does not. `None` when
/// the run has no such traces.
fn room_for_step_rewards(ctx: &Context) -> anyhow::Result<Option<Value>> {
    let path = ctx.dir.path("reward/prm_labels.jsonl");
    if !path.exists() {
        return Ok(None);
    }
    let problems: std::collections::HashMap<String, ponder_datagen::Problem> = ctx
        .train_examples()?
        .into_iter()
        .map(|e| (e.problem.prompt.clone(), e.problem))
        .collect();
    let (mut traces, mut failed, mut steps, mut unlike_outcome, mut failed_after_right_step) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for example in ponder_reward::datasets::read_process(&path)? {
        let (imported, trace, _, _) = example.split();
        let Some(problem) = problems.get(&imported.prompt) else {
            continue;
        };
        let exact = ctx.task.check_steps(problem, &trace.steps)?;
        let correct = ctx.task.verify(problem, &trace)?.correct;
        traces += 1;
        steps += exact.len() as u64;
        unlike_outcome += exact.iter().filter(|&&right| right != correct).count() as u64;
        if !correct {
            failed += 1;
            failed_after_right_step += u64::from(exact.first() == Some(&true));
        }
    }
    if traces == 0 {
        return Ok(None);
    }
    Ok(Some(json!({
        "traces": traces,
        "steps_per_trace": steps as f64 / traces as f64,
        "steps": steps,
        "steps_unlike_outcome": unlike_outcome,
        "failed_traces": failed,
        "failed_after_right_first_step": failed_after_right_step,
    })))
}

fn describe_room(room: &Value) -> String {
    let n = |k: &str| room[k].as_u64().unwrap_or(0);
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    format!(
        "Where step rewards can add to the outcome: of the {} traces the reward stage sampled from the initialised policy ({:.2} steps each), {} of {} steps ({:.1}%) have an exact label other than their trace's outcome, and {} of the {} failed traces ({:.1}%) went wrong only after a right first step. Every other step is labelled as its trace's outcome is, so there a step reward, however exact, only says earlier what the outcome reward says at the end; dense rewards can beat the outcome reward only through the steps counted here.",
        n("traces"),
        room["steps_per_trace"].as_f64().unwrap_or(0.0),
        n("steps_unlike_outcome"),
        n("steps"),
        share(n("steps_unlike_outcome"), n("steps")),
        n("failed_after_right_first_step"),
        n("failed_traces"),
        share(n("failed_after_right_first_step"), n("failed_traces")),
    )
}
