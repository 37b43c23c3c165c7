//! The one HTTP client: ureq over rustls, verified with the system CAs plus `certs.d` certificates;
//! plain HTTP only for loopback and insecure hosts whose server does not speak TLS; retries with
//! backoff; redirects followed here so that credentials only go to the host they were meant for.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{Request, Response};
use ureq::tls::{parse_pem, Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, SendBody};

use super::reference::is_loopback;
use super::RegistryConfig;
use crate::error::{Error, Result};

const SYSTEM_CA_FILES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
const MAX_REDIRECTS: usize = 5;
/// The longest `Retry-After` honoured, so that a registry cannot park a pull for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A request body: nothing, bytes (which can be sent again on a retry), or a stream (sent once).
pub enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(&'a mut (dyn Read + Send)),
}

impl Payload<'_> {
    fn replayable(&self) -> bool {
        !matches!(self, Payload::Stream(_))
    }
}

pub struct Transport {
    config: RegistryConfig,
    /// One agent per host: its trust roots include that host's `certs.d` certificates.
    agents: Mutex<HashMap<String, Agent>>,
    /// `http` or `https`, once known for a host.
    schemes: Mutex<HashMap<String, &'static str>>,
    system_roots: Vec<Certificate<'static>>,
}

/// `host[:port]` of an absolute URL.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// `location` (absolute, or relative to `base`) as an absolute URL.
pub fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some(abs) = location.strip_prefix("//") {
        return format!("{scheme}://{abs}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{host}{location}");
    }
    let path = &rest[host.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map(|i| &path[..=i]).unwrap_or("/");
    format!("{scheme}://{host}{dir}{location}")
}

fn read_pem_certs(path: &Path, out: &mut Vec<Certificate<'static>>) {
    let Ok(data) = std::fs::read(path) else { return };
    for item in parse_pem(&data).flatten() {
        if let PemItem::Certificate(c) = item {
            out.push(c);
        }
    }
}

/// `*.crt` files of a directory (not `*.cert` / `*.key`: those are client certificates).
fn read_crt_dir(dir: &Path, out: &mut Vec<Certificate<'static>>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "crt")).collect();
    paths.sort();
    for p in paths {
        if p.is_file() {
            read_pem_certs(&p, out);
        }
    }
}

/// The `certs.d` directories searched for `HOST[:PORT]/*.crt`.
pub fn certs_d_dirs(config: &RegistryConfig) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/docker/certs.d"), PathBuf::from("/etc/containers/certs.d")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".config/containers/certs.d"));
    }
    dirs.extend(config.ca_dirs.iter().cloned());
    dirs
}

/// Whether a TLS failure means the server answered in plain HTTP (as opposed to a certificate that
/// does not verify, which is never worked around).
fn not_tls(e: &ureq::Error) -> bool {
    fn rustls_says_not_tls(e: &rustls::Error) -> bool {
        matches!(e, rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. })
    }
    match e {
        ureq::Error::Rustls(r) => rustls_says_not_tls(r),
        ureq::Error::Io(io) => match io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(r) => rustls_says_not_tls(r),
            None => io.kind() == std::io::ErrorKind::InvalidData,
        },
        ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Connection-level failures worth another attempt.
fn transient(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_))
}

pub fn net_error(url: &str, e: ureq::Error) -> Error {
    let msg = match &e {
        ureq::Error::Rustls(rustls::Error::InvalidCertificate(c)) => format!("the TLS certificate of {} does not verify: {c:?}", url_host(url)),
        other => format!("{}: {other}", strip_query(url)),
    };
    Error::Registry { status: None, code: None, message: msg }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

impl Transport {
    pub fn new(config: RegistryConfig) -> Transport {
        let mut system_roots = Vec::new();
        if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
            read_pem_certs(Path::new(&f), &mut system_roots);
        }
        for f in SYSTEM_CA_FILES {
            if system_roots.is_empty() {
                read_pem_certs(Path::new(f), &mut system_roots);
            }
        }
        Transport { config, agents: Mutex::new(HashMap::new()), schemes: Mutex::new(HashMap::new()), system_roots }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn agent(&self, host: &str) -> Agent {
        let mut agents = self.agents.lock().unwrap();
        if let Some(a) = agents.get(host) {
            return a.clone();
        }
        let mut roots = self.system_roots.clone();
        for d in certs_d_dirs(&self.config) {
            read_crt_dir(&d.join(host), &mut roots);
            // A host without a port also matches its certs.d directory with the default port.
            if !host.contains(':') {
                read_crt_dir(&d.join(format!("{host}:443")), &mut roots);
            }
        }
        for d in &self.config.ca_dirs {
            read_crt_dir(d, &mut roots);
        }
        let root_certs = if roots.is_empty() { RootCerts::WebPki } else { RootCerts::new_with_certs(&roots) };
        let tls = TlsConfig::builder().root_certs(root_certs).build();
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(self.config.timeout_s)))
            .timeout_recv_response(Some(Duration::from_secs(self.config.timeout_s * 4)))
            .user_agent("ovlcore")
            .build()
            .into();
        agents.insert(host.to_string(), agent.clone());
        agent
    }

    fn may_be_plain(&self, host: &str) -> bool {
        is_loopback(host) || self.config.insecure.iter().any(|h| h == host)
    }

    /// `scheme://host` for a registry host, deciding http vs https on first contact.
    pub fn base(&self, host: &str) -> String {
        let scheme = self.schemes.lock().unwrap().get(host).copied().unwrap_or("https");
        format!("{scheme}://{host}")
    }

    fn send_once(&self, method: &str, url: &str, headers: &[(String, String)], body: &mut Payload<'_>) -> std::result::Result<Response<Body>, ureq::Error> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let agent = self.agent(url_host(url));
        match body {
            Payload::Empty => {
                let req = b.body(()).map_err(ureq::Error::Http)?;
                agent.run(req)
            }
            Payload::Bytes(data) => {
                let req = b.body(*data).map_err(ureq::Error::Http)?;
                agent.run(req)
            }
            Payload::Stream(r) => {
                let req = b.body(SendBody::from_reader(*r)).map_err(ureq::Error::Http)?;
                agent.run(req)
            }
        }
    }

    /// Send one request, with retries on connection errors, 408, 429 and 5xx (bodies that can be sent
    /// again only), and the http fallback for loopback and insecure hosts. Redirects are returned, not
    /// followed (see [`Transport::request`]).
    fn send_retrying(&self, method: &str, url: &str, headers: &[(String, String)], body: &mut Payload<'_>) -> Result<Response<Body>> {
        let mut attempt = 0u32;
        let mut url = url.to_string();
        loop {
            let res = self.send_once(method, &url, headers, body);
            let host = url_host(&url).to_string();
            let retry_after = match res {
                Err(e) if url.starts_with("https://") && self.may_be_plain(&host) && not_tls(&e) => {
                    // The server speaks plain HTTP: use it from now on (as Docker does for these hosts).
                    self.schemes.lock().unwrap().insert(host.clone(), "http");
                    url = format!("http://{}", &url["https://".len()..]);
                    continue;
                }
                Err(e) => {
                    if !(transient(&e) && body.replayable() && attempt < self.config.retries) {
                        return Err(net_error(&url, e));
                    }
                    None
                }
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    if url.starts_with("https://") {
                        self.schemes.lock().unwrap().entry(host).or_insert("https");
                    }
                    if !(s == 408 || s == 429 || s >= 500) || !body.replayable() || attempt >= self.config.retries {
                        return Ok(resp);
                    }
                    header(&resp, "retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
                }
            };
            let backoff = Duration::from_millis(self.config.backoff_ms.saturating_mul(1u64 << attempt.min(10)));
            std::thread::sleep(retry_after.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or(backoff));
            attempt += 1;
        }
    }

    /// Send a request, following redirects for GET and HEAD. `auth` is sent only to `url`'s own host:
    /// a redirect elsewhere (blob storage) goes without it. Returns the final response and its URL.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        auth: Option<&str>,
        mut body: Payload<'_>,
    ) -> Result<(Response<Body>, String)> {
        let origin = url_host(url).to_string();
        let mut url = url.to_string();
        // A host whose scheme is already known as http is addressed so directly.
        if let Some(rest) = url.strip_prefix("https://") {
            if self.schemes.lock().unwrap().get(&origin) == Some(&"http") {
                url = format!("http://{rest}");
            }
        }
        for _ in 0..=MAX_REDIRECTS {
            let mut hs: Vec<(String, String)> = headers.to_vec();
            if let Some(a) = auth {
                if url_host(&url) == origin {
                    hs.push(("Authorization".into(), a.to_string()));
                }
            }
            let resp = self.send_retrying(method, &url, &hs, &mut body)?;
            let s = resp.status().as_u16();
            let follow = matches!(s, 301 | 302 | 303 | 307 | 308) && (method == "GET" || method == "HEAD");
            if !follow {
                return Ok((resp, url));
            }
            let Some(loc) = header(&resp, "location") else { return Ok((resp, url)) };
            url = join_url(&url, &loc);
        }
        Err(Error::Registry { status: None, code: None, message: format!("too many redirects from {}", strip_query(&url)) })
    }
}

/// A response header as a string.
pub fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The error a non-2xx response means, with the registry's `{"errors":[{"code","message"}]}` body.
pub fn status_error(resp: Response<Body>, what: &str) -> Error {
    let status = resp.status().as_u16();
    let body = resp.into_body().with_config().limit(1 << 20).read_to_vec().unwrap_or_default();
    let (code, detail) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let first = v.get("errors").and_then(|e| e.get(0)).cloned().unwrap_or(serde_json::Value::Null);
            (
                first.get("code").and_then(|c| c.as_str()).map(str::to_string),
                first.get("message").and_then(|c| c.as_str()).map(str::to_string),
            )
        }
        Err(_) => (None, None),
    };
    let mut message = what.to_string();
    if let Some(c) = &code {
        message += &format!(": {c}");
    }
    if let Some(d) = detail {
        message += &format!(": {d}");
    } else if code.is_none() && !body.is_empty() && body.len() < 300 {
        message += &format!(": {}", String::from_utf8_lossy(&body).trim());
    }
    match status {
        401 | 403 => Error::Unauthorized(message),
        _ => Error::Registry { status: Some(status), code, message },
    }
}

/// Percent-encoding of a query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_and_name_their_host() {
        assert_eq!(url_host("http://127.0.0.1:5000/v2/x?y"), "127.0.0.1:5000");
        assert_eq!(join_url("http://h:1/v2/a/blobs/uploads/", "/v2/a/blobs/uploads/u1?_state=x"), "http://h:1/v2/a/blobs/uploads/u1?_state=x");
        assert_eq!(join_url("http://h:1/v2/a/b", "c"), "http://h:1/v2/a/c");
        assert_eq!(join_url("https://h/x", "//o:2/y"), "https://o:2/y");
        assert_eq!(join_url("https://h/x", "http://o/y"), "http://o/y");
        assert_eq!(query_escape("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    }
}
