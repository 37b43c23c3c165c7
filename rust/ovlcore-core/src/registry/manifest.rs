//! Manifests: Docker schema 2 and OCI image manifests, manifest lists and OCI indexes resolved by
//! platform.

use serde_json::{json, Value};

use crate::error::{Error, Result};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// What a manifest GET accepts.
pub fn accept() -> String {
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ")
}

#[derive(Clone, Debug)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// Where a foreign (non-distributable) layer lives.
    pub urls: Vec<String>,
}

impl Descriptor {
    fn parse(v: &Value, what: &str) -> Result<Descriptor> {
        let digest = v.get("digest").and_then(Value::as_str).ok_or_else(|| bad(&format!("{what} has no digest")))?;
        if !super::reference::valid_digest(digest) {
            return Err(bad(&format!("{what} has an unsupported digest {digest:?}")));
        }
        Ok(Descriptor {
            media_type: v.get("mediaType").and_then(Value::as_str).unwrap_or("").to_string(),
            digest: digest.to_string(),
            size: v.get("size").and_then(Value::as_u64).ok_or_else(|| bad(&format!("{what} has no size")))?,
            urls: v.get("urls").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default(),
        })
    }

    /// A layer kept outside the registry (Windows base layers): never fetched from the registry.
    pub fn is_foreign(&self) -> bool {
        self.media_type.contains("foreign") || self.media_type.contains("nondistributable")
    }
}

fn bad(m: &str) -> Error {
    Error::Registry { status: None, code: Some("MANIFEST_INVALID".into()), message: format!("invalid manifest: {m}") }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Invalid(format!("invalid platform {s:?} (use os/arch or os/arch/variant, e.g. linux/arm64/v8)")));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: normalize_arch(&parts[1].to_ascii_lowercase()),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    /// The platform an image config names (`os`, `architecture`, `variant`), in the names `parse` gives.
    pub fn of_config(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_ascii_lowercase(),
            architecture: normalize_arch(&architecture.to_ascii_lowercase()),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_ascii_lowercase),
        }
    }

    /// This host's platform, in OCI names.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        let variant = match arch {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Platform { os: "linux".into(), architecture: arch.into(), variant }
    }

    fn default_variant(arch: &str) -> Option<&'static str> {
        match arch {
            "arm64" => Some("v8"),
            "arm" => Some("v7"),
            _ => None,
        }
    }

    /// Whether an entry (or a local image) offering `offered` serves this platform (a missing variant is
    /// the architecture's default: v8 for arm64, v7 for arm; amd64 ignores it).
    pub fn matches(&self, offered: &Platform) -> bool {
        if self.os != offered.os || self.architecture != offered.architecture {
            return false;
        }
        let want = self.variant.as_deref().or(Self::default_variant(&self.architecture));
        let have = offered.variant.as_deref().or(Self::default_variant(&offered.architecture));
        match self.architecture.as_str() {
            "amd64" => self.variant.is_none() || offered.variant.is_none() || want == have,
            _ => want == have || (self.variant.is_none() && Self::default_variant(&self.architecture).is_none()),
        }
    }

    pub fn show(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

fn normalize_arch(a: &str) -> String {
    match a {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

#[derive(Debug)]
pub enum Manifest {
    Image { config: Descriptor, layers: Vec<Descriptor> },
    Index { manifests: Vec<(Descriptor, Option<Platform>)> },
}

/// The media type of manifest bytes: the `Content-Type` when it names one of ours, else the body's
/// `mediaType`, else its shape (an OCI manifest may leave `mediaType` out).
pub fn media_type_of(bytes: &[u8], content_type: Option<&str>) -> Result<(String, Value)> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let known = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];
    let mt = match (v.get("mediaType").and_then(Value::as_str), ct) {
        (Some(m), _) if known.contains(&m) => m.to_string(),
        (_, Some(c)) if known.contains(&c.as_str()) => c,
        _ if v.get("manifests").is_some() => OCI_INDEX.to_string(),
        _ if v.get("config").is_some() => OCI_MANIFEST.to_string(),
        _ if v.get("schemaVersion").and_then(Value::as_u64) == Some(1) => {
            return Err(bad("Docker schema 1 manifests are not supported (push the image again with a current client)"))
        }
        (m, c) => return Err(bad(&format!("unknown manifest type {:?}", m.map(str::to_string).or(c).unwrap_or_default()))),
    };
    Ok((mt, v))
}

pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<(String, Manifest)> {
    let (mt, v) = media_type_of(bytes, content_type)?;
    if mt == DOCKER_LIST || mt == OCI_INDEX {
        let list = v.get("manifests").and_then(Value::as_array).ok_or_else(|| bad("an index without \"manifests\""))?;
        let mut manifests = Vec::new();
        for (i, m) in list.iter().enumerate() {
            let d = Descriptor::parse(m, &format!("manifest {i} of the index"))?;
            let p = m.get("platform").map(|p| Platform {
                os: p.get("os").and_then(Value::as_str).unwrap_or("").to_string(),
                architecture: normalize_arch(p.get("architecture").and_then(Value::as_str).unwrap_or("")),
                variant: p.get("variant").and_then(Value::as_str).map(str::to_string),
            });
            manifests.push((d, p));
        }
        return Ok((mt, Manifest::Index { manifests }));
    }
    let config = Descriptor::parse(v.get("config").ok_or_else(|| bad("no config"))?, "the config")?;
    let mut layers = Vec::new();
    for (i, l) in v.get("layers").and_then(Value::as_array).ok_or_else(|| bad("no layers"))?.iter().enumerate() {
        layers.push(Descriptor::parse(l, &format!("layer {i}"))?);
    }
    Ok((mt, Manifest::Image { config, layers }))
}

/// The manifest of an index serving `want` (attestation entries, `unknown/unknown`, are not images).
pub fn select<'a>(manifests: &'a [(Descriptor, Option<Platform>)], want: &Platform, what: &str) -> Result<&'a Descriptor> {
    for (d, p) in manifests {
        if let Some(p) = p {
            if want.matches(p) {
                return Ok(d);
            }
        }
    }
    let offered: Vec<String> = manifests.iter().filter_map(|(_, p)| p.as_ref()).filter(|p| p.os != "unknown").map(Platform::show).collect();
    Err(Error::NotFound(format!(
        "{what}: no manifest for platform {} (the image offers {})",
        want.show(),
        if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
    )))
}

/// A layer's media type for a push in `oci` or Docker format.
pub fn layer_media_type(oci: bool, compression: crate::compress::Compression) -> &'static str {
    use crate::compress::Compression as C;
    match (oci, compression) {
        (_, C::Zstd) => OCI_LAYER_ZSTD,
        (false, C::Gzip) => DOCKER_LAYER_GZIP,
        (true, C::Gzip) => OCI_LAYER_GZIP,
        (_, C::None) => OCI_LAYER,
    }
}

/// The manifest of an image: its bytes and media type.
pub fn build(oci: bool, config: &Descriptor, layers: &[Descriptor]) -> (Vec<u8>, &'static str) {
    let desc = |d: &Descriptor| json!({"mediaType": d.media_type, "size": d.size, "digest": d.digest});
    let mt = if oci { OCI_MANIFEST } else { DOCKER_MANIFEST };
    let v = json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": desc(config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    (serde_json::to_vec_pretty(&v).expect("JSON values serialize"), mt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn platforms_match_with_default_variants() {
        let offered = |s: &str| {
            let mut q = p(s);
            if s.matches('/').count() == 1 {
                q.variant = None;
            }
            q
        };
        assert!(p("linux/arm64").matches(&offered("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&offered("linux/arm64")));
        assert!(!p("linux/arm64/v9").matches(&offered("linux/arm64")));
        assert!(p("linux/amd64").matches(&offered("linux/amd64/v3")));
        assert!(p("linux/amd64").matches(&offered("linux/amd64")));
        assert!(!p("linux/arm/v6").matches(&offered("linux/arm/v7")));
        assert!(p("linux/arm").matches(&offered("linux/arm/v7")));
        // As an image config names it.
        assert!(p("linux/arm64").matches(&Platform::of_config("linux", "aarch64", Some(""))));
        assert!(!p("linux/amd64").matches(&Platform::of_config("linux", "arm64", Some("v8"))));
        assert!(!p("linux/amd64").matches(&Platform::of_config("", "", None)));
        assert!(!p("linux/amd64").matches(&offered("windows/amd64")));
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn an_index_resolves_by_platform_or_names_what_it_offers() {
        let d = format!("sha256:{}", "1".repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":2,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":3,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let (mt, m) = parse(idx.as_bytes(), None).unwrap();
        assert_eq!(mt, OCI_INDEX);
        let Manifest::Index { manifests } = m else { panic!() };
        assert_eq!(select(&manifests, &p("linux/arm64"), "x").unwrap().size, 2);
        assert_eq!(select(&manifests, &p("linux/amd64"), "x").unwrap().size, 1);
        let e = select(&manifests, &p("linux/s390x"), "x").unwrap_err().to_string();
        assert!(e.contains("linux/amd64, linux/arm64/v8") && !e.contains("unknown"), "{e}");
    }

    #[test]
    fn schema1_is_refused_clearly() {
        assert!(parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err().to_string().contains("schema 1"));
    }
}
