//! Layer tar streams in and out.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use ovlcore_core::{import_layer as core_import, Compression, Error, ImportOptions, LayerStream, LayerTar, Lower};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPy;
use crate::io::{Output, Progress, Sink, Source};
use crate::view::parse_privilege;

/// The stack below a layer (top first), or none.
pub fn lower_stack(paths: &[PathBuf], privilege: ovlcore_core::Privilege) -> ovlcore_core::Result<Option<std::sync::Arc<Lower>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    Lower::shared(paths, privilege).map(Some)
}

/// A new file for tar-split records, when asked for.
pub fn split_file(path: &Option<PathBuf>) -> ovlcore_core::Result<Option<File>> {
    path.as_ref().map(|p| File::create(p).map_err(|e| Error::from(e).at(p.as_os_str()))).transpose()
}

/// Import an OCI layer tar (plain, gzip or zstd) into the empty directory `dest`.
/// Returns `(diff_id, content_size, tar_size)`.
#[pyfunction]
#[pyo3(signature = (source, dest, *, tarsplit=None, lower=Vec::new(), privilege="root", max_size=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn import_layer(
    py: Python<'_>,
    source: Source,
    dest: PathBuf,
    tarsplit: Option<PathBuf>,
    lower: Vec<PathBuf>,
    privilege: &str,
    max_size: Option<u64>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, u64, u64)> {
    let privilege = parse_privilege(privilege)?;
    let reader = source.reader()?;
    let progress = Progress::new(progress);
    py.detach(|| {
        let lower = lower_stack(&lower, privilege)?;
        let mut report = |n: u64| progress.report(n);
        let opts = ImportOptions { privilege, lower: lower.as_deref(), max_size, progress: Some(&mut report) };
        let r = core_import(reader, &dest, split_file(&tarsplit)?, opts)?;
        Ok((r.diff_id, r.size, r.tar_size))
    })
    .py()
}

/// A readable layer tar stream (optionally compressed), produced while it is read.
#[pyclass(module = "ovlcore._ovlcore")]
pub struct TarStream {
    pub inner: Mutex<LayerStream>,
}

impl TarStream {
    pub fn new(tar: LayerTar, compression: Option<&str>) -> PyResult<TarStream> {
        let compression = Compression::parse(compression).py()?;
        Ok(TarStream { inner: Mutex::new(LayerStream::new(tar, compression).py()?) })
    }
}

#[pymethods]
impl TarStream {
    /// Read up to `size` bytes (all remaining when negative).
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let data = py
            .detach(|| -> Result<Vec<u8>, Error> {
                let mut st = self.inner.lock().unwrap();
                let mut out = Vec::new();
                if size < 0 {
                    st.read_to_end(&mut out)?;
                } else {
                    out.resize(size as usize, 0);
                    let mut filled = 0;
                    while filled < out.len() {
                        let n = st.read(&mut out[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    out.truncate(filled);
                }
                Ok(out)
            })
            .py()?;
        Ok(PyBytes::new(py, &data))
    }

    /// Write the rest of the stream to the binary file object `dest` (through its descriptor when it has
    /// a real one), producing the next chunk while the previous one is written. Returns the count.
    #[pyo3(signature = (dest, *, progress=None))]
    fn copy_to(&self, py: Python<'_>, dest: Py<PyAny>, progress: Option<Py<PyAny>>) -> PyResult<u64> {
        let mut out = Output::new(py, dest)?;
        let sink = out.sink(py);
        let progress = Progress::new(progress);
        let copied = py.detach(|| {
            let mut st = self.inner.lock().unwrap();
            let mut report = |n| progress.report(n);
            let n = match sink {
                Sink::File(f) => st.copy_to_file(f, &mut report)?,
                Sink::Python(w) => ovlcore_core::copy(&mut *st, w, &mut report)?.0,
            };
            progress.finish(n)?;
            Ok(n)
        });
        out.done(py);
        copied.py()
    }

    fn readable(&self) -> bool {
        true
    }

    /// The diff_id (sha256 of the uncompressed tar), once the stream has been read to its end.
    #[getter]
    fn diff_id(&self) -> Option<String> {
        self.inner.lock().unwrap().diff_id()
    }

    /// The digest of the bytes read (the blob digest), once the stream has been read to its end.
    #[getter]
    fn digest(&self) -> Option<String> {
        self.inner.lock().unwrap().digest()
    }

    /// Bytes handed out so far.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.lock().unwrap().bytes_out()
    }
}

/// A tar stream of a layer directory: replayed from `tarsplit` when given, else walked (with `lower`,
/// top first, deciding where whiteouts and opaque markers belong). With `digest=false` the stream is not
/// hashed (its `diff_id` stays `None`).
#[pyfunction]
#[pyo3(signature = (dir, *, tarsplit=None, lower=Vec::new(), privilege="root", compression=None, digest=true))]
pub fn layer_tar(
    py: Python<'_>,
    dir: PathBuf,
    tarsplit: Option<PathBuf>,
    lower: Vec<PathBuf>,
    privilege: &str,
    compression: Option<&str>,
    digest: bool,
) -> PyResult<TarStream> {
    let privilege = parse_privilege(privilege)?;
    let tar = py
        .detach(|| match &tarsplit {
            Some(s) => LayerTar::from_split(&dir, File::open(s).map_err(|e| Error::from(e).at(s.as_os_str()))?),
            None => LayerTar::walk(&dir, privilege, lower_stack(&lower, privilege)?),
        })
        .py()?;
    TarStream::new(if digest { tar } else { tar.without_digest() }, compression)
}
