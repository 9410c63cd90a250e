//! The metadata fuzzer's engine (targets `metadata` and `metadata_real`):
//! takes a seed model, changes the values of its keys (integers, enums,
//! floats, bools, strings, array lengths, types) and of every key the
//! validator's allow-list knows, writes the file (new metadata, the seed's
//! tensor data unchanged) and runs it through the safe API: load, a context
//! with and without embeddings, one decode, outputs read.
//! `LLAMA_RS_FUZZ_TRACE=1` prints each change (architecture, key, value) to
//! stderr, to see what a crash or timeout input does.

use arbitrary::Arbitrary;
use llama_rs::{sys, Batch, ContextParams, Model, Token};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// One change to one key.
#[derive(Arbitrary, Debug)]
pub struct Mutation {
    /// Index into the seed's keys followed by the allow-list's keys.
    pub key: u16,
    /// The new value.
    pub value: NewValue,
}

/// A new value for a key.
#[derive(Arbitrary, Debug)]
pub enum NewValue {
    /// One of [`EDGES`], in the key's own integer type (u32 unless it is i32).
    Edge(u8),
    /// Any u32.
    U32(u32),
    /// Any i32.
    I32(i32),
    /// The key's current integer value plus a small delta.
    Nudge(i8),
    /// Any f32 (NaN and infinities included).
    F32(f32),
    /// A bool.
    Bool(bool),
    /// One of [`WORDS`].
    Word(u8),
    /// An array of `len` copies of one of [`EDGES`] (u32 elements).
    ArrU32 { len: u16, edge: u8 },
    /// An array of `len` floats.
    ArrF32 { len: u16, value: f32 },
    /// The key's array cut or extended to `len` (first element repeated).
    Resize(u16),
    /// The key removed.
    Remove,
    /// The whole model relabelled: `general.architecture` set to one of the
    /// pinned llama.cpp's architectures and every `<old>.` key renamed to
    /// `<new>.` (the key index is ignored).
    Architecture(u8),
}

/// One fuzz input: which seed, which changes, which context.
#[derive(Arbitrary, Debug)]
pub struct Input {
    pub seed: u8,
    pub mutations: Vec<Mutation>,
    pub decode_tokens: u8,
}

/// Integer values where bugs live: zero, one, powers of two and their
/// neighbours, llama.cpp's limits (512 layers, 1024 experts, 256 sequences),
/// the enum bounds of small enums, the type extremes.
pub const EDGES: [i64; 24] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    16,
    31,
    64,
    255,
    256,
    511,
    512,
    513,
    1024,
    1025,
    65536,
    i32::MAX as i64,
    u32::MAX as i64,
    -1,
];

/// Strings for string keys: architectures, tokenizer models and
/// pre-tokenizers, RoPE scaling types, pooling names, nonsense.
pub const WORDS: [&str; 20] = [
    "",
    "llama",
    "qwen2",
    "gemma3",
    "bert",
    "t5",
    "rwkv6",
    "mamba",
    "gpt2",
    "spm",
    "ugm",
    "rwkv",
    "plamo2",
    "none",
    "no",
    "linear",
    "yarn",
    "longrope",
    "dynamic",
    "\u{e9}\u{1F600}",
];

/// The architectures of the pinned llama.cpp, from the generated table.
fn architectures() -> &'static [String] {
    static ARCHS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARCHS.get_or_init(|| {
        let table = include_str!("../../llama-rs/src/hparams_table.rs");
        let start = table.find("ARCHITECTURES: &[&str] = &[").expect("ARCHITECTURES in the table");
        let list = &table[start..start + table[start..].find("];").expect("end of ARCHITECTURES")];
        list.split('"').skip(1).step_by(2).map(str::to_string).collect()
    })
}

/// The allow-list's keys, from the generated table of the library
/// (`{arch}` stands for the architecture).
fn table_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let table = include_str!("../../llama-rs/src/hparams_table.rs");
        let mut keys: Vec<String> =
            table.split("key: \"").skip(1).filter_map(|rest| rest.split('"').next()).map(str::to_string).collect();
        keys.sort();
        keys.dedup();
        keys
    })
}

/// A seed model: its path and its tensor data (what follows the metadata).
pub struct Seed {
    path: CString,
    data: Vec<u8>,
}

impl Seed {
    /// Reads the seed file's tensor data once.
    pub fn open(path: &Path) -> Seed {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let c = CString::new(path.to_str().expect("UTF-8 seed path")).unwrap();
        let ctx = Meta::open(&c).unwrap_or_else(|| panic!("{}: not a GGUF file", path.display()));
        // SAFETY: valid context.
        let offset = unsafe { sys::gguf_get_data_offset(ctx.0.as_ptr()) };
        Seed { path: c, data: bytes[offset..].to_vec() }
    }
}

/// A gguf context (metadata and tensor infos), freed on drop.
struct Meta(NonNull<sys::gguf_context>);

impl Drop for Meta {
    fn drop(&mut self) {
        // SAFETY: owned context, freed once.
        unsafe { sys::gguf_free(self.0.as_ptr()) };
    }
}

impl Meta {
    fn open(path: &CStr) -> Option<Meta> {
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        // SAFETY: NUL-terminated path; metadata only; NULL on failure.
        NonNull::new(unsafe { sys::gguf_init_from_file(path.as_ptr(), params) }).map(Meta)
    }
    fn ptr(&self) -> *mut sys::gguf_context {
        self.0.as_ptr()
    }
    fn keys(&self) -> Vec<String> {
        // SAFETY: ids < n_kv; the names are copied at once.
        unsafe {
            (0..sys::gguf_get_n_kv(self.ptr()))
                .map(|i| CStr::from_ptr(sys::gguf_get_key(self.ptr(), i)).to_string_lossy().into_owned())
                .collect()
        }
    }
    fn id(&self, key: &CStr) -> i64 {
        // SAFETY: valid context and key.
        unsafe { sys::gguf_find_key(self.ptr(), key.as_ptr()) }
    }
    fn arch(&self) -> String {
        let id = self.id(c"general.architecture");
        // SAFETY: the type is checked before the string is read.
        unsafe {
            if id >= 0 && sys::gguf_get_kv_type(self.ptr(), id) == sys::GGUF_TYPE_STRING {
                CStr::from_ptr(sys::gguf_get_val_str(self.ptr(), id)).to_string_lossy().into_owned()
            } else {
                "llama".into()
            }
        }
    }
    /// The key's current integer value, if it is a u32 or i32 scalar.
    fn int(&self, key: &CStr) -> Option<i64> {
        let id = self.id(key);
        if id < 0 {
            return None;
        }
        // SAFETY: each getter is called on its own type.
        unsafe {
            match sys::gguf_get_kv_type(self.ptr(), id) {
                sys::GGUF_TYPE_UINT32 => Some(i64::from(sys::gguf_get_val_u32(self.ptr(), id))),
                sys::GGUF_TYPE_INT32 => Some(i64::from(sys::gguf_get_val_i32(self.ptr(), id))),
                _ => None,
            }
        }
    }
    fn is_i32(&self, key: &CStr) -> bool {
        let id = self.id(key);
        // SAFETY: valid id.
        id >= 0 && unsafe { sys::gguf_get_kv_type(self.ptr(), id) } == sys::GGUF_TYPE_INT32
    }
    fn set_int(&self, key: &CStr, v: i64) {
        // SAFETY: valid context, NUL-terminated key; gguf replaces the value.
        unsafe {
            if self.is_i32(key) {
                sys::gguf_set_val_i32(self.ptr(), key.as_ptr(), v as i32)
            } else {
                sys::gguf_set_val_u32(self.ptr(), key.as_ptr(), v as u32)
            }
        }
    }
    fn apply(&self, key: &CStr, value: &NewValue) {
        let p = self.ptr();
        let k = key.as_ptr();
        let edge = |i: u8| EDGES[usize::from(i) % EDGES.len()];
        // SAFETY: valid context and NUL-terminated key for every setter; the
        // array setters copy `len` elements of the stated type from live
        // buffers; types are checked before typed getters.
        unsafe {
            match value {
                NewValue::Edge(i) => self.set_int(key, edge(*i)),
                NewValue::U32(v) => sys::gguf_set_val_u32(p, k, *v),
                NewValue::I32(v) => sys::gguf_set_val_i32(p, k, *v),
                NewValue::Nudge(d) => {
                    if let Some(v) = self.int(key) {
                        self.set_int(key, v + i64::from(*d));
                    }
                }
                NewValue::F32(v) => sys::gguf_set_val_f32(p, k, *v),
                NewValue::Bool(v) => sys::gguf_set_val_bool(p, k, *v),
                NewValue::Word(i) => {
                    let w = CString::new(WORDS[usize::from(*i) % WORDS.len()]).unwrap();
                    sys::gguf_set_val_str(p, k, w.as_ptr())
                }
                NewValue::ArrU32 { len, edge: e } => {
                    let v = vec![edge(*e) as u32; usize::from(*len) % 1100];
                    sys::gguf_set_arr_data(p, k, sys::GGUF_TYPE_UINT32, v.as_ptr().cast(), v.len())
                }
                NewValue::ArrF32 { len, value } => {
                    let v = vec![*value; usize::from(*len) % 1100];
                    sys::gguf_set_arr_data(p, k, sys::GGUF_TYPE_FLOAT32, v.as_ptr().cast(), v.len())
                }
                NewValue::Resize(len) => self.resize(key, usize::from(*len)),
                NewValue::Remove => {
                    sys::gguf_remove_key(p, k);
                }
                NewValue::Architecture(i) => {
                    let archs = architectures();
                    self.relabel(&archs[usize::from(*i) % archs.len()]);
                }
            }
        }
    }
    /// Sets `general.architecture` to `arch` and renames every key of the
    /// old architecture's prefix.
    fn relabel(&self, arch: &str) {
        let old = self.arch();
        let prefix = format!("{old}.");
        for key in self.keys() {
            let Some(rest) = key.strip_prefix(&prefix) else { continue };
            let (Ok(from), Ok(to)) = (CString::new(key.as_str()), CString::new(format!("{arch}.{rest}"))) else {
                continue;
            };
            self.copy_value(&from, &to);
            // SAFETY: valid context and NUL-terminated key.
            unsafe { sys::gguf_remove_key(self.ptr(), from.as_ptr()) };
        }
        let a = CString::new(arch).unwrap();
        // SAFETY: valid context, NUL-terminated strings (copied).
        unsafe { sys::gguf_set_val_str(self.ptr(), c"general.architecture".as_ptr(), a.as_ptr()) };
    }
    /// Copies the value of `from` to the key `to` (same type).
    fn copy_value(&self, from: &CStr, to: &CStr) {
        let (p, id) = (self.ptr(), self.id(from));
        if id < 0 {
            return;
        }
        // SAFETY: each getter is called on its own type; arrays are copied
        // with their own element type and length; setters copy.
        unsafe {
            let t = to.as_ptr();
            match sys::gguf_get_kv_type(p, id) {
                sys::GGUF_TYPE_UINT32 => sys::gguf_set_val_u32(p, t, sys::gguf_get_val_u32(p, id)),
                sys::GGUF_TYPE_INT32 => sys::gguf_set_val_i32(p, t, sys::gguf_get_val_i32(p, id)),
                sys::GGUF_TYPE_FLOAT32 => sys::gguf_set_val_f32(p, t, sys::gguf_get_val_f32(p, id)),
                sys::GGUF_TYPE_BOOL => sys::gguf_set_val_bool(p, t, sys::gguf_get_val_bool(p, id)),
                sys::GGUF_TYPE_UINT64 => sys::gguf_set_val_u64(p, t, sys::gguf_get_val_u64(p, id)),
                sys::GGUF_TYPE_STRING => {
                    let v = CString::from(CStr::from_ptr(sys::gguf_get_val_str(p, id)));
                    sys::gguf_set_val_str(p, t, v.as_ptr())
                }
                sys::GGUF_TYPE_ARRAY => {
                    let at = sys::gguf_get_arr_type(p, id);
                    let n = sys::gguf_get_arr_n(p, id);
                    if at == sys::GGUF_TYPE_STRING {
                        let v: Vec<CString> =
                            (0..n).map(|i| CStr::from_ptr(sys::gguf_get_arr_str(p, id, i)).into()).collect();
                        let mut ptrs: Vec<*const std::os::raw::c_char> = v.iter().map(|s| s.as_ptr()).collect();
                        sys::gguf_set_arr_str(p, t, ptrs.as_mut_ptr(), n);
                    } else {
                        // The data stays owned by `p` until the setter has copied it
                        // (an empty array may have no data pointer at all).
                        let data = sys::gguf_get_arr_data(p, id).cast::<u8>();
                        let len = n * type_size(at);
                        let copy = if len == 0 || data.is_null() {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(data, len).to_vec()
                        };
                        sys::gguf_set_arr_data(p, t, at, copy.as_ptr().cast(), n);
                    }
                }
                _ => {}
            }
        }
    }
    /// Cuts or extends a numeric array (the first element repeated); string
    /// arrays are cut or extended with copies of their first string.
    fn resize(&self, key: &CStr, len: usize) {
        let id = self.id(key);
        // SAFETY: the key is an array (checked); elements are read within
        // its length with its element type's size; setters copy.
        unsafe {
            if id < 0 || sys::gguf_get_kv_type(self.ptr(), id) != sys::GGUF_TYPE_ARRAY {
                return;
            }
            let n = sys::gguf_get_arr_n(self.ptr(), id);
            let t = sys::gguf_get_arr_type(self.ptr(), id);
            if n == 0 {
                return;
            }
            if t == sys::GGUF_TYPE_STRING {
                let strings: Vec<CString> = (0..len)
                    .map(|i| CStr::from_ptr(sys::gguf_get_arr_str(self.ptr(), id, if i < n { i } else { 0 })).into())
                    .collect();
                let mut ptrs: Vec<*const std::os::raw::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
                sys::gguf_set_arr_str(self.ptr(), key.as_ptr(), ptrs.as_mut_ptr(), ptrs.len());
                return;
            }
            let size = type_size(t);
            if size == 0 {
                return;
            }
            let data = sys::gguf_get_arr_data(self.ptr(), id).cast::<u8>();
            if data.is_null() {
                return;
            }
            let old = std::slice::from_raw_parts(data, n * size).to_vec();
            let mut new = Vec::with_capacity(len * size);
            for i in 0..len {
                let j = if i < n { i } else { 0 };
                new.extend_from_slice(&old[j * size..(j + 1) * size]);
            }
            sys::gguf_set_arr_data(self.ptr(), key.as_ptr(), t, new.as_ptr().cast(), len);
        }
    }
    /// The metadata as bytes (padded to the alignment), as written to a file.
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: valid context; the buffer has gguf_get_meta_size bytes.
        unsafe {
            let n = sys::gguf_get_meta_size(self.ptr());
            let mut buf = vec![0u8; n];
            sys::gguf_get_meta_data(self.ptr(), buf.as_mut_ptr().cast());
            buf
        }
    }
}

/// Bytes of one element of a numeric GGUF type (0 for others).
fn type_size(t: sys::gguf_type) -> usize {
    match t {
        sys::GGUF_TYPE_UINT8 | sys::GGUF_TYPE_INT8 | sys::GGUF_TYPE_BOOL => 1,
        sys::GGUF_TYPE_UINT16 | sys::GGUF_TYPE_INT16 => 2,
        sys::GGUF_TYPE_UINT32 | sys::GGUF_TYPE_INT32 | sys::GGUF_TYPE_FLOAT32 => 4,
        sys::GGUF_TYPE_UINT64 | sys::GGUF_TYPE_INT64 | sys::GGUF_TYPE_FLOAT64 => 8,
        _ => 0,
    }
}

/// Builds the mutated file for `input` from `seed` at `scratch`; false if
/// the seed's metadata could not be reopened.
pub fn write_mutated(seed: &Seed, input: &Input, scratch: &Path) -> bool {
    let Some(meta) = Meta::open(&seed.path) else { return false };
    for m in input.mutations.iter().take(8) {
        // The keys after the changes so far (an architecture change renames).
        let arch = meta.arch();
        let mut keys = meta.keys();
        keys.extend(table_keys().iter().map(|k| k.replace("{arch}", &arch)));
        let key = &keys[usize::from(m.key) % keys.len()];
        let Ok(key) = CString::new(key.as_str()) else { continue };
        if std::env::var_os("LLAMA_RS_FUZZ_TRACE").is_some() {
            eprintln!("metadata: {} {key:?} = {:?}", meta.arch(), m.value);
        }
        meta.apply(&key, &m.value);
    }
    let mut bytes = meta.bytes();
    bytes.extend_from_slice(&seed.data);
    std::fs::write(scratch, bytes).is_ok()
}

/// Loads the file and uses it: a context without and with embeddings, a
/// decode of `n` tokens (all marked as outputs in the second), logits and
/// embeddings of every row. Errors are fine; nothing may abort.
pub fn exercise(path: &Path, n_tokens: u8) {
    let Ok(model) = Model::load_with(path, crate::cpu_params()) else { return };
    let n_vocab = model.vocab().n_tokens();
    if n_vocab <= 0 {
        return;
    }
    let n = usize::from(n_tokens % 6) + 1;
    for embeddings in [false, true] {
        let params = ContextParams::default().n_ctx(64).n_batch(8).n_ubatch(8).threads(1).embeddings(embeddings);
        let Ok(mut ctx) = model.new_context(params) else { continue };
        let Ok(mut batch) = Batch::new(n, 1) else { continue };
        for i in 0..n {
            let _ = batch.add(Token((i as i32 * 7 + 1) % n_vocab), i as i32, &[0], embeddings || i + 1 == n);
        }
        if ctx.decode(&mut batch).is_err() {
            continue;
        }
        for i in 0..n as i32 {
            let _ = ctx.logits(i).map(|l| l.iter().copied().fold(0.0f32, f32::max));
            let _ = ctx.embeddings(i).map(|e| e.iter().copied().sum::<f32>());
        }
    }
}

/// A per-process scratch path for the target `name`.
pub fn scratch(name: &str) -> &'static PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| crate::scratch_file(name))
}
