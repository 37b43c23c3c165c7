//! ovlcore-core: Docker's storage model as a library. Layers in the kernel overlayfs on-disk format, a
//! userspace union view over them, copy-up and whiteouts in a writable layer, `docker diff` and
//! `commit`, OCI layer tar streams in and out, and the bytes of image archives (`save` / `load`). Pure
//! Rust: the Python binding lives in its own crate and uses only what is re-exported here.
//!
//! Every module is private; the API is this file. The modules, bottom up:
//!
//! - `error`: the one error type. `sys`: `*at` system calls, walks confined with `openat2`.
//! - `format`: what names and xattrs mean in the layer format (whiteouts, opaque markers, overrides,
//!   archive name checks). `attrs`: an entry's metadata, and how a root or rootless store keeps it.
//! - `digest`, `compress`, `overlap`: sha256 while streaming, gzip/zstd, writing on a helper thread.
//! - `tar`: the validated reader every untrusted tar goes through, and the header writer.
//! - `layer`: layer tar → layer directory (`import`, `extract`), and back (`export`, `tarsplit`,
//!   `stream`). `union`: the merged view. `rw`: writes, copy-up, diff, commit, shared inodes.
//! - `cp`, `put_archive`: copying between a view and the host. `archive`: image archives' members in
//!   and out. `mount`: kernel overlay and bind mounts. `registry`: pull, push and login over the OCI
//!   distribution API (references, transport, auth, credentials, manifests). `fuse`: the view served
//!   as a FUSE file system.

mod archive;
mod attrs;
mod compress;
mod cp;
mod digest;
mod error;
mod format;
mod fuse;
mod layer;
mod mount;
mod overlap;
mod put_archive;
mod registry;
mod rw;
mod sys;
mod tar;
mod union;

pub use error::{Error, Result};

// Metadata and digests.
pub use attrs::{makedev, major, minor, rootless_storage, Attrs, Kind, Meta, Privilege};
pub use compress::{Compression, Compressor};
pub use digest::{chain_id, sha256};

// Layers: import, export, streams.
pub use layer::{import_layer, ImportOptions, ImportReport, LayerStream, LayerTar, Progress};

// The union view and the writable layer.
pub use rw::{dir_usage, ChangeKind, CommitReport};
pub use union::{Lower, MountPoint, ReadAhead, Resolved, Upper, View};

// Between a view and the host.
pub use cp::{copy_in, copy_out, CopyOptions, CopyProgress, Owner};
pub use put_archive::{is_tar_archive, put_archive};

// Image archives and writing streams out.
pub use archive::{Archive, ArchiveWriter, LayerImport, Member, WriteProgress};
pub use overlap::{copy, OverlappedWriter};

// Registries (OCI distribution): pull, push, login.
pub use registry::{
    erase_credentials, lookup_credentials, store_credentials, Client as RegistryClient, Credential, Descriptor, Fetched, KnownBlob,
    LayerPull, Platform, PushLayer, PushReport, PushedBlob, Reference, RegistryConfig, Resolved as ResolvedImage, TransferEvent, TransferProgress,
};

// The host.
pub use fuse::{fuse_serve, FuseOptions};
pub use mount::{bind_mount_in, mount_overlay, unmount};
pub use sys::{remove_tree, sync_fs};
