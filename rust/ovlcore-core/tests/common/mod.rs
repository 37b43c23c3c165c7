//! What every core test shares: the only place that names the core's items (so a change of module paths
//! is a change of this file), error matchers, a tar builder, layer stacks with views and containers over
//! them, tree descriptions, and a kernel overlayfs oracle for tests run as root.
//!
//! Each test file is its own crate and uses part of this module only.
#![allow(dead_code, unused_imports)]

pub mod images;
pub mod kernel;
pub mod model;
pub mod stack;
pub mod tar;
pub mod tree;

pub use ovlcore_core::{copy_in, copy_out, put_archive, CopyOptions, Owner};
pub use ovlcore_core::{makedev, major, minor, rootless_storage, Attrs, Compressor};
pub use ovlcore_core::{import_layer, sha256, Compression, ImportOptions, ImportReport, Kind, LayerStream, LayerTar, Meta, Privilege};
pub use ovlcore_core::{ChangeKind, CommitReport, Lower, MountPoint, Upper, View};
pub use ovlcore_core::{Error, Result};

pub use self::stack::{Ctr, Fs, Stack};
pub use self::tar::{raw_header, Attr, Format, RawHeader, Tar, EOF_BLOCKS, FIXED_MTIME};
pub use self::tree::{assert_same, host_snapshot, Node, Tree};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The metadata conventions this process can test: the native one only as root, the rootless one always.
pub fn privileges() -> Vec<Privilege> {
    if is_root() {
        vec![Privilege::Root, Privilege::Rootless]
    } else {
        vec![Privilege::Rootless]
    }
}

/// True (after saying so on stderr) when the process is not root: the caller returns, skipping its case.
pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: needs root (native owners, device nodes, trusted.* xattrs or mounts)");
    true
}

// ----- errors: matched here only, so that new error variants are a change of this file -----

/// The errno of a failed call; panics when the call worked or failed with something else.
pub fn errno_of<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    match r {
        Err(Error::Os { errno, .. }) => errno,
        other => panic!("expected an OS error, got {other:?}"),
    }
}

/// The call failed with `errno`.
pub fn assert_errno<T: std::fmt::Debug>(r: Result<T>, errno: i32) {
    let got = errno_of(r);
    assert_eq!(got, errno, "errno {got} ({}), expected {errno} ({})", strerror(got), strerror(errno));
}

/// The call failed with `errno`, naming `path` (one of the paths, for two-path calls).
pub fn assert_errno_at<T: std::fmt::Debug>(r: Result<T>, errno: i32, path: &str) {
    match r {
        Err(Error::Os { errno: got, path: p, path2 }) => {
            assert_eq!(got, errno, "errno {got} ({}), expected {errno} ({})", strerror(got), strerror(errno));
            let named = [p, path2].into_iter().flatten().any(|p| p == path);
            assert!(named, "the error does not name {path:?}");
        }
        other => panic!("expected errno {errno} at {path:?}, got {other:?}"),
    }
}

/// The call refused its input as a malformed, hostile or truncated archive; returns the message.
pub fn assert_invalid_archive<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(e @ (Error::InvalidArchive(_) | Error::Truncated { .. })) => e.to_string(),
        other => panic!("expected an invalid-archive error, got {other:?}"),
    }
}

/// The call found the store's own data inconsistent (a layer changed under its tar-split); returns the
/// message.
pub fn assert_corrupt_store<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(e @ Error::Corrupt(_)) => e.to_string(),
        other => panic!("expected a corrupt-store error, got {other:?}"),
    }
}

/// The call stopped because its caller asked it to (a progress callback's own error, passed through).
pub fn assert_cancelled<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(Error::External(_)) => {}
        other => panic!("expected a cancellation, got {other:?}"),
    }
}

/// The call failed with an OS error or an invalid-archive error (what a hostile entry may give).
pub fn assert_refused<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(Error::Os { .. } | Error::InvalidArchive(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}
