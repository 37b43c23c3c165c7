//! Core errors → Python exceptions: `OSError` subclasses (chosen by errno) carrying the container path,
//! and the `ovlcore.errors` classes for everything else.

use ovlcore_core::Error;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;

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
        Error::InvalidArchive(m) => Python::attach(|py| match py.import("ovlcore.errors").and_then(|m| m.getattr("InvalidArchive")) {
            Ok(cls) => PyErr::from_type(cls.cast_into().expect("a class"), m),
            Err(e) => e,
        }),
        Error::Invalid(m) => PyValueError::new_err(m),
        Error::Cancelled => PyKeyboardInterrupt::new_err("operation cancelled"),
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
