//! The writable layer: copy-up, write operations, `docker diff` and `docker commit`.

mod commit;
mod copyup;
mod diff;
mod ops;
mod shared;
mod usage;
mod whiteout;

pub use commit::CommitReport;
pub use copyup::{copy_data, copy_data_with};
pub use diff::ChangeKind;
pub use shared::SharedInodes;
pub use usage::dir_usage;
