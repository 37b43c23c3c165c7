//! Layers as OCI tar streams: import into the on-disk format, export back out.

pub mod export;
pub mod import;
pub mod tarsplit;

pub use export::LayerTar;
pub use import::{import_layer, ImportOptions, ImportReport};
