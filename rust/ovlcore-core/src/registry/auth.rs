//! Authentication: anonymous, Basic, and Bearer tokens from a `WWW-Authenticate` challenge, cached per
//! (host, scopes) until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::credentials::Credential;
use super::transport::{query_escape, status_error, Payload, Transport};
use crate::error::{Error, Result};

/// What a registry asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Parse `WWW-Authenticate` (`Bearer realm="..",service="..",scope=".."` or `Basic realm=".."`).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer { realm: params.get("realm")?.clone(), service: params.get("service").cloned() }),
        _ => None,
    }
}

/// `k="v", k2=v2` pairs (quoted values may hold commas).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[vs.min(b.len())..i.min(b.len())].trim().to_string();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

struct Token {
    value: String,
    expires: Instant,
}

/// Challenges seen per host and tokens per (host, scopes).
#[derive(Default)]
pub struct Auth {
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
}

impl Auth {
    pub fn remember(&self, host: &str, c: Challenge) {
        self.challenges.lock().unwrap().insert(host.to_string(), c);
    }

    pub fn challenge(&self, host: &str) -> Option<Challenge> {
        self.challenges.lock().unwrap().get(host).cloned()
    }

    pub fn forget_token(&self, host: &str, scopes: &[String]) {
        self.tokens.lock().unwrap().remove(&(host.to_string(), scopes.join(" ")));
    }

    /// The `Authorization` value for a request to `host` needing `scopes`, given what the host asked for
    /// before (none: anonymous until a 401 says otherwise).
    pub fn header(&self, transport: &Transport, host: &str, scopes: &[String], cred: Option<&Credential>) -> Result<Option<String>> {
        match self.challenge(host) {
            None => Ok(None),
            Some(Challenge::Basic) => match cred {
                Some(Credential::Basic { user, password }) => Ok(Some(basic_header(user, password))),
                Some(Credential::IdentityToken(_)) => {
                    Err(Error::Unauthorized(format!("{host} asks for Basic authentication, and only an identity token is known")))
                }
                None => Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let key = (host.to_string(), scopes.join(" "));
                if let Some(t) = self.tokens.lock().unwrap().get(&key) {
                    if t.expires > Instant::now() {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let t = fetch_token(transport, &realm, service.as_deref(), scopes, cred)?;
                let value = format!("Bearer {}", t.value);
                self.tokens.lock().unwrap().insert(key, t);
                Ok(Some(value))
            }
        }
    }
}

/// Get a token from the token server `realm` (Basic credentials sent to it, as Docker does: it is the
/// registry's own auth server; an identity token is traded with an OAuth refresh-token POST).
fn fetch_token(transport: &Transport, realm: &str, service: Option<&str>, scopes: &[String], cred: Option<&Credential>) -> Result<Token> {
    let mut params: Vec<String> = Vec::new();
    if let Some(s) = service {
        params.push(format!("service={}", query_escape(s)));
    }
    for s in scopes {
        params.push(format!("scope={}", query_escape(s)));
    }
    let (resp, _) = match cred {
        Some(Credential::IdentityToken(tok)) => {
            params.push("grant_type=refresh_token".into());
            params.push(format!("refresh_token={}", query_escape(tok)));
            params.push("client_id=ovlcore".into());
            let form = params.join("&");
            let hs = vec![("Content-Type".to_string(), "application/x-www-form-urlencoded".to_string())];
            transport.request("POST", realm, &hs, None, Payload::Bytes(form.as_bytes()))?
        }
        other => {
            let sep = if realm.contains('?') { '&' } else { '?' };
            let url = if params.is_empty() { realm.to_string() } else { format!("{realm}{sep}{}", params.join("&")) };
            let auth = match other {
                Some(Credential::Basic { user, password }) => Some(basic_header(user, password)),
                _ => None,
            };
            transport.request("GET", &url, &[], auth.as_deref(), Payload::Empty)?
        }
    };
    if !resp.status().is_success() {
        return Err(status_error(resp, &format!("the token server {} refused", realm.split('?').next().unwrap_or(realm))));
    }
    let body = resp.into_body().with_config().limit(1 << 20).read_to_vec().map_err(|e| Error::Registry { status: None, code: None, message: e.to_string() })?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Error::Registry { status: None, code: None, message: format!("the token server's answer is not JSON: {e}") })?;
    let value = v
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .or_else(|| v.get("access_token").and_then(|t| t.as_str()))
        .ok_or_else(|| Error::Registry { status: None, code: None, message: "the token server's answer has no token".into() })?
        .to_string();
    let expires_in = v.get("expires_in").and_then(|e| e.as_u64()).filter(|e| *e > 0).unwrap_or(60);
    // Renew a little early: a token must not expire between being picked and being used.
    let life = Duration::from_secs(expires_in).saturating_sub(Duration::from_secs(expires_in.min(10) / 2));
    Ok(Token { value, expires: Instant::now() + life })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#);
        assert_eq!(c, Some(Challenge::Bearer { realm: "https://auth.example/token".into(), service: Some("registry.example".into()) }));
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        let p = parse_params(r#"realm="a,b", x=y ,scope="s""#);
        assert_eq!(p["realm"], "a,b");
        assert_eq!(p["x"], "y");
        assert_eq!(p["scope"], "s");
    }
}
