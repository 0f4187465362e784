//! Secret settings: API keys, tokens, passwords.
//!
//! A [`Secret`] holds the resolved value and shows it to no one: its `Debug`, `Display` and
//! `Serialize` print `<redacted>` (or nothing, when empty), so a settings dump, a log line or
//! `check-config` cannot leak it; the code that needs the value calls [`Secret::expose`].
//!
//! In the configuration a secret is written as one of:
//! - the value itself (`api_key = "k-123"`), e.g. from `MS1__MS4__API_KEY`;
//! - `env:NAME`: the environment variable `NAME` (e.g. from systemd's `EnvironmentFile=`);
//! - `file:/path`: the file's content, trailing newline removed;
//! - `credential:NAME`: the systemd credential `NAME`, i.e. `$CREDENTIALS_DIRECTORY/NAME`
//!   (`LoadCredential=NAME:/etc/ms1-ingestor/NAME` in the unit).
//!
//! The reference is resolved once, when the settings are loaded: a variable that is not set or
//! a file that cannot be read stops the start with an error naming the setting. A secret read
//! from a file remembers the file, so a setting that follows rotation (the Graph certificate's
//! key) can [`reread`](Secret::reread) it without a restart.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as.
pub(crate) const REDACTED: &str = "<redacted>";

/// A resolved secret value that never prints itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// The file the value was read from (`file:` and `credential:` references), for
    /// [`Secret::reread`]; `None` for a value given inline or through the environment.
    file: Option<String>,
}

impl Secret {
    /// A secret holding `value` as it is (no `env:`/`file:`/`credential:` resolution).
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            file: None,
        }
    }

    /// Resolves a configured reference (value, `env:NAME`, `file:/path`, `credential:NAME`).
    pub fn resolve(reference: &str) -> Result<Self, String> {
        let file = secret_file(reference)?;
        let value = match &file {
            Some(path) => read_secret_file(path)?,
            None => resolve_secret(reference)?,
        };
        Ok(Self { value, file })
    }

    /// The value as it is now: read again from its file (a rotated key), or the value itself
    /// when it did not come from a file. The error names the file, never the value.
    pub fn reread(&self) -> Result<Self, String> {
        match &self.file {
            Some(path) => Ok(Self {
                value: read_secret_file(path)?,
                file: self.file.clone(),
            }),
            None => Ok(self.clone()),
        }
    }

    /// The value, for the one place that sends it (a header, a login, a form field).
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.value.is_empty() {
            ""
        } else {
            REDACTED
        }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let reference = String::deserialize(d)?;
        Secret::resolve(&reference).map_err(serde::de::Error::custom)
    }
}

/// A secret setting's value: itself, `env:NAME` (an environment variable), `file:/path` (the
/// file's content, trailing newline removed) or `credential:NAME` (the systemd credential,
/// `$CREDENTIALS_DIRECTORY/NAME`). The error says what is missing, never the value.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
    } else if let Some(path) = secret_file(value)? {
        read_secret_file(&path)
    } else {
        Ok(value.to_string())
    }
}

/// The file a `file:/path` or `credential:NAME` reference names; `None` for the others.
fn secret_file(value: &str) -> Result<Option<String>, String> {
    if let Some(path) = value.strip_prefix("file:") {
        Ok(Some(path.to_string()))
    } else if let Some(name) = value.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!(
                "credential:{name}: name a systemd credential (LoadCredential=NAME:…), without '/'"
            ));
        }
        let dir = std::env::var("CREDENTIALS_DIRECTORY").map_err(|_| {
            format!(
                "credential:{name}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with LoadCredential={name}:/path; outside systemd use file:/path)"
            )
        })?;
        Ok(Some(format!("{}/{name}", dir.trim_end_matches('/'))))
    } else {
        Ok(None)
    }
}

fn read_secret_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("cannot read {path}: {e}"))
}

/// `url` with the password of its user-info replaced by `****` (`redis://:****@host:6379`);
/// a comma-separated list (cluster seeds) has each URL redacted. For logs and `check-config`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some(scheme_end) = one.find("://") else {
                return one.to_string();
            };
            let rest = &one[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let Some(at) = rest[..authority_end].rfind('@') else {
                return one.to_string();
            };
            // `user:password@` keeps the user; a lone `x@` may be a password: masked whole.
            let shown = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:****"),
                None => "****".to_string(),
            };
            format!("{}{shown}{}", &one[..scheme_end + 3], &rest[at..])
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_redacted_and_exposes_on_request() {
        let s = Secret::new("k-123");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(s.to_string(), REDACTED);
        assert_eq!(s.expose(), "k-123");
        assert_eq!(Secret::default().to_string(), "");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("k-123"), "{json}");
    }

    #[test]
    fn secrets_resolve_from_env_files_and_systemd_credentials() {
        let dir = std::env::temp_dir().join(format!("ms1-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ms4-key"), "from-credential\n").unwrap();
        std::fs::write(dir.join("plain"), "from-file\r\n").unwrap();
        let file = format!("file:{}/plain", dir.display());
        assert_eq!(resolve_secret(&file).unwrap(), "from-file");
        assert_eq!(resolve_secret("plain").unwrap(), "plain");
        // Only this test touches CREDENTIALS_DIRECTORY.
        std::env::set_var("CREDENTIALS_DIRECTORY", &dir);
        assert_eq!(
            resolve_secret("credential:ms4-key").unwrap(),
            "from-credential"
        );
        assert!(resolve_secret("credential:../plain").is_err());
        let e = resolve_secret("credential:absent").unwrap_err();
        assert!(e.contains("absent"), "{e}");
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = resolve_secret("credential:ms4-key").unwrap_err();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        let e = resolve_secret("env:MS1_TEST_SURELY_UNSET_SECRET").unwrap_err();
        assert!(e.contains("MS1_TEST_SURELY_UNSET_SECRET"), "{e}");
    }

    #[test]
    fn a_secret_from_a_file_is_reread_after_rotation_and_an_inline_one_stays() {
        let path = std::env::temp_dir().join(format!("ms1-reread-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let s = Secret::resolve(&format!("file:{}", path.display())).unwrap();
        assert_eq!(s.expose(), "first");
        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(s.reread().unwrap().expose(), "second");
        std::fs::remove_file(&path).unwrap();
        let e = s.reread().unwrap_err();
        assert!(e.contains("ms1-reread") && !e.contains("second"), "{e}");
        assert_eq!(Secret::new("inline").reread().unwrap().expose(), "inline");
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact_url("redis://:pw@10.0.0.1:6379/0"),
            "redis://:****@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:p@ss@h:6380"),
            "rediss://app:****@h:6380"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://pw@h:6379"), "redis://****@h:6379");
        assert_eq!(
            redact_url("redis://:a@n1:1,redis://:b@n2:2"),
            "redis://:****@n1:1,redis://:****@n2:2"
        );
        assert_eq!(redact_url("unix:///run/r.sock"), "unix:///run/r.sock");
        assert_eq!(redact_url(""), "");
    }
}
