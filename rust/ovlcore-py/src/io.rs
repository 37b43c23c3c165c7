//! Reading from Python objects and reporting progress back, from code running without the GIL.

use std::io::{self, Read};

use ovlcore_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A `Read` over a Python binary file object (anything with `read(n)`); takes the GIL per chunk. An
/// exception raised by the object is kept, so the caller can re-raise it as it was (see [`PyReader::take_error`]).
pub struct PyReader {
    obj: Py<PyAny>,
    error: std::sync::Arc<std::sync::Mutex<Option<PyErr>>>,
}

impl PyReader {
    pub fn new(obj: Py<PyAny>) -> Self {
        PyReader { obj, error: Default::default() }
    }

    /// A handle to the exception the source raised, if it raises one.
    pub fn error_slot(&self) -> std::sync::Arc<std::sync::Mutex<Option<PyErr>>> {
        self.error.clone()
    }
}

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Python::attach(|py| {
            py.check_signals().map_err(|_| io::Error::other(Error::Cancelled))?;
            let result = self.obj.call_method1(py, "read", (buf.len(),)).and_then(|chunk| {
                let bytes = chunk.bind(py).cast::<PyBytes>().map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err("the archive source's read() must return bytes")
                })?;
                let data = bytes.as_bytes();
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok(n)
            });
            result.map_err(|e| {
                let msg = e.to_string();
                *self.error.lock().unwrap() = Some(e);
                io::Error::other(format!("reading the source failed: {msg}"))
            })
        })
    }
}

/// Calls an optional Python callback with a byte count, and turns Ctrl-C into a clean cancellation.
/// Takes the GIL at most every few milliseconds, whatever the rate of reports.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Progress {
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Progress { callback, last: std::sync::Mutex::new(None) }
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
        Python::attach(|py| {
            py.check_signals().map_err(|_| Error::Cancelled)?;
            if let Some(cb) = &self.callback {
                cb.call1(py, (done,)).map_err(|e| {
                    if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                        Error::Cancelled
                    } else {
                        Error::Invalid(format!("progress callback failed: {e}"))
                    }
                })?;
            }
            Ok(())
        })
    }
}
