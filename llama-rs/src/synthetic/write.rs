//! Writing a [`SyntheticModel`] to a file: the metadata from gguf.h, then
//! each tensor's data streamed at the offset gguf gave it, into a temporary
//! file renamed into place; with progress reports.

use super::quant::write_tensor;
use super::SyntheticModel;
use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most progress reports between the first and the last, whatever the size.
const PROGRESS_STEPS: u64 = 256;

impl SyntheticModel {
    /// Writes the model to `path`, atomically: the data goes to a temporary
    /// file in the same folder, which is then renamed over `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_with_progress(path, |_, _| {})
    }

    /// [`write`](Self::write), calling `progress(written, total)` as the
    /// file grows: bytes written so far and the file's size, from `(0,
    /// total)` to `(total, total)` (the last call once the file is complete
    /// on disk), never decreasing, at most a few hundred times per file
    /// whatever its size. Not called when the parameters are invalid.
    ///
    /// ```no_run
    /// use llama_rs::synthetic::{ModelShape, SyntheticModel};
    /// # fn main() -> llama_rs::Result<()> {
    /// SyntheticModel::new(ModelShape::small()).write_with_progress("small.gguf", |done, total| {
    ///     eprint!("\r{:3}%", done * 100 / total.max(1));
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn write_with_progress(&self, path: impl AsRef<Path>, progress: impl FnMut(u64, u64)) -> Result<()> {
        crate::backend::init();
        self.validate()?;
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(temp_name(&self.file_name()));
        let result =
            self.write_to(&tmp, progress).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Writes the whole file to `path` (not atomically).
    fn write_to(&self, path: &Path, progress: impl FnMut(u64, u64)) -> Result<()> {
        let plan = self.plan();
        let g = self.metadata(&plan)?;
        let meta = g.meta_bytes();
        let alignment = g.alignment();
        let data: usize = plan.iter().map(|t| t.desc().n_bytes().next_multiple_of(alignment)).sum();
        let mut progress = Progress::new(progress, (meta.len() + data) as u64);

        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        let io = |e| Error::io(path, e);
        out.write_all(&meta).map_err(io)?;
        progress.advance(meta.len() as u64);

        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        let mut offset = 0usize; // relative to the start of the data section
        let mut buf = Vec::new();
        for (index, t) in plan.iter().enumerate() {
            let expected = g.tensor_offset(index);
            if expected != Some(offset) {
                return Err(Error::invalid(
                    "tensor offset",
                    format!("{expected:?}"),
                    format!("gguf placed {} at {expected:?}, the writer is at {offset}", t.name),
                ));
            }
            let written = write_tensor(&mut out, t, self.seed, index as u64, threads, &mut buf, &mut |n| {
                progress.advance(n as u64)
            })
            .map_err(io)?;
            let padded = written.next_multiple_of(alignment);
            out.write_all(&vec![0u8; padded - written]).map_err(io)?;
            progress.advance((padded - written) as u64);
            offset += padded;
        }
        let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(io)?;
        progress.finish();
        Ok(())
    }
}

/// Progress reports, thinned out: `(0, total)` first, then whenever another
/// `total / PROGRESS_STEPS` bytes are written, and `(total, total)` last.
struct Progress<F: FnMut(u64, u64)> {
    report: F,
    done: u64,
    reported: u64,
    step: u64,
    total: u64,
}

impl<F: FnMut(u64, u64)> Progress<F> {
    fn new(mut report: F, total: u64) -> Progress<F> {
        report(0, total);
        Progress { report, done: 0, reported: 0, step: (total / PROGRESS_STEPS).max(1), total }
    }

    /// `n` more bytes written; the report at `total` waits for
    /// [`finish`](Self::finish).
    fn advance(&mut self, n: u64) {
        self.done = (self.done + n).min(self.total);
        if self.done - self.reported >= self.step && self.done < self.total {
            self.reported = self.done;
            (self.report)(self.done, self.total);
        }
    }

    /// The file is complete.
    fn finish(mut self) {
        (self.report)(self.total, self.total);
    }
}

/// A temporary file name unique within this host (pid, time, counter).
fn temp_name(base: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!(".{base}.{}.{nanos}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}
