//! Image archives (`images.save` / `images.load`): reading an archive's members, importing layers
//! straight from them, and writing the outer tar of a save.

use std::path::PathBuf;
use std::sync::Mutex;

use ovlcore_core::{Archive as CoreArchive, ArchiveWriter as CoreWriter, Error, ImportOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPy;
use crate::io::{ArchiveInput, Output, Progress, Sink, Source};
use crate::layers::{lower_stack, split_file, TarStream};
use crate::view::parse_privilege;

/// The members of an image archive: a tar file (plain, gzip or zstd), a binary file object, or an OCI
/// layout directory. What cannot be read in place (compressed, or a stream) is spooled, decompressed, to
/// the new file `spool`.
#[pyclass(module = "ovlcore._ovlcore", frozen)]
pub struct Archive {
    inner: CoreArchive,
}

#[pymethods]
impl Archive {
    #[new]
    #[pyo3(signature = (source, *, spool))]
    fn new(py: Python<'_>, source: Source, spool: PathBuf) -> PyResult<Archive> {
        let label = match &source {
            Source::Path(p) => p.display().to_string(),
            Source::File(obj) => obj.bind(py).getattr("name").and_then(|n| n.str()).map(|s| s.to_string()).unwrap_or_else(|_| "archive".into()),
        };
        let input = ArchiveInput::new(py, source)?;
        py.detach(|| match input {
            ArchiveInput::Path(p) => CoreArchive::open(&p, &spool),
            ArchiveInput::File(f) => CoreArchive::from_file(f, &spool),
            ArchiveInput::Stream(r) => CoreArchive::from_stream(r, &spool),
        })
        .map(|inner| Archive { inner })
        .map_err(|e| e.about(&label))
        .py()
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }

    /// The size of the regular member `name`, or `None` when the archive has no such member.
    fn size(&self, name: &str) -> Option<u64> {
        self.inner.size(name)
    }

    /// The whole member `name`, refused when larger than `limit` bytes.
    fn read<'py>(&self, py: Python<'py>, name: &str, limit: u64) -> PyResult<Bound<'py, PyBytes>> {
        let data = py.detach(|| self.inner.read(name, limit)).py()?;
        Ok(PyBytes::new(py, &data))
    }

    /// Import the layer tar held by member `name` into the empty directory `dest`; `progress` gets the
    /// member bytes read. Returns `(diff_id, content_size, tar_size, blob_digest)`.
    #[pyo3(signature = (name, dest, *, tarsplit=None, lower=Vec::new(), privilege="root", progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn import_layer(
        &self,
        py: Python<'_>,
        name: &str,
        dest: PathBuf,
        tarsplit: Option<PathBuf>,
        lower: Vec<PathBuf>,
        privilege: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(String, u64, u64, String)> {
        let privilege = parse_privilege(privilege)?;
        let progress = Progress::new(progress);
        py.detach(|| {
            let lower = lower_stack(&lower, privilege)?;
            let mut report = |n: u64| progress.report(n);
            let opts = ImportOptions { privilege, lower: lower.as_deref(), max_size: None, progress: Some(&mut report) };
            let got = self.inner.import_layer(name, &dest, split_file(&tarsplit)?, opts)?;
            Ok((got.report.diff_id, got.report.size, got.report.tar_size, got.blob_digest))
        })
        .py()
    }
}

/// Writes an image archive's outer tar into the binary file object `dest` (through its descriptor when
/// it has a real one), on a helper thread. `progress` gets the bytes written. [`ArchiveWriter::close`]
/// ends the archive; a writer dropped without it leaves the archive unfinished.
#[pyclass(module = "ovlcore._ovlcore", frozen)]
pub struct ArchiveWriter {
    inner: Mutex<Option<CoreWriter<Sink>>>,
    dest: Output,
}

impl ArchiveWriter {
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut CoreWriter<Sink>) -> ovlcore_core::Result<T> + Send) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.inner.lock().unwrap();
            let writer = guard.as_mut().ok_or_else(|| Error::Invalid("the archive writer is closed".into()))?;
            f(writer)
        })
        .py()
    }
}

#[pymethods]
impl ArchiveWriter {
    #[new]
    #[pyo3(signature = (dest, *, progress=None))]
    fn new(py: Python<'_>, dest: Py<PyAny>, progress: Option<Py<PyAny>>) -> PyResult<ArchiveWriter> {
        let mut dest = Output::new(py, dest)?;
        let progress = Progress::new(progress);
        // Reports come per member and per 4 MiB: each one is passed on (the last one too).
        let writer = CoreWriter::new(dest.sink(py), Some(Box::new(move |n| progress.report_now(n)))).py()?;
        Ok(ArchiveWriter { inner: Mutex::new(Some(writer)), dest })
    }

    /// The directory `name` (written once, however often it is added).
    fn add_dir(&self, py: Python<'_>, name: &str, mtime: i64) -> PyResult<()> {
        self.with(py, |w| w.add_dir(name, mtime))
    }

    fn add_bytes(&self, py: Python<'_>, name: &str, data: &[u8], mtime: i64) -> PyResult<()> {
        self.with(py, |w| w.add_bytes(name, data, mtime))
    }

    /// The rest of `stream` as member `name`, which must be exactly `size` bytes (else `CorruptStore`).
    fn add_stream(&self, py: Python<'_>, name: &str, size: u64, stream: PyRef<'_, TarStream>, mtime: i64) -> PyResult<()> {
        let stream = &stream.inner;
        self.with(py, |w| w.add_stream(name, size, &mut *stream.lock().unwrap(), mtime))
    }

    /// The content of the host file `path` as member `name`.
    fn add_file(&self, py: Python<'_>, name: &str, path: PathBuf, mtime: i64) -> PyResult<()> {
        self.with(py, |w| {
            let file = std::fs::File::open(&path).map_err(|e| Error::from(e).at(path.as_os_str()))?;
            w.add_file(name, file, mtime)
        })
    }

    /// Bytes written so far.
    #[getter]
    fn written(&self) -> u64 {
        self.inner.lock().unwrap().as_ref().map(|w| w.written()).unwrap_or(0)
    }

    /// Give up on an unfinished archive (after a failure): nothing more is written once this returns.
    fn abort(&self, py: Python<'_>) {
        if let Some(writer) = self.inner.lock().unwrap().take() {
            py.detach(|| writer.abort());
            self.dest.done(py);
        }
    }

    /// Write the end of the archive and wait until everything is written.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let writer = self.inner.lock().unwrap().take().ok_or_else(|| PyValueError::new_err("the archive writer is closed"))?;
        let done = py.detach(|| writer.finish());
        self.dest.done(py);
        done.map(|_| ()).py()
    }
}
