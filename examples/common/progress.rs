//! Progress a person can see on long work: loading a model, writing a
//! synthetic one, quantizing. When stderr is a terminal, an `indicatif` bar
//! (a spinner for quantization, which llama.cpp reports no progress for) is
//! drawn there and cleared when the work ends; otherwise nothing extra is
//! written, so logs and pipes stay as they were.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use llama_rs::synthetic::SyntheticModel;
use llama_rs::{Model, ModelParams, QuantizeParams};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Whether bars are drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::io::stderr().is_terminal())
}

/// Every bar is drawn through this, so that log lines can be written above
/// them ([`LogWriter`]).
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A bar on stderr, or `None` when it is not a terminal. `template` is
/// indicatif's; `{msg}` is `message`.
fn new_bar(len: Option<u64>, template: &str, message: String) -> Option<ProgressBar> {
    if !on_terminal() {
        return None;
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
    let bar = bars().add(bar.with_style(style).with_message(message));
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

fn done(bar: Option<ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
        bars().remove(&bar);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// [`Model::load_with`], with a bar of llama.cpp's load progress on a
/// terminal (it replaces a progress callback set in `params`).
pub fn load_model(path: impl AsRef<Path>, params: ModelParams) -> llama_rs::Result<Model> {
    let path = path.as_ref();
    let bar = new_bar(Some(1000), "{msg} [{wide_bar}] {percent:>3}% {elapsed}", format!("loading {}", file_name(path)));
    let params = match &bar {
        Some(b) => {
            let b = b.clone();
            params.progress(move |p| {
                b.set_position((p.clamp(0.0, 1.0) * 1000.0) as u64);
                true
            })
        }
        None => params,
    };
    let model = Model::load_with(path, params);
    done(bar);
    model
}

/// Runs `write` with a `progress(written, total)` callback that draws a
/// bar of the bytes written on a terminal, from its first call (when the
/// total is known).
fn with_write_bar<T>(
    path: &Path,
    write: impl FnOnce(&mut dyn FnMut(u64, u64)) -> llama_rs::Result<T>,
) -> llama_rs::Result<T> {
    let mut bar: Option<ProgressBar> = None;
    let r = write(&mut |written, total| {
        if bar.is_none() {
            bar = new_bar(
                Some(total),
                "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
                format!("writing {}", file_name(path)),
            );
        }
        if let Some(b) = &bar {
            b.set_position(written);
        }
    });
    done(bar);
    r
}

/// [`SyntheticModel::write`], with a bar of the bytes written on a terminal.
pub fn write_synthetic(model: &SyntheticModel, path: impl AsRef<Path>) -> llama_rs::Result<()> {
    let path = path.as_ref();
    with_write_bar(path, |progress| model.write_with_progress(path, progress))
}

/// [`SyntheticModel::write_cached`], with a bar of the bytes written on a
/// terminal when the file is written (none when it is cached already).
pub fn write_synthetic_cached(model: &SyntheticModel, dir: impl AsRef<Path>) -> llama_rs::Result<PathBuf> {
    let dir = dir.as_ref();
    with_write_bar(&dir.join(model.file_name()), |progress| model.write_cached_with_progress(dir, progress))
}

/// [`llama_rs::quantize`], with a spinner and the elapsed time on a
/// terminal: llama.cpp's quantization reports no progress.
pub fn quantize(input: &Path, output: &Path, params: QuantizeParams) -> llama_rs::Result<()> {
    let bar = new_bar(
        None,
        "{spinner} {msg} {elapsed}",
        format!("quantizing {} to {} ({})", file_name(input), file_name(output), params.ftype),
    );
    let r = llama_rs::quantize(input, output, params);
    done(bar);
    r
}

/// stderr for the `tracing` subscriber ([`super::log::init`]): on a terminal
/// each write hides the bars, writes, and draws them again below, so that
/// log lines and bars do not overwrite each other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if on_terminal() {
            bars().suspend(|| std::io::stderr().write(buf))
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
