//! The layer format: what names and xattrs mean in an OCI layer tar and in a layer directory.
//!
//! In a tar (image-spec `layer.md`), `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` makes
//! its directory opaque, and other `.wh..wh.*` names are aufs metadata. On disk (the kernel overlayfs
//! format) a whiteout is a 0/0 character device and an opaque directory carries an `overlay.opaque`
//! xattr; a rootless store keeps real owners and modes in an override xattr. Archive names are untrusted:
//! [`clean_name`] is the one check every tar reader applies.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs keeps its own metadata under names with this prefix (`.wh..wh.plnk/`, `.wh..wh.aufs`).
pub const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Where a rootless store keeps the real owner, mode and type (`UID:GID:MODE:TYPE`).
pub const OVERRIDE_XATTR: &CStr = c"user.containers.override_stat";
/// The opaque-directory mark of a root store (and of a kernel mount without `userxattr`).
pub const OPAQUE_XATTR_ROOT: &CStr = c"trusted.overlay.opaque";
/// The opaque-directory mark of a rootless store (kernel mounts with `userxattr`).
pub const OPAQUE_XATTR_USER: &CStr = c"user.overlay.opaque";

/// xattrs that belong to the storage format, never to the content: not imported from archives, not
/// exported, not shown through the view.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") || name == OVERRIDE_XATTR.to_bytes()
}

/// What a name in a layer tar stands for when it is not an ordinary entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker<'a> {
    /// `.wh..wh..opq`: the directory holding it hides everything below it.
    Opaque,
    /// Other `.wh..wh.*` names: aufs metadata, skipped.
    AufsMeta,
    /// `.wh.NAME`: NAME is deleted from the layers below.
    Whiteout(&'a OsStr),
}

/// The marker the file name `name` is, if any; an error for a whiteout that names nothing.
pub fn marker(name: &[u8]) -> Result<Option<Marker<'_>>, &'static str> {
    if name == OPAQUE_MARKER {
        return Ok(Some(Marker::Opaque));
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Ok(Some(Marker::AufsMeta));
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        None => Ok(None),
        Some(b"" | b"." | b"..") => Err("invalid whiteout name"),
        Some(target) => Ok(Some(Marker::Whiteout(OsStr::from_bytes(target)))),
    }
}

/// Whether a path lies below aufs metadata (`.wh..wh.plnk/...`): such entries are skipped.
pub fn in_aufs_meta(rel: &Path) -> bool {
    rel.iter().any(|c| c.as_bytes().starts_with(AUFS_META_PREFIX))
}

/// The tar name of the whiteout of `name` in directory `dir` (relative, `""` for the root).
pub fn whiteout_entry(dir: &Path, name: &OsStr) -> Vec<u8> {
    in_dir(dir, &[WHITEOUT_PREFIX, name.as_bytes()].concat())
}

/// The tar name of the opaque marker of directory `dir`.
pub fn opaque_entry(dir: &Path) -> Vec<u8> {
    in_dir(dir, OPAQUE_MARKER)
}

fn in_dir(dir: &Path, name: &[u8]) -> Vec<u8> {
    let mut out = dir.as_os_str().as_bytes().to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Check and normalise an archive name: relative, no NUL, no `..`; `.` and empty components dropped
/// (`""` is the archive's root).
pub fn clean_name(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains `..`"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(clean_name(b"./a//b/./c/").unwrap(), Path::new("a/b/c"));
        assert_eq!(clean_name(b"./").unwrap(), Path::new(""));
        assert_eq!(clean_name(b"/etc/passwd"), Err("absolute path"));
        assert_eq!(clean_name(b"a/../../x"), Err("path contains `..`"));
        assert_eq!(clean_name(b"a\0b"), Err("name contains a NUL byte"));
    }

    #[test]
    fn markers() {
        assert_eq!(marker(b".wh..wh..opq"), Ok(Some(Marker::Opaque)));
        assert_eq!(marker(b".wh..wh.plnk"), Ok(Some(Marker::AufsMeta)));
        assert_eq!(marker(b".wh.etc"), Ok(Some(Marker::Whiteout(OsStr::new("etc")))));
        assert_eq!(marker(b"etc"), Ok(None));
        for bad in [&b".wh."[..], b".wh..", b".wh..."] {
            assert!(marker(bad).is_err(), "{bad:?}");
        }
        assert!(in_aufs_meta(Path::new("a/.wh..wh.plnk/x")));
        assert_eq!(whiteout_entry(Path::new("a/b"), OsStr::new("c")), b"a/b/.wh.c");
        assert_eq!(opaque_entry(Path::new("")), b".wh..wh..opq");
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(is_internal_xattr(b"user.containers.override_stat"));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
