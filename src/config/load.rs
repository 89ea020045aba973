//! Loading: the TOML file, then the `READSTATES_<SECTION>_<KEY>`
//! environment overrides laid over it, then validation.

use std::path::Path;

use super::{Config, ConfigError};

/// The environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "READSTATES_";

/// The sections of [`Config`]: the first word after the prefix of an
/// override must name one of them.
const SECTIONS: [&str; 12] = [
    "server", "store", "cache", "flush", "limits", "metrics", "log", "scylla", "tls", "auth",
    "cluster", "watch",
];

/// Settings whose environment overrides are taken verbatim as strings: a
/// password such as `007` must not become the integer 7.
const VERBATIM_OVERRIDES: [(&str, &str); 4] = [
    ("scylla", "username"),
    ("scylla", "password"),
    ("cluster", "instance_id"),
    ("cluster", "advertise_addr"),
];

impl Config {
    /// Loads the file at `path` (defaults only when `None`), applies the
    /// `READSTATES_*` environment overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies overrides from `(name, value)` pairs (only
    /// those starting with [`ENV_PREFIX`] and naming a known section are
    /// considered) and validates.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|section| {
                let key = rest.strip_prefix(section)?.strip_prefix('_')?;
                Some((*section, key))
            }) else {
                // Other READSTATES_* variables (e.g. test settings) are not ours.
                continue;
            };
            if key.is_empty() {
                return Err(ConfigError::UnknownOverride(name));
            }
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(ConfigError::UnknownOverride(name));
            };
            let value = if VERBATIM_OVERRIDES.contains(&(section, key)) {
                toml::Value::String(value)
            } else {
                parse_env_value(&value)
            };
            section_table.insert(key.to_owned(), value);
        }
        let config: Config = toml::Value::Table(table).try_into()?;
        config.validate()?;
        Ok(config)
    }
}

/// Reads an override as an integer, bool or float when it looks like one,
/// else as a string.
fn parse_env_value(value: &str) -> toml::Value {
    if let Ok(integer) = value.replace('_', "").parse::<i64>() {
        return toml::Value::Integer(integer);
    }
    if let Ok(boolean) = value.parse::<bool>() {
        return toml::Value::Boolean(boolean);
    }
    if let Ok(float) = value.parse::<f64>() {
        return toml::Value::Float(float);
    }
    toml::Value::String(value.to_owned())
}
