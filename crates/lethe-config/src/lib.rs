//! Settings of Lethe's processes, layered with the `config` crate: built-in defaults, then a
//! TOML file (`--config FILE` or `LETHE_CONFIG`), then `LETHE_<KEY>` environment variables,
//! then command-line flags. One name per setting in every layer: key `lease_seconds`,
//! variable `LETHE_LEASE_SECONDS`, flag `--lease-seconds`.
//!
//! A settings type is a serde struct with `#[serde(deny_unknown_fields)]` whose `Default` is
//! the built-in defaults; its flags are a struct of `Option`s that serialises only what was
//! given. Unknown keys in a file are errors that name them; environment variables are read
//! only for known keys, so one environment can serve several processes.
//!
//! [`logging`] is how every process logs (`log_format`), and the W3C trace context that ties
//! one request's lines together across processes; [`otlp`] exports spans to an OpenTelemetry
//! collector (`otlp_endpoint`).

pub mod logging;
pub mod otlp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat, Map, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The prefix of every environment variable Lethe reads.
pub const ENV_PREFIX: &str = "LETHE_";
/// The variable that names a configuration file when `--config` is not given.
pub const CONFIG_FILE_VARIABLE: &str = "LETHE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    /// An error about one key, for the validation a settings type does after loading.
    pub fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// The environment variable of a key: `lease_seconds` → `LETHE_LEASE_SECONDS`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// The flag of a key: `lease_seconds` → `--lease-seconds`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Layers `T::default()`, the file (`file`, else `$LETHE_CONFIG`), the `LETHE_` variables of
/// `T`'s keys found in `environment`, and `flags` (only the fields it serialises).
pub fn load<T, F>(
    file: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
    flags: &F,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
    F: Serialize,
{
    let defaults = Config::try_from(&T::default())
        .map_err(|e| ConfigError::Invalid(format!("built-in defaults: {e}")))?;
    let mut keys: BTreeSet<String> = config::Source::collect(&defaults)
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .into_keys()
        .collect();
    // `config` leaves out keys whose default is an empty list; their variables count too.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(T::default()) {
        keys.extend(fields.into_iter().map(|(key, _)| key));
    }
    let environment: BTreeMap<String, String> = environment.into_iter().collect();
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| environment.get(CONFIG_FILE_VARIABLE).map(PathBuf::from));
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Parsed here first so that a syntax error names the file, not a source index.
        toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
    }
    let mut from_env: Map<String, Value> = Map::new();
    for key in &keys {
        if let Some(value) = environment.get(&env_name(key)) {
            from_env.insert(key.clone(), Value::from(value.clone()));
        }
    }
    let overrides = Config::try_from(flags)
        .map_err(|e| ConfigError::Invalid(format!("command-line flags: {e}")))?;
    let layered = builder
        .add_source(EnvironmentLayer(from_env))
        .add_source(overrides)
        .build()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    layered.try_deserialize::<T>().map_err(|e| match &file {
        Some(path) => ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        },
        None => ConfigError::Invalid(e.to_string()),
    })
}

/// `LETHE_` variables as a source. Values stay strings: the settings type's field types
/// parse them, as the `config` crate does for its own environment source with parsing on.
#[derive(Debug, Clone)]
struct EnvironmentLayer(Map<String, Value>);

impl config::Source for EnvironmentLayer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The settings as a TOML file would hold them, for `dump-config`; keys without a value are
/// listed as comments so that every key shows. Callers redact secrets first (see
/// [`redact_url_password`]).
pub fn to_toml<T: Serialize>(settings: &T) -> Result<String, ConfigError> {
    let mut text = toml::to_string(settings).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(settings) {
        for (key, value) in fields {
            if value.is_null() {
                text.push_str(&format!("# {key} = (unset)\n"));
            }
        }
    }
    Ok(text)
}

/// Deserialises a list of strings from a TOML array or, as a variable or a flag gives it, from
/// one string of items separated by commas or whitespace. Use with
/// `#[serde(deserialize_with = "lethe_config::string_list")]`.
pub fn string_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Items;

    impl<'de> serde::de::Visitor<'de> for Items {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a list of strings, or one string of items separated by commas")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(Items)
}

/// `postgres://user:secret@host/db` → `postgres://user:********@host/db`; URLs without a
/// password come back unchanged.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        listen: String,
        lease_seconds: f64,
        name: Option<String>,
        cpu: bool,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                listen: "127.0.0.1:1".into(),
                lease_seconds: 30.0,
                name: None,
                cpu: false,
            }
        }
    }

    #[derive(Default, Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        lease_seconds: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu: Option<bool>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let toml = file("listen = \"0.0.0.0:2\"\nlease_seconds = 10\nname = \"from-file\"\n");
        let only_file: Settings = load(Some(toml.path()), env(&[]), &Flags::default()).unwrap();
        assert_eq!(only_file.listen, "0.0.0.0:2");
        assert_eq!(only_file.lease_seconds, 10.0);
        assert!(!only_file.cpu, "a default the file left alone");

        let environment = env(&[("LETHE_LEASE_SECONDS", "20"), ("LETHE_CPU", "true")]);
        let with_env: Settings =
            load(Some(toml.path()), environment.clone(), &Flags::default()).unwrap();
        assert_eq!(with_env.lease_seconds, 20.0);
        assert!(with_env.cpu);
        assert_eq!(with_env.name.as_deref(), Some("from-file"));

        let flags = Flags {
            lease_seconds: Some(40.0),
            cpu: Some(false),
        };
        let with_flags: Settings = load(Some(toml.path()), environment, &flags).unwrap();
        assert_eq!(with_flags.lease_seconds, 40.0);
        assert!(!with_flags.cpu);
        assert_eq!(with_flags.listen, "0.0.0.0:2");
    }

    #[test]
    fn the_file_can_come_from_lethe_config() {
        let toml = file("lease_seconds = 12\n");
        let path = toml.path().to_str().unwrap();
        let settings: Settings =
            load(None, env(&[("LETHE_CONFIG", path)]), &Flags::default()).unwrap();
        assert_eq!(settings.lease_seconds, 12.0);
    }

    #[test]
    fn errors_name_the_key_or_the_file() {
        let typo = file("lease_secnds = 3\n");
        let error = load::<Settings, _>(Some(typo.path()), env(&[]), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("lease_secnds"), "{error}");
        assert!(error.contains(typo.path().to_str().unwrap()), "{error}");

        let error = load::<Settings, _>(
            None,
            env(&[("LETHE_LEASE_SECONDS", "soon")]),
            &Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("lease_seconds"), "{error}");

        let broken = file("listen = \n");
        let error = load::<Settings, _>(Some(broken.path()), env(&[]), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(broken.path().to_str().unwrap()), "{error}");

        let missing = Path::new("/nonexistent/lethe.toml");
        let error = load::<Settings, _>(Some(missing), env(&[]), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/lethe.toml"), "{error}");
    }

    #[test]
    fn unrelated_lethe_variables_are_ignored() {
        let settings: Settings = load(
            None,
            env(&[
                ("LETHE_ARTIFACTS", "file:///x"),
                ("LETHE_LISTEN", "[::]:3"),
                ("LETHE_NAME", "from-env"),
            ]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(settings.listen, "[::]:3");
        assert_eq!(
            settings.name.as_deref(),
            Some("from-env"),
            "a key without a default"
        );
    }

    #[test]
    fn names_follow_one_rule() {
        assert_eq!(env_name("lease_seconds"), "LETHE_LEASE_SECONDS");
        assert_eq!(flag_name("lease_seconds"), "--lease-seconds");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url_password("postgres://lethe:s3cret@db:5432/lethe"),
            "postgres://lethe:********@db:5432/lethe"
        );
        assert_eq!(
            redact_url_password("postgres://lethe@127.0.0.1/lethe"),
            "postgres://lethe@127.0.0.1/lethe"
        );
        assert_eq!(redact_url_password("not a url"), "not a url");
        let dumped = to_toml(&Settings::default()).unwrap();
        assert!(dumped.contains("lease_seconds = 30.0"), "{dumped}");
        assert!(dumped.contains("# name = (unset)"), "{dumped}");
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Listed {
        #[serde(deserialize_with = "string_list")]
        prefixes: Vec<String>,
    }

    #[derive(Default, Serialize)]
    struct ListedFlags {
        #[serde(skip_serializing_if = "Option::is_none")]
        prefixes: Option<String>,
    }

    #[test]
    fn a_list_is_an_array_in_a_file_and_one_string_elsewhere() {
        let expected = |items: &[&str]| Listed {
            prefixes: items.iter().map(|s| s.to_string()).collect(),
        };
        let toml = file("prefixes = [\"s3://a/\", \"file:///b/\"]\n");
        let from_file: Listed = load(Some(toml.path()), env(&[]), &ListedFlags::default()).unwrap();
        assert_eq!(from_file, expected(&["s3://a/", "file:///b/"]));

        let environment = env(&[("LETHE_PREFIXES", " s3://c/, file:///d/ s3://e/")]);
        let from_env: Listed = load(
            Some(toml.path()),
            environment.clone(),
            &ListedFlags::default(),
        )
        .unwrap();
        assert_eq!(from_env, expected(&["s3://c/", "file:///d/", "s3://e/"]));

        let flags = ListedFlags {
            prefixes: Some("s3://f/".into()),
        };
        let from_flag: Listed = load(Some(toml.path()), environment, &flags).unwrap();
        assert_eq!(from_flag, expected(&["s3://f/"]));

        let unset: Listed = load(None, env(&[]), &ListedFlags::default()).unwrap();
        assert_eq!(unset, Listed::default());
    }
}
