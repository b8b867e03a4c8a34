//! The component registry: kind names mapped to the config type that reads them and builds the
//! component. Built-in kinds are registered by [`Registry::builtin`]; a third-party crate adds
//! its own with a `pub fn register(registry: &mut Registry) -> anyhow::Result<()>` that its
//! binary calls (an explicit call also guarantees the crate is linked; `docs/extending.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config_error::{ConfigError, deserialize_all};

/// A family of components: what a kind builds and what building needs.
pub trait Category: 'static {
    /// The TOML section name, e.g. `search`.
    const NAME: &'static str;
    /// What a kind of this category builds, e.g. `dyn Searcher`.
    type Built: ?Sized;
    /// What building needs beyond the kind's own settings.
    type Context;
    /// What a kind tells the stages about itself besides building (what it can be trained
    /// from, how its budgets nest); the default says nothing.
    type Capabilities: Default;
}

/// The settings of one kind: a serde struct (`deny_unknown_fields`, every field defaulted)
/// that validates itself and builds the component.
pub trait Kind<C: Category>: DeserializeOwned + Serialize + Default + fmt::Debug + Send + Sync + 'static {
    /// Checks settings that types alone cannot (ranges, combinations); one message per problem,
    /// each starting with the field name.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }

    fn build(&self, context: &C::Context) -> anyhow::Result<Box<C::Built>>;

    /// What the stages may rely on besides building (see [`Category::Capabilities`]).
    fn capabilities(&self) -> C::Capabilities {
        C::Capabilities::default()
    }
}

/// A parsed and validated kind, ready to build.
pub trait Spec<C: Category>: fmt::Debug + Send + Sync {
    fn kind(&self) -> &str;
    /// The settings with every default filled in, as saved in a run's resolved config.
    fn resolved(&self) -> Value;
    fn build(&self, context: &C::Context) -> anyhow::Result<Box<C::Built>>;
    fn capabilities(&self) -> C::Capabilities;
}

#[derive(Debug)]
struct KindSpec<K> {
    kind: String,
    settings: K,
}

impl<C: Category, K: Kind<C>> Spec<C> for KindSpec<K> {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn resolved(&self) -> Value {
        let mut value = serde_json::to_value(&self.settings).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("kind".into(), Value::String(self.kind.clone()));
        }
        value
    }

    fn build(&self, context: &C::Context) -> anyhow::Result<Box<C::Built>> {
        self.settings.build(context)
    }

    fn capabilities(&self) -> C::Capabilities {
        self.settings.capabilities()
    }
}

type Parser<C> = Arc<dyn Fn(&Value, &str, &str) -> Result<Arc<dyn Spec<C>>, Vec<ConfigError>> + Send + Sync>;

pub struct Entry<C: Category> {
    pub kind: String,
    pub description: String,
    /// Where the kind comes from (`ponder` for built-ins, else the registering crate).
    pub origin: String,
    parse: Parser<C>,
    defaults: Value,
}

/// The kinds of one category.
pub struct Kinds<C: Category> {
    entries: BTreeMap<String, Entry<C>>,
}

impl<C: Category> Default for Kinds<C> {
    fn default() -> Self {
        Kinds {
            entries: BTreeMap::new(),
        }
    }
}

impl<C: Category> Kinds<C> {
    /// Registers kind `K` under `name`. A name already taken is refused: two crates must not
    /// silently replace each other's kinds.
    pub fn add<K: Kind<C>>(&mut self, name: &str, description: &str, origin: &str) -> Result<(), RegistryError> {
        if self.entries.contains_key(name) {
            return Err(RegistryError::Duplicate {
                category: C::NAME,
                kind: name.to_string(),
            });
        }
        let kind_name = name.to_string();
        let parse: Parser<C> = Arc::new(move |value: &Value, path: &str, kind: &str| {
            let settings: K = deserialize_all(value, path)?;
            let problems = settings.validate();
            if !problems.is_empty() {
                return Err(problems
                    .into_iter()
                    .map(|p| {
                        // "field: message" names the key; anything else is about the table.
                        match p.split_once(": ") {
                            Some((field, msg)) if !field.contains(' ') => {
                                ConfigError::new(format!("{path}.{field}"), msg)
                            }
                            _ => ConfigError::new(path, p),
                        }
                    })
                    .collect());
            }
            Ok(Arc::new(KindSpec {
                kind: kind.to_string(),
                settings,
            }) as Arc<dyn Spec<C>>)
        });
        self.entries.insert(
            kind_name.clone(),
            Entry {
                kind: kind_name,
                description: description.to_string(),
                origin: origin.to_string(),
                parse,
                defaults: serde_json::to_value(K::default()).unwrap_or(Value::Null),
            },
        );
        Ok(())
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry<C>> {
        self.entries.values()
    }

    pub fn defaults(&self, kind: &str) -> Option<&Value> {
        self.entries.get(kind).map(|e| &e.defaults)
    }

    /// Reads a component table (`kind` plus that kind's fields) at key path `path`.
    pub fn parse(&self, table: &Value, path: &str) -> Result<Arc<dyn Spec<C>>, Vec<ConfigError>> {
        let Value::Object(map) = table else {
            return Err(vec![ConfigError::new(path, "must be a table with a `kind` key")]);
        };
        let kind = match map.get("kind") {
            Some(Value::String(k)) => k.clone(),
            Some(other) => {
                return Err(vec![ConfigError::new(
                    format!("{path}.kind"),
                    format!("must be a string, not {other}"),
                )]);
            }
            None => {
                return Err(vec![ConfigError::new(
                    format!("{path}.kind"),
                    format!("missing; one of: {}", self.names().join(", ")),
                )]);
            }
        };
        let Some(entry) = self.entries.get(&kind) else {
            return Err(vec![ConfigError::new(
                format!("{path}.kind"),
                format!(
                    "unknown {} kind `{kind}`; registered kinds: {}",
                    C::NAME,
                    self.names().join(", ")
                ),
            )]);
        };
        let mut settings = map.clone();
        settings.remove("kind");
        (entry.parse)(&Value::Object(settings), path, &kind)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("{category} kind `{kind}` is registered twice")]
    Duplicate { category: &'static str, kind: String },
}

/// Tasks: built from their settings alone.
pub struct TaskCategory;

impl Category for TaskCategory {
    const NAME: &'static str = "task";
    type Built = dyn ponder_datagen::Task;
    type Context = ();
    type Capabilities = ();
}

/// Policies: built from their settings and, once a run has trained one, its weights.
pub struct PolicyCategory;

/// What building a policy can use.
#[derive(Clone, Debug, Default)]
pub struct PolicyContext {
    /// Weights and tokenizer the run trained (policy initialisation or RL); `None` before.
    pub trained: Option<(ponder_policy_init::HostWeights, ponder_policy_init::Tokenizer)>,
    /// Seed for fresh weights.
    pub seed: u64,
    /// Where the policy's passes run (`run.backend`).
    pub backend: ponder_policy_init::backend::Backend,
}

impl Category for PolicyCategory {
    const NAME: &'static str = "policy";
    type Built = dyn ponder_policy_init::Policy;
    type Context = PolicyContext;
    type Capabilities = PolicyCapabilities;
}

/// What a policy kind offers the stages.
#[derive(Clone, Debug, Default)]
pub struct PolicyCapabilities {
    /// The transformer settings ponder trains it with (initialisation, RL); `None` for a
    /// policy ponder can only query, such as a remote server.
    pub trainable: Option<ponder_policy_init::settings::TransformerSettings>,
}

/// Reward models: built from their settings, the task, and what the run trained.
pub struct RewardCategory;

/// What building a reward model can use.
#[derive(Clone)]
pub struct RewardContext {
    pub task: std::sync::Arc<dyn ponder_datagen::Task>,
    /// The run's directory (trained reward models live in `reward/prm`, `reward/orm`).
    pub run_dir: Option<std::path::PathBuf>,
}

impl Category for RewardCategory {
    const NAME: &'static str = "reward";
    type Built = dyn ponder_reward::RewardModel;
    type Context = RewardContext;
    type Capabilities = RewardCapabilities;
}

/// What a reward kind offers the stages.
#[derive(Clone, Debug, Default)]
pub struct RewardCapabilities {
    /// The model the reward stage trains for it; `None` for a reward that needs no training
    /// (the verifier, exact labels, a remote scorer) or one loaded from `from`.
    pub trained: Option<RewardTraining>,
}

/// A learned reward model the reward stage trains, with its own settings.
#[derive(Clone, Debug, PartialEq)]
pub enum RewardTraining {
    /// A process reward model (`reward/prm`).
    Process(ponder_reward::ProcessRewardSettings),
    /// An outcome reward model (`reward/orm`).
    Outcome(ponder_reward::OutcomeRewardSettings),
}

impl RewardTraining {
    /// The folder of the run the model is saved in (`reward/NAME`) and its name in results.
    pub fn name(&self) -> &'static str {
        match self {
            RewardTraining::Process(_) => "prm",
            RewardTraining::Outcome(_) => "orm",
        }
    }

    /// Whether two tables train the same model: everything but how scores are aggregated,
    /// which each table applies when it scores (and the rollouts of labels that need none).
    pub fn same_model(&self, other: &RewardTraining) -> bool {
        match (self, other) {
            (RewardTraining::Process(a), RewardTraining::Process(b)) => {
                let rollouts = |p: &ponder_reward::ProcessRewardSettings| {
                    (p.labels == ponder_reward::labels::LabelSource::MonteCarlo).then_some(p.rollouts)
                };
                (a.labels, rollouts(a), a.soft, a.likelihood) == (b.labels, rollouts(b), b.soft, b.likelihood)
            }
            (RewardTraining::Outcome(a), RewardTraining::Outcome(b)) => a.likelihood == b.likelihood,
            _ => false,
        }
    }
}

/// The reward models a run trains, one of each name at most, from the tables that need them
/// (key path and settings) in order: the first table's settings train the model; a later table
/// whose training settings differ is an error at its key path.
pub fn rewards_to_train<'a>(
    tables: impl IntoIterator<Item = (String, &'a dyn Spec<RewardCategory>)>,
) -> Result<Vec<RewardTraining>, Vec<ConfigError>> {
    let mut chosen: Vec<(String, RewardTraining)> = Vec::new();
    let mut errors = Vec::new();
    for (path, spec) in tables {
        let Some(training) = spec.capabilities().trained else {
            continue;
        };
        match chosen.iter().find(|(_, t)| t.name() == training.name()) {
            None => chosen.push((path, training)),
            Some((first, t)) if !t.same_model(&training) => errors.push(ConfigError::new(
                path,
                format!(
                    "a run trains one {} (reward/{}), with the settings at `{first}`; these differ from them (give this table `from` a trained model's folder, or the same settings)",
                    spec.kind(),
                    training.name()
                ),
            )),
            Some(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(chosen.into_iter().map(|(_, t)| t).collect())
    } else {
        Err(errors)
    }
}

/// Searchers: built from their settings alone.
pub struct SearchCategory;

impl Category for SearchCategory {
    const NAME: &'static str = "search";
    type Built = dyn ponder_search::Searcher;
    type Context = ();
    type Capabilities = ponder_search::SearchCapabilities;
}

/// Learners: built from their settings and a seed.
pub struct LearnCategory;

impl Category for LearnCategory {
    const NAME: &'static str = "learn";
    type Built = dyn ponder_learn::Learner;
    type Context = u64;
    type Capabilities = ();
}

/// Every category's kinds.
#[derive(Default)]
pub struct Registry {
    pub tasks: Kinds<TaskCategory>,
    pub policies: Kinds<PolicyCategory>,
    pub rewards: Kinds<RewardCategory>,
    pub searchers: Kinds<SearchCategory>,
    pub learners: Kinds<LearnCategory>,
}

impl Registry {
    /// The registry with every built-in kind.
    pub fn builtin() -> Registry {
        let mut registry = Registry::default();
        crate::builtin::register(&mut registry);
        registry
    }

    /// Every kind of every category, for `ponder list`: (category, kind, origin, description).
    pub fn listing(&self) -> Vec<(&'static str, &str, &str, &str)> {
        fn rows<C: Category>(kinds: &Kinds<C>) -> impl Iterator<Item = (&'static str, &str, &str, &str)> {
            kinds
                .entries()
                .map(|e| (C::NAME, e.kind.as_str(), e.origin.as_str(), e.description.as_str()))
        }
        rows(&self.tasks)
            .chain(rows(&self.policies))
            .chain(rows(&self.rewards))
            .chain(rows(&self.searchers))
            .chain(rows(&self.learners))
            .collect()
    }
}
