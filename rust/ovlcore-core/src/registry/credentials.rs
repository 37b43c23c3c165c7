//! Credentials as Docker and Podman keep them: `auths` in `config.json` / `auth.json` (base64
//! `user:pass` or an identity token), and `docker-credential-NAME` helpers (`credHelpers`, `credsStore`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Basic { user: String, password: String },
    /// An OAuth refresh token (`identitytoken`), traded at the token server.
    IdentityToken(String),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The files read, in order; the first one that knows the host wins.
pub fn auth_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(Path::new(&p).join("containers/auth.json"));
    }
    out.push(docker_config_file());
    out
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: where `docker login` writes.
pub fn docker_config_file() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => Path::new(&d).join("config.json"),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".docker/config.json"),
    }
}

/// The keys a host's entry may have in `auths`.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}"), format!("https://{registry}/v1/"), format!("https://{registry}/v2/")];
    if registry == "docker.io" || registry == "registry-1.docker.io" || registry == "index.docker.io" {
        keys.insert(0, "https://index.docker.io/v1/".into());
        keys.push("docker.io".into());
        keys.push("index.docker.io".into());
    }
    keys
}

/// The name a helper is asked about (docker.io's is its v1 index URL, as Docker asks).
fn server_url(registry: &str) -> String {
    if registry == "docker.io" || registry == "registry-1.docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_string()
    }
}

fn read_config(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{}: not a valid auth file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::from(e).at(path)),
    }
}

fn from_entry(entry: &Value) -> Result<Option<Credential>> {
    if let Some(t) = entry.get("identitytoken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(t.to_string())));
    }
    if let Some(a) = entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) {
        let raw = b64().decode(a.trim()).map_err(|_| Error::Invalid("an auth file entry's \"auth\" is not base64".into()))?;
        let s = String::from_utf8(raw).map_err(|_| Error::Invalid("an auth file entry's \"auth\" is not UTF-8".into()))?;
        let (user, password) = s.split_once(':').ok_or_else(|| Error::Invalid("an auth file entry's \"auth\" is not user:password".into()))?;
        return Ok(Some(Credential::Basic { user: user.into(), password: password.into() }));
    }
    if let (Some(u), Some(p)) = (entry.get("username").and_then(Value::as_str), entry.get("password").and_then(Value::as_str)) {
        return Ok(Some(Credential::Basic { user: u.into(), password: p.into() }));
    }
    Ok(None)
}

/// The helper a config names for `registry`, if any.
fn helper_for(cfg: &Value, registry: &str) -> Option<String> {
    let helpers = cfg.get("credHelpers").and_then(Value::as_object);
    for k in keys_for(registry) {
        if let Some(h) = helpers.and_then(|m| m.get(&k)).and_then(Value::as_str) {
            return Some(h.to_string());
        }
    }
    cfg.get("credsStore").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

fn run_helper(helper: &str, verb: &str, input: &[u8]) -> Result<Vec<u8>> {
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid(format!("cannot run the credential helper {prog}: {e}")))?;
    child.stdin.take().expect("piped").write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout }).trim().to_string();
        return Err(Error::Invalid(format!("{prog} {verb}: {msg}")));
    }
    Ok(out.stdout)
}

fn helper_get(helper: &str, registry: &str) -> Result<Option<Credential>> {
    let out = match run_helper(helper, "get", server_url(registry).as_bytes()) {
        Ok(o) => o,
        // Helpers answer "credentials not found in native keychain" with a failure status.
        Err(Error::Invalid(m)) if m.to_ascii_lowercase().contains("not found") => return Ok(None),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_slice(&out).map_err(|e| Error::Invalid(format!("docker-credential-{helper} get: {e}")))?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    if user == "<token>" {
        return Ok(Some(Credential::IdentityToken(secret.into())));
    }
    Ok(Some(Credential::Basic { user: user.into(), password: secret.into() }))
}

/// The credentials the usual files (and their helpers) hold for `registry` (`host[:port]`).
pub fn lookup(registry: &str, explicit_file: Option<&Path>) -> Result<Option<Credential>> {
    for file in auth_files(explicit_file) {
        let Some(cfg) = read_config(&file)? else { continue };
        if let Some(auths) = cfg.get("auths").and_then(Value::as_object) {
            for k in keys_for(registry) {
                if let Some(entry) = auths.get(&k) {
                    if let Some(c) = from_entry(entry)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        if let Some(h) = helper_for(&cfg, registry) {
            if let Some(c) = helper_get(&h, registry)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// The file `login` and `logout` write: the explicit one, else Docker's `config.json`.
fn target_file(explicit_file: Option<&Path>) -> PathBuf {
    explicit_file.map(Path::to_path_buf).unwrap_or_else(docker_config_file)
}

/// Write `cfg` to `path` atomically (temporary file + rename), mode 0600.
fn write_config(path: &Path, cfg: &Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::from(e).at(dir))?;
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("config"), std::process::id()));
    let data = serde_json::to_vec_pretty(cfg).expect("JSON values serialize");
    let res = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(|e| Error::from(e).at(&tmp))?;
        f.write_all(&data)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).map_err(|e| Error::from(e).at(path))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Save credentials for `registry` as `docker login` does: through the configured helper, else in
/// `auths[registry]` of the file (other keys kept).
pub fn store(registry: &str, user: &str, password: &str, explicit_file: Option<&Path>) -> Result<PathBuf> {
    let path = target_file(explicit_file);
    let mut cfg = read_config(&path)?.unwrap_or_else(|| Value::Object(Map::new()));
    if !cfg.is_object() {
        return Err(Error::Invalid(format!("{}: not a JSON object", path.display())));
    }
    if let Some(h) = helper_for(&cfg, registry) {
        let input = serde_json::json!({"ServerURL": server_url(registry), "Username": user, "Secret": password});
        run_helper(&h, "store", input.to_string().as_bytes())?;
        return Ok(path);
    }
    let key = if registry == "docker.io" { "https://index.docker.io/v1/".to_string() } else { registry.to_string() };
    let obj = cfg.as_object_mut().expect("checked");
    let auths = obj.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths.as_object_mut().expect("made an object").insert(key, serde_json::json!({"auth": b64().encode(format!("{user}:{password}"))}));
    write_config(&path, &cfg)?;
    Ok(path)
}

/// Forget the credentials for `registry` (helper `erase`, or the `auths` entries). Whether any were there.
pub fn erase(registry: &str, explicit_file: Option<&Path>) -> Result<bool> {
    let path = target_file(explicit_file);
    let Some(mut cfg) = read_config(&path)? else { return Ok(false) };
    if let Some(h) = helper_for(&cfg, registry) {
        return match run_helper(&h, "erase", server_url(registry).as_bytes()) {
            Ok(_) => Ok(true),
            Err(Error::Invalid(m)) if m.to_ascii_lowercase().contains("not found") => Ok(false),
            Err(e) => Err(e),
        };
    }
    let mut removed = false;
    if let Some(auths) = cfg.get_mut("auths").and_then(Value::as_object_mut) {
        for k in keys_for(registry) {
            removed |= auths.remove(&k).is_some();
        }
    }
    if removed {
        write_config(&path, &cfg)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lookup_erase_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"other:1":{"auth":"eDp5"}},"psFormat":"x"}"#).unwrap();
        store("127.0.0.1:5000", "alice", "s3:cret", Some(&f)).unwrap();
        let c = lookup("127.0.0.1:5000", Some(&f)).unwrap();
        assert_eq!(c, Some(Credential::Basic { user: "alice".into(), password: "s3:cret".into() }));
        assert_eq!(lookup("other:1", Some(&f)).unwrap(), Some(Credential::Basic { user: "x".into(), password: "y".into() }));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "x");
        assert!(erase("127.0.0.1:5000", Some(&f)).unwrap());
        assert!(!erase("127.0.0.1:5000", Some(&f)).unwrap());
        assert!(lookup("other:1", Some(&f)).unwrap().is_some());
    }

    #[test]
    fn docker_hub_keys_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(&f, r#"{"auths":{"https://index.docker.io/v1/":{"auth":"","identitytoken":"tok"}}}"#).unwrap();
        assert_eq!(lookup("docker.io", Some(&f)).unwrap(), Some(Credential::IdentityToken("tok".into())));
    }
}
