//! One error type for the whole core: an OS error carrying errno and the path it is about, or one of the
//! few non-OS failures (bad input, a damaged store, bad arguments, an error raised by the caller's own
//! code). The binding maps each to a Python class.

use std::ffi::OsString;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An operating-system error: `errno`, the (container or host) path it is about, and for two-path
    /// operations the second path.
    Os { errno: i32, path: Option<OsString>, path2: Option<OsString> },
    /// A malformed, hostile or inconsistent archive or layer stream (input from outside the store).
    InvalidArchive(String),
    /// Input that ends too soon: `what` ended after `got` of its `expected` bytes (either count is `None`
    /// where the format does not say, e.g. inside a tar header or a compressed frame).
    Truncated { what: String, expected: Option<u64>, got: Option<u64> },
    /// The store itself is damaged: a layer's files no longer match its tar-split records or recorded
    /// size, or its content no longer hashes to its digest.
    Corrupt(String),
    /// A bad argument (not an OS failure), e.g. an unknown compression name.
    Invalid(String),
    /// A registry answered with an error (`status`, and the `code` and message of its error body), or
    /// could not be reached (`status` is `None`).
    Registry { status: Option<u16>, code: Option<String>, message: String },
    /// A registry refused the credentials (or their absence).
    Unauthorized(String),
    /// A registry has no such manifest, tag or platform.
    NotFound(String),
    /// An error raised by code the caller supplied (a progress callback, a reader, a writer), carried
    /// through the core untouched so that the caller gets it back as it was.
    External(Box<dyn std::error::Error + Send + Sync>),
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

    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }

    /// `what` ended after `got` of its `expected` bytes.
    pub fn truncated(what: impl Into<String>, expected: u64, got: u64) -> Self {
        Error::Truncated { what: what.into(), expected: Some(expected), got: Some(got) }
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

    /// Say which input a message about malformed or truncated input is about (`entry "x": ...`).
    pub fn about(self, what: &str) -> Self {
        match self {
            Error::InvalidArchive(m) => Error::InvalidArchive(format!("{what}: {m}")),
            Error::Truncated { what: w, expected, got } => Error::Truncated { what: format!("{what}: {w}"), expected, got },
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
            Error::Truncated { what, expected, got } => {
                write!(f, "{what} is truncated")?;
                match (got, expected) {
                    (Some(g), Some(e)) => write!(f, ": it ends after {g} of its {e} bytes"),
                    (Some(g), None) => write!(f, ": it ends after {g} bytes"),
                    _ => Ok(()),
                }
            }
            Error::Corrupt(m) => write!(f, "the store is damaged: {m}"),
            Error::Invalid(m) => f.write_str(m),
            Error::Registry { status: Some(s), message, .. } => write!(f, "registry error (HTTP {s}): {message}"),
            Error::Registry { status: None, message, .. } => write!(f, "registry error: {message}"),
            Error::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            Error::NotFound(m) => f.write_str(m),
            Error::External(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if let Some(errno) = e.raw_os_error() {
            return Error::errno(errno);
        }
        // Errors raised by readers/writers (tar parsing, decompression) without an errno.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Error::Truncated { what: "the stream".into(), expected: None, got: None };
        }
        match e.into_inner() {
            Some(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::archive(other.to_string()),
            },
            None => Error::archive("malformed data"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_errors_survive_a_trip_through_io_error() {
        let e: Error = io::Error::from(Error::corrupt("x")).into();
        assert!(matches!(e, Error::Corrupt(m) if m == "x"));
        let e: Error = io::Error::from(Error::errno(libc::ENOENT)).into();
        assert!(e.is_errno(libc::ENOENT));
        let ext = Error::External(Box::new(io::Error::other("mine")));
        let back: Error = io::Error::from(ext).into();
        assert!(matches!(back, Error::External(e) if e.to_string() == "mine"));
    }

    #[test]
    fn an_early_end_is_typed() {
        let e: Error = io::Error::from(io::ErrorKind::UnexpectedEof).into();
        assert!(matches!(e, Error::Truncated { expected: None, .. }));
        let e = Error::truncated("member \"a\"", 10, 4).about("archive x");
        assert_eq!(e.to_string(), "archive x: member \"a\" is truncated: it ends after 4 of its 10 bytes");
    }
}
