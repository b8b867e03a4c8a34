//! Collecting a sweep: `table.md`, `table.csv` and `sweep.json` with a row per run (and mean
//! and range over seeds), and a plot per metric across runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{SEED_KEY, Sweep, column_names};
use crate::config::STAGES;
use crate::plots::{Chart, Series};
use crate::run_dir::RunDir;

impl Sweep {
    /// Reads every finished run's `results.json` and writes `table.md`, `table.csv`,
    /// `sweep.json` and `plots/`. Returns the markdown table.
    pub fn collect(&self) -> anyhow::Result<String> {
        let mut rows = Vec::new();
        for r in &self.runs {
            let dir = self.dir.join(&r.name);
            // Finished: every configured stage has its record (results.json is rewritten
            // after each stage, so a run that failed part-way has one too).
            let stages: Vec<String> = r
                .config
                .get("pipeline")
                .and_then(|p| p.get("stages"))
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_else(|| STAGES.iter().map(|s| s.to_string()).collect());
            let run_dir = RunDir::new(&dir);
            let finished = stages.iter().all(|s| run_dir.has_record(s));
            let results: Option<Value> = std::fs::read_to_string(dir.join("results.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let mut row = json!({"run": r.name, "finished": finished});
            for (k, v) in &r.values {
                row[k] = serde_json::to_value(v).unwrap_or(Value::Null);
            }
            let mut figures = serde_json::Map::new();
            for (label, pointer) in &self.metrics {
                let found = results.as_ref().and_then(|res| lookup(res, pointer));
                let interval = results
                    .as_ref()
                    .and_then(|res| lookup(res, &format!("{pointer}_ci")).or_else(|| interval_beside(res, pointer)));
                figures.insert(label.clone(), json!({"value": found, "ci": interval}));
            }
            row["metrics"] = Value::Object(figures);
            rows.push(row);
        }
        let columns = column_names(&self.keys);
        let mut md = String::new();
        let header: Vec<String> = ["run".to_string()]
            .into_iter()
            .chain(columns.iter().cloned())
            .chain(self.metrics.iter().map(|(l, _)| l.clone()))
            .collect();
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}|", vec!["---"; header.len()].join("|"));
        let mut csv = String::new();
        let mut csv_header: Vec<String> = header.clone();
        for (l, _) in &self.metrics {
            csv_header.push(format!("{l} ci low"));
            csv_header.push(format!("{l} ci high"));
        }
        let _ = writeln!(
            csv,
            "{}",
            csv_header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",")
        );
        for row in &rows {
            let mut cells = vec![row["run"].as_str().unwrap_or("").to_string()];
            for k in &self.keys {
                cells.push(display_value(&row[k]));
            }
            let mut csv_cells = cells.clone();
            let mut intervals = Vec::new();
            for (label, _) in &self.metrics {
                let m = &row["metrics"][label];
                let value = m["value"].as_f64();
                let ci = m["ci"]
                    .as_array()
                    .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
                cells.push(match (value, ci) {
                    (Some(v), Some((lo, hi))) => format!("{} [{}, {}]", figure(v), figure(lo), figure(hi)),
                    (Some(v), None) => figure(v),
                    _ if !row["finished"].as_bool().unwrap_or(false) => "not run".into(),
                    _ => display_value(&m["value"]),
                });
                csv_cells.push(
                    value
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| display_value(&m["value"])),
                );
                intervals.push(ci.map(|c| c.0.to_string()).unwrap_or_default());
                intervals.push(ci.map(|c| c.1.to_string()).unwrap_or_default());
            }
            csv_cells.extend(intervals);
            let _ = writeln!(md, "| {} |", cells.join(" | "));
            let _ = writeln!(
                csv,
                "{}",
                csv_cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
            );
        }
        let over_seeds = self.over_seeds(&rows);
        for group in &over_seeds {
            let mut cells = vec![format!(
                "mean (range) over seeds {}",
                group["seeds"]
                    .as_array()
                    .map(|a| a.iter().map(display_value).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            )];
            for k in &self.keys {
                cells.push(if k == SEED_KEY {
                    String::new()
                } else {
                    display_value(&group[k])
                });
            }
            for (label, _) in &self.metrics {
                let m = &group["metrics"][label];
                cells.push(match (m["mean"].as_f64(), m["min"].as_f64(), m["max"].as_f64()) {
                    (Some(mean), Some(lo), Some(hi)) => format!("{} ({}–{})", figure(mean), figure(lo), figure(hi)),
                    _ => String::new(),
                });
            }
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        ponder_datagen::io::write_atomic(self.dir.join("table.md"), md.as_bytes())?;
        ponder_datagen::io::write_atomic(self.dir.join("table.csv"), csv.as_bytes())?;
        let summary = json!({"sweep": self.name, "keys": self.keys, "rows": rows, "over_seeds": over_seeds});
        ponder_datagen::io::write_atomic(
            self.dir.join("sweep.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        self.plot(&rows)?;
        Ok(md)
    }

    /// Where `run.seed` is swept: for every combination of the other keys with at least two
    /// finished seeds, each metric's mean, smallest and largest value over those seeds.
    fn over_seeds(&self, rows: &[Value]) -> Vec<Value> {
        if !self.keys.iter().any(|k| k == SEED_KEY) {
            return Vec::new();
        }
        let others: Vec<&String> = self.keys.iter().filter(|k| *k != SEED_KEY).collect();
        let mut groups: Vec<(Value, Vec<&Value>)> = Vec::new();
        for row in rows.iter().filter(|r| r["finished"].as_bool() == Some(true)) {
            let key = Value::Array(others.iter().map(|k| row[k.as_str()].clone()).collect());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(row),
                None => groups.push((key, vec![row])),
            }
        }
        groups
            .into_iter()
            .filter(|(_, members)| members.len() >= 2)
            .map(|(_, members)| {
                let mut group = json!({
                    "seeds": members.iter().map(|r| r[SEED_KEY].clone()).collect::<Vec<_>>(),
                });
                for k in &others {
                    group[k.as_str()] = members[0][k.as_str()].clone();
                }
                let mut figures = serde_json::Map::new();
                for (label, _) in &self.metrics {
                    let values: Vec<f64> = members
                        .iter()
                        .filter_map(|r| r["metrics"][label]["value"].as_f64())
                        .collect();
                    figures.insert(
                        label.clone(),
                        if values.len() == members.len() {
                            json!({
                                "mean": values.iter().sum::<f64>() / values.len() as f64,
                                "min": values.iter().cloned().fold(f64::INFINITY, f64::min),
                                "max": values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                                "values": values,
                            })
                        } else {
                            Value::Null
                        },
                    );
                }
                group["metrics"] = Value::Object(figures);
                group
            })
            .collect()
    }

    /// One chart per metric: the metric against the x key, a line per combination of the
    /// other keys.
    fn plot(&self, rows: &[Value]) -> anyhow::Result<()> {
        let Some(x) = &self.x else { return Ok(()) };
        let x_of = |row: &Value| scalar(&row[x]);
        let x_values: Vec<Value> = {
            let mut v: Vec<Value> = Vec::new();
            for row in rows {
                if !v.contains(&x_of(row)) {
                    v.push(x_of(row));
                }
            }
            v
        };
        let numeric = x_values.iter().all(|v| v.as_f64().is_some());
        let log_x = numeric && {
            let xs: Vec<f64> = x_values.iter().filter_map(Value::as_f64).collect();
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
            lo > 0.0 && hi / lo >= 8.0
        };
        let others: Vec<&String> = self.keys.iter().filter(|k| *k != x).collect();
        let x_name = column_names(&self.keys)
            .get(self.keys.iter().position(|k| k == x).unwrap_or(0))
            .cloned()
            .unwrap_or_else(|| x.clone());
        for (label, _) in &self.metrics {
            let mut series: BTreeMap<String, (Vec<(f64, f64)>, Vec<(f64, f64)>)> = BTreeMap::new();
            for row in rows {
                let Some(y) = row["metrics"][label]["value"].as_f64() else {
                    continue;
                };
                let position = x_values.iter().position(|v| *v == x_of(row)).unwrap_or(0);
                let xv = if numeric {
                    x_of(row).as_f64().unwrap_or(0.0)
                } else {
                    position as f64
                };
                let line: Vec<String> = others.iter().map(|k| display_value(&row[*k])).collect();
                let entry = series
                    .entry(if line.is_empty() {
                        label.clone()
                    } else {
                        line.join(", ")
                    })
                    .or_default();
                entry.0.push((xv, y));
                let ci = row["metrics"][label]["ci"]
                    .as_array()
                    .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
                entry.1.push(ci.unwrap_or((f64::NAN, f64::NAN)));
            }
            if series.is_empty() {
                continue;
            }
            let chart = Chart {
                title: format!("{}: {label}", self.name),
                x_label: x_name.clone(),
                y_label: label.clone(),
                log_x,
                series: series
                    .into_iter()
                    .map(|(name, (mut points, intervals))| {
                        let mut both: Vec<((f64, f64), (f64, f64))> = points.drain(..).zip(intervals).collect();
                        both.sort_by(|a, b| a.0.0.total_cmp(&b.0.0));
                        let (points, intervals): (Vec<_>, Vec<_>) = both.into_iter().unzip();
                        Series::new(name, points).with_intervals(intervals)
                    })
                    .collect(),
                y_range: None,
                x_categories: if numeric {
                    Vec::new()
                } else {
                    x_values.iter().map(display_value).collect()
                },
            };
            let file: String = label
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            crate::plots::draw(&self.dir.join("plots").join(format!("{file}.png")), &[chart], 720, 440)?;
        }
        Ok(())
    }
}

/// A JSON pointer where a `*` segment matches any key (the first match wins).
pub(super) fn lookup(value: &Value, pointer: &str) -> Option<Value> {
    fn walk(v: &Value, parts: &[String]) -> Option<Value> {
        let Some((first, rest)) = parts.split_first() else {
            return Some(v.clone());
        };
        if first == "*" {
            return match v {
                Value::Object(m) => m.values().find_map(|x| walk(x, rest)),
                Value::Array(a) => a.iter().find_map(|x| walk(x, rest)),
                _ => None,
            };
        }
        let next = match v {
            Value::Object(m) => m.get(first)?,
            Value::Array(a) => a.get(first.parse::<usize>().ok()?)?,
            _ => return None,
        };
        walk(next, rest)
    }
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    walk(value, &parts).filter(|v| !v.is_null())
}

/// The interval of a `{value, low, high}` figure (a paired change) that `pointer` names
/// through its `value`.
pub(super) fn interval_beside(res: &Value, pointer: &str) -> Option<Value> {
    let figure = pointer.strip_suffix("/value")?;
    Some(json!([
        lookup(res, &format!("{figure}/low"))?,
        lookup(res, &format!("{figure}/high"))?
    ]))
}

/// A one-element list stands for its element (a budget ladder of one budget, say).
fn scalar(v: &Value) -> Value {
    match v.as_array() {
        Some(a) if a.len() == 1 => a[0].clone(),
        _ => v.clone(),
    }
}

fn figure(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn display_value(v: &Value) -> String {
    match &scalar(v) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(m) => m
            .get("label")
            .or_else(|| m.get("kind"))
            .map(display_value)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
