//! One error type for the whole core: an OS error carrying errno and the path it is about, or one of the
//! few non-OS failures (bad archives, bad arguments, cancellation). The binding maps each to a Python class.

use std::ffi::OsString;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An operating-system error: `errno`, the (container or host) path it is about, and for two-path
    /// operations the second path.
    Os { errno: i32, path: Option<OsString>, path2: Option<OsString> },
    /// A malformed, hostile or inconsistent archive or layer stream.
    InvalidArchive(String),
    /// A bad argument (not an OS failure), e.g. an unknown compression name.
    Invalid(String),
    /// The caller asked to stop (Ctrl-C); nothing half-made is left behind.
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn os(errno: i32, path: impl Into<OsString>) -> Self {
        Error::Os { errno, path: Some(path.into()), path2: None }
    }

    pub fn errno(errno: i32) -> Self {
        Error::Os { errno, path: None, path2: None }
    }

    pub fn archive(msg: impl Into<String>) -> Self {
        Error::InvalidArchive(msg.into())
    }

    /// Attach a path to an OS error that has none yet (the innermost path wins).
    pub fn at(self, path: impl Into<OsString>) -> Self {
        match self {
            Error::Os { errno, path: None, path2 } => Error::Os { errno, path: Some(path.into()), path2 },
            other => other,
        }
    }

    /// Attach a second path (rename, link) to an OS error.
    pub fn at2(self, path: impl Into<OsString>, path2: impl Into<OsString>) -> Self {
        match self {
            Error::Os { errno, path: None, .. } => {
                Error::Os { errno, path: Some(path.into()), path2: Some(path2.into()) }
            }
            other => other,
        }
    }

    pub fn raw_errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn is_errno(&self, e: i32) -> bool {
        self.raw_errno() == Some(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { errno, path, path2 } => {
                let msg = io::Error::from_raw_os_error(*errno);
                match (path, path2) {
                    (Some(p), Some(q)) => write!(f, "{msg}: {:?} -> {:?}", p, q),
                    (Some(p), None) => write!(f, "{msg}: {:?}", p),
                    _ => write!(f, "{msg}"),
                }
            }
            Error::InvalidArchive(m) => write!(f, "invalid archive: {m}"),
            Error::Invalid(m) => f.write_str(m),
            Error::Cancelled => f.write_str("operation cancelled"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Error::errno(errno),
            // Errors raised by readers/writers (tar parsing, decompression) without an errno.
            None => match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::archive("unexpected end of data (truncated archive)"),
                io::ErrorKind::Interrupted => Error::Cancelled,
                _ => match e.into_inner() {
                    Some(inner) => match inner.downcast::<Error>() {
                        Ok(ours) => *ours,
                        Err(other) => Error::archive(other.to_string()),
                    },
                    None => Error::archive("malformed data"),
                },
            },
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::errno(e.raw_os_error())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os { errno, path: None, .. } => io::Error::from_raw_os_error(errno),
            other => io::Error::other(other),
        }
    }
}

/// `result.at(path)` on any result whose error converts into ours.
pub trait Context<T> {
    fn at(self, path: impl Into<OsString>) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn at(self, path: impl Into<OsString>) -> Result<T> {
        self.map_err(|e| e.into().at(path))
    }
}
