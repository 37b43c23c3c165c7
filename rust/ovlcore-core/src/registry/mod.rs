//! Registries over the OCI distribution API: a [`Client`] holds the configuration, the credentials and
//! the token cache; `pull` streams blobs into layer directories, `push` streams layers out.

mod auth;
mod credentials;
mod fetch;
mod manifest;
mod parallel;
mod pull;
mod push;
mod reference;
mod transport;

use std::path::PathBuf;

use ureq::http::Response;
use ureq::Body;

pub use credentials::{erase as erase_credentials, lookup as lookup_credentials, store as store_credentials, Credential};
pub use fetch::Fetched;
pub use manifest::{Descriptor, Platform};
pub use pull::LayerPull;
pub use push::{KnownBlob, PushLayer, PushReport, PushedBlob};
pub use reference::Reference;

use crate::digest::sha256;
use crate::error::{Error, Result};
use auth::{parse_challenge, Auth};
use transport::{header, status_error, Payload, Transport};

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Hosts (`host[:port]`) that may be reached over plain HTTP when they do not speak TLS.
    pub insecure: Vec<String>,
    /// More `certs.d`-style directories (`DIR/HOST[:PORT]/*.crt`, or `DIR/*.crt` for every host).
    pub ca_dirs: Vec<PathBuf>,
    /// An auth file read first, and written by login and logout.
    pub auth_file: Option<PathBuf>,
    pub max_parallel: usize,
    pub retries: u32,
    /// First retry delay, doubled each time.
    pub backoff_ms: u64,
    pub timeout_s: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        RegistryConfig {
            insecure: Vec::new(),
            ca_dirs: Vec::new(),
            auth_file: None,
            max_parallel: 4,
            retries: 5,
            backoff_ms: env("OVLCORE_REGISTRY_BACKOFF_MS").unwrap_or(500),
            timeout_s: env("OVLCORE_REGISTRY_TIMEOUT_S").unwrap_or(30),
        }
    }
}

/// One transfer's progress: `state` is `waiting`, `downloading`, `uploading`, `verifying`,
/// `extracting`, `exists`, `mounted` or `done`.
#[derive(Clone, Debug)]
pub struct TransferEvent {
    pub digest: String,
    pub done: u64,
    pub total: Option<u64>,
    pub state: &'static str,
}

pub type TransferProgress<'a> = &'a (dyn Fn(TransferEvent) -> Result<()> + Sync);

/// An image as a registry describes it.
pub struct Resolved {
    /// The digest of the manifest the reference resolved to (the platform's, for an index).
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Descriptor>,
}

pub struct Client {
    transport: Transport,
    auth: Auth,
    /// Credentials given by the caller for this client's operations (instead of the files).
    explicit: Option<Credential>,
}

fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

impl Client {
    pub fn new(config: RegistryConfig, explicit: Option<Credential>) -> Client {
        Client { transport: Transport::new(config), auth: Auth::default(), explicit }
    }

    pub fn config(&self) -> &RegistryConfig {
        self.transport.config()
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        if self.explicit.is_some() {
            return Ok(self.explicit.clone());
        }
        credentials::lookup(registry, self.config().auth_file.as_deref())
    }

    /// `scheme://host/v2/<path>` for the registry `registry`.
    fn url(&self, registry: &str, path: &str) -> String {
        format!("{}/v2/{path}", self.transport.base(reference::api_host(registry)))
    }

    /// A request to a registry, authenticated for `scopes`: on a 401 with a challenge, authenticate
    /// and send once more (bodies that can be sent again only; a stream goes after authenticating).
    pub(crate) fn send(
        &self,
        registry: &str,
        scopes: &[String],
        method: &str,
        url: &str,
        headers: &[(String, String)],
        mut body: Payload<'_>,
    ) -> Result<(Response<Body>, String)> {
        let host = reference::api_host(registry).to_string();
        let cred = self.credential(registry)?;
        // A stream cannot be sent twice: learn how the host authenticates first.
        if matches!(body, Payload::Stream(_)) && self.auth.challenge(&host).is_none() {
            self.ping(registry)?;
        }
        for attempt in 0..2 {
            let authz = self.auth.header(&self.transport, &host, scopes, cred.as_ref())?;
            let b = match &mut body {
                Payload::Empty => Payload::Empty,
                Payload::Bytes(d) => Payload::Bytes(d),
                Payload::Stream(s) => Payload::Stream(&mut **s),
            };
            let (resp, final_url) = self.transport.request(method, url, headers, authz.as_deref(), b)?;
            if resp.status().as_u16() != 401 || attempt == 1 || matches!(body, Payload::Stream(_)) {
                return Ok((resp, final_url));
            }
            let Some(ch) = header(&resp, "www-authenticate").and_then(|h| parse_challenge(&h)) else {
                return Ok((resp, final_url));
            };
            // Credentials were sent for this very challenge and refused. (Without any sent, another
            // thread may have learnt the challenge meanwhile: then try once with credentials.)
            if authz.is_some() && self.auth.challenge(&host).as_ref() == Some(&ch) {
                match ch {
                    // The token was refused (expired early?): fetch a fresh one once.
                    auth::Challenge::Bearer { .. } => self.auth.forget_token(&host, scopes),
                    auth::Challenge::Basic => return Ok((resp, final_url)),
                }
            }
            self.auth.remember(&host, ch);
        }
        unreachable!("the loop returns")
    }

    /// `GET /v2/`: learns how the registry authenticates (and whether it speaks TLS).
    pub(crate) fn ping(&self, registry: &str) -> Result<Response<Body>> {
        let host = reference::api_host(registry).to_string();
        let url = self.url(registry, "");
        let (resp, _) = self.transport.request("GET", &url, &[], None, Payload::Empty)?;
        if resp.status().as_u16() == 401 {
            if let Some(ch) = header(&resp, "www-authenticate").and_then(|h| parse_challenge(&h)) {
                self.auth.remember(&host, ch);
            }
        }
        Ok(resp)
    }

    /// Check that the registry accepts the credentials (`GET /v2/`, through the token flow when it
    /// uses tokens). An error (`Unauthorized` for refused credentials) when it does not.
    pub fn login(&self, registry: &str) -> Result<()> {
        let url = self.url(registry, "");
        let resp = self.ping(registry)?;
        if resp.status().is_success() {
            return Ok(());
        }
        let (resp, _) = self.send(registry, &[], "GET", &url, &[], Payload::Empty)?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(status_error(resp, &format!("login to {registry} failed")))
    }

    fn get_manifest(&self, r: &Reference, object: &str) -> Result<(Vec<u8>, Option<String>)> {
        let url = self.url(&r.registry, &format!("{}/manifests/{object}", r.repository));
        let hs = vec![("Accept".to_string(), manifest::accept())];
        let (resp, _) = self.send(&r.registry, &[scope(&r.repository, "pull")], "GET", &url, &hs, Payload::Empty)?;
        let s = resp.status().as_u16();
        if s == 404 {
            return Err(Error::NotFound(format!("{}:{object}: manifest unknown (no such image in the registry)", r.name())));
        }
        if !resp.status().is_success() {
            return Err(status_error(resp, &format!("fetching the manifest of {}:{object}", r.name())));
        }
        let ct = header(&resp, "content-type");
        let body = resp
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .map_err(|e| transport::net_error(&url, e))?;
        Ok((body, ct))
    }

    /// Small blobs (the config) read into memory, digest checked.
    fn get_blob_bytes(&self, r: &Reference, d: &Descriptor) -> Result<Vec<u8>> {
        let url = self.url(&r.registry, &format!("{}/blobs/{}", r.repository, d.digest));
        let (resp, _) = self.send(&r.registry, &[scope(&r.repository, "pull")], "GET", &url, &[], Payload::Empty)?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &format!("fetching blob {} of {}", d.digest, r.name())));
        }
        let body = resp.into_body().with_config().limit(64 << 20).read_to_vec().map_err(|e| transport::net_error(&url, e))?;
        if sha256(&body) != d.digest {
            return Err(Error::archive(format!("blob {} of {}: digest mismatch: it hashes to {}", d.digest, r.name(), sha256(&body))));
        }
        Ok(body)
    }

    /// The manifest, config and layers `r` names, for `platform` (default: this host's) when it names
    /// an index.
    pub fn resolve(&self, r: &Reference, platform: Option<&str>) -> Result<Resolved> {
        let want = match platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let (mut bytes, mut ct) = self.get_manifest(r, r.object())?;
        if let Some(d) = &r.digest {
            if &sha256(&bytes) != d {
                return Err(Error::archive(format!("the manifest of {} does not hash to its digest (it hashes to {})", r.name(), sha256(&bytes))));
            }
        }
        let mut digest = sha256(&bytes);
        for _ in 0..2 {
            let (mt, m) = manifest::parse(&bytes, ct.as_deref())?;
            match m {
                manifest::Manifest::Index { manifests } => {
                    let what = format!("{}:{}", r.name(), r.object());
                    let chosen = manifest::select(&manifests, &want, &what)?.digest.clone();
                    let (b, c) = self.get_manifest(r, &chosen)?;
                    if sha256(&b) != chosen {
                        return Err(Error::archive(format!("manifest {chosen} of {} does not hash to its digest", r.name())));
                    }
                    bytes = b;
                    ct = c;
                    digest = chosen;
                }
                manifest::Manifest::Image { config, layers } => {
                    let cfg = self.get_blob_bytes(r, &config)?;
                    return Ok(Resolved { manifest_digest: digest, manifest: bytes, media_type: mt, config: cfg, config_digest: config.digest, layers });
                }
            }
        }
        Err(Error::archive(format!("{}: an index inside an index inside an index", r.name())))
    }

    /// Stream each layer into its directory (see [`pull::pull_layers`]).
    pub fn pull_layers(&self, r: &Reference, jobs: &[LayerPull], privilege: crate::Privilege, progress: TransferProgress<'_>) -> Result<Vec<crate::ImportReport>> {
        pull::pull_layers(self, r, jobs, privilege, progress)
    }

    /// Push an image (see [`push::push_image`]).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &self,
        dest: &Reference,
        layers: &[PushLayer],
        config: &[u8],
        oci: bool,
        compression: crate::Compression,
        privilege: crate::Privilege,
        progress: TransferProgress<'_>,
    ) -> Result<PushReport> {
        push::push_image(self, dest, layers, config, oci, compression, privilege, progress)
    }
}
