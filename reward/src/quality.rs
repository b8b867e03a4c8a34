//! How good a reward model or a labelling method is, against exact truth: step AUROC,
//! first-error localisation F1 (ProcessBench), calibration (expected calibration error and a
//! reliability table), and label accuracy.

use serde::{Deserialize, Serialize};

/// The area under the ROC curve of `scores` for binary `labels` (ties count half). `None`
/// when one class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties, then the Mann-Whitney U statistic.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += rank;
            }
        }
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// A 95% interval for a statistic by the bootstrap over groups: each group (a problem's steps
/// or samples, which are not independent of each other) is resampled whole, 1000 times, and
/// `statistic` is computed on the resampled groups. `None` when there are no groups or the
/// statistic is undefined on some resample.
pub fn bootstrap_over_groups<G>(
    groups: &[G],
    seed: u64,
    statistic: impl Fn(&[&G]) -> Option<f64>,
) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if groups.is_empty() {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(1000);
    let mut picked: Vec<&G> = Vec::with_capacity(groups.len());
    for _ in 0..1000 {
        picked.clear();
        picked.extend((0..groups.len()).map(|_| &groups[rng.random_range(0..groups.len())]));
        values.push(statistic(&picked)?);
    }
    values.sort_by(f64::total_cmp);
    Some((values[25], values[974]))
}

/// The scores and labels of several groups, concatenated.
fn concatenated(groups: &[&(Vec<f32>, Vec<bool>)]) -> (Vec<f32>, Vec<bool>) {
    let scores = groups.iter().flat_map(|g| g.0.iter().copied()).collect();
    let labels = groups.iter().flat_map(|g| g.1.iter().copied()).collect();
    (scores, labels)
}

/// A 95% interval for [`auroc`], bootstrap over groups ([`bootstrap_over_groups`]); `None`
/// when a resample never has both classes.
pub fn auroc_interval(groups: &[(Vec<f32>, Vec<bool>)], seed: u64) -> Option<(f64, f64)> {
    bootstrap_over_groups(groups, seed, |picked| {
        let (scores, labels) = concatenated(picked);
        auroc(&scores, &labels)
    })
}

/// A 95% interval for the expected calibration error ([`calibration`]), bootstrap over groups.
pub fn calibration_interval(groups: &[(Vec<f32>, Vec<bool>)], bins: usize, seed: u64) -> Option<(f64, f64)> {
    bootstrap_over_groups(groups, seed, |picked| {
        let (scores, labels) = concatenated(picked);
        Some(calibration(&scores, &labels, bins).0)
    })
}

/// A 95% interval for [`first_error_f1`]'s F1, bootstrap over groups of traces (a problem's
/// samples).
pub fn first_error_f1_interval(groups: &[Vec<(Vec<f32>, Vec<bool>)>], threshold: f32, seed: u64) -> Option<(f64, f64)> {
    bootstrap_over_groups(groups, seed, |picked| {
        Some(first_error_f1(picked.iter().flat_map(|g| g.iter()), threshold).f1)
    })
}

/// ProcessBench-style first-error localisation: per trace, the index of the first wrong step
/// (or none). The prediction is the first step scored below `threshold`. F1 is the harmonic
/// mean of the accuracy on traces with an error and on traces without one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FirstErrorF1 {
    pub f1: f64,
    pub accuracy_erroneous: f64,
    pub accuracy_correct: f64,
    pub erroneous: usize,
    pub correct: usize,
}

pub fn first_error_f1<'t>(traces: impl IntoIterator<Item = &'t (Vec<f32>, Vec<bool>)>, threshold: f32) -> FirstErrorF1 {
    let (mut err_total, mut err_right, mut ok_total, mut ok_right) = (0, 0, 0, 0);
    for (scores, labels) in traces {
        let truth = labels.iter().position(|&l| !l);
        let predicted = scores.iter().position(|&s| s < threshold);
        match truth {
            Some(_) => {
                err_total += 1;
                err_right += usize::from(predicted == truth);
            }
            None => {
                ok_total += 1;
                ok_right += usize::from(predicted.is_none());
            }
        }
    }
    let a = err_right as f64 / err_total.max(1) as f64;
    let b = ok_right as f64 / ok_total.max(1) as f64;
    FirstErrorF1 {
        f1: if a + b > 0.0 { 2.0 * a * b / (a + b) } else { 0.0 },
        accuracy_erroneous: a,
        accuracy_correct: b,
        erroneous: err_total,
        correct: ok_total,
    }
}

/// One bin of a reliability table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub mean_score: f64,
    pub positive_rate: f64,
    pub count: usize,
}

/// Expected calibration error over `bins` equal-width bins, and the table.
pub fn calibration(scores: &[f32], labels: &[bool], bins: usize) -> (f64, Vec<CalibrationBin>) {
    let bins = bins.max(1);
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); bins];
    for (&s, &l) in scores.iter().zip(labels) {
        let b = ((s.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1);
        sums[b].0 += f64::from(s);
        sums[b].1 += f64::from(u8::from(l));
        sums[b].2 += 1;
    }
    let n = scores.len().max(1) as f64;
    let mut ece = 0.0;
    let table = sums
        .into_iter()
        .filter(|b| b.2 > 0)
        .map(|(s, p, c)| {
            let mean = s / c as f64;
            let rate = p / c as f64;
            ece += (mean - rate).abs() * c as f64 / n;
            CalibrationBin {
                mean_score: mean,
                positive_rate: rate,
                count: c,
            }
        })
        .collect();
    (ece, table)
}

/// Share of `predicted` labels equal to `truth`, with false positive and false negative rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelAccuracy {
    pub accuracy: f64,
    /// Wrong steps labelled right, among wrong steps.
    pub false_positive_rate: f64,
    /// Right steps labelled wrong, among right steps.
    pub false_negative_rate: f64,
    pub n: usize,
}

pub fn label_accuracy(predicted: &[bool], truth: &[bool]) -> LabelAccuracy {
    let (mut agree, mut fp, mut neg, mut fneg, mut pos) = (0, 0, 0, 0, 0);
    for (&p, &t) in predicted.iter().zip(truth) {
        agree += usize::from(p == t);
        if t {
            pos += 1;
            fneg += usize::from(!p);
        } else {
            neg += 1;
            fp += usize::from(p);
        }
    }
    LabelAccuracy {
        accuracy: agree as f64 / predicted.len().max(1) as f64,
        false_positive_rate: fp as f64 / neg.max(1) as f64,
        false_negative_rate: fneg as f64 / pos.max(1) as f64,
        n: predicted.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_matches_pairwise_counting() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4];
        let labels = [false, false, true, true, true];
        // Pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,*)=2 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 4.5/6
        assert!((auroc(&scores, &labels).expect("both classes") - 4.5 / 6.0).abs() < 1e-12);
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn first_error_and_calibration() {
        let traces = vec![
            (vec![0.9, 0.2, 0.1], vec![true, false, false]), // right: first error at 1
            (vec![0.9, 0.8], vec![true, true]),              // right: none
            (vec![0.3, 0.9], vec![true, false]),             // wrong: predicted 0, truth 1
        ];
        let f = first_error_f1(&traces, 0.5);
        assert_eq!((f.erroneous, f.correct), (2, 1));
        assert!((f.accuracy_erroneous - 0.5).abs() < 1e-12 && (f.accuracy_correct - 1.0).abs() < 1e-12);
        assert!((f.f1 - 2.0 / 3.0).abs() < 1e-12);
        let (ece, table) = calibration(&[0.05, 0.95, 0.95, 0.95], &[false, true, true, false], 10);
        assert_eq!(table.len(), 2);
        assert!((ece - (0.05 * 0.25 + (0.95 - 2.0 / 3.0) * 0.75)).abs() < 1e-6);
        let a = label_accuracy(&[true, true, false, false], &[true, false, false, true]);
        assert!((a.accuracy - 0.5).abs() < 1e-12 && (a.false_positive_rate - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_f1_and_calibration_intervals_bracket_their_estimates() {
        // 30 problems of three traces; the third trace's error is found in half the problems.
        let groups: Vec<Vec<(Vec<f32>, Vec<bool>)>> = (0..30)
            .map(|g| {
                let third = if g % 2 == 0 { vec![0.3, 0.9] } else { vec![0.9, 0.3] };
                vec![
                    (vec![0.9, 0.2], vec![true, false]),
                    (vec![0.9, 0.8], vec![true, true]),
                    (third, vec![true, false]),
                ]
            })
            .collect();
        let traces: Vec<(Vec<f32>, Vec<bool>)> = groups.iter().flatten().cloned().collect();
        let f1 = first_error_f1(&traces, 0.5).f1;
        let (lo, hi) = first_error_f1_interval(&groups, 0.5, 3).expect("interval");
        assert!(lo <= f1 && f1 <= hi && lo < hi, "{lo} {f1} {hi}");
        let steps: Vec<(Vec<f32>, Vec<bool>)> = groups
            .iter()
            .map(|g| {
                (
                    g.iter().flat_map(|t| t.0.clone()).collect(),
                    g.iter().flat_map(|t| t.1.clone()).collect(),
                )
            })
            .collect();
        let (scores, labels) = concatenated(&steps.iter().collect::<Vec<_>>());
        let ece = calibration(&scores, &labels, 10).0;
        let (lo, hi) = calibration_interval(&steps, 10, 3).expect("interval");
        assert!(lo <= ece && ece <= hi && lo < hi, "{lo} {ece} {hi}");
        assert_eq!(first_error_f1_interval(&[], 0.5, 3), None);
    }

    #[test]
    fn the_auroc_interval_brackets_the_estimate_and_narrows_with_more_groups() {
        // Scores that separate the classes imperfectly: a right step scores i/n + 0.3, a wrong
        // one i/n, in groups of four steps.
        let groups = |n: usize| -> Vec<(Vec<f32>, Vec<bool>)> {
            (0..n)
                .map(|g| {
                    let x = (g % 10) as f32 / 10.0;
                    (vec![x + 0.3, x, x + 0.35, x + 0.05], vec![true, false, true, false])
                })
                .collect()
        };
        let flat = |gs: &[(Vec<f32>, Vec<bool>)]| -> (Vec<f32>, Vec<bool>) {
            (
                gs.iter().flat_map(|g| g.0.clone()).collect(),
                gs.iter().flat_map(|g| g.1.clone()).collect(),
            )
        };
        let (small, large) = (groups(20), groups(400));
        let (s, l) = flat(&small);
        let estimate = auroc(&s, &l).expect("both classes");
        let (lo, hi) = auroc_interval(&small, 1).expect("interval");
        assert!(lo <= estimate && estimate <= hi && lo < hi, "{lo} {estimate} {hi}");
        let (lo2, hi2) = auroc_interval(&large, 1).expect("interval");
        assert!(hi2 - lo2 < hi - lo, "[{lo2}, {hi2}] is not narrower than [{lo}, {hi}]");
        // One class only: no interval.
        assert_eq!(auroc_interval(&[(vec![0.1, 0.2], vec![true, true])], 1), None);
        assert_eq!(auroc_interval(&[], 1), None);
    }
}
