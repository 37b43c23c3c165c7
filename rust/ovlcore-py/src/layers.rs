//! Layer tar streams in and out.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ovlcore_core::compress::{Compression, Compressor};
use ovlcore_core::digest::Hasher;
use ovlcore_core::layer::{import_layer as core_import, ImportOptions, LayerTar};
use ovlcore_core::union::Lower;
use ovlcore_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPy;
use crate::io::{Progress, PyReader};
use crate::view::parse_privilege;

/// Where layer bytes come from: a host file (read without the GIL) or a Python file object.
#[derive(FromPyObject)]
pub enum Source {
    Path(PathBuf),
    File(Py<PyAny>),
}

/// The Python exception a source raised, kept to be re-raised unchanged.
pub type SourceError = std::sync::Arc<std::sync::Mutex<Option<PyErr>>>;

impl Source {
    pub fn reader(self) -> PyResult<(Box<dyn Read + Send>, SourceError)> {
        Ok(match self {
            Source::Path(p) => (Box::new(File::open(&p).map_err(|e| Error::from(e).at(p.as_os_str())).py()?), Default::default()),
            Source::File(obj) => {
                let r = PyReader::new(obj);
                let slot = r.error_slot();
                (Box::new(r), slot)
            }
        })
    }
}

/// Map a core error, preferring the exception the Python source raised when that is what failed.
pub fn source_result<T>(r: Result<T, Error>, slot: &SourceError) -> PyResult<T> {
    r.map_err(|e| slot.lock().unwrap().take().unwrap_or_else(|| crate::errors::to_py(e)))
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
    let (reader, failure) = source.reader()?;
    let progress = Progress::new(progress);
    let result = py.detach(|| {
        let lower = if lower.is_empty() { None } else { Some(Lower::shared(&lower, privilege)?) };
        let split = match &tarsplit {
            Some(p) => Some(File::create(p).map_err(|e| Error::from(e).at(p.as_os_str()))?),
            None => None,
        };
        let mut report = |n: u64| progress.report(n);
        let opts = ImportOptions { privilege, lower: lower.as_deref(), max_size, progress: Some(&mut report) };
        let r = core_import(reader, &dest, split, opts)?;
        Ok((r.diff_id, r.size, r.tar_size))
    });
    source_result(result, &failure)
}

struct StreamState {
    /// The compressed (or plain) bytes, read from the tar producer through the encoder.
    out: Box<dyn Read + Send>,
    /// Digest of the bytes handed out (the blob digest).
    blob: Hasher,
    /// False for an uncompressed stream: its blob digest is the tar digest, so only count the bytes.
    hash_blob: bool,
    tar: Arc<Mutex<Option<String>>>,
}

/// A readable layer tar stream (optionally compressed), produced while it is read.
#[pyclass(module = "ovlcore._ovlcore")]
pub struct TarStream {
    state: Mutex<StreamState>,
    finished: bool,
}

/// Records the tar digest once the producer is exhausted. The sha256 (the slowest part of producing a
/// plain stream) runs on a helper thread fed with copies of the bytes, so it overlaps with the producing.
struct DigestOnEnd {
    tar: LayerTar,
    slot: Arc<Mutex<Option<String>>>,
    hasher: Option<BackgroundHasher>,
}

impl Read for DigestOnEnd {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tar.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if n == 0 && !buf.is_empty() {
            if let Some(h) = self.hasher.take() {
                *self.slot.lock().unwrap() = Some(h.finish());
            } else if self.tar.has_digest() {
                *self.slot.lock().unwrap() = Some(self.tar.digest());
            }
        }
        Ok(n)
    }
}

/// Bytes handed to the hashing thread at a time.
const HASH_BATCH: usize = 4 << 20;

/// A sha256 computed on its own thread from batches of copied bytes (a few batches in flight at most).
struct BackgroundHasher {
    batch: Vec<u8>,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: std::thread::JoinHandle<Hasher>,
}

impl BackgroundHasher {
    /// None when no thread can be started (the caller then hashes inline).
    fn start() -> Option<BackgroundHasher> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("ovlcore-sha256".into())
            .spawn(move || {
                let mut h = Hasher::default();
                for buf in full_rx {
                    h.update(&buf);
                    // The producer may be gone already: then nobody needs the buffer back.
                    let _ = empty_tx.send(buf);
                }
                h
            })
            .ok()?;
        Some(BackgroundHasher { batch: Vec::with_capacity(HASH_BATCH), full: Some(full_tx), empty: empty_rx, worker })
    }

    fn update(&mut self, data: &[u8]) {
        self.batch.extend_from_slice(data);
        if self.batch.len() >= HASH_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = match self.empty.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(HASH_BATCH),
        };
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.full {
            // Fails only if the worker died (it cannot, short of a panic, reported by join below).
            let _ = tx.send(full);
        }
    }

    fn finish(mut self) -> String {
        self.flush();
        drop(self.full.take());
        self.worker.join().expect("hashing thread panicked").digest()
    }
}

#[pymethods]
impl TarStream {
    /// Read up to `size` bytes (all remaining when negative).
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&mut self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.state;
        let data = py
            .detach(|| -> Result<Vec<u8>, Error> {
                let mut st = state.lock().unwrap();
                let mut out = Vec::new();
                if size < 0 {
                    st.out.read_to_end(&mut out)?;
                } else {
                    out.resize(size as usize, 0);
                    let mut filled = 0;
                    while filled < out.len() {
                        let n = st.out.read(&mut out[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    out.truncate(filled);
                }
                if st.hash_blob {
                    st.blob.update(&out);
                } else {
                    st.blob.count += out.len() as u64;
                }
                Ok(out)
            })
            .py()?;
        // The end: an empty read, a read of everything, or a read that came back short.
        if size < 0 || (size != 0 && (data.len() as i64) < size) {
            self.finished = true;
        }
        Ok(PyBytes::new(py, &data))
    }

    /// Write the rest of the stream, or exactly `size` more bytes of it, to the file descriptor `fd`
    /// without the GIL, producing the next chunk while the previous one is written. Returns the count.
    #[pyo3(signature = (fd, size=None, *, progress=None))]
    fn copy_to(&mut self, py: Python<'_>, fd: i32, size: Option<u64>, progress: Option<Py<PyAny>>) -> PyResult<u64> {
        let progress = Progress::new(progress);
        let state = &self.state;
        let (n, end) = py
            .detach(|| {
                let mut guard = state.lock().unwrap();
                let st = &mut *guard;
                let mut read = |buf: &mut [u8]| -> Result<usize, Error> {
                    let mut filled = 0;
                    while filled < buf.len() {
                        let n = st.out.read(&mut buf[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    if st.hash_blob {
                        st.blob.update(&buf[..filled]);
                    } else {
                        st.blob.count += filled as u64;
                    }
                    Ok(filled)
                };
                crate::archive::copy_to_fd(&mut read, fd, size, &progress)
            })
            .py()?;
        if end {
            self.finished = true;
        }
        Ok(n)
    }

    fn readable(&self) -> bool {
        true
    }

    /// The diff_id (sha256 of the uncompressed tar), once the stream has been read to its end.
    #[getter]
    fn diff_id(&self) -> Option<String> {
        self.state.lock().unwrap().tar.lock().unwrap().clone()
    }

    /// The digest of the bytes read (the blob digest), once the stream has been read to its end.
    #[getter]
    fn digest(&self) -> Option<String> {
        if !self.finished {
            return None;
        }
        let st = self.state.lock().unwrap();
        if st.hash_blob {
            Some(st.blob.digest())
        } else {
            st.tar.lock().unwrap().clone()
        }
    }

    /// Bytes handed out so far.
    #[getter]
    fn size(&self) -> u64 {
        self.state.lock().unwrap().blob.count
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
    let compression = Compression::parse(compression).py()?;
    let tar = py
        .detach(|| -> Result<LayerTar, Error> {
            match &tarsplit {
                Some(s) => LayerTar::from_split(&dir, File::open(s).map_err(|e| Error::from(e).at(s.as_os_str()))?),
                None => {
                    let lower = if lower.is_empty() { None } else { Some(Lower::shared(&lower, privilege)?) };
                    LayerTar::walk(&dir, privilege, lower)
                }
            }
        })
        .py()?;
    make_stream(if digest { tar } else { tar.without_digest() }, compression.name())
}

/// Wrap a tar producer into a Python-readable stream, compressing on the way when asked.
pub fn make_stream(tar: LayerTar, compression: Option<&str>) -> PyResult<TarStream> {
    let compression = Compression::parse(compression).py()?;
    let slot = Arc::new(Mutex::new(None));
    // Hash on a helper thread when the stream is to be hashed at all.
    let hasher = if tar.has_digest() { BackgroundHasher::start() } else { None };
    let tar = if hasher.is_some() { tar.without_digest() } else { tar };
    let plain = DigestOnEnd { tar, slot: slot.clone(), hasher };
    let hash_blob = compression != Compression::None;
    let out: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(plain),
        c => Box::new(Compressor::new(plain, c).py()?),
    };
    Ok(TarStream { state: Mutex::new(StreamState { out, blob: Hasher::default(), hash_blob, tar: slot }), finished: false })
}
