//! Configuration errors: every one carries its key path and, where the file can tell, its line
//! and column. Validation collects all of them before reporting.

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `search.width`; empty for the whole file.
    pub path: String,
    pub message: String,
    /// 1-based line and column in the config file, where known.
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
}

/// All the errors of one config, reported together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: Option<PathBuf>,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn one(error: ConfigError) -> Self {
        ConfigErrors {
            file: None,
            errors: vec![error],
        }
    }

    /// Fills in line and column for each error from the file's text.
    pub fn locate(mut self, file: Option<PathBuf>, text: &str) -> Self {
        for e in &mut self.errors {
            if e.location.is_none() {
                e.location = locate_key(text, &e.path);
            }
        }
        // In file order; errors the file cannot place (overrides, environment) last.
        self.errors
            .sort_by_key(|e| e.location.unwrap_or((usize::MAX, usize::MAX)));
        self.file = file;
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        writeln!(f, "{file}: {n} error{}", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "  ")?;
            if let Some((line, column)) = e.location {
                write!(f, "{file}:{line}:{column}: ")?;
            }
            if e.path.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Warnings, one line each: `warning: FILE:LINE:COLUMN: KEY: MESSAGE`.
pub fn warning_lines(file: &std::path::Path, warnings: &[ConfigError]) -> String {
    let file = file.display();
    let mut out = String::new();
    for w in warnings {
        let place = w
            .location
            .map_or(format!("{file}"), |(line, column)| format!("{file}:{line}:{column}"));
        out.push_str(&format!("warning: {place}: {}: {}\n", w.path, w.message));
    }
    out
}

/// Line and column (1-based) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Finds where a dotted key path (`pipeline.search_eval.searchers.1.selection`: array items by
/// index, inline tables included) is written in a TOML text: the key's line and column, or, for
/// a key the text does not have, those of the deepest part of the path it has.
pub fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    let document = toml::de::DeTable::parse(text).ok()?;
    let parts: Vec<&str> = path.split('.').collect();
    let mut found = None;
    let mut table = Some(document.get_ref());
    let mut array: Option<&toml::de::DeArray> = None;
    for part in parts {
        let value: &Spanned<DeValue> = match (table, array) {
            (Some(t), _) => match t.iter().find(|(k, _)| k.get_ref().as_ref() == part) {
                Some((key, value)) => {
                    found = Some(key.span().start);
                    value
                }
                None => break,
            },
            (None, Some(a)) => match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(value) => {
                    found = Some(value.span().start);
                    value
                }
                None => break,
            },
            (None, None) => break,
        };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    found.map(|offset| line_column(text, offset))
}

fn join_path(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) => format!("{base}.{rest}"),
    }
}

fn remove_at(value: &mut Value, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => match value {
            Value::Object(map) => map.remove(last).is_some(),
            _ => false,
        },
        [first, rest @ ..] => match value {
            Value::Object(map) => map.get_mut(first).is_some_and(|v| remove_at(v, rest)),
            Value::Array(items) => first
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .is_some_and(|v| remove_at(v, rest)),
            _ => false,
        },
    }
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Deserializes `value` into `T`, collecting every error instead of stopping at the first:
/// after each error the offending key is removed (falling back to its default) and parsing
/// goes on. `T` should default every field (`#[serde(default)]`) so removed keys are not
/// reported again as missing.
pub fn deserialize_all<T: DeserializeOwned>(value: &Value, base: &str) -> Result<T, Vec<ConfigError>> {
    let mut value = value.clone();
    let mut errors: Vec<ConfigError> = Vec::new();
    for _ in 0..64 {
        let result: Result<T, _> = serde_path_to_error::deserialize(value.clone());
        let error = match result {
            Ok(t) if errors.is_empty() => return Ok(t),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let inner = error.inner().to_string();
        let mut segments: Vec<String> = error
            .path()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != "?" && !s.is_empty())
            .collect();
        let message = inner.clone();
        // For an unknown field the reported path may or may not end with the field itself.
        if let Some(field) = unknown_field_name(&inner)
            && segments.last() != Some(&field)
        {
            segments.push(field);
        }
        let path = join_path(base, &segments.join("."));
        let removed = remove_at(&mut value, &segments);
        let repeated = errors.iter().any(|e| e.path == path && e.message == message);
        // A field removed after an earlier error comes back as "missing": not a new mistake.
        let consequence = inner.starts_with("missing field") && !errors.is_empty();
        if !repeated && !consequence {
            errors.push(ConfigError::new(path, message));
        }
        if !removed {
            break;
        }
    }
    if errors.is_empty() {
        errors.push(ConfigError::new(base, "cannot be read"));
    }
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Inner {
        depth: u32,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Outer {
        width: u32,
        name: String,
        inner: Inner,
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let value = serde_json::json!({
            "width": "wide", "colour": 3, "inner": { "depth": -1, "extra": true }
        });
        let errors = deserialize_all::<Outer>(&value, "search").expect_err("three mistakes");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        for p in [
            "search.width",
            "search.colour",
            "search.inner.depth",
            "search.inner.extra",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn keys_are_located_in_the_text() {
        let text = "[run]\nseed = 1\n\n[search]\nkind = \"beam\"\nwidth = 4\n";
        assert_eq!(locate_key(text, "search.width"), Some((6, 1)));
        assert_eq!(locate_key(text, "search"), Some((4, 2)));
        assert_eq!(locate_key(text, "run.seed"), Some((2, 1)));
        assert_eq!(locate_key(text, "nothing.here"), None);
        // A key the text lacks: the deepest part of its path the text has.
        assert_eq!(locate_key(text, "search.depth"), Some((4, 2)));
        // Array items and inline tables.
        let text = "[pipeline.eval]\nsearchers = [\n  { kind = \"mcts\" },\n  { kind = \"beam\", bogus = 1 },\n]\n";
        assert_eq!(locate_key(text, "pipeline.eval.searchers.1.bogus"), Some((4, 20)));
        assert_eq!(locate_key(text, "pipeline.eval.searchers.0"), Some((3, 3)));
        assert_eq!(locate_key(text, "pipeline.eval.searchers.0.width"), Some((3, 3)));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
