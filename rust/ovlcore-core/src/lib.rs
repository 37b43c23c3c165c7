//! ovlcore-core: Docker's storage model as a library. Layers in the kernel overlayfs on-disk format, a
//! userspace union view over them, copy-up and whiteouts in a writable layer, `docker diff`, and OCI layer
//! tar streams in and out. Pure Rust: the Python binding lives in its own crate.

pub mod attrs;
pub mod compress;
pub mod cp;
pub mod digest;
pub mod error;
pub mod layer;
pub mod mount;
pub mod rw;
pub mod sys;
pub mod union;

pub use attrs::{Attrs, Kind, Meta, Privilege};
pub use error::{Error, Result};
