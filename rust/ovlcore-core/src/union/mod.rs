//! The union (overlay) view: lookups over a stack of layers, as the kernel's overlayfs answers them.

mod lower;
mod readahead;
mod view;

pub use lower::{Child, Lower, Node};
pub use readahead::ReadAhead;
pub(crate) use view::open_subdir;
pub use view::{Dir, Found, MountPoint, Resolved, Upper, View};
