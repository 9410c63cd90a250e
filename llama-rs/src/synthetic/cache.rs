//! The model cache: a file name that covers every parameter, and
//! [`write_cached`](SyntheticModel::write_cached), which writes a model only
//! when no file of that name exists yet.

use super::{Architecture, SyntheticModel};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Bumped whenever the generator's output changes, so that cached files
/// written by an older version get a different name.
const GENERATOR_VERSION: u32 = 1;

impl SyntheticModel {
    /// The file name [`write_cached`](Self::write_cached) uses:
    /// `<arch>-<shape>-<vocab>-<type>-s<seed>-<hash>.gguf`, the hash covering
    /// every parameter and the generator version.
    pub fn file_name(&self) -> String {
        let mut key = format!(
            "v{GENERATOR_VERSION}|{:?}|{:?}|{:?}|{}|{:?}",
            self.shape,
            self.vocab,
            self.weight_type,
            self.seed,
            self.effective_chat_template()
        );
        // Only what differs from a plain llama model, so that the names of
        // those stay what they were.
        if self.arch != Architecture::Llama || !self.classifier.is_empty() || self.rerank_template.is_some() {
            key += &format!("|{:?}|{:?}|{:?}", self.arch, self.classifier, self.rerank_template);
        }
        format!(
            "{}-{}-{}-{}-s{}-{:016x}.gguf",
            self.arch.name(),
            self.shape.label(),
            self.vocab.label(),
            self.weight_type.label(),
            self.seed,
            fnv1a64(key.as_bytes())
        )
    }

    /// Writes the model into `dir` (created if needed) under
    /// [`file_name`](Self::file_name) unless that file exists already, and
    /// returns its path. Concurrent callers, in one process or several, each
    /// write their own temporary file and rename it into place; since the
    /// contents are identical, whichever rename lands last is fine, and no
    /// reader ever sees a partial file.
    pub fn write_cached(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        self.write_cached_with_progress(dir, |_, _| {})
    }

    /// [`write_cached`](Self::write_cached), calling `progress` as
    /// [`write_with_progress`](Self::write_with_progress) does when it writes
    /// the file; never when the file exists already.
    pub fn write_cached_with_progress(&self, dir: impl AsRef<Path>, progress: impl FnMut(u64, u64)) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(self.file_name());
        if path.is_file() {
            return Ok(path);
        }
        self.write_with_progress(&path, progress)?;
        Ok(path)
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
