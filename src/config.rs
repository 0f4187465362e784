//! Loading the settings: built-in defaults (`config/default.toml`, compiled in), then the file
//! given with `--config`, then `MS1__SECTION__KEY` environment variables. Unknown keys and bad
//! values are refused with a message that names the key.

use ms1_actors::settings::redact_url;
use ms1_actors::Settings;
use std::path::Path;

/// The commented defaults, as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Settings that could not be loaded, with the place and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Loads and validates the settings.
pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
    load_from(file, std::env::vars())
}

/// [`load`] with an explicit environment (tests).
pub fn load_from(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    use config::{Config, Environment, File, FileFormat};
    let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
    let mut origin = "built-in defaults".to_string();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        // Check the file on its own first, so an error names the file, not the merge.
        let own = Config::builder()
            .add_source(File::from_str(&text, FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
        own.try_deserialize::<Settings>()
            .map_err(|e| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
        builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        origin = path.display().to_string();
    }
    let env: Vec<(String, String)> = env.into_iter().collect();
    let azure = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let ms1: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("MS1__"))
        .cloned()
        .collect();
    if !ms1.is_empty() {
        origin.push_str(" + MS1__* environment");
    }
    builder = builder.add_source(
        Environment::with_prefix("MS1")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("graph.mailboxes")
            .try_parsing(true)
            .source(Some(ms1)),
    );
    let mut settings: Settings =
        builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
    settings.graph.apply_workload_identity_environment(azure);
    settings
        .validate()
        .and_then(|()| ms1_actors::clients::oauth::check_credential(&settings))
        .map_err(|e| ConfigError::Invalid {
            origin,
            message: e.to_string(),
        })?;
    Ok(settings)
}

/// The settings as TOML for `check-config` (it runs as `ExecStartPre`, so this lands in the
/// journal): every [`Secret`](ms1_actors::settings::Secret) renders as `<redacted>`, URLs
/// with their password masked (`redis://:****@host:6379`).
pub fn redacted(settings: &Settings) -> String {
    let mut s = settings.clone();
    s.redis.url = redact_url(&s.redis.url);
    s.ms4.base_url = redact_url(&s.ms4.base_url);
    // What is in use: an empty base_url/authority is the cloud's.
    let single = s.graph.single_tenant();
    s.graph.base_url = redact_url(&single.base_url());
    s.graph.authority = redact_url(&single.authority());
    for t in &mut s.graph.tenants {
        t.base_url = redact_url(&t.base_url());
        t.authority = redact_url(&t.authority());
    }
    s.webhook.public_url = redact_url(&s.webhook.public_url);
    toml::to_string_pretty(&s).unwrap_or_else(|e| format!("(cannot render: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn redis_passwords_and_the_client_key_are_redacted() {
        let s = load_from(
            None,
            env(&[
                (
                    "MS1__REDIS__URL",
                    "rediss://user:in-url@redis.example.com:6380",
                ),
                ("MS1__REDIS__PASSWORD", "in-url"),
                ("MS1__REDIS__CLIENT_KEY", "env:REDIS_CLIENT_KEY"),
            ]),
        );
        // The client key names an unset variable: validation says so, naming the key.
        let e = s.unwrap_err().to_string();
        assert!(e.contains("redis.client_key"), "{e}");
        let mut s = load_from(
            None,
            env(&[
                (
                    "MS1__REDIS__URL",
                    "rediss://user:in-url@redis.example.com:6380",
                ),
                ("MS1__REDIS__PASSWORD", "in-url"),
            ]),
        )
        .unwrap();
        s.redis.client_key = "-----BEGIN PRIVATE KEY-----".into();
        let shown = redacted(&s);
        assert!(!shown.contains("in-url"), "{shown}");
        assert!(!shown.contains("BEGIN PRIVATE KEY"), "{shown}");
        assert!(
            shown.contains("rediss://user:****@redis.example.com:6380"),
            "{shown}"
        );
    }

    #[test]
    fn imap_sources_come_from_the_file_and_their_secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[imap.sources]]\nname = \"gmail\"\nhost = \"imap.gmail.com\"\n\
username = \"u@x.example\"\nauth = \"xoauth2\"\ntoken_url = \"https://oauth2.googleapis.com/token\"\n\
client_id = \"cid\"\nclient_secret = \"very-secret\"\nrefresh_token = \"env:PATH\"\n\
after_delivery = \"seen\"\n",
        )
        .unwrap();
        let s = load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(s.imap.sources.len(), 1);
        assert_eq!(s.imap.sources[0].port(), 993);
        assert_eq!(
            s.imap.sources[0].refresh_token.expose(),
            std::env::var("PATH").unwrap(),
            "env: references are resolved when the settings are read"
        );
        let shown = redacted(&s);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains(&std::env::var("PATH").unwrap()), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_secret_reference_that_does_not_resolve_names_its_key() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[ms4]\napi_key = \"env:MS1_TEST_SURELY_UNSET_KEY\"").unwrap();
        let err = load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("ms4.api_key"), "{err}");
        assert!(err.contains("MS1_TEST_SURELY_UNSET_KEY"), "{err}");
        let err = load_from(
            None,
            env(&[("MS1__CONTROL__TOKEN", "file:/nonexistent/ms1-token")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("control.token"), "{err}");
    }

    #[test]
    fn check_config_masks_url_passwords() {
        let mut s = Settings::default();
        s.redis.url = "redis://:hunter2@127.0.0.1:6379".into();
        let out = redacted(&s);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("redis://:****@127.0.0.1:6379"), "{out}");
    }

    #[test]
    fn a_workload_identity_reads_the_azure_variables_and_its_token_file_must_be_readable() {
        let dir = std::env::temp_dir().join(format!("ms1-wi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("azure-identity-token");
        let with_file = |path: &std::path::Path| {
            load_from(
                None,
                env(&[
                    ("MS1__GRAPH__CREDENTIAL", "workload_identity"),
                    ("MS1__GRAPH__MAILBOXES", "a@contoso.example"),
                    ("AZURE_TENANT_ID", "tenant-1"),
                    ("AZURE_CLIENT_ID", "client-1"),
                    ("AZURE_FEDERATED_TOKEN_FILE", &path.display().to_string()),
                ]),
            )
        };
        let e = with_file(&file).unwrap_err().to_string();
        assert!(e.contains("graph.federated_token_file"), "{e}");
        std::fs::write(&file, "sa-token-not-shown\n").unwrap();
        let s = with_file(&file).unwrap();
        assert_eq!(
            (s.graph.tenant_id.as_str(), s.graph.client_id.as_str()),
            ("tenant-1", "client-1")
        );
        assert!(!redacted(&s).contains("sa-token-not-shown"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_toml_matches_the_built_in_defaults() {
        let parsed = load_from(None, env(&[])).unwrap();
        assert_eq!(parsed, Settings::default());
    }

    #[test]
    fn the_commented_tenants_example_of_default_toml_loads_as_written() {
        // Uncomment the example: it must be a working configuration, secrets kept out of
        // check-config's output.
        let example: String = DEFAULT_TOML
            .lines()
            .skip_while(|l| !l.starts_with("# [[graph.tenants]]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        // The certificate files and systemd credentials of the example are not on this
        // machine: sign in with inline secrets instead.
        let example = example
            .replace(
                "credential = \"certificate\"",
                "client_secret = \"not-shown-either\"",
            )
            .replace("credential:fabrikam-secret", "not-shown")
            .replace("credential:contoso-app-key", "not-shown-key");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(f, "{example}").unwrap();
        let s = load_from(Some(f.path()), env(&[])).unwrap();
        let tenants = s.graph.tenants();
        assert_eq!(
            tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["contoso", "fabrikam-gov"]
        );
        assert_eq!(
            tenants[1].token_url(),
            "https://login.microsoftonline.us/00000000-0000-0000-0000-000000000002/oauth2/v2.0/token"
        );
        assert_eq!(s.graph.all_mailboxes().len(), 3);
        let shown = redacted(&s);
        assert!(!shown.contains("not-shown"), "{shown}");
        assert!(shown.contains("https://graph.microsoft.us/v1.0"), "{shown}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[ms4]\nbatch_size = 20\nbase_url = \"https://file.example\""
        )
        .unwrap();
        let s = load_from(
            Some(f.path()),
            env(&[
                ("MS1__MS4__BASE_URL", "https://env.example:9"),
                ("MS1__MS4__INCLUDE_RAW", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.ms4.batch_size, 20);
        assert_eq!(s.ms4.base_url, "https://env.example:9");
        assert!(s.ms4.include_raw);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[ms4]\nbatch_sise = 20").unwrap();
        let err = load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("batch_sise"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn an_unknown_environment_key_is_refused_by_name() {
        let err = load_from(None, env(&[("MS1__MS4__BATCH_SISE", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_sise"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load_from(None, env(&[("MS1__MS4__BATCH_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = load_from(None, env(&[("MS1__MS4__MAX_IN_FLIGHT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ms4.max_in_flight"), "{err}");
        let err = load_from(None, env(&[("MS1__LOG__FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml"), "{err}");
    }

    #[test]
    fn mailboxes_come_from_the_environment_as_a_list() {
        let s = load_from(
            None,
            env(&[
                ("MS1__GRAPH__MAILBOXES", "a@x.example,b@x.example"),
                ("MS1__GRAPH__TENANT_ID", "t"),
                ("MS1__GRAPH__CLIENT_ID", "c"),
                ("MS1__GRAPH__CLIENT_SECRET", "s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.graph.mailboxes, vec!["a@x.example", "b@x.example"]);
        let err = load_from(None, env(&[("MS1__GRAPH__MAILBOXES", "a@x.example")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("graph.tenant_id"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut s = Settings::default();
        s.ms4.api_key = "k-123".into();
        s.graph.client_secret = "gs-456".into();
        let out = redacted(&s);
        assert!(!out.contains("k-123"));
        assert!(!out.contains("gs-456"));
        assert!(!format!("{s:?}").contains("gs-456"));
        assert!(out.contains("<redacted>"));
    }
}
