//! Registry credentials where the container tools keep them: the auth
//! files of podman (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/
//! auth.json`) and Docker (`$DOCKER_CONFIG/config.json`,
//! `~/.docker/config.json`), including Docker's credential helpers. One
//! format for all: `{"auths": {"<registry>": {"auth": base64("user:pass")}}}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::Error;

/// A user name and password (or identity token) for one registry, and the
/// file they came from, for messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.user, self.from)
    }
}

/// The auth files, most specific first. `explicit` (a `--authfile` flag)
/// replaces the search.
pub fn auth_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    auth_files_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn auth_files_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(dir).join("containers/auth.json"));
    }
    match (var("DOCKER_CONFIG"), var("HOME")) {
        (Some(dir), _) => files.push(PathBuf::from(dir).join("config.json")),
        (None, Some(home)) => files.push(PathBuf::from(home).join(".docker/config.json")),
        (None, None) => {}
    }
    files
}

/// Where `husk login` writes: the flag's file, else `$REGISTRY_AUTH_FILE`,
/// else Docker's config (which podman and skopeo read too).
pub fn login_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        return Some(file.into());
    }
    match (var("DOCKER_CONFIG"), var("HOME")) {
        (Some(dir), _) => Some(PathBuf::from(dir).join("config.json")),
        (None, Some(home)) => Some(PathBuf::from(home).join(".docker/config.json")),
        (None, None) => None,
    }
}

/// The credentials for `registry` from the first file that has some.
/// A file that exists but cannot be read or parsed is an error: guessing
/// past it would pull anonymously and fail later, confusingly.
pub fn lookup(registry: &str, files: &[PathBuf]) -> Result<Option<Credentials>, Error> {
    for file in files {
        let data = match std::fs::read(file) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(file, e)),
        };
        let config: Value = serde_json::from_slice(&data)
            .map_err(|e| Error::malformed(file.display().to_string(), e))?;
        if let Some(found) = from_config(&config, registry, file)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn from_config(config: &Value, registry: &str, file: &Path) -> Result<Option<Credentials>, Error> {
    let from = file.display().to_string();
    if let Some(auths) = config["auths"].as_object() {
        for (key, entry) in auths {
            if !same_registry(key, registry) {
                continue;
            }
            if let Some(encoded) = entry["auth"].as_str().filter(|s| !s.is_empty()) {
                return decode(encoded, &from).map(Some);
            }
        }
    }
    let helper = config["credHelpers"]
        .as_object()
        .and_then(|h| h.iter().find(|(k, _)| same_registry(k, registry)))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| config["credsStore"].as_str())
        .filter(|h| !h.is_empty());
    match helper {
        Some(helper) => from_helper(helper, registry, &from),
        None => Ok(None),
    }
}

fn decode(encoded: &str, from: &str) -> Result<Credentials, Error> {
    let bad = |why: &str| Error::malformed(format!("an auth entry in {from}"), why);
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| bad("its auth is not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("its auth is not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| bad("its auth is not user:password"))?;
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
        from: from.to_string(),
    })
}

/// Runs `docker-credential-<helper> get` with the registry on stdin, as
/// Docker does.
fn from_helper(helper: &str, registry: &str, from: &str) -> Result<Option<Credentials>, Error> {
    let program = format!("docker-credential-{helper}");
    let failed = |why: String| Error::Registry {
        registry: registry.to_string(),
        reason: format!("credential helper {program} (named in {from}): {why}"),
    };
    // A program looked up on PATH, never a path: `../x` would run
    // whatever lies there.
    let plain = helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain || helper.starts_with('.') {
        return Err(failed("not a plain helper name".into()));
    }
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        // Helpers say "credentials not found in native keychain" then.
        if said.contains("not found") {
            return Ok(None);
        }
        return Err(failed(format!("{}: {}", out.status, said.trim())));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| failed(e.to_string()))?;
    Ok(Some(Credentials {
        user: v["Username"].as_str().unwrap_or_default().to_string(),
        password: v["Secret"].as_str().unwrap_or_default().to_string(),
        from: program,
    }))
}

/// Whether an auth file's key names `registry`: keys may be bare hosts or
/// URLs (`https://index.docker.io/v1/`), and Docker Hub has several names.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or_default();
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (hub(host) && hub(registry))
}

/// Saves credentials for `registry` in `file` (created 0600 if missing),
/// keeping everything else the file holds.
pub fn save(file: &Path, registry: &str, user: &str, password: &str) -> Result<(), Error> {
    let mut config = read_config(file)?;
    let auths = auths_of(&mut config, file)?;
    auths.retain(|k, _| !same_registry(k, registry));
    let auth = BASE64.encode(format!("{user}:{password}"));
    auths.insert(registry.to_string(), json!({ "auth": auth }));
    write_config(file, &config)
}

/// Removes the credentials for `registry` from `file`; false if it had none.
pub fn remove(file: &Path, registry: &str) -> Result<bool, Error> {
    let mut config = read_config(file)?;
    let auths = auths_of(&mut config, file)?;
    let before = auths.len();
    auths.retain(|k, _| !same_registry(k, registry));
    if auths.len() == before {
        return Ok(false);
    }
    write_config(file, &config)?;
    Ok(true)
}

fn read_config(file: &Path) -> Result<Value, Error> {
    match std::fs::read(file) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| Error::malformed(file.display().to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(Error::io(file, e)),
    }
}

fn auths_of<'a>(config: &'a mut Value, file: &Path) -> Result<&'a mut Map<String, Value>, Error> {
    let not_object = || Error::malformed(file.display().to_string(), "not a JSON object");
    let top = config.as_object_mut().ok_or_else(not_object)?;
    top.entry("auths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(not_object)
}

fn write_config(file: &Path, config: &Value) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    let data = serde_json::to_vec_pretty(config).expect("JSON serialises");
    // Written in place (not renamed over) so a file that is a symlink, or
    // shared with other tools, stays what it is; created owner-only.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| Error::io(file, e))?;
    f.write_all(&data).map_err(|e| Error::io(file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            auth_files_from(env(&[
                ("REGISTRY_AUTH_FILE", "/a.json"),
                ("XDG_RUNTIME_DIR", "/run/user/1"),
                ("HOME", "/h")
            ])),
            [
                "/a.json",
                "/run/user/1/containers/auth.json",
                "/h/.docker/config.json"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            auth_files_from(env(&[("DOCKER_CONFIG", "/d"), ("HOME", "/h")])),
            [PathBuf::from("/d/config.json")]
        );
    }

    #[test]
    fn saved_credentials_are_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/config.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOnB3"}}, "other": 1}"#,
        )
        .unwrap();
        save(&file, "127.0.0.1:5000", "alice", "p:w").unwrap();
        let files = [file.clone()];
        let found = lookup("127.0.0.1:5000", &files).unwrap().unwrap();
        assert_eq!(
            (found.user.as_str(), found.password.as_str()),
            ("alice", "p:w")
        );
        let hub = lookup("docker.io", &files).unwrap().unwrap();
        assert_eq!((hub.user.as_str(), hub.password.as_str()), ("hub", "pw"));
        assert!(lookup("example.com", &files).unwrap().is_none());
        let kept: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(kept["other"], 1);
        assert!(remove(&file, "127.0.0.1:5000").unwrap());
        assert!(!remove(&file, "127.0.0.1:5000").unwrap());
        assert!(lookup("127.0.0.1:5000", &files).unwrap().is_none());
    }

    #[test]
    fn a_helper_is_a_name_on_path_never_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, r#"{"credsStore": "x/../../bin/true"}"#).unwrap();
        let err = lookup("r", std::slice::from_ref(&file))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a plain helper name"), "{err}");
        std::fs::write(&file, r#"{"credHelpers": {"r": "husk-no-such-helper"}}"#).unwrap();
        let err = lookup("r", std::slice::from_ref(&file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker-credential-husk-no-such-helper"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_file_is_an_error_and_a_missing_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        let missing = dir.path().join("missing.json");
        assert!(lookup("r", std::slice::from_ref(&missing))
            .unwrap()
            .is_none());
        let err = lookup("r", &[missing, broken]).unwrap_err().to_string();
        assert!(err.contains("broken.json"), "{err}");
    }
}
