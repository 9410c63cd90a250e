//! Helpers at the C boundary: C strings and the exception shim.

use crate::error::{Error, Result};
use llama_sys as sys;
use std::ffi::{CStr, CString};

/// Converts to a C string, naming `what` if it contains NUL.
pub(crate) fn cstring(what: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|e| Error::Nul { what, position: e.nul_position() })
}

/// The path's exact bytes as a C string (on Unix; elsewhere it must be
/// Unicode), never a lossy conversion: the file named is the file opened.
pub(crate) fn path_cstring(path: &std::path::Path, what: &'static str) -> Result<CString> {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes =
        path.to_str().ok_or_else(|| Error::invalid(what, path.display(), "not valid Unicode"))?.as_bytes().to_vec();
    CString::new(bytes).map_err(|e| Error::Nul { what, position: e.nul_position() })
}

/// Message of the last C++ exception caught by the shim on this thread.
pub(crate) fn last_exception() -> String {
    // SAFETY: the shim returns a pointer to a thread-local std::string's
    // buffer, valid and NUL-terminated until the next shim call on this thread;
    // it is copied out at once.
    unsafe { CStr::from_ptr(sys::llama_rs_last_error()) }.to_string_lossy().into_owned()
}

/// Turns a shim status (0 = completed, else threw) into a Result.
pub(crate) fn check_shim(function: &'static str, status: i32) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Exception { function, message: last_exception() })
    }
}

/// The one way to make a shim call that hands back a pointer (git2's
/// `try_call!`): forgets this thread's last logged llama.cpp error, runs
/// `call` (which writes the pointer and returns the shim status), and turns a
/// caught C++ exception into [`Error::Exception`] and a NULL pointer into
/// `on_null(reason)`, the reason being the error line llama.cpp logged during
/// the call, or `fallback` when it logged none.
pub(crate) fn shim_ptr<T>(
    function: &'static str,
    fallback: &str,
    call: impl FnOnce(&mut *mut T) -> i32,
    on_null: impl FnOnce(String) -> Error,
) -> Result<std::ptr::NonNull<T>> {
    let mut out: *mut T = std::ptr::null_mut();
    crate::backend::clear_log_error();
    let status = call(&mut out);
    check_shim(function, status)?;
    std::ptr::NonNull::new(out).ok_or_else(|| on_null(crate::backend::log_error_or(fallback)))
}

/// As [`shim_ptr`] for a shim call that hands back an integer (decode,
/// quantize): the value, or [`Error::Exception`]. Read the reason for a bad
/// value with [`crate::backend::log_error_or`] right after.
pub(crate) fn shim_value<T: Default>(function: &'static str, call: impl FnOnce(&mut T) -> i32) -> Result<T> {
    let mut out = T::default();
    crate::backend::clear_log_error();
    let status = call(&mut out);
    check_shim(function, status)?;
    Ok(out)
}

/// Copies a C string owned by llama.cpp; null gives "".
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string that stays valid for
/// the duration of the call.
pub(crate) unsafe fn string_from_ptr(ptr: *const std::os::raw::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

/// Calls a C function that writes a string into a buffer and returns the
/// length it needed (snprintf style); grows the buffer once if needed.
pub(crate) fn string_from_buffer(mut f: impl FnMut(*mut std::os::raw::c_char, usize) -> i32) -> Option<String> {
    let mut buf = vec![0u8; 256];
    for _ in 0..2 {
        let n = f(buf.as_mut_ptr().cast(), buf.len());
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.resize(n + 1, 0);
    }
    None
}

/// Text of a caught panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// llama.cpp's maximum number of sequences in one context (`LLAMA_MAX_SEQ`).
pub(crate) fn max_sequences() -> usize {
    // SAFETY: pure query of a compile-time constant; no state touched.
    unsafe { sys::llama_max_parallel_sequences() }
}

/// An empty vector with room for `n` elements, or [`Error::OutOfMemory`]
/// naming `what` and the `bytes` asked for: buffers sized by a caller's value
/// must not abort the process when the allocation fails.
pub(crate) fn try_with_capacity<T>(n: usize, what: &'static str, bytes: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory { what, bytes })?;
    Ok(v)
}

/// `v.resize(len, value)`, with a failed allocation as [`Error::OutOfMemory`].
pub(crate) fn try_resize<T: Clone>(v: &mut Vec<T>, len: usize, value: T, what: &'static str) -> Result<()> {
    if len > v.len() {
        v.try_reserve(len - v.len())
            .map_err(|_| Error::OutOfMemory { what, bytes: len.saturating_mul(std::mem::size_of::<T>()) })?;
    }
    v.resize(len, value);
    Ok(())
}

/// What a llama.cpp length return (`n >= 0`: written; `n < 0`: `-n` needed)
/// means for a buffer of `room` elements.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// `n` elements were written.
    Fits(usize),
    /// The buffer must grow to this many elements.
    Grow(usize),
    /// Not a usable answer: `i32::MIN` (whose negation overflows) or a
    /// "needed" size that is not larger than the buffer given.
    Broken,
}

/// Reads a length return `n` for a buffer of `room` elements.
pub(crate) fn written(n: i32, room: usize) -> Written {
    match n {
        0.. => Written::Fits(n as usize),
        i32::MIN => Written::Broken,
        _ if (n.unsigned_abs() as usize) <= room => Written::Broken,
        _ => Written::Grow(n.unsigned_abs() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_never_negates_i32_min() {
        assert_eq!(written(5, 8), Written::Fits(5));
        assert_eq!(written(0, 0), Written::Fits(0));
        assert_eq!(written(-20, 8), Written::Grow(20));
        assert_eq!(written(-8, 8), Written::Broken);
        // -i32::MIN overflows i32: a panic in debug builds, a wrapped
        // (negative) size in release ones, before the guard.
        assert_eq!(written(i32::MIN, 8), Written::Broken);
        assert_eq!(written(i32::MIN + 1, 8), Written::Grow(i32::MAX as usize));
    }

    #[test]
    fn fallible_buffers() {
        let mut v: Vec<u8> = Vec::new();
        assert!(matches!(try_resize(&mut v, usize::MAX / 2, 0, "test"), Err(Error::OutOfMemory { what: "test", .. })));
        assert!(v.is_empty());
        try_resize(&mut v, 3, 7, "test").unwrap();
        assert_eq!(v, [7, 7, 7]);
        assert!(matches!(try_with_capacity::<u64>(usize::MAX / 4, "x", 0), Err(Error::OutOfMemory { .. })));
    }
}
