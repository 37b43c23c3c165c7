//! Registries: a client made from the store's registry configuration, and the calls pull, push and
//! login make. Conversion only; the GIL is released around all network I/O.

use std::path::PathBuf;

use ovlcore_core::{
    Compression, Credential, Descriptor, Error, KnownBlob, LayerPull, Platform, PushLayer, Reference, RegistryClient as Core, RegistryConfig, TransferEvent,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::IntoPy;
use crate::view::parse_privilege;

/// `(media_type, digest, size, urls)`.
type PyDescriptor = (String, String, u64, Vec<String>);
/// A descriptor, then the staging directory, tar-split file, lower stack (top first), partial file.
type PyLayerPull = (String, String, u64, Vec<String>, PathBuf, Option<PathBuf>, Vec<PathBuf>, Option<PathBuf>);
/// Directory, tar-split file, lower stack (top first), diff_id, known `(digest, repository)` blobs.
type PyPushLayer = (PathBuf, Option<PathBuf>, Vec<PathBuf>, String, Vec<(String, String)>);

fn descriptor(d: &Descriptor) -> PyDescriptor {
    (d.media_type.clone(), d.digest.clone(), d.size, d.urls.clone())
}

/// A callback taking `(digest, done, total, state)`, called with the GIL taken again.
fn progress_fn(cb: Option<Py<PyAny>>) -> impl Fn(TransferEvent) -> ovlcore_core::Result<()> + Sync {
    move |e: TransferEvent| {
        let Some(cb) = &cb else { return Ok(()) };
        Python::attach(|py| {
            py.check_signals()?;
            cb.call1(py, (e.digest, e.done, e.total, e.state)).map(|_| ())
        })
        .map_err(|e| Error::External(Box::new(e)))
    }
}

/// Whether an image whose config names `os`/`architecture`/`variant` serves the platform `want`
/// (`os/arch[/variant]`), as a registry index entry would.
#[pyfunction]
#[pyo3(signature = (want, os, architecture, variant=None))]
pub fn platform_matches(want: &str, os: &str, architecture: &str, variant: Option<&str>) -> PyResult<bool> {
    Ok(Platform::parse(want).py()?.matches(&Platform::of_config(os, architecture, variant)))
}

/// `(registry, repository, tag, digest)` of a reference, normalized as Docker does.
#[pyfunction]
pub fn parse_reference(reference: &str) -> PyResult<(String, String, Option<String>, Option<String>)> {
    let r = Reference::parse(reference).py()?;
    Ok((r.registry, r.repository, r.tag, r.digest))
}

/// Save credentials for `registry` as `docker login` does; returns the file written.
#[pyfunction]
#[pyo3(signature = (registry, user, password, *, auth_file=None))]
pub fn store_credentials(py: Python<'_>, registry: &str, user: &str, password: &str, auth_file: Option<PathBuf>) -> PyResult<PathBuf> {
    py.detach(|| ovlcore_core::store_credentials(registry, user, password, auth_file.as_deref())).py()
}

/// Forget the credentials saved for `registry`; whether there were any.
#[pyfunction]
#[pyo3(signature = (registry, *, auth_file=None))]
pub fn erase_credentials(py: Python<'_>, registry: &str, auth_file: Option<PathBuf>) -> PyResult<bool> {
    py.detach(|| ovlcore_core::erase_credentials(registry, auth_file.as_deref())).py()
}

#[pyclass(module = "ovlcore._ovlcore", frozen)]
pub struct RegistryClient {
    inner: Core,
}

#[pymethods]
impl RegistryClient {
    #[new]
    #[pyo3(signature = (*, insecure=Vec::new(), ca_dirs=Vec::new(), auth_file=None, max_parallel=4, retries=5, username=None, password=None, identity_token=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        insecure: Vec<String>,
        ca_dirs: Vec<PathBuf>,
        auth_file: Option<PathBuf>,
        max_parallel: usize,
        retries: u32,
        username: Option<String>,
        password: Option<String>,
        identity_token: Option<String>,
    ) -> Self {
        let config = RegistryConfig { insecure, ca_dirs, auth_file, max_parallel, retries, ..RegistryConfig::default() };
        let cred = match (identity_token, username, password) {
            (Some(t), _, _) => Some(Credential::IdentityToken(t)),
            (None, Some(user), Some(password)) => Some(Credential::Basic { user, password }),
            _ => None,
        };
        RegistryClient { inner: Core::new(config, cred) }
    }

    /// The manifest, config and layers `reference` names (for `platform`, default this host's):
    /// a dict with `manifest_digest`, `media_type`, `manifest`, `config`, `config_digest`, `layers`.
    #[pyo3(signature = (reference, platform=None))]
    fn resolve<'py>(&self, py: Python<'py>, reference: &str, platform: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let r = Reference::parse(reference).py()?;
        let res = py.detach(|| self.inner.resolve(&r, platform)).py()?;
        let d = PyDict::new(py);
        d.set_item("manifest_digest", res.manifest_digest)?;
        d.set_item("media_type", res.media_type)?;
        d.set_item("manifest", PyBytes::new(py, &res.manifest))?;
        d.set_item("config", PyBytes::new(py, &res.config))?;
        d.set_item("config_digest", res.config_digest)?;
        d.set_item("layers", res.layers.iter().map(descriptor).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// Stream each layer's blob into its staging directory, several at a time; returns
    /// `(diff_id, content_size, tar_size)` per layer.
    #[pyo3(signature = (reference, layers, *, privilege="root", progress=None))]
    fn pull_layers(&self, py: Python<'_>, reference: &str, layers: Vec<PyLayerPull>, privilege: &str, progress: Option<Py<PyAny>>) -> PyResult<Vec<(String, u64, u64)>> {
        let r = Reference::parse(reference).py()?;
        let privilege = parse_privilege(privilege)?;
        let jobs: Vec<LayerPull> = layers
            .into_iter()
            .map(|(media_type, digest, size, urls, dest, split, lower, partial)| LayerPull {
                desc: Descriptor { media_type, digest, size, urls },
                dest,
                split,
                lower,
                partial,
            })
            .collect();
        let report = progress_fn(progress);
        let reps = py.detach(|| self.inner.pull_layers(&r, &jobs, privilege, &report)).py()?;
        Ok(reps.into_iter().map(|r| (r.diff_id, r.size, r.tar_size)).collect())
    }

    /// Push an image: layers bottom first, then the config, then the manifest (`format` `"docker"` or
    /// `"oci"`). Returns the manifest digest and, per layer, `(diff_id, digest, size, media_type, how)`.
    #[pyo3(signature = (dest, layers, config, *, format="docker", compression="gzip", privilege="root", progress=None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn push(
        &self,
        py: Python<'_>,
        dest: &str,
        layers: Vec<PyPushLayer>,
        config: Vec<u8>,
        format: &str,
        compression: Option<&str>,
        privilege: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(String, Vec<(String, String, u64, String, String)>)> {
        let r = Reference::parse(dest).py()?;
        let oci = match format {
            "docker" => false,
            "oci" => true,
            other => return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown manifest format {other:?} (use 'docker' or 'oci')"))),
        };
        let compression = Compression::parse(compression).py()?;
        let privilege = parse_privilege(privilege)?;
        let layers: Vec<PushLayer> = layers
            .into_iter()
            .map(|(dir, split, lower, diff_id, known)| PushLayer {
                dir,
                split,
                lower,
                diff_id,
                known: known.into_iter().map(|(digest, repository)| KnownBlob { digest, repository }).collect(),
            })
            .collect();
        let report = progress_fn(progress);
        let rep = py.detach(|| self.inner.push(&r, &layers, &config, oci, compression, privilege, &report)).py()?;
        let blobs = rep.layers.into_iter().map(|b| (b.diff_id, b.digest, b.size, b.media_type, b.how.to_string())).collect();
        Ok((rep.manifest_digest, blobs))
    }

    /// Check that `registry` accepts this client's credentials (`Unauthorized` when it does not).
    fn login(&self, py: Python<'_>, registry: &str) -> PyResult<()> {
        py.detach(|| self.inner.login(registry)).py()
    }

    /// `GET url` (no credentials) into the new file `dest` (mode 0600): (sha256 digest, size, Last-Modified).
    fn fetch(&self, py: Python<'_>, url: &str, dest: PathBuf) -> PyResult<(String, u64, Option<String>)> {
        let f = py.detach(|| self.inner.fetch(url, &dest)).py()?;
        Ok((f.digest, f.size, f.last_modified))
    }
}
