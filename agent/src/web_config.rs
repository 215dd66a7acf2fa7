//! The endpoint's security: the web config file of Prometheus'
//! exporter-toolkit (`--web.config.file`), so scrape configs that already
//! speak TLS and basic authentication to node_exporter work unchanged.
//!
//! Reads the YAML file and the certificate and key it names (relative paths
//! are relative to the file, as in exporter-toolkit). Supports
//! `tls_server_config` (`cert_file`, `key_file`, `min_version`) and
//! `basic_auth_users` (bcrypt hashes). Other keys are errors, not ignored:
//! a security setting that silently does nothing is worse than a refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    min_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{}: {what}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

/// What the endpoint enforces.
pub struct Security {
    tls: Option<TlsAcceptor>,
    users: BTreeMap<String, String>,
    /// Credentials that verified, so a scraper every second does not pay
    /// bcrypt's deliberate cost (tens of milliseconds) every time. Bounded.
    verified: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.len())
            .finish()
    }
}

/// Successful credentials remembered at once.
const VERIFIED_CACHE: usize = 16;

/// The outcome of an `Authorization` check.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
}

impl Security {
    /// No TLS, no authentication: the default.
    pub fn open() -> Self {
        Self {
            tls: None,
            users: BTreeMap::new(),
            verified: Mutex::new(Vec::new()),
        }
    }

    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.into(),
            source,
        })?;
        let file: File = serde_yaml::from_str(&text).map_err(|source| WebConfigError::Yaml {
            path: path.into(),
            source,
        })?;
        let invalid = |what: &str, reason: String| WebConfigError::Invalid {
            path: path.into(),
            what: what.into(),
            reason,
        };
        for (user, hash) in &file.basic_auth_users {
            if !hash.starts_with("$2") {
                return Err(invalid(&format!("basic_auth_users.{user}"), "not a bcrypt hash".into()));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            None => None,
            Some(tls) => {
                let cert_file = dir.join(&tls.cert_file);
                let key_file = dir.join(&tls.key_file);
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
                    .and_then(Iterator::collect)
                    .map_err(|e| invalid("tls_server_config.cert_file", format!("{}: {e}", cert_file.display())))?;
                if certs.is_empty() {
                    return Err(invalid(
                        "tls_server_config.cert_file",
                        format!("{}: no certificate", cert_file.display()),
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(&key_file)
                    .map_err(|e| invalid("tls_server_config.key_file", format!("{}: {e}", key_file.display())))?;
                let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_deref() {
                    None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
                    Some("TLS13") => &[&rustls::version::TLS13],
                    Some(other) => {
                        return Err(invalid(
                            "tls_server_config.min_version",
                            format!("{other:?}: use TLS12 or TLS13"),
                        ));
                    }
                };
                let config =
                    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_protocol_versions(versions)
                        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
                        .map_err(|e| invalid("tls_server_config", e.to_string()))?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
        };
        Ok(Self {
            tls,
            users: file.basic_auth_users,
            verified: Mutex::new(Vec::new()),
        })
    }

    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Checks an `Authorization` header value when users are configured.
    pub fn check(&self, authorization: Option<&str>) -> Access {
        if self.users.is_empty() {
            return Access::Allowed;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Access::Denied;
        };
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.iter().any(|(u, p)| *u == user && *p == password) {
            return Access::Allowed;
        }
        let valid = self
            .users
            .get(&user)
            .is_some_and(|hash| bcrypt::verify(&password, hash).unwrap_or(false));
        if !valid {
            return Access::Denied;
        }
        if verified.len() == VERIFIED_CACHE {
            verified.remove(0);
        }
        verified.push((user, password));
        Access::Allowed
    }
}

/// The user and password of a `Basic` authorization header.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hostwatch-web-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn basic_auth_with_bcrypt_and_a_cache() {
        let dir = scratch("auth");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(&dir, "web.yml", &format!("basic_auth_users:\n  prometheus: {hash}\n"));
        let security = Security::load(&path).unwrap();
        let header = |user: &str, password: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        };
        assert_eq!(security.check(Some(&header("prometheus", "s3cret"))), Access::Allowed);
        assert_eq!(
            security.check(Some(&header("prometheus", "s3cret"))),
            Access::Allowed,
            "from the cache"
        );
        assert_eq!(security.check(Some(&header("prometheus", "wrong"))), Access::Denied);
        assert_eq!(security.check(Some(&header("nobody", "s3cret"))), Access::Denied);
        assert_eq!(security.check(None), Access::Denied);
        assert_eq!(security.check(Some("Bearer abc")), Access::Denied);
        assert_eq!(Security::open().check(None), Access::Allowed);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = scratch("bad");
        let unknown = write(
            &dir,
            "a.yml",
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
        );
        assert!(
            Security::load(&unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown field `client_auth_type`")
        );
        let plain = write(&dir, "b.yml", "basic_auth_users:\n  admin: hunter2\n");
        assert!(
            Security::load(&plain)
                .unwrap_err()
                .to_string()
                .ends_with("basic_auth_users.admin: not a bcrypt hash")
        );
        let missing = write(
            &dir,
            "c.yml",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
        );
        assert!(
            Security::load(&missing)
                .unwrap_err()
                .to_string()
                .contains("tls_server_config.cert_file")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
