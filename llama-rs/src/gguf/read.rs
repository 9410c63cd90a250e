//! [`Gguf`]: a minimal GGUF metadata reader over ggml's `gguf.h`.
//!
//! Every typed getter checks the value's type before calling
//! `gguf_get_val_*`, whose own type asserts would abort the process; the
//! load-time overrides are seen as llama.cpp's loader sees them.

use super::ModelFile;
use crate::error::{Error, Result};
use crate::hparams::Kind;
use crate::model::KvOverride;
use llama_sys as sys;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::NonNull;

/// A u64 as an [`Value::Int`]; values above `i64::MAX` (which no range of
/// the allow-list distinguishes) become `i64::MAX`.
fn clamp_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A metadata value as llama.cpp reads it into its destination.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// Integers and bools (0 or 1).
    Int(i64),
    /// Floats.
    Float(f32),
    /// Strings.
    Str(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// An open GGUF file's metadata (no tensor data), freed on drop; with the
/// load-time overrides llama.cpp will apply on top of the file's values.
pub(crate) struct Gguf {
    ctx: NonNull<sys::gguf_context>,
    path: PathBuf,
    overrides: Vec<(String, KvOverride)>,
}

impl Gguf {
    /// Reads the header, key/values and tensor infos of `path`. A file that
    /// is not GGUF, is truncated inside the metadata or is otherwise
    /// malformed gives [`Error::InvalidModel`] (gguf.cpp logs the reason).
    #[cfg(all(test, feature = "synthetic"))]
    pub(crate) fn open(path: &std::path::Path) -> Result<Gguf> {
        Gguf::read(&ModelFile::open(path)?, &[])
    }

    /// Reads an opened model file's metadata; `overrides` are the load-time
    /// overrides ([`ModelParams::kv_override`](crate::ModelParams::kv_override)),
    /// seen by the scalar getters as llama.cpp's loader sees them.
    pub(crate) fn read(file: &ModelFile, overrides: &[(String, KvOverride)]) -> Result<Gguf> {
        crate::backend::init();
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        let c = file.c_path()?;
        // SAFETY: NUL-terminated path; no_alloc with ctx NULL reads only the
        // metadata; gguf.cpp returns NULL (after logging) on any read or
        // format error instead of asserting.
        let ctx = unsafe { sys::gguf_init_from_file(c.as_ptr(), params) };
        let ctx = NonNull::new(ctx).ok_or_else(|| Error::InvalidModel {
            path: file.path().into(),
            message: "not a GGUF file, or truncated or corrupt metadata (gguf_init_from_file failed; \
                      llama.cpp's log says where)"
                .into(),
        })?;
        // llama.cpp keeps the first override of a key (`unordered_map::insert`,
        // `src/llama-model-loader.cpp:553`).
        let mut kept: Vec<(String, KvOverride)> = Vec::new();
        for (k, v) in overrides {
            if !kept.iter().any(|(seen, _)| seen == k) {
                kept.push((k.clone(), v.clone()));
            }
        }
        Ok(Gguf { ctx, path: file.path().into(), overrides: kept })
    }

    /// The override of a scalar key, if llama.cpp would apply it: the file's
    /// value is not an array (arrays are read without overrides).
    fn override_of(&self, key: &str) -> Option<&KvOverride> {
        let (_, v) = self.overrides.iter().find(|(k, _)| k == key)?;
        (self.kv_type(key) != Some(sys::GGUF_TYPE_ARRAY)).then_some(v)
    }

    pub(crate) fn invalid(&self, message: String) -> Error {
        Error::InvalidModel { path: self.path.clone(), message }
    }

    pub(crate) fn ptr(&self) -> *const sys::gguf_context {
        self.ctx.as_ptr()
    }

    /// Id of `key`, if present.
    fn key_id(&self, key: &str) -> Option<i64> {
        let c = CString::new(key).ok()?;
        // SAFETY: valid context and NUL-terminated key.
        let id = unsafe { sys::gguf_find_key(self.ptr(), c.as_ptr()) };
        (id >= 0).then_some(id)
    }

    /// Type of a key's value (`GGUF_TYPE_ARRAY` for arrays).
    pub(crate) fn kv_type(&self, key: &str) -> Option<sys::gguf_type> {
        // SAFETY: the id comes from gguf_find_key on this context.
        self.key_id(key).map(|id| unsafe { sys::gguf_get_kv_type(self.ptr(), id) })
    }

    pub(crate) fn type_name(t: sys::gguf_type) -> String {
        // SAFETY: gguf_type_name returns a static string, or NULL for an
        // unknown type (handled by string_from_ptr).
        let name = unsafe { crate::ffi::string_from_ptr(sys::gguf_type_name(t)) };
        if name.is_empty() {
            format!("type {t}")
        } else {
            name
        }
    }

    /// The id of a scalar key of type `want`, or an error naming the type.
    fn scalar_id(&self, key: &str, want: sys::gguf_type) -> Result<Option<i64>> {
        let Some(id) = self.key_id(key) else { return Ok(None) };
        // SAFETY: id from gguf_find_key.
        let t = unsafe { sys::gguf_get_kv_type(self.ptr(), id) };
        if t != want {
            return Err(self.invalid(format!(
                "{key} has type {}, expected {}",
                Self::type_name(t),
                Self::type_name(want)
            )));
        }
        Ok(Some(id))
    }

    /// A u32 value. An integer override is taken as llama.cpp takes it
    /// (`target = val_i64`: truncated to 32 bits).
    pub(crate) fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        if let Some(KvOverride::Int(v)) = self.override_of(key) {
            return Ok(Some(*v as u32));
        }
        // SAFETY: the id has type UINT32 (checked), which gguf_get_val_u32 asserts.
        Ok(self.scalar_id(key, sys::GGUF_TYPE_UINT32)?.map(|id| unsafe { sys::gguf_get_val_u32(self.ptr(), id) }))
    }

    /// A u16 value (split counts; overrides do not apply to them).
    pub(crate) fn get_u16(&self, key: &str) -> Result<Option<u16>> {
        // SAFETY: the id has type UINT16 (checked), which gguf_get_val_u16 asserts.
        Ok(self.scalar_id(key, sys::GGUF_TYPE_UINT16)?.map(|id| unsafe { sys::gguf_get_val_u16(self.ptr(), id) }))
    }

    /// An f32 value (or its float override, narrowed as llama.cpp does).
    pub(crate) fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        if let Some(KvOverride::Float(v)) = self.override_of(key) {
            return Ok(Some(*v as f32));
        }
        // SAFETY: the id has type FLOAT32 (checked), which gguf_get_val_f32 asserts.
        Ok(self.scalar_id(key, sys::GGUF_TYPE_FLOAT32)?.map(|id| unsafe { sys::gguf_get_val_f32(self.ptr(), id) }))
    }

    /// A string value (cut at the first NUL, as llama.cpp reads it), or its
    /// string override.
    pub(crate) fn get_str(&self, key: &str) -> Result<Option<String>> {
        if let Some(KvOverride::Str(v)) = self.override_of(key) {
            return Ok(Some(v.clone()));
        }
        let Some(id) = self.scalar_id(key, sys::GGUF_TYPE_STRING)? else { return Ok(None) };
        // SAFETY: the id has type STRING (checked); the returned pointer is
        // owned by the context, which outlives this copy.
        Ok(Some(unsafe { crate::ffi::string_from_ptr(sys::gguf_get_val_str(self.ptr(), id)) }))
    }

    /// Element type and length of an array key, if the key is an array.
    pub(crate) fn arr_info(&self, key: &str) -> Option<(sys::gguf_type, usize)> {
        let id = self.key_id(key)?;
        // SAFETY: id from gguf_find_key; gguf_get_arr_type/arr_n are only
        // called on an array.
        unsafe {
            (sys::gguf_get_kv_type(self.ptr(), id) == sys::GGUF_TYPE_ARRAY)
                .then(|| (sys::gguf_get_arr_type(self.ptr(), id), sys::gguf_get_arr_n(self.ptr(), id)))
        }
    }

    /// An array of strings, each as the bytes llama.cpp sees (up to the
    /// first NUL).
    pub(crate) fn get_arr_str(&self, key: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(id) = self.key_id(key) else { return Ok(None) };
        let Some((t, n)) = self.arr_info(key) else {
            return Err(self.invalid(format!("{key} is not an array")));
        };
        if t != sys::GGUF_TYPE_STRING {
            return Err(self.invalid(format!("{key} is an array of {}, expected string", Self::type_name(t))));
        }
        let out = (0..n)
            .map(|i| {
                // SAFETY: string array (checked) and i < its length; the
                // string is owned by the context and copied at once.
                unsafe { CStr::from_ptr(sys::gguf_get_arr_str(self.ptr(), id, i)) }.to_bytes().to_vec()
            })
            .collect();
        Ok(Some(out))
    }

    /// A u32 scalar, or an array of u32/i32/bool (llama.cpp's
    /// `get_key_or_arr` for per-layer values).
    pub(crate) fn get_u32_or_arr(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let values = self.scalar_or_arr(key, Kind::U32)?;
        // Kind::U32 reads give u32 values (as i64), never anything else.
        Ok(values.map(|v| v.into_iter().map(|x| if let Value::Int(i) = x { i as u32 } else { 0 }).collect()))
    }

    /// The GGUF type llama.cpp requires for a scalar of `kind`.
    fn gguf_type(kind: Kind) -> sys::gguf_type {
        match kind {
            Kind::U32 => sys::GGUF_TYPE_UINT32,
            Kind::I32 => sys::GGUF_TYPE_INT32,
            Kind::U64 => sys::GGUF_TYPE_UINT64,
            Kind::F32 => sys::GGUF_TYPE_FLOAT32,
            Kind::Bool => sys::GGUF_TYPE_BOOL,
            Kind::Str => sys::GGUF_TYPE_STRING,
        }
    }

    /// A scalar read as llama.cpp's `get_key` reads it into a `kind`
    /// destination: an override of the matching type wins (integers
    /// truncated as `target = val_i64` truncates them), else the file's value,
    /// which must have exactly that type (GGUFMeta throws otherwise).
    pub(crate) fn scalar(&self, key: &str, kind: Kind) -> Result<Option<Value>> {
        match (self.override_of(key), kind) {
            (Some(KvOverride::Int(v)), Kind::U32) => return Ok(Some(Value::Int(i64::from(*v as u32)))),
            (Some(KvOverride::Int(v)), Kind::I32) => return Ok(Some(Value::Int(i64::from(*v as i32)))),
            (Some(KvOverride::Float(v)), Kind::F32) => return Ok(Some(Value::Float(*v as f32))),
            (Some(KvOverride::Bool(v)), Kind::Bool) => return Ok(Some(Value::Int(i64::from(*v)))),
            (Some(KvOverride::Str(v)), Kind::Str) => return Ok(Some(Value::Str(v.clone()))),
            _ => {}
        }
        let Some(id) = self.scalar_id(key, Self::gguf_type(kind))? else { return Ok(None) };
        // SAFETY: the id has the type of each getter (checked by scalar_id),
        // which gguf_get_val_* assert; strings are copied at once.
        Ok(Some(unsafe {
            match kind {
                Kind::U32 => Value::Int(i64::from(sys::gguf_get_val_u32(self.ptr(), id))),
                Kind::I32 => Value::Int(i64::from(sys::gguf_get_val_i32(self.ptr(), id))),
                Kind::U64 => Value::Int(clamp_u64(sys::gguf_get_val_u64(self.ptr(), id))),
                Kind::F32 => Value::Float(sys::gguf_get_val_f32(self.ptr(), id)),
                Kind::Bool => Value::Int(i64::from(sys::gguf_get_val_bool(self.ptr(), id))),
                Kind::Str => Value::Str(crate::ffi::string_from_ptr(sys::gguf_get_val_str(self.ptr(), id))),
            }
        }))
    }

    /// `get_key_or_arr`: the array's elements if the file holds an array,
    /// else the scalar.
    pub(crate) fn scalar_or_arr(&self, key: &str, kind: Kind) -> Result<Option<Vec<Value>>> {
        if self.kv_type(key) == Some(sys::GGUF_TYPE_ARRAY) {
            self.array(key, kind)
        } else {
            Ok(self.scalar(key, kind)?.map(|v| vec![v]))
        }
    }

    /// `get_arr`: the elements of an array key, read as llama.cpp reads them
    /// into `kind` elements (32-bit integers and bools reinterpreted, floats,
    /// strings); a key that is not an array is not read (None), an element
    /// type llama.cpp refuses is an error.
    pub(crate) fn array(&self, key: &str, kind: Kind) -> Result<Option<Vec<Value>>> {
        let Some((t, n)) = self.arr_info(key) else { return Ok(None) };
        let Some(id) = self.key_id(key) else { return Ok(None) };
        let ok = match kind {
            Kind::U32 | Kind::I32 | Kind::Bool => {
                matches!(t, sys::GGUF_TYPE_UINT32 | sys::GGUF_TYPE_INT32 | sys::GGUF_TYPE_BOOL)
            }
            Kind::U64 => t == sys::GGUF_TYPE_UINT64,
            Kind::F32 => t == sys::GGUF_TYPE_FLOAT32,
            Kind::Str => t == sys::GGUF_TYPE_STRING,
        };
        if !ok {
            return Err(self.invalid(format!(
                "{key} is an array of {}, which llama.cpp cannot read as {kind:?}",
                Self::type_name(t)
            )));
        }
        if t == sys::GGUF_TYPE_STRING {
            let strings = self.get_arr_str(key)?.unwrap_or_default();
            return Ok(Some(
                strings.into_iter().map(|b| Value::Str(String::from_utf8_lossy(&b).into_owned())).collect(),
            ));
        }
        // SAFETY: a non-string array (checked above: gguf_get_arr_data
        // asserts on string arrays) of n elements of its type's size, owned by
        // the context.
        let data = unsafe { sys::gguf_get_arr_data(self.ptr(), id) };
        let values = (0..n)
            .map(|i| {
                // SAFETY: i < n elements of the checked type, possibly unaligned.
                unsafe {
                    match (t, kind) {
                        (sys::GGUF_TYPE_BOOL, _) => Value::Int(i64::from(data.cast::<u8>().add(i).read() != 0)),
                        (sys::GGUF_TYPE_FLOAT32, _) => Value::Float(data.cast::<f32>().add(i).read_unaligned()),
                        (sys::GGUF_TYPE_UINT64, _) => Value::Int(clamp_u64(data.cast::<u64>().add(i).read_unaligned())),
                        (_, Kind::I32) => Value::Int(i64::from(data.cast::<i32>().add(i).read_unaligned())),
                        _ => Value::Int(i64::from(data.cast::<u32>().add(i).read_unaligned())),
                    }
                }
            })
            .collect();
        Ok(Some(values))
    }

    /// Number of tensor infos.
    pub(crate) fn n_tensors(&self) -> i64 {
        // SAFETY: valid context.
        unsafe { sys::gguf_get_n_tensors(self.ptr()) }
    }

    /// Name, offset in the file and size in bytes of tensor `i`.
    pub(crate) fn tensor_extent(&self, i: i64) -> (String, u64, u64) {
        // SAFETY: i in 0..n_tensors (callers iterate that range); the name is
        // owned by the context and copied at once.
        unsafe {
            let name = crate::ffi::string_from_ptr(sys::gguf_get_tensor_name(self.ptr(), i));
            let start =
                sys::gguf_get_data_offset(self.ptr()) as u64 + sys::gguf_get_tensor_offset(self.ptr(), i) as u64;
            (name, start, sys::gguf_get_tensor_size(self.ptr(), i) as u64)
        }
    }
}

impl Drop for Gguf {
    fn drop(&mut self) {
        // SAFETY: owned context, freed once.
        unsafe { sys::gguf_free(self.ctx.as_ptr()) };
    }
}

#[cfg(all(test, feature = "synthetic"))]
mod tests {
    use super::*;
    use crate::synthetic::{ModelShape, SyntheticModel};

    #[test]
    fn overrides_are_read_as_llama_cpp_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = SyntheticModel::new(ModelShape::tiny()).write_cached(dir.path()).unwrap();
        let f = ModelFile::open(&path).unwrap();
        let overrides = vec![
            ("llama.block_count".to_string(), KvOverride::Int((1 << 32) + 3)),
            ("llama.block_count".to_string(), KvOverride::Int(9)),
            ("llama.context_length".to_string(), KvOverride::Float(1.0)),
            ("llama.pooling_type".to_string(), KvOverride::Int(2)),
            ("tokenizer.ggml.tokens".to_string(), KvOverride::Int(1)),
        ];
        let g = Gguf::read(&f, &overrides).unwrap();
        // First override wins; integers are truncated to 32 bits.
        assert_eq!(g.get_u32("llama.block_count").unwrap(), Some(3));
        // An override of another type is ignored, as llama.cpp ignores it.
        assert_eq!(g.scalar("llama.context_length", Kind::U32).unwrap(), Some(Value::Int(512)));
        // A key the file lacks is still overridden.
        assert_eq!(g.scalar("llama.pooling_type", Kind::U32).unwrap(), Some(Value::Int(2)));
        // Arrays are read without overrides.
        assert_eq!(g.array("tokenizer.ggml.tokens", Kind::Str).unwrap().map(|v| v.len()), Some(1024));
        // Wrong file types are errors, never gguf asserts.
        assert!(g.scalar("general.architecture", Kind::U32).is_err());
        assert!(g.array("tokenizer.ggml.tokens", Kind::F32).is_err());
        assert_eq!(g.array("llama.block_count", Kind::U32).unwrap(), None);
    }
}
