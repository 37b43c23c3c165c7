//! The union (overlay) view: lookups over a stack of layers, as the kernel's overlayfs answers them.

pub mod lower;
pub mod view;

pub use lower::Lower;
pub use view::{normalize, Dir, Found, MountPoint, Resolved, View};
