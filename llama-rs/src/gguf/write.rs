//! [`GgufWriter`]: GGUF metadata and tensor descriptors built with ggml's
//! own writer (`gguf.h`); the caller streams the tensor data after the
//! metadata bytes, at the offsets gguf assigns. Used by the synthetic model
//! and LoRA writers (feature `synthetic`).

use crate::error::{Error, Result};
use crate::ffi::cstring;
use llama_sys as sys;
use std::ffi::CString;
use std::os::raw::c_char;
use std::ptr::NonNull;

/// A number type of GGUF arrays: `TYPE` is the gguf type of exactly
/// `size_of::<Self>()` bytes per element.
pub(crate) trait ArrayElem: Copy {
    const TYPE: sys::gguf_type;
}

impl ArrayElem for f32 {
    const TYPE: sys::gguf_type = sys::GGUF_TYPE_FLOAT32;
}

impl ArrayElem for i32 {
    const TYPE: sys::gguf_type = sys::GGUF_TYPE_INT32;
}

impl ArrayElem for u32 {
    const TYPE: sys::gguf_type = sys::GGUF_TYPE_UINT32;
}

/// One tensor descriptor: name, ggml type, `ne0` values per row and `ne1`
/// rows; `two_d: false` makes a vector of `ne0` values (`ne1` ignored).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TensorDesc<'a> {
    pub(crate) name: &'a str,
    pub(crate) ty: sys::ggml_type,
    pub(crate) ne0: u32,
    pub(crate) ne1: u32,
    pub(crate) two_d: bool,
}

impl TensorDesc<'_> {
    /// Bytes of the tensor's data (before the alignment padding); `ne0`
    /// must be a multiple of the type's block size.
    pub(crate) fn n_bytes(&self) -> usize {
        let rows = if self.two_d { self.ne1 as usize } else { 1 };
        // SAFETY: pure function of its arguments (its only check, a debug
        // assert that ne0 fills whole blocks, holds: the synthetic shapes are
        // validated for it, LoRA tensors are F32).
        rows * unsafe { sys::ggml_row_size(self.ty, self.ne0 as i64) }
    }
}

/// A gguf_context being filled, plus the ggml context holding the tensor
/// descriptors (no data: `no_alloc`).
pub(crate) struct GgufWriter {
    ctx: NonNull<sys::gguf_context>,
    ggml: Option<NonNull<sys::ggml_context>>,
}

impl GgufWriter {
    /// An empty GGUF context (no keys, no tensors).
    pub(crate) fn new() -> Result<GgufWriter> {
        // SAFETY: no arguments; returns an owned context or null.
        let ctx = unsafe { sys::gguf_init_empty() };
        let ctx = NonNull::new(ctx).ok_or_else(|| Error::invalid("gguf", "gguf_init_empty", "returned NULL"))?;
        Ok(GgufWriter { ctx, ggml: None })
    }

    /// Sets `key` to a u32 (replacing any value it had).
    pub(crate) fn set_u32(&mut self, key: &str, v: u32) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: valid context and NUL-terminated key; gguf copies the key.
        unsafe { sys::gguf_set_val_u32(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    /// Sets `key` to an f32.
    pub(crate) fn set_f32(&mut self, key: &str, v: f32) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: as in set_u32.
        unsafe { sys::gguf_set_val_f32(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    /// Sets `key` to a bool.
    pub(crate) fn set_bool(&mut self, key: &str, v: bool) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: as in set_u32.
        unsafe { sys::gguf_set_val_bool(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    /// Sets `key` to a string (no NUL inside).
    pub(crate) fn set_str(&mut self, key: &str, v: &str) -> Result<()> {
        let k = cstring("gguf key", key)?;
        let v = cstring("gguf string value", v)?;
        // SAFETY: valid context, both strings NUL-terminated; gguf copies them.
        unsafe { sys::gguf_set_val_str(self.ctx.as_ptr(), k.as_ptr(), v.as_ptr()) };
        Ok(())
    }

    /// Sets `key` to an array of strings.
    pub(crate) fn set_arr_str(&mut self, key: &str, values: &[String]) -> Result<()> {
        let k = cstring("gguf key", key)?;
        let owned = values.iter().map(|v| cstring("gguf array string", v)).collect::<Result<Vec<CString>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: `ptrs` holds `len` pointers to NUL-terminated strings kept
        // alive by `owned` for the call; gguf copies them into std::strings.
        unsafe { sys::gguf_set_arr_str(self.ctx.as_ptr(), k.as_ptr(), ptrs.as_mut_ptr(), ptrs.len()) };
        Ok(())
    }

    /// Sets `key` to an array of numbers (f32, i32 or u32).
    pub(crate) fn set_arr<T: ArrayElem>(&mut self, key: &str, values: &[T]) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: `values` holds len elements of T, whose size is that of
        // T::TYPE (ArrayElem's contract); gguf copies them.
        unsafe { sys::gguf_set_arr_data(self.ctx.as_ptr(), k.as_ptr(), T::TYPE, values.as_ptr().cast(), values.len()) };
        Ok(())
    }

    /// Creates the tensor descriptors in a no_alloc ggml context and adds
    /// them to the gguf context, in order (once per writer). Names must be
    /// unique and shorter than `GGML_MAX_NAME` bytes, shapes positive.
    pub(crate) fn add_tensors(&mut self, tensors: &[TensorDesc<'_>]) -> Result<()> {
        if self.ggml.is_some() {
            return Err(Error::invalid("gguf", "add_tensors", "called twice"));
        }
        for (i, t) in tensors.iter().enumerate() {
            if t.name.len() >= sys::GGML_MAX_NAME as usize {
                // ggml_set_name would cut it, and two cut names could clash.
                return Err(Error::invalid("tensor name", t.name, "names are at most 63 bytes"));
            }
            if tensors[..i].iter().any(|o| o.name == t.name) {
                // gguf_add_tensor aborts on a duplicate name.
                return Err(Error::invalid("tensor name", t.name, "given twice"));
            }
            if t.ne0 == 0 || (t.two_d && t.ne1 == 0) {
                return Err(Error::invalid("tensor shape", t.name, format!("[{}, {}] has a zero", t.ne0, t.ne1)));
            }
        }
        // SAFETY: pure function.
        let overhead = unsafe { sys::ggml_tensor_overhead() };
        let params = sys::ggml_init_params {
            mem_size: overhead * (tensors.len() + 1),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml allocates its own pool of mem_size bytes (room for
        // every descriptor); no tensor data is allocated.
        let ggml = unsafe { sys::ggml_init(params) };
        let ggml = NonNull::new(ggml).ok_or_else(|| Error::invalid("ggml", "ggml_init", "returned NULL"))?;
        self.ggml = Some(ggml);
        for t in tensors {
            let name = cstring("tensor name", t.name)?;
            // SAFETY: the pool has room for tensors.len() descriptors (sized
            // above), dimensions are positive, and names are unique and
            // shorter than GGML_MAX_NAME (all checked above); gguf_add_tensor
            // copies the descriptor.
            unsafe {
                let tensor = if t.two_d {
                    sys::ggml_new_tensor_2d(ggml.as_ptr(), t.ty, t.ne0 as i64, t.ne1 as i64)
                } else {
                    sys::ggml_new_tensor_1d(ggml.as_ptr(), t.ty, t.ne0 as i64)
                };
                sys::ggml_set_name(tensor, name.as_ptr());
                sys::gguf_add_tensor(self.ctx.as_ptr(), tensor);
            }
        }
        Ok(())
    }

    /// Header, key/values and tensor infos, padded to the alignment.
    pub(crate) fn meta_bytes(&self) -> Vec<u8> {
        // SAFETY: valid context.
        let n = unsafe { sys::gguf_get_meta_size(self.ctx.as_ptr()) };
        let mut meta = vec![0u8; n];
        // SAFETY: gguf_get_meta_data writes exactly gguf_get_meta_size bytes.
        unsafe { sys::gguf_get_meta_data(self.ctx.as_ptr(), meta.as_mut_ptr().cast()) };
        meta
    }

    /// Alignment of each tensor's data (`general.alignment`, 32 by default).
    pub(crate) fn alignment(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::gguf_get_alignment(self.ctx.as_ptr()) }
    }

    /// Offset of the `index`-th tensor's data from the start of the data
    /// section, `None` past the last tensor.
    pub(crate) fn tensor_offset(&self, index: usize) -> Option<usize> {
        // SAFETY: valid context.
        let n = unsafe { sys::gguf_get_n_tensors(self.ctx.as_ptr()) };
        let index = i64::try_from(index).ok().filter(|&i| i < n)?;
        // SAFETY: 0 <= index < number of tensors (checked), which gguf asserts.
        Some(unsafe { sys::gguf_get_tensor_offset(self.ctx.as_ptr(), index) })
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // SAFETY: both contexts are owned here and freed once.
        unsafe {
            sys::gguf_free(self.ctx.as_ptr());
            if let Some(g) = self.ggml {
                sys::ggml_free(g.as_ptr());
            }
        }
    }
}
