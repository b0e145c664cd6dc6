//! Registry credentials from the `auth.json` files docker, podman and skopeo write.
//!
//! Looked up in this order (as podman does): `--authfile`, `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
//! `~/.docker/config.json`. Within a file the most specific key wins:
//! `registry/namespace/repo`, then shorter repository prefixes, then `registry`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::ImageError;
use super::reference::Reference;

/// A user name and password (or token) for HTTP basic auth / the token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credential files to consult, most important first.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(Path::new(&home).join(".config/containers/auth.json"));
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

/// Finds credentials for `reference`: in `authfile` only, when given (it must exist), or
/// in the default files.
pub fn find_credentials(
    authfile: Option<&Path>,
    reference: &Reference,
) -> Result<Option<Credentials>, ImageError> {
    if let Some(path) = authfile {
        return lookup_in_file(path, reference, true);
    }
    for path in default_auth_files() {
        if let Some(found) = lookup_in_file(&path, reference, false)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn lookup_in_file(
    path: &Path,
    reference: &Reference,
    required: bool,
) -> Result<Option<Credentials>, ImageError> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(path, "reading the credentials file", e)),
    };
    let bad = |reason: String| ImageError::Auth {
        path: path.to_path_buf(),
        reason,
    };
    let file: AuthFile =
        serde_json::from_slice(&data).map_err(|e| bad(format!("not an auth.json: {e}")))?;
    let entries: BTreeMap<String, &AuthEntry> = file
        .auths
        .iter()
        .map(|(k, v)| (normalize_key(k), v))
        .collect();
    for key in candidate_keys(reference) {
        if let Some(entry) = entries.get(&key) {
            return decode_entry(entry)
                .map(Some)
                .map_err(|reason| bad(format!("entry {key:?}: {reason}")));
        }
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` -> `docker.io`; `https://host/` -> `host`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    match key {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

fn candidate_keys(reference: &Reference) -> Vec<String> {
    let registry = reference.registry().to_string();
    let mut keys = Vec::new();
    let mut repo = reference.repository().to_string();
    loop {
        keys.push(format!("{registry}/{repo}"));
        match repo.rfind('/') {
            Some(i) => repo.truncate(i),
            None => break,
        }
    }
    keys.push(registry);
    keys
}

fn decode_entry(entry: &AuthEntry) -> Result<Credentials, String> {
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let encoded = entry.auth.as_deref().ok_or("it has no \"auth\" field")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("\"auth\" is not base64: {e}"))?;
    let text = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_string())?;
    let (username, password) = text
        .split_once(':')
        .ok_or("\"auth\" is not base64(user:password)")?;
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_entry_wins_and_docker_hub_keys_normalize() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &path,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:hubpw")},
                "reg.example:5000": {"auth": b64("all:allpw")},
                "reg.example:5000/team": {"auth": b64("team:teampw")},
            }})
            .to_string(),
        )
        .unwrap();
        let get = |r: &str| {
            find_credentials(Some(&path), &r.parse().unwrap())
                .unwrap()
                .map(|c| c.username)
        };
        assert_eq!(get("busybox").as_deref(), Some("hub"));
        assert_eq!(get("reg.example:5000/team/app:1").as_deref(), Some("team"));
        assert_eq!(get("reg.example:5000/other/app").as_deref(), Some("all"));
        assert_eq!(get("quay.io/x/y"), None);
    }
}
