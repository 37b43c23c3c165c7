//! Image references with Docker's normalization: `[host[:port]/]path[:tag][@sha256:hex]`, where no host
//! means `docker.io` and a one-component path on docker.io gets `library/`.

use crate::error::{Error, Result};

pub const DOCKER_HUB: &str = "docker.io";
/// The API endpoint of `docker.io`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `quay.io` (as written, lowercase).
    pub registry: String,
    /// The repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn invalid(r: &str, why: &str) -> Error {
    Error::Invalid(format!("invalid reference format: {r:?}: {why}"))
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A host name or address with an optional port (`[::1]:5000` included).
fn valid_host(h: &str) -> bool {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, tail)) => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':').map(Some).unwrap_or(if tail.is_empty() { None } else { Some("x") }))
            }
            None => return false,
        }
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(h), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    match name {
        None => true,
        Some(n) => {
            !n.is_empty()
                && n.split('.').all(|part| {
                    let b = part.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                })
        }
    }
}

pub fn valid_digest(d: &str) -> bool {
    match d.strip_prefix("sha256:") {
        Some(hex) => hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        None => false,
    }
}

impl Reference {
    /// Parse and normalize `r` as Docker does.
    pub fn parse(r: &str) -> Result<Reference> {
        if r.is_empty() {
            return Err(invalid(r, "it is empty"));
        }
        let (rest, digest) = match r.split_once('@') {
            Some((n, d)) => {
                if !valid_digest(d) {
                    return Err(invalid(r, "the digest must be sha256: and 64 lowercase hex digits"));
                }
                (n, Some(d.to_string()))
            }
            None => (r, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(invalid(r, "a tag is 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, tail)) if first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[') => {
                if !valid_host(first) {
                    return Err(invalid(r, &format!("{first:?} is not a valid registry host")));
                }
                (first.to_ascii_lowercase(), tail.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        if path.to_ascii_lowercase() != path {
            return Err(invalid(r, "repository names must be lowercase"));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(invalid(
                r,
                "a repository name is lowercase letters and digits with '.', '_', '__' or '-' between them, components separated by '/'",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(invalid(r, "the repository name is longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host:port the HTTP API is reached at.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// `registry/repository`, fully qualified.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name Docker displays: `busybox` for `docker.io/library/busybox`, `user/app` on docker.io,
    /// the full name elsewhere.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            self.name()
        }
    }

    /// What a manifest is fetched or pushed by: the digest if there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

/// The API host of a registry name (`docker.io` is served at `registry-1.docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Whether `host[:port]` is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(n, _)| n).unwrap_or(host)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(r: &str) -> String {
        let p = Reference::parse(r).unwrap();
        let mut s = p.name();
        if let Some(t) = &p.tag {
            s += &format!(":{t}");
        }
        if let Some(d) = &p.digest {
            s += &format!("@{d}");
        }
        s
    }

    #[test]
    fn docker_normalization() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("index.docker.io/library/x:1"), "docker.io/library/x:1");
        assert_eq!(full("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000/team/app:1");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("Quay.IO/a/b"), "quay.io/a/b:latest");
        assert_eq!(full("[::1]:5000/a"), "[::1]:5000/a:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(full(&format!("app@{d}")), format!("docker.io/library/app@{d}"));
        assert_eq!(full(&format!("h:1/app:2@{d}")), format!("h:1/app:2@{d}"));
        assert_eq!(Reference::parse("busybox").unwrap().api_host(), "registry-1.docker.io");
        assert_eq!(Reference::parse("busybox").unwrap().familiar_name(), "busybox");
        assert_eq!(Reference::parse("h:5000/a/b").unwrap().familiar_name(), "h:5000/a/b");
    }

    #[test]
    fn bad_references_are_refused() {
        for r in ["", "UPPER", "a//b", "a:", "a:-x", "app@sha256:abc", "-a", "a_-b", "h:x/a", ":tag"] {
            assert!(Reference::parse(r).is_err(), "{r:?}");
        }
        assert!(Reference::parse("a__b/c-d.e---f").is_ok());
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example:1"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
