//! Editing a GGUF file's metadata for bad-file tests: the key/values are
//! changed through gguf's own setters and the original tensor data is
//! appended unchanged.

use llama_rs::sys;
use std::ffi::CString;
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// A GGUF file opened for editing through ggml's gguf API (metadata only);
/// written back followed by the original tensor data.
pub struct Edit {
    ctx: NonNull<sys::gguf_context>,
    data: Vec<u8>,
}

/// The path's exact bytes (non-UTF-8 names included).
fn c_path(path: &Path) -> CString {
    CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).unwrap()
}

pub fn key(k: &str) -> CString {
    CString::new(k).unwrap()
}

impl Edit {
    pub fn open(path: &Path) -> Edit {
        let c = c_path(path);
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        // SAFETY: NUL-terminated path; metadata only; NULL on failure.
        let ctx = NonNull::new(unsafe { sys::gguf_init_from_file(c.as_ptr(), params) }).expect("open the good file");
        let bytes = std::fs::read(path).unwrap();
        // SAFETY: valid context.
        let offset = unsafe { sys::gguf_get_data_offset(ctx.as_ptr()) };
        Edit { ctx, data: bytes[offset..].to_vec() }
    }
    pub fn ptr(&self) -> *mut sys::gguf_context {
        self.ctx.as_ptr()
    }
    pub fn u32(self, k: &str, v: u32) -> Self {
        // SAFETY: valid context, NUL-terminated key (copied).
        unsafe { sys::gguf_set_val_u32(self.ptr(), key(k).as_ptr(), v) };
        self
    }
    pub fn u16(self, k: &str, v: u16) -> Self {
        // SAFETY: valid context, NUL-terminated key (copied).
        unsafe { sys::gguf_set_val_u16(self.ptr(), key(k).as_ptr(), v) };
        self
    }
    pub fn f32(self, k: &str, v: f32) -> Self {
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_f32(self.ptr(), key(k).as_ptr(), v) };
        self
    }
    pub fn bool(self, k: &str, v: bool) -> Self {
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_bool(self.ptr(), key(k).as_ptr(), v) };
        self
    }
    pub fn str(self, k: &str, v: &str) -> Self {
        let v = CString::new(v).unwrap();
        // SAFETY: valid context, NUL-terminated strings (copied).
        unsafe { sys::gguf_set_val_str(self.ptr(), key(k).as_ptr(), v.as_ptr()) };
        self
    }
    pub fn remove(self, k: &str) -> Self {
        // SAFETY: valid context, NUL-terminated key.
        unsafe { sys::gguf_remove_key(self.ptr(), key(k).as_ptr()) };
        self
    }
    pub fn arr_str(self, k: &str, values: &[Vec<u8>]) -> Self {
        let owned: Vec<CString> = values.iter().map(|v| CString::new(v.clone()).unwrap()).collect();
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: `len` NUL-terminated strings, copied by gguf.
        unsafe { sys::gguf_set_arr_str(self.ptr(), key(k).as_ptr(), ptrs.as_mut_ptr(), ptrs.len()) };
        self
    }
    pub fn arr_i32(self, k: &str, t: sys::gguf_type, values: &[i32]) -> Self {
        // SAFETY: `len` 4-byte values for a 4-byte element type, copied.
        unsafe { sys::gguf_set_arr_data(self.ptr(), key(k).as_ptr(), t, values.as_ptr().cast(), values.len()) };
        self
    }
    pub fn arr_f32(self, k: &str, values: &[f32]) -> Self {
        // SAFETY: `len` f32 values, copied.
        unsafe {
            sys::gguf_set_arr_data(
                self.ptr(),
                key(k).as_ptr(),
                sys::GGUF_TYPE_FLOAT32,
                values.as_ptr().cast(),
                values.len(),
            )
        };
        self
    }
    /// The u32 value of `k` (panics if it is missing or of another type).
    pub fn get_u32(&self, k: &str) -> u32 {
        // SAFETY: valid context and key; the type is checked before reading.
        unsafe {
            let id = sys::gguf_find_key(self.ptr(), key(k).as_ptr());
            assert!(id >= 0 && sys::gguf_get_kv_type(self.ptr(), id) == sys::GGUF_TYPE_UINT32, "{k}");
            sys::gguf_get_val_u32(self.ptr(), id)
        }
    }
    /// The string array `k` (strings cut at NUL as gguf returns them).
    pub fn get_arr_str(&self, k: &str) -> Vec<Vec<u8>> {
        // SAFETY: valid context and key; the type is checked before reading.
        unsafe {
            let id = sys::gguf_find_key(self.ptr(), key(k).as_ptr());
            assert!(id >= 0 && sys::gguf_get_arr_type(self.ptr(), id) == sys::GGUF_TYPE_STRING);
            (0..sys::gguf_get_arr_n(self.ptr(), id))
                .map(|i| std::ffi::CStr::from_ptr(sys::gguf_get_arr_str(self.ptr(), id, i)).to_bytes().to_vec())
                .collect()
        }
    }
    /// Every `llama.*` key renamed to `<arch>.*` and the architecture set.
    pub fn rename_arch(mut self, arch: &str) -> Self {
        // SAFETY: valid context; ids < n_kv; each value is read with the
        // getter of its type.
        let keys: Vec<(String, sys::gguf_type)> = unsafe {
            (0..sys::gguf_get_n_kv(self.ptr()))
                .map(|i| {
                    let k = std::ffi::CStr::from_ptr(sys::gguf_get_key(self.ptr(), i)).to_string_lossy().into_owned();
                    (k, sys::gguf_get_kv_type(self.ptr(), i))
                })
                .collect()
        };
        for (k, t) in keys {
            let Some(rest) = k.strip_prefix("llama.") else { continue };
            let new = format!("{arch}.{rest}");
            // SAFETY: as above.
            let id = unsafe { sys::gguf_find_key(self.ptr(), key(&k).as_ptr()) };
            self = match t {
                sys::GGUF_TYPE_UINT32 => {
                    // SAFETY: type checked by the match.
                    let v = unsafe { sys::gguf_get_val_u32(self.ptr(), id) };
                    self.u32(&new, v)
                }
                sys::GGUF_TYPE_FLOAT32 => {
                    // SAFETY: type checked by the match.
                    let v = unsafe { sys::gguf_get_val_f32(self.ptr(), id) };
                    self.f32(&new, v)
                }
                _ => self,
            };
            self = self.remove(&k);
        }
        self.str("general.architecture", arch)
    }
    pub fn write(self, path: &Path) -> PathBuf {
        let c = c_path(path);
        // SAFETY: valid context and path; the metadata (padded to the
        // alignment) is written, the tensor data appended below.
        assert!(unsafe { sys::gguf_write_to_file(self.ptr(), c.as_ptr(), true) });
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(&self.data).unwrap();
        path.to_path_buf()
    }
}

impl Drop for Edit {
    fn drop(&mut self) {
        // SAFETY: owned context, freed once.
        unsafe { sys::gguf_free(self.ctx.as_ptr()) };
    }
}
