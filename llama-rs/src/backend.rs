//! Process-wide llama.cpp state: backend initialisation (once) and the log
//! bridge to `tracing`.

use llama_sys as sys;
use std::ffi::CStr;
use std::os::raw::{c_char, c_void};
use std::sync::{Mutex, Once};

static INIT: Once = Once::new();

/// Serialises calls that touch llama.cpp's global state (backend registry,
/// logger) that the C library does not lock itself.
pub(crate) static GLOBAL: Mutex<()> = Mutex::new(());

/// Initialises llama.cpp once per process: logs to `tracing`, abort
/// messages to `tracing` (instead of ggml's gdb backtrace), backends
/// registered. Every constructor calls it; users may call it early to see
/// llama.cpp's start-up logs. It changes no environment variable.
pub fn init() {
    INIT.call_once(|| {
        let _guard = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `abort_callback` matches ggml_abort_callback_t and never
        // unwinds. With a callback set, ggml_abort calls it instead of
        // printing a backtrace (which may fork gdb), then aborts
        // (`ggml/src/ggml.c:264`). The old `set_var("GGML_NO_BACKTRACE")`
        // raced with other threads' getenv.
        unsafe { sys::ggml_set_abort_callback(Some(abort_callback)) };
        // SAFETY: `log_callback` matches ggml_log_callback, never unwinds, and
        // needs no user data; llama_log_set also installs it for ggml.
        unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        // SAFETY: plain initialisation call, made once under the global lock.
        unsafe { sys::llama_backend_init() };
        crate::modules::load_at_init();
    });
}

/// Called by ggml just before it aborts the process (a failed GGML_ASSERT
/// that no check of llama-rs caught: a bug to report). The message goes to
/// `tracing` (target `llama_cpp`, level error) and, since the process is
/// about to end and a subscriber may never flush, also to stderr.
extern "C" fn abort_callback(message: *const c_char) {
    let _ = std::panic::catch_unwind(|| {
        let text = if message.is_null() {
            "(no message)".into()
        } else {
            // SAFETY: non-null; ggml passes its NUL-terminated message buffer,
            // valid for the call.
            unsafe { CStr::from_ptr(message) }.to_string_lossy()
        };
        tracing::error!(target: "llama_cpp", "ggml abort: {text}");
        eprintln!("llama.cpp aborted the process: {text}");
    });
}

thread_local! {
    /// Level of the last message, for GGML_LOG_LEVEL_CONT continuations.
    static LAST_LEVEL: std::cell::Cell<sys::ggml_log_level> = const { std::cell::Cell::new(sys::GGML_LOG_LEVEL_INFO) };
    /// The last error line llama.cpp logged on this thread: most C calls only
    /// return NULL or -1, and this line is the reason they give.
    static LAST_ERROR: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// The first error line since [`clear_log_error`]: where a call logs its
    /// cause and then a generic line ("failed to load model"), the cause.
    static FIRST_ERROR: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

thread_local! {
    /// While a decode that may be aborted on purpose runs on this thread, its
    /// error and warning lines wait here (see [`defer_warnings`]).
    static DEFERRED: std::cell::RefCell<Option<Vec<(sys::ggml_log_level, String)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Holds back this thread's error and warning lines from llama.cpp until
/// [`release_warnings`]: a decode stopped by its abort callback on purpose
/// (a cancelled request) logs three of them, which are then only noise.
pub(crate) fn defer_warnings() {
    DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
}

/// Ends [`defer_warnings`]: the lines held back are logged at their level,
/// or at debug level when `expected` (the abort was asked for).
pub(crate) fn release_warnings(expected: bool) {
    let lines = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
    for (level, msg) in lines {
        // As in the log callback, a panicking subscriber is swallowed here:
        // these lines come from llama.cpp, which logged them mid-call.
        let _ = std::panic::catch_unwind(|| {
            if expected {
                tracing::debug!(target: "llama_cpp", "(expected, the decode was aborted) {msg}");
            } else if level == sys::GGML_LOG_LEVEL_ERROR {
                tracing::error!(target: "llama_cpp", "{msg}");
            } else {
                tracing::warn!(target: "llama_cpp", "{msg}");
            }
        });
    }
}

/// Forgets the last logged error of this thread (call before a C call).
pub(crate) fn clear_log_error() {
    LAST_ERROR.with(|e| e.borrow_mut().clear());
    FIRST_ERROR.with(|e| e.borrow_mut().clear());
}

/// The last error llama.cpp logged on this thread since [`clear_log_error`],
/// or `fallback`.
pub(crate) fn log_error_or(fallback: &str) -> String {
    FIRST_ERROR.with(|e| e.borrow_mut().clear());
    let msg = LAST_ERROR.with(|e| std::mem::take(&mut *e.borrow_mut()));
    if msg.is_empty() {
        fallback.to_string()
    } else {
        msg
    }
}

/// The first error llama.cpp logged on this thread since [`clear_log_error`]
/// and, when another came after it, the last: `first; last` (a cause, then
/// the caller's generic line), or `fallback`.
pub(crate) fn log_cause_or(fallback: &str) -> String {
    let first = FIRST_ERROR.with(|e| std::mem::take(&mut *e.borrow_mut()));
    let last = log_error_or(fallback);
    if first.is_empty() || first == last {
        last
    } else {
        format!("{first}; {last}")
    }
}

extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // Nothing here may unwind into C.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: checked non-null above; ggml passes a NUL-terminated string
        // valid for the duration of the call.
        let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        let msg = msg.trim_end();
        let level = if level == sys::GGML_LOG_LEVEL_CONT {
            LAST_LEVEL.with(|l| l.get())
        } else {
            LAST_LEVEL.with(|l| l.set(level));
            level
        };
        if msg.is_empty() {
            return;
        }
        if level == sys::GGML_LOG_LEVEL_ERROR {
            LAST_ERROR.with(|e| {
                if let Ok(mut e) = e.try_borrow_mut() {
                    e.clear();
                    e.push_str(msg);
                }
            });
            FIRST_ERROR.with(|e| {
                if let Ok(mut e) = e.try_borrow_mut() {
                    if e.is_empty() {
                        e.push_str(msg);
                    }
                }
            });
        }
        if level == sys::GGML_LOG_LEVEL_ERROR || level == sys::GGML_LOG_LEVEL_WARN {
            let held = DEFERRED.with(|d| match d.try_borrow_mut() {
                Ok(mut d) => d.as_mut().map(|v| v.push((level, msg.to_string()))).is_some(),
                Err(_) => false,
            });
            if held {
                return;
            }
        }
        match level {
            sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama_cpp", "{msg}"),
            sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama_cpp", "{msg}"),
            sys::GGML_LOG_LEVEL_INFO => tracing::info!(target: "llama_cpp", "{msg}"),
            _ => tracing::debug!(target: "llama_cpp", "{msg}"),
        }
    });
}

/// llama.cpp's system information line (SIMD features, backends).
pub fn system_info() -> String {
    init();
    // SAFETY: returns a pointer to a static buffer inside llama.cpp.
    unsafe { crate::ffi::string_from_ptr(sys::llama_print_system_info()) }
}

/// The number of physical CPU cores (hyper-threads of one core counted once),
/// at most the CPUs this process may run on: the default thread count, as
/// llama.cpp's own tools choose it (a second thread per core slows token
/// generation down). Read from Linux's CPU topology; elsewhere, or when it
/// cannot be read, every available CPU.
pub fn physical_cores() -> u32 {
    let available = std::thread::available_parallelism().map_or(4, |n| n.get());
    let mut siblings = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("cpu") && name[3..].bytes().all(|b| b.is_ascii_digit()) && name.len() > 3) {
                continue;
            }
            if let Ok(list) = std::fs::read_to_string(entry.path().join("topology/thread_siblings_list")) {
                siblings.insert(list.trim().to_string());
            }
        }
    }
    let physical = if siblings.is_empty() { available } else { siblings.len() };
    physical.min(available).max(1) as u32
}
