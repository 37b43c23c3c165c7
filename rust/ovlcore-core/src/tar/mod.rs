//! Tar, both ways: the validated reader every untrusted stream goes through, and the header writer
//! every produced stream uses.

mod entries;
mod header;
mod pax;

pub use entries::{index_entries, read_entries, Entry, EntryKind, EntryMeta};
pub use header::{entry_header, padding, END_OF_ARCHIVE};
