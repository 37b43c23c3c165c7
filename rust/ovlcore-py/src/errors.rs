//! Core errors → Python exceptions: `OSError` subclasses (chosen by errno) carrying the container path,
//! the `ovlcore.errors` classes for bad input and a damaged store, and the caller's own exceptions
//! (raised by a source, a destination or a progress callback) as they were.

use ovlcore_core::Error;
use pyo3::exceptions::{PyOSError, PyPermissionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// An instance of the `ovlcore.errors` class `name`, made with `args`.
fn ovl_error<A: for<'py> pyo3::call::PyCallArgs<'py>>(name: &str, args: A) -> PyErr {
    Python::attach(|py| {
        let made = py.import("ovlcore.errors").and_then(|m| m.getattr(name)).and_then(|cls| cls.call1(args));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    })
}

pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::Os { errno, path, path2 } => {
            let msg = std::io::Error::from_raw_os_error(errno).to_string();
            // OSError(errno, strerror, filename, winerror, filename2) picks FileNotFoundError & co itself.
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
            // Python picks no subclass for EROFS; a read-only file system or mount is a permission matter.
            if errno == libc::EROFS {
                return match path {
                    Some(p) => PyPermissionError::new_err((errno, msg, p)),
                    None => PyPermissionError::new_err((errno, msg)),
                };
            }
            match (path, path2) {
                (Some(p), Some(q)) => PyOSError::new_err((errno, msg, p, Option::<i32>::None, q)),
                (Some(p), None) => PyOSError::new_err((errno, msg, p)),
                _ => PyOSError::new_err((errno, msg)),
            }
        }
        Error::InvalidArchive(m) => ovl_error("InvalidArchive", (m,)),
        e @ Error::Truncated { .. } => {
            let Error::Truncated { expected, got, .. } = &e else { unreachable!() };
            let (expected, got) = (*expected, *got);
            ovl_error("TruncatedArchive", (e.to_string(), expected, got))
        }
        e @ Error::Corrupt(_) => ovl_error("CorruptStore", (e.to_string(),)),
        Error::Invalid(m) => PyValueError::new_err(m),
        e @ Error::Registry { .. } => {
            let Error::Registry { status, code, .. } = &e else { unreachable!() };
            let (status, code) = (*status, code.clone());
            ovl_error("RegistryError", (e.to_string(), status, code))
        }
        e @ Error::Unauthorized(_) => ovl_error("Unauthorized", (e.to_string(), 401, "UNAUTHORIZED")),
        Error::NotFound(m) => ovl_error("ImageNotFound", (m,)),
        Error::External(e) => match e.downcast::<PyErr>() {
            Ok(py) => *py,
            Err(other) => PyRuntimeError::new_err(other.to_string()),
        },
    }
}

/// `result.py()?` in binding code.
pub trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
