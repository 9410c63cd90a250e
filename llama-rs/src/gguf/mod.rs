//! GGUF files through ggml's `gguf.h`: the model file opened once
//! ([`ModelFile`], `file.rs`), the metadata reader the validator uses
//! ([`Gguf`], `read.rs`; the validator itself is `validate.rs`, its tables
//! `hparams_table.rs`), and, with feature `synthetic`, the writer of the
//! synthetic models (`GgufWriter`, `write.rs`).

mod file;
mod read;
#[cfg(feature = "synthetic")]
mod write;

pub(crate) use file::ModelFile;
pub(crate) use read::{Gguf, Value};
#[cfg(feature = "synthetic")]
pub(crate) use write::{GgufWriter, TensorDesc};
