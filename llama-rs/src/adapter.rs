//! LoRA adapters ([`LoraAdapter`]), applied to a context with
//! [`Context::set_lora`](crate::Context::set_lora); control vectors are a
//! context method ([`Context::set_control_vector`](crate::Context::set_control_vector)).
//!
//! Ownership, as llama.cpp has it at the pin: an adapter is registered with
//! its model when loaded (`model.loras`), `llama_adapter_lora_free`
//! unregisters and deletes it, and `llama_model_free` deletes those still
//! registered. A [`LoraAdapter`] therefore frees its adapter itself, once
//! (the last clone's drop), and holds its model (borrowed or through an
//! `Arc`) so that the model cannot be freed first; a context holds the
//! adapters it applies, so none is freed while llama.cpp's context points
//! to it. Loading and freeing write the model's adapter list, which context
//! creation and graph reservation read: both run under the model's write lock.

use crate::error::{Error, Result};
use crate::gguf::{Gguf, ModelFile};
use crate::model::{Model, ModelRef};
use crate::vocab::Token;
use llama_sys as sys;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

/// A LoRA adapter loaded from a GGUF file for one model. Apply it to
/// contexts of that model with [`Context::set_lora`](crate::Context::set_lora),
/// any number at a time, each with its own scale.
///
/// Cloning is cheap (a reference count) and gives the same adapter. It borrows
/// its model ([`LoraAdapter::load`]) or shares it through an `Arc`
/// ([`LoraAdapter::load_owned`], `'static`), so it cannot outlive it:
///
/// ```compile_fail,E0597
/// # fn f() -> llama_rs::Result<()> {
/// let adapter = {
///     let model = llama_rs::Model::load("model.gguf")?;
///     llama_rs::LoraAdapter::load(&model, "lora.gguf")?
/// }; // error: `model` does not live long enough
/// # drop(adapter); Ok(()) }
/// ```
///
/// `Send + Sync`: after loading, llama.cpp only reads an adapter (every
/// context that applies it reads its tensors while building graphs); its
/// release is serialised with the model's other writers.
#[derive(Clone)]
pub struct LoraAdapter<'m> {
    inner: Arc<Inner<'m>>,
}

struct Inner<'m> {
    ptr: NonNull<sys::llama_adapter_lora>,
    model: ModelRef<'m>,
    path: PathBuf,
    alpha: f32,
    alora: Vec<Token>,
}

// SAFETY: llama.cpp never writes an adapter after llama_adapter_lora_init
// returns; contexts on any thread read it (graph building). The only write,
// llama_adapter_lora_free (which also edits the model's adapter list), runs
// once, in Drop, under the model's write lock. The model is Send + Sync.
unsafe impl Send for Inner<'_> {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Inner<'_> {}

impl Drop for Inner<'_> {
    fn drop(&mut self) {
        let _guard = self.model.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the adapter came from llama_adapter_lora_init on this model,
        // which is alive (held by `model`); no context applies it any more
        // (contexts hold the adapters they apply, and this is the last
        // handle); freed once. llama_adapter_lora_free unregisters it from
        // the model, so llama_model_free will not free it again.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) };
    }
}

/// Equal when they are the same loaded adapter ([`LoraAdapter::same`]): what
/// a server groups requests by.
impl PartialEq for LoraAdapter<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

impl Eq for LoraAdapter<'_> {}

impl std::hash::Hash for LoraAdapter<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.ptr.hash(state);
    }
}

impl std::fmt::Debug for LoraAdapter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("path", &self.inner.path)
            .field("alpha", &self.inner.alpha)
            .field("alora_invocation_tokens", &self.inner.alora.len())
            .finish()
    }
}

impl<'m> LoraAdapter<'m> {
    /// Loads a LoRA adapter for `model`, borrowing it. The file is checked
    /// first for what would make llama.cpp abort (metadata of the wrong type,
    /// tensors whose shapes or types its graph cannot multiply); a file that
    /// is not a LoRA adapter, or one made for another model (architecture,
    /// tensor names or shapes), is an [`Error::Adapter`] saying why; a
    /// missing file is an [`Error::Io`].
    pub fn load(model: &'m Model, path: impl AsRef<Path>) -> Result<LoraAdapter<'m>> {
        LoraAdapter::load_ref(ModelRef::Borrowed(model), path.as_ref())
    }

    /// As [`load`](Self::load), holding the model through the `Arc`: a
    /// `'static` adapter, for contexts of [`Model::new_owned_context`] and
    /// the serving engine.
    pub fn load_owned(model: &Arc<Model>, path: impl AsRef<Path>) -> Result<LoraAdapter<'static>> {
        LoraAdapter::load_ref(ModelRef::Shared(Arc::clone(model)), path.as_ref())
    }

    fn load_ref<'a>(model: ModelRef<'a>, path: &Path) -> Result<LoraAdapter<'a>> {
        crate::init();
        if model.dry || model.is_vocab_only() {
            return Err(Error::Adapter {
                path: path.into(),
                message: "the model has no weights (vocab_only or a memory plan): load it fully first".into(),
            });
        }
        // Opened once: the file checked is the file llama.cpp reads (see ModelFile).
        let file = ModelFile::open(path)?;
        let alpha = check_file(&model, &file)?;
        let c_path = file.c_path()?;
        let ptr = {
            // Loading registers the adapter in the model's list.
            let _guard = model.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            crate::ffi::shim_ptr(
                "llama_adapter_lora_init",
                "llama.cpp could not load the adapter",
                // SAFETY: live model with weights; NUL-terminated path of the
                // checked file; the shim catches C++ exceptions.
                |out| unsafe { sys::llama_rs_adapter_lora_init(model.as_ptr(), c_path.as_ptr(), out) },
                |message| Error::Adapter { path: path.into(), message },
            )?
        };
        // SAFETY: live adapter; llama.cpp returns its count and a pointer to
        // that many tokens (owned by the adapter), copied at once.
        let alora = unsafe {
            let n = sys::llama_adapter_get_alora_n_invocation_tokens(ptr.as_ptr()) as usize;
            let p = sys::llama_adapter_get_alora_invocation_tokens(ptr.as_ptr());
            if n == 0 || p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p, n).iter().map(|&t| Token(t)).collect()
            }
        };
        Ok(LoraAdapter { inner: Arc::new(Inner { ptr, model, path: path.into(), alpha, alora }) })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_adapter_lora {
        self.inner.ptr.as_ptr()
    }

    /// Whether `self` and `other` are the same loaded adapter.
    pub fn same(&self, other: &LoraAdapter<'_>) -> bool {
        self.inner.ptr == other.inner.ptr
    }

    /// The model it was loaded for.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `adapter.lora.alpha`, 0 when the file has none. llama.cpp scales the
    /// adapter's product by `scale * alpha / rank` (`rank` of each tensor
    /// pair), or by `scale` alone when alpha is 0.
    pub fn alpha(&self) -> f32 {
        self.inner.alpha
    }

    /// The invocation tokens of an activated LoRA (aLoRA,
    /// `adapter.alora.invocation_tokens`): the adapter is meant to apply from
    /// where these tokens appear. Empty for a plain LoRA. The ids are the
    /// file's, not checked against the vocabulary.
    pub fn alora_invocation_tokens(&self) -> &[Token] {
        &self.inner.alora
    }

    /// A metadata value of the adapter file as a string (scalars only, as
    /// llama.cpp keeps them).
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = crate::ffi::cstring("metadata key", key).ok()?;
        // SAFETY: live adapter, NUL-terminated key; llama.cpp writes at most
        // `len` bytes (snprintf) and returns -1 for a missing key.
        crate::ffi::string_from_buffer(|buf, len| unsafe {
            sys::llama_adapter_meta_val_str(self.as_ptr(), key.as_ptr(), buf, len)
        })
    }

    /// All scalar metadata of the adapter file as (key, value) strings.
    pub fn metadata(&self) -> Vec<(String, String)> {
        // SAFETY: live adapter.
        let n = unsafe { sys::llama_adapter_meta_count(self.as_ptr()) }.max(0);
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < count; llama.cpp writes at most `len` bytes.
                let k = crate::ffi::string_from_buffer(|b, l| unsafe {
                    sys::llama_adapter_meta_key_by_index(self.as_ptr(), i, b, l)
                })?;
                // SAFETY: as above.
                let v = crate::ffi::string_from_buffer(|b, l| unsafe {
                    sys::llama_adapter_meta_val_str_by_index(self.as_ptr(), i, b, l)
                })?;
                Some((k, v))
            })
            .collect()
    }
}

/// The ggml types llama-rs lets LoRA tensors have: those llama.cpp's
/// `convert_lora_to_gguf.py` writes (f32, f16, bf16, q8_0), all of which the
/// backends multiply. Other types (integer tensors, types without a CPU dot
/// product) would abort in the graph.
const LORA_TYPES: [sys::ggml_type; 4] =
    [sys::GGML_TYPE_F32, sys::GGML_TYPE_F16, sys::GGML_TYPE_BF16, sys::GGML_TYPE_Q8_0];

/// Checks an adapter file against what llama.cpp's loader (`llama-adapter.cpp`)
/// and graph would abort on; returns its alpha.
///
/// - `general.type`, `general.architecture` and `adapter.type` are read with
///   `gguf_get_val_str` and `adapter.lora.alpha` with `gguf_get_val_f32`,
///   whose type asserts abort on another type.
/// - llama.cpp checks the pairs' shapes only partly: for `token_embd` (a row
///   lookup, then `B x A[rows]`) not that A and B share the rank, and for no
///   tensor the dimensions past the second; either mismatch aborts in
///   `ggml_mul_mat`'s shape assert at the first decode. Tensor types outside
///   [`LORA_TYPES`] abort in the backends' kernels.
///
/// What llama.cpp refuses cleanly (another architecture, a missing tensor,
/// a wrong first or second dimension) is refused here first, with the
/// tensor named.
fn check_file(model: &Model, file: &ModelFile) -> Result<f32> {
    let path = file.path();
    let bad = |message: String| Error::Adapter { path: path.into(), message };
    let g = Gguf::read(file, &[]).map_err(|e| match e {
        Error::InvalidModel { message, .. } => bad(message),
        other => other,
    })?;
    let string = |key: &str| g.get_str(key).map_err(|e| bad(strip_path(e)));
    let general_type = string("general.type")?;
    if general_type.as_deref() != Some("adapter") {
        return Err(bad(format!(
            "not an adapter: general.type is {} (expected \"adapter\"; is this a model file?)",
            general_type.map_or("missing".into(), |t| format!("{t:?}"))
        )));
    }
    let adapter_type = string("adapter.type")?;
    if adapter_type.as_deref() != Some("lora") {
        return Err(bad(format!(
            "not a LoRA adapter: adapter.type is {} (expected \"lora\")",
            adapter_type.map_or("missing".into(), |t| format!("{t:?}"))
        )));
    }
    let arch = string("general.architecture")?.unwrap_or_default();
    let model_arch = model.architecture();
    if arch != model_arch {
        return Err(bad(format!("made for architecture {arch:?}, the model is {model_arch:?}")));
    }
    let alpha = g.get_f32("adapter.lora.alpha").map_err(|e| bad(strip_path(e)))?.unwrap_or(0.0);
    if !alpha.is_finite() {
        return Err(bad(format!("adapter.lora.alpha = {alpha} is not finite")));
    }

    // The tensor pairs, as llama.cpp pairs them: a name ending in `.lora_a`
    // (`.lora_b`) with every `.lora_a` (`.lora_b`) removed is the base name;
    // other names are llama.cpp's to skip or refuse.
    let mut pairs: std::collections::BTreeMap<String, [Option<i64>; 2]> = Default::default();
    for i in 0..g.n_tensors() {
        let (name, _, _) = g.tensor_extent(i);
        for (k, suffix) in [".lora_a", ".lora_b"].into_iter().enumerate() {
            if name.ends_with(suffix) {
                pairs.entry(name.replace(suffix, "")).or_default()[k] = Some(i);
                break;
            }
        }
    }
    for (base, ids) in &pairs {
        let [Some(a), Some(b)] = *ids else {
            return Err(bad(format!("tensor {base}: only one of {base}.lora_a and {base}.lora_b")));
        };
        let info = |i: i64| {
            // SAFETY: i < n_tensors (from the loop above); gguf returns a
            // pointer to GGML_MAX_DIMS (4) values owned by the context, read
            // at once; the type is a plain query.
            unsafe {
                let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(g.ptr(), i), 4);
                ([ne[0], ne[1], ne[2], ne[3]], sys::gguf_get_tensor_type(g.ptr(), i))
            }
        };
        let ((a_ne, a_ty), (b_ne, b_ty)) = (info(a), info(b));
        for (which, ty) in [("lora_a", a_ty), ("lora_b", b_ty)] {
            if !LORA_TYPES.contains(&ty) {
                // SAFETY: ggml_type_name returns a static string (or NULL for
                // an unknown type, which string_from_ptr turns into "").
                let name = unsafe { crate::ffi::string_from_ptr(sys::ggml_type_name(ty)) };
                return Err(bad(format!(
                    "tensor {base}.{which} has type {name} ({ty}): llama-rs takes f32, f16, bf16 and q8_0 LoRA \
                     tensors"
                )));
            }
        }
        let Some((m_ne, _)) = model.tensor_info(base) else {
            return Err(bad(format!("tensor {base} does not exist in the model (an adapter for another model?)")));
        };
        let shape = |ne: [i64; 4]| format!("{:?}", ne);
        let mismatch = |why: &str| {
            bad(format!(
                "tensor {base}: lora_a {} and lora_b {} do not fit the model's {} ({why}; an adapter for another \
                 model?)",
                shape(a_ne),
                shape(b_ne),
                shape(m_ne)
            ))
        };
        if a_ne.iter().chain(&b_ne).any(|&n| n < 1) {
            return Err(mismatch("empty dimension"));
        }
        if base.ends_with("token_embd.weight") {
            // llama.cpp: B x A[token rows]: A is [rank, n_vocab], B [rank, n_embd].
            if m_ne[0] != b_ne[1] || m_ne[1] != a_ne[1] || a_ne[0] != b_ne[0] {
                return Err(mismatch("token_embd needs lora_a [rank, n_vocab] and lora_b [rank, n_embd]"));
            }
        } else if m_ne[0] != a_ne[0] || m_ne[1] != b_ne[1] || a_ne[1] != b_ne[0] {
            return Err(mismatch("needs lora_a [in, rank] and lora_b [rank, out] for a model tensor [in, out]"));
        }
        if a_ne[2..] != m_ne[2..] || b_ne[2..] != m_ne[2..] {
            return Err(mismatch("dimensions past the second must be the model tensor's"));
        }
    }
    Ok(alpha)
}

/// The message of a gguf reader error, without the path (an adapter error
/// names it already).
fn strip_path(e: Error) -> String {
    match e {
        Error::InvalidModel { message, .. } => message,
        other => other.to_string(),
    }
}

/// Checks a set of adapters for `model` as [`Context::set_lora`](crate::Context::set_lora)
/// takes it: each loaded for `model`, each scale finite, no adapter twice.
pub(crate) fn check_set<'a, 'm: 'a>(
    model: &Model,
    adapters: impl Iterator<Item = (&'a LoraAdapter<'m>, f32)> + Clone,
) -> Result<()> {
    for (i, (adapter, scale)) in adapters.clone().enumerate() {
        if !std::ptr::eq(adapter.model(), model) {
            return Err(Error::invalid(
                "LoRA adapter",
                adapter.path().display(),
                "was loaded for another model: load it for this context's model",
            ));
        }
        if !scale.is_finite() {
            return Err(Error::invalid("LoRA scale", scale, format!("adapter {i}: scales must be finite")));
        }
        if adapters.clone().take(i).any(|(a, _)| a.same(adapter)) {
            return Err(Error::invalid(
                "LoRA adapter",
                adapter.path().display(),
                format!("listed twice (at {i}): give each adapter once, with the sum of its scales"),
            ));
        }
    }
    Ok(())
}
