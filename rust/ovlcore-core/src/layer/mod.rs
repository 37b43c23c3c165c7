//! Layers as OCI tar streams: import into the on-disk format, export back out.

mod ahead;
mod export;
mod extract;
mod import;
mod stream;
mod tarsplit;

pub use export::LayerTar;
pub use import::{import_layer, ImportOptions, ImportReport, Progress};
pub use stream::LayerStream;
