//! Python objects as the core's byte sources and sinks, and progress reports back to Python, from code
//! running without the GIL. An exception raised by the caller's object or callback travels through the
//! core as [`Error::External`] and reaches the caller unchanged.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use ovlcore_core::Error;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPy;

fn external(e: PyErr) -> Error {
    Error::External(Box::new(e))
}

/// A `Read` over a Python binary file object (anything with `read(n)`); takes the GIL per chunk.
pub struct PyReader {
    obj: Py<PyAny>,
}

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Python::attach(|py| {
            py.check_signals()?;
            let chunk = self.obj.call_method1(py, "read", (buf.len(),))?;
            let bytes = chunk.bind(py).cast::<PyBytes>().map_err(|_| PyTypeError::new_err("read() must return bytes"))?;
            let data = bytes.as_bytes();
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            Ok(n)
        })
        .map_err(|e: PyErr| io::Error::other(external(e)))
    }
}

/// A `Write` into a Python binary file object (anything with `write(b)`); takes the GIL per chunk.
pub struct PyWriter {
    obj: Py<PyAny>,
}

impl Write for PyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Python::attach(|py| {
            let n = self.obj.call_method1(py, "write", (PyBytes::new(py, buf),))?;
            // A raw file may write less (and say how much); a buffered one writes everything.
            Ok(if n.is_none(py) { buf.len() } else { n.extract::<usize>(py)?.min(buf.len()) })
        })
        .map_err(|e: PyErr| io::Error::other(external(e)))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The host file behind a Python file object, when reading or writing its descriptor directly is the
/// same as calling it: a `FileIO`, or a buffered reader/writer over one.
fn fd_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Option<i32>> {
    let io = py.import("io")?;
    let raw = if obj.is_instance(&io.getattr("FileIO")?)? {
        obj.clone()
    } else if obj.is_instance(&io.getattr("BufferedReader")?)?
        || obj.is_instance(&io.getattr("BufferedWriter")?)?
        || obj.is_instance(&io.getattr("BufferedRandom")?)?
    {
        obj.getattr("raw")?
    } else {
        return Ok(None);
    };
    if !raw.is_instance(&io.getattr("FileIO")?)? || raw.getattr("closed")?.is_truthy()? {
        return Ok(None);
    }
    Ok(Some(raw.call_method0("fileno")?.extract()?))
}

/// A descriptor of our own on the same open file (same offset), as a `File`.
fn dup(fd: i32) -> PyResult<File> {
    // SAFETY: `fd` belongs to a live Python file object for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let own: OwnedFd = rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(Error::from).py()?;
    Ok(File::from(own))
}

/// Where bytes go: a Python binary file object, written through its descriptor when it has a real one.
pub struct Output {
    obj: Py<PyAny>,
    fd: Option<File>,
    direct: bool,
}

/// What an [`Output`] writes to, owned by the writing thread.
pub enum Sink {
    File(File),
    Python(PyWriter),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Python(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Output {
    pub fn new(py: Python<'_>, obj: Py<PyAny>) -> PyResult<Output> {
        let bound = obj.bind(py);
        let fd = match fd_of(py, bound)? {
            Some(fd) => {
                // What the object buffered goes first.
                bound.call_method0("flush")?;
                Some(dup(fd)?)
            }
            None => None,
        };
        let direct = fd.is_some();
        Ok(Output { obj, fd, direct })
    }

    pub fn sink(&mut self, py: Python<'_>) -> Sink {
        match self.fd.take() {
            Some(f) => Sink::File(f),
            None => Sink::Python(PyWriter { obj: self.obj.clone_ref(py) }),
        }
    }

    /// After writing through the descriptor: let a buffered object learn its new position (not
    /// possible, nor needed, on a pipe).
    pub fn done(&self, py: Python<'_>) {
        if self.direct {
            let _ = self.obj.call_method1(py, "seek", (0, 1));
        }
    }
}

/// Where bytes come from: a host file (read without the GIL) or a Python file object.
#[derive(FromPyObject)]
pub enum Source {
    Path(PathBuf),
    File(Py<PyAny>),
}

impl Source {
    pub fn reader(self) -> PyResult<Box<dyn Read + Send>> {
        Ok(match self {
            Source::Path(p) => Box::new(File::open(&p).map_err(|e| Error::from(e).at(p.as_os_str())).py()?),
            Source::File(obj) => Box::new(PyReader { obj }),
        })
    }
}

/// An archive to read: a path, a file object whose descriptor can be read by position from its
/// start, or a stream.
pub enum ArchiveInput {
    Path(PathBuf),
    File(File),
    Stream(PyReader),
}

impl ArchiveInput {
    pub fn new(py: Python<'_>, source: Source) -> PyResult<ArchiveInput> {
        let obj = match source {
            Source::Path(p) => return Ok(ArchiveInput::Path(p)),
            Source::File(obj) => obj,
        };
        let bound = obj.bind(py);
        if let Some(fd) = fd_of(py, bound)? {
            let seekable = bound.call_method0("seekable")?.is_truthy()?;
            if seekable && bound.call_method0("tell")?.extract::<u64>()? == 0 {
                return Ok(ArchiveInput::File(dup(fd)?));
            }
        }
        Ok(ArchiveInput::Stream(PyReader { obj }))
    }
}

/// Calls an optional Python callback with a byte count, and lets pending signals (Ctrl-C) stop the
/// work. Takes the GIL at most every few milliseconds, whatever the rate of reports.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    last_done: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Progress { callback, last: std::sync::Mutex::new(None), last_done: std::sync::atomic::AtomicU64::new(u64::MAX) }
    }

    /// The final count, reported unless it was the last one reported (the rate limit may have
    /// dropped it).
    pub fn finish(&self, done: u64) -> ovlcore_core::Result<()> {
        if self.last_done.load(std::sync::atomic::Ordering::Relaxed) == done {
            return Ok(());
        }
        self.report_now(done)
    }

    pub fn report(&self, done: u64) -> ovlcore_core::Result<()> {
        {
            let mut last = self.last.lock().unwrap();
            let now = std::time::Instant::now();
            if matches!(*last, Some(t) if now.duration_since(t) < std::time::Duration::from_millis(20)) {
                return Ok(());
            }
            *last = Some(now);
        }
        self.report_now(done)
    }

    /// Report `done` however recent the last report was (for reports that come at a bounded rate).
    pub fn report_now(&self, done: u64) -> ovlcore_core::Result<()> {
        self.last_done.store(done, std::sync::atomic::Ordering::Relaxed);
        Python::attach(|py| {
            py.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py, (done,))?;
            }
            Ok(())
        })
        .map_err(external)
    }
}
