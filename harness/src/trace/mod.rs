//! Traces of real drivers (`traces/*.jsonl`, captured by `scripts/capture-linux-trace.sh`):
//! the file format ([`format`]) and their replay against any target ([`replay`]).

pub mod format;
pub mod replay;

pub use format::{Trace, TraceError};
pub use replay::{replay, traced_profile};
