//! The statistics' tests: trends, difficulty prediction, the compute-optimal reference.

use super::*;

/// The labels of the best-of-N curves in these tests.
const BEST_OF_N: [&str; 3] = ["majority", "best-of-n-orm", "best-of-n-weighted"];

/// A curve point with the given per-problem outcomes, 50 tokens per generation.
fn point_with(budget: usize, outcomes: Vec<bool>) -> Point {
    let accuracy = outcomes.iter().filter(|&&ok| ok).count() as f64 / outcomes.len() as f64;
    Point {
        budget,
        tokens_per_problem: 50.0 * budget as f64,
        accuracy,
        low: accuracy,
        high: accuracy,
        quintiles: vec![accuracy; 5],
        computed_per_generated: 1.0,
        per_problem: outcomes.into_iter().map(|ok| (ok, 50 * budget as u64)).collect(),
        flops_per_problem: 50.0 * budget as f64 * 1e6,
        flops_per_token: 1e6,
    }
}

/// `n` problems, every `right_every`-th one solved.
fn outcomes(n: usize, right_every: usize) -> Vec<bool> {
    (0..n).map(|i| i % right_every == 0).collect()
}

/// `n` problems, the first `right` solved (so smaller counts are subsets of larger ones).
fn first_right(n: usize, right: usize) -> Vec<bool> {
    (0..n).map(|i| i < right).collect()
}

#[test]
fn a_one_problem_dip_is_not_a_significant_fall_but_a_collapse_is() {
    let n = 64;
    let dipping = [(1, 16), (4, 40), (16, 39), (64, 44)].map(|(b, right)| point_with(b, first_right(n, right)));
    let t = budget_trend(&dipping, 3);
    assert!(
        (t["rise"]["difference"].as_f64().unwrap_or(0.0) - 28.0 / 64.0).abs() < 1e-9,
        "{t}"
    );
    assert_eq!(t["rise"]["from_budget"], 1);
    assert_eq!(t["rise"]["to_budget"], 64);
    assert_eq!(t["rises_significantly"], true, "{t}");
    assert_eq!(t["largest_fall"]["from_budget"], 4, "{t}");
    assert_eq!(t["largest_fall"]["to_budget"], 16, "{t}");
    assert!((t["largest_fall"]["difference"].as_f64().unwrap_or(0.0) + 1.0 / 64.0).abs() < 1e-9);
    assert_eq!(t["falls_significantly"], false, "{t}");

    let collapsing = [(1, 40), (4, 10)].map(|(b, right)| point_with(b, first_right(n, right)));
    let t = budget_trend(&collapsing, 3);
    assert_eq!(t["falls_significantly"], true, "{t}");
    assert_eq!(t["rises_significantly"], false, "{t}");

    let rising = [(1, 10), (4, 20)].map(|(b, right)| point_with(b, first_right(n, right)));
    assert_eq!(budget_trend(&rising, 3)["largest_fall"], Value::Null);
}

#[test]
fn predicted_quintiles_follow_the_ease_and_the_prediction_is_charged() {
    let ease = [0.9, 0.1, 0.5, 0.7, 0.3];
    assert_eq!(quintiles_by_ease(&ease), vec![0, 4, 2, 1, 3]);
    let n = 10;
    let curves = vec![("mcts".to_string(), vec![point_with(4, outcomes(n, 2))])];
    let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
    let free = compute_optimal(&curves, &quintile_of, &[4]);
    let charged = compute_optimal_charged(&curves, &quintile_of, &[4], &vec![5e6; n]);
    assert!((charged[0].flops_per_problem - free[0].flops_per_problem - 5e6).abs() < 1e-3);
    assert_eq!(charged[0].scores, free[0].scores);
}

#[test]
fn the_reference_is_the_strongest_best_of_n_at_the_top_budget() {
    let n = 100;
    let curves = vec![
        (
            "mcts".to_string(),
            vec![point_with(1, outcomes(n, 1)), point_with(64, outcomes(n, 1))],
        ),
        (
            "majority".to_string(),
            vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 3))],
        ),
        (
            "best-of-n-orm".to_string(),
            vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 2))],
        ),
        (
            "best-of-n-weighted".to_string(),
            vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 3))],
        ),
    ];
    let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
    let optimal = compute_optimal(&curves, &quintile_of, &[1, 64]);
    let v = compute_optimal_vs_reference(&curves, &BEST_OF_N, &optimal, 7);
    assert_eq!(v["reference"]["searcher"], "best-of-n-orm", "{v}");
    assert!(
        (v["reference"]["flops_per_problem"].as_f64().unwrap_or(0.0) - 3200.0 * 1e6).abs() < 1.0,
        "{v}"
    );
}

#[test]
fn a_flat_reference_makes_the_saving_not_significant() {
    let n = 100;
    // Best-of-N weighted stays at 50% from budget 1 to 64; majority is as good at budget 1.
    let curves = vec![
        (
            "best-of-n-weighted".to_string(),
            vec![point_with(1, outcomes(n, 2)), point_with(64, outcomes(n, 2))],
        ),
        (
            "majority".to_string(),
            vec![point_with(1, outcomes(n, 2)), point_with(64, outcomes(n, 2))],
        ),
    ];
    let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
    let optimal = compute_optimal(&curves, &quintile_of, &[1, 64]);
    let v = compute_optimal_vs_reference(&curves, &BEST_OF_N, &optimal, 7);
    let gain = &v["reference"]["gain_over_budget"];
    assert_eq!(gain["significant"], false, "{v}");
    assert_eq!(gain["difference"].as_f64(), Some(0.0));
    assert_eq!(v["first_match"]["budget"], 1, "{v}");
    assert!(v["first_match"]["token_ratio"].as_f64().is_some_and(|r| r > 60.0));
}

#[test]
fn a_rising_reference_is_significant_and_the_match_comes_where_the_accuracy_is() {
    let n = 100;
    // Best-of-N weighted rises from 25% to 100%; majority reaches 100% already at budget 16.
    let curves = vec![
        (
            "best-of-n-weighted".to_string(),
            vec![
                point_with(1, outcomes(n, 4)),
                point_with(16, outcomes(n, 2)),
                point_with(64, outcomes(n, 1)),
            ],
        ),
        (
            "majority".to_string(),
            vec![
                point_with(1, outcomes(n, 4)),
                point_with(16, outcomes(n, 1)),
                point_with(64, outcomes(n, 1)),
            ],
        ),
    ];
    let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
    let optimal = compute_optimal(&curves, &quintile_of, &[1, 16, 64]);
    assert_eq!(
        optimal[1].accuracy(),
        1.0,
        "majority is chosen at budget 16 in every fold"
    );
    let v = compute_optimal_vs_reference(&curves, &BEST_OF_N, &optimal, 7);
    let gain = &v["reference"]["gain_over_budget"];
    assert_eq!(gain["significant"], true, "{v}");
    assert!((gain["difference"].as_f64().unwrap_or(0.0) - 0.75).abs() < 1e-9);
    let ci = gain["ci"].as_array().expect("interval");
    assert!(ci[0].as_f64() <= gain["difference"].as_f64() && gain["difference"].as_f64() <= ci[1].as_f64());
    assert_eq!(v["first_match"]["budget"], 16, "{v}");
    assert!((v["first_match"]["token_ratio"].as_f64().unwrap_or(0.0) - 4.0).abs() < 1e-9);
    assert!(
        (v["first_match"]["flops_ratio"].as_f64().unwrap_or(0.0) - 4.0).abs() < 1e-9,
        "{v}"
    );
    let json = optimal[1].to_json(7);
    assert!(json["low"].as_f64() <= json["accuracy"].as_f64() && json["accuracy"].as_f64() <= json["high"].as_f64());
}
