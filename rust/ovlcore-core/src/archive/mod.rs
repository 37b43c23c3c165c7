//! Image archives (`docker save` / `docker load`), the byte side: reading an archive's members (a tar
//! file indexed in place, a compressed archive or a stream spooled to a plain file first, or an OCI
//! layout directory), importing a layer straight from its member, and writing the outer tar of a save.
//! What the members mean (manifests, configs, indexes) is the caller's business.

mod import;
mod index;
mod member;
mod spool;
mod writer;

pub use import::LayerImport;
pub use index::Archive;
pub use member::Member;
pub use writer::{ArchiveWriter, WriteProgress};
