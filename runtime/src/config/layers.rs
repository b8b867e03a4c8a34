//! Layering a config: the file (syntax checked with line and column), `PONDER_*` environment
//! variables, `--set key=value` overrides; reading one section or one component table alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use config::{Config, Environment, File, FileFormat, ValueKind};
use serde_json::Value;

use crate::config_error::{ConfigError, ConfigErrors, deserialize_all, line_column};
use crate::registry::{Registry, Spec, TaskCategory};

use super::RunConfig;

pub(super) fn json_to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(json_to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

fn toml_to_config(value: &toml::Value) -> ValueKind {
    match value {
        toml::Value::String(s) => ValueKind::String(s.clone()),
        toml::Value::Integer(i) => ValueKind::I64(*i),
        toml::Value::Float(f) => ValueKind::Float(*f),
        toml::Value::Boolean(b) => ValueKind::Boolean(*b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => ValueKind::Array(
            items
                .iter()
                .map(|v| config::Value::new(None, toml_to_config(v)))
                .collect(),
        ),
        toml::Value::Table(t) => ValueKind::Table(
            t.iter()
                .map(|(k, v)| (k.clone(), config::Value::new(None, toml_to_config(v))))
                .collect(),
        ),
    }
}

/// Reads an override's value as TOML (`8`, `0.5`, `true`, `"x"`, `[1, 2]`), else as a string.
pub fn parse_override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The layers of one config: the file's text, environment variables and `--set` overrides.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub file: Option<PathBuf>,
    pub text: String,
    pub env: Vec<(String, String)>,
    pub overrides: Vec<String>,
}

impl Layers {
    pub fn from_file(path: &Path) -> Result<Layers, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_path_buf()),
            errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
        })?;
        Ok(Layers {
            file: Some(path.to_path_buf()),
            text,
            env: Vec::new(),
            overrides: Vec::new(),
        })
    }

    /// Adds this process's `PONDER_*__*` variables.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(k, _)| k.starts_with("PONDER_") && k.contains("__"))
            .collect();
        self
    }

    pub fn with_overrides(mut self, overrides: &[String]) -> Self {
        self.overrides = overrides.to_vec();
        self
    }

    /// Merges the layers into one value. TOML syntax errors carry line and column.
    pub fn merge(&self) -> Result<Value, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: self.file.clone(),
            errors,
        };
        if let Err(e) = self.text.parse::<toml::Table>() {
            let location = e.span().map(|s| line_column(&self.text, s.start));
            return Err(fail(vec![ConfigError {
                path: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
                location,
            }]));
        }
        let mut builder = Config::builder()
            .add_source(File::from_str(&self.text, FileFormat::Toml))
            .add_source(
                Environment::with_prefix("PONDER")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(self.env.iter().cloned().collect())),
            );
        let mut errors = Vec::new();
        for set in &self.overrides {
            let Some((key, raw)) = set.split_once('=') else {
                errors.push(ConfigError::new(
                    "",
                    format!("--set `{set}`: expected KEY=VALUE, e.g. search.width=8"),
                ));
                continue;
            };
            let value = config::Value::new(None, toml_to_config(&parse_override_value(raw)));
            builder = match builder.clone().set_override(key.trim(), value) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(ConfigError::new(key.trim(), format!("--set: {e}")));
                    builder
                }
            };
        }
        if !errors.is_empty() {
            return Err(fail(errors));
        }
        builder
            .build()
            .and_then(|c| c.try_deserialize::<Value>())
            .map_err(|e| fail(vec![ConfigError::new("", e.to_string())]))
    }

    /// Merges and validates, locating errors in the file.
    pub fn load(&self, registry: &Registry) -> Result<RunConfig, ConfigErrors> {
        let value = self.merge()?;
        let mut run = RunConfig::from_value(&value, registry).map_err(|e| e.locate(self.file.clone(), &self.text))?;
        let warnings = ConfigErrors {
            file: None,
            errors: std::mem::take(&mut run.warnings),
        };
        run.warnings = warnings.locate(self.file.clone(), &self.text).errors;
        Ok(run)
    }
}

/// Reads one component table on its own (for commands such as `ponder datagen` that take a
/// kind name and overrides rather than a whole run).
pub fn parse_task(
    registry: &Registry,
    kind: &str,
    overrides: &[(String, toml::Value)],
) -> Result<Arc<dyn Spec<TaskCategory>>, ConfigErrors> {
    let mut table = serde_json::Map::new();
    table.insert("kind".into(), Value::String(kind.to_string()));
    for (k, v) in overrides {
        let json = serde_json::to_value(v).unwrap_or(Value::Null);
        table.insert(k.clone(), json);
    }
    registry
        .tasks
        .parse(&Value::Object(table), "task")
        .map_err(|errors| ConfigErrors { file: None, errors })
}

/// Deserializes a free-standing section with all errors collected (for stage settings).
pub fn read_section<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> Result<T, ConfigErrors> {
    deserialize_all(value, path).map_err(|errors| ConfigErrors { file: None, errors })
}
