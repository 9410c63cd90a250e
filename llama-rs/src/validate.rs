//! The pre-load check that keeps malformed model files away from llama.cpp's
//! asserts.
//!
//! llama.cpp validates the GGUF container well (`gguf_init_from_file`
//! returns NULL on a bad magic, a truncated header or bad sizes), but many
//! checks of the model metadata are `GGML_ASSERT`/`GGML_ABORT`, which abort
//! the whole process. [`validate_model_file`] reads the metadata first
//! (`no_alloc`, no tensor data) and rejects every such file with
//! [`Error::InvalidModel`] naming the key and value.
//!
//! First, every key llama.cpp's loader reads is checked against the
//! allow-list generated from the pinned tree (`hparams.rs`, `scripts/hparams`):
//! its type, and the range its asserts, enum casts and graph builders accept.
//! Then the relations between keys, and the vocabulary. Asserts reachable
//! from a file's metadata, found by reading the pinned tree (paths relative
//! to `llama.cpp/`), and what is checked here besides the allow-list:
//!
//! | llama.cpp | condition that aborts | check |
//! |---|---|---|
//! | `src/llama-model.cpp:1330` | `<arch>.block_count` 0 or > `LLAMA_MAX_LAYERS` (512) | yes |
//! | `src/llama-model.cpp:1332` | `<arch>.nextn_predict_layers` > block_count | yes |
//! | `src/llama-model.cpp:1356-1357` | wavtokenizer-dec: `posnet`/`convnext.block_count` > block_count | yes |
//! | `src/llama-model.cpp:1363` | `<arch>.expert_count` > `LLAMA_MAX_EXPERTS` (1024) | yes |
//! | `src/llama-model.cpp:1364` | max of `<arch>.expert_used_count` (scalar or per-layer array) > expert_count | yes |
//! | `src/llama-model.cpp:1366` | experts present but expert_used_count 0 | yes |
//! | `src/llama-model.cpp:1367-1371` | `expert_group_count` >= expert_count; expert_count % groups; `expert_group_used_count` 0 or >= groups | yes |
//! | `src/llama-model.cpp:1374-1375` | no experts but expert_used_count or expert_group_count set | yes |
//! | `src/llama-model.cpp:1422` | `<arch>.rope.scaling.type` not none/linear/yarn/longrope (`LLAMA_ROPE_SCALING_TYPES`, 1036) | yes |
//! | `src/llama-vocab.cpp:2578` | duplicate strings in `tokenizer.ggml.tokens` (after llama.cpp renames empty tokens to `[EMPTY_<i>]`, 2557; strings cut at the first NUL as `gguf_get_arr_str` returns them) | yes |
//! | `src/llama-vocab.cpp:3240-3241` | a BYTE-typed token (type 6) in a WPM (`bert`) vocabulary: building the piece cache at load (3093) calls `token_to_byte`, which aborts for WPM | yes |
//! | `src/llama-vocab.cpp:3477, 3514, 3561, 3588, 3613, 3637, 3663` | tokenizing with add_bos/add_eos when the BOS/EOS id is unset: an out-of-range id in the file is dropped with only a warning (2655), so the abort comes later, at the first tokenize | yes: bos/eos ids must be < the number of tokens |
//! | `src/llama-model-loader.cpp:1316` | a tensor dimension computed from hparams is < 1: `embedding_length` 0 (every architecture), an empty token list, and for plain transformers (`llama` and kin, see [`PLAIN_TRANSFORMERS`]) `attention.head_count`, `attention.head_count_kv` or `feed_forward_length` 0 | yes |
//! | `ggml/src/ggml-cpu/ops.cpp:4026, 4132, 4502` | `<arch>.attention.layer_norm_epsilon`, `layer_norm_rms_epsilon` or `group_norm_epsilon` negative or NaN: the norm kernels assert `eps >= 0` at the first decode | yes |
//! | `ggml/src/ggml-cpu/ops.cpp:6354-6355`, `src/models/*.cpp` (e.g. `qwen2.cpp:56-57`) | `<arch>.rope.dimension_count` odd or over the head size; for the architectures in [`ROPE_EQUALS_HEAD`] different from the head size, or value and key head sizes differing | yes |
//! | `src/llama-vocab.cpp:2611` | an RWKV vocabulary that cannot tokenize "\n" | no (needs the RWKV tokenizer) |
//!
//! Also rejected, although llama.cpp itself only throws (a clean load
//! failure) for them: the tokens/scores/token_type arrays differing in length
//! (2519, 2537), tensor data past the end of the file
//! (`src/llama-model-loader.h:48`), a missing `general.architecture`, and
//! keys of the wrong type (GGUFMeta throws). Every getter here checks the
//! type before calling `gguf_get_val_*`, whose own type asserts would abort.

use crate::error::Result;
use crate::gguf::{Gguf, ModelFile};
use crate::model::KvOverride;
use llama_sys as sys;
use std::collections::HashSet;
use std::path::Path;

/// `LLAMA_MAX_LAYERS` (`src/llama-hparams.h:11`).
const MAX_LAYERS: u32 = 512;
/// `LLAMA_MAX_EXPERTS` (`src/llama-hparams.h:12`).
const MAX_EXPERTS: u32 = 1024;
/// `LLAMA_ROPE_SCALING_TYPES` (`src/llama-model.cpp:1036`).
const ROPE_SCALING_TYPES: [&str; 4] = ["none", "linear", "yarn", "longrope"];
/// Architectures that create attention and feed-forward weights of
/// `head_count`, `head_count_kv` and `feed_forward_length` size in every
/// layer (zero there hits `llama-model-loader.cpp:1316`). Hybrid and
/// recurrent architectures legitimately have zero heads in some layers.
pub(crate) const PLAIN_TRANSFORMERS: [&str; 8] =
    ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "starcoder2"];
/// Architectures whose graph builder asserts `n_embd_head_v == n_embd_head_k
/// == n_rot` when a context is created (e.g. `src/models/qwen2.cpp:56-57`):
/// every architecture name (`src/llama-arch.cpp`) whose model class
/// (`src/llama-model.cpp`, `return new llama_model_<class>`) builds only graphs
/// (`build_arch_graph`, following `using graph = ...` aliases, multi-token
/// prediction graphs aside) whose constructor has that assert. Derived from the
/// pinned tree by reading those three places, not from file names: builders
/// shared under other names (`granite_swa`, `ernie4_5`, `seed_oss`, ...) are in.
#[rustfmt::skip]
const ROPE_EQUALS_HEAD: [&str; 65] = [
    "apertus", "arcee", "arctic", "baichuan", "chameleon", "codeshell", "cogvlm", "cohere2moe", "dbrx", "deci",
    "deepseek", "dots1", "dream", "ernie4_5", "ernie4_5-moe", "exaone", "exaone-moe", "exaone4", "falcon", "granite",
    "granite_swa", "granitemoe", "graniteswitch", "grok", "grovemoe", "hunyuan-dense", "hunyuan-moe", "hunyuan_vl",
    "hy_v3", "internlm2", "jais2", "llada", "llada-moe", "llama", "llama-embed", "llama4", "maincoder", "mellum",
    "minicpm", "minimax-01", "minimax-m2", "mistral3", "nemotron", "olmo", "olmo2", "olmoe", "orion", "paddleocr",
    "pangu-embedded", "plamo", "pockettts", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3vl",
    "qwen3vlmoe", "rnd1", "seed_oss", "smallthinker", "smollm3", "starcoder2", "talkie", "xverse",
];
/// `LLAMA_TOKEN_TYPE_BYTE` (`include/llama.h`).
const TOKEN_TYPE_BYTE: i32 = 6;

/// Rejects a model file that would make llama.cpp abort the process while
/// loading it (see the module docs for the list), before llama.cpp sees it.
#[cfg(all(test, feature = "synthetic"))]
pub(crate) fn validate_model_file(path: &Path) -> Result<()> {
    validate(&mut ModelFile::open(path)?, &[])
}

/// [`validate_model_file`] on an opened file, with the load-time overrides
/// applied as llama.cpp applies them. A split model's file is switched to
/// be loaded by name ([`ModelFile::use_name`]).
pub(crate) fn validate(file: &mut ModelFile, overrides: &[(String, KvOverride)]) -> Result<()> {
    let g = Gguf::read(file, overrides)?;
    if g.kv_type("split.count").is_some() {
        file.use_name()?;
        validate_split_parts(&g, file.path())?;
    }
    let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| g.invalid(format!("{key} = {value}: {why}"));

    // Tensor data inside the file (llama.cpp throws; a clear message here).
    let file_len = file.len()?;
    for i in 0..g.n_tensors() {
        let (name, start, size) = g.tensor_extent(i);
        if start.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(g.invalid(format!(
                "tensor {name} spans bytes {start}..{} but the file has {file_len} bytes (truncated?)",
                start.saturating_add(size)
            )));
        }
    }

    let Some(arch) = g.get_str("general.architecture")? else {
        return Err(g.invalid("general.architecture is missing".into()));
    };
    // Every key llama.cpp's loader reads: type and accepted range.
    crate::hparams::check(&g, &arch)?;
    let k = |suffix: &str| format!("{arch}.{suffix}");

    // Layers.
    let block_count = g.get_u32(&k("block_count"))?;
    if let Some(n) = block_count {
        if n == 0 || n > MAX_LAYERS {
            return Err(bad(&k("block_count"), &n, &format!("must be in 1..={MAX_LAYERS}")));
        }
    }
    let n_layer = block_count.unwrap_or(MAX_LAYERS);
    let mut layer_keys = vec![k("nextn_predict_layers")];
    if arch == "wavtokenizer-dec" {
        layer_keys.extend([k("posnet.block_count"), k("convnext.block_count")]);
    }
    for key in layer_keys {
        if let Some(n) = g.get_u32(&key)? {
            if n > n_layer {
                return Err(bad(&key, &n, &format!("exceeds block_count = {n_layer}")));
            }
        }
    }

    // Experts.
    let n_expert = g.get_u32(&k("expert_count"))?.unwrap_or(0);
    if n_expert > MAX_EXPERTS {
        return Err(bad(&k("expert_count"), &n_expert, &format!("llama.cpp allows at most {MAX_EXPERTS}")));
    }
    let used = g.get_u32_or_arr(&k("expert_used_count"))?.unwrap_or_default();
    let used_max = used.iter().copied().max().unwrap_or(0);
    let groups = g.get_u32(&k("expert_group_count"))?.unwrap_or(0);
    let group_used = g.get_u32(&k("expert_group_used_count"))?.unwrap_or(0);
    if used_max > n_expert {
        return Err(bad(&k("expert_used_count"), &used_max, &format!("exceeds expert_count = {n_expert}")));
    }
    if n_expert > 0 {
        if used_max == 0 {
            return Err(bad(&k("expert_used_count"), &0, &format!("must be > 0 with expert_count = {n_expert}")));
        }
        if groups >= n_expert {
            return Err(bad(&k("expert_group_count"), &groups, &format!("must be < expert_count = {n_expert}")));
        }
        if groups > 1 {
            if !n_expert.is_multiple_of(groups) {
                return Err(bad(&k("expert_group_count"), &groups, &format!("must divide expert_count = {n_expert}")));
            }
            if group_used == 0 || group_used >= groups {
                return Err(bad(
                    &k("expert_group_used_count"),
                    &group_used,
                    &format!("must be in 1..{groups} (expert_group_count)"),
                ));
            }
        }
    } else if groups != 0 {
        return Err(bad(&k("expert_group_count"), &groups, "set without experts (expert_count = 0)"));
    }

    // RoPE scaling.
    if let Some(t) = g.get_str(&k("rope.scaling.type"))? {
        if !ROPE_SCALING_TYPES.contains(&t.as_str()) {
            return Err(bad(
                &k("rope.scaling.type"),
                &format!("{t:?}"),
                &format!("must be one of {ROPE_SCALING_TYPES:?}"),
            ));
        }
    }

    // Norm epsilons: ggml's norm kernels assert eps >= 0 at the first decode
    // (`ggml/src/ggml-cpu/ops.cpp:4026, 4132, 4502`); NaN fails that too.
    for key in
        [k("attention.layer_norm_epsilon"), k("attention.layer_norm_rms_epsilon"), k("attention.group_norm_epsilon")]
    {
        if let Some(eps) = g.get_f32(&key)? {
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(bad(&key, &eps, "must be finite and >= 0"));
            }
        }
    }

    // Dimensions that become tensor sizes.
    let n_embd = g.get_u32(&k("embedding_length"))?;
    if n_embd == Some(0) {
        return Err(bad(&k("embedding_length"), &0, "must be at least 1"));
    }

    // RoPE dimensions against the head size (llama.cpp's own head size: key
    // length, else n_embd / n_head of layer 0). ggml's rope kernel asserts
    // n_rot even and <= the head size at the first decode
    // (`ggml/src/ggml-cpu/ops.cpp:6354-6355`); many graph builders assert
    // n_rot == head size == value head size when the context is created.
    let n_head = g.get_u32_or_arr(&k("attention.head_count"))?.and_then(|v| v.first().copied()).unwrap_or(0);
    if let (Some(n_embd), true) = (n_embd, n_head > 0) {
        let head_k = g.get_u32(&k("attention.key_length"))?.unwrap_or(n_embd / n_head);
        let head_v = g.get_u32(&k("attention.value_length"))?.unwrap_or(n_embd / n_head);
        let strict = ROPE_EQUALS_HEAD.contains(&arch.as_str());
        if let Some(n_rot) = g.get_u32(&k("rope.dimension_count"))? {
            if n_rot % 2 != 0 || n_rot > head_k {
                return Err(bad(
                    &k("rope.dimension_count"),
                    &n_rot,
                    &format!("must be even and <= the head size {head_k}"),
                ));
            }
            if strict && n_rot != head_k {
                return Err(bad(
                    &k("rope.dimension_count"),
                    &n_rot,
                    &format!("must equal the head size {head_k} for architecture {arch}"),
                ));
            }
        }
        if strict && head_v != head_k {
            return Err(bad(
                &k("attention.value_length"),
                &head_v,
                &format!("must equal the key head size {head_k} for architecture {arch}"),
            ));
        }
    }
    if PLAIN_TRANSFORMERS.contains(&arch.as_str()) {
        for key in [k("attention.head_count"), k("attention.head_count_kv"), k("feed_forward_length")] {
            if let Some(values) = g.get_u32_or_arr(&key)? {
                if let Some(layer) = values.iter().position(|&v| v == 0) {
                    return Err(bad(&key, &0, &format!("must be at least 1 (layer {layer}) for architecture {arch}")));
                }
            }
        }
    }

    validate_arch_relations(&g, &arch, n_layer)?;
    validate_vocab(&g)
}

/// Relations between keys that one architecture's `load_arch_hparams`
/// asserts while the model loads (after the allow-list has checked each key
/// alone).
fn validate_arch_relations(g: &Gguf, arch: &str, n_layer: u32) -> Result<()> {
    let k = |suffix: &str| format!("{arch}.{suffix}");
    // Tensor loaders that assert experts: unconditionally for the listed
    // architectures (scripts/hparams finds them), in the MoE layers after
    // the leading dense ones for lfm2moe (src/models/lfm2moe.cpp:43).
    let n_expert = g.get_u32(&k("expert_count"))?.unwrap_or(0);
    let moe_layers = match arch {
        "lfm2moe" => g.get_u32(&k("leading_dense_block_count"))?.unwrap_or(0) < n_layer,
        _ => crate::hparams::EXPERTS_REQUIRED.iter().any(|(a, _)| *a == arch),
    };
    if moe_layers && n_expert == 0 {
        let at = crate::hparams::EXPERTS_REQUIRED
            .iter()
            .find(|(a, _)| *a == arch)
            .map_or("src/models/lfm2moe.cpp:43", |e| e.1);
        return Err(g.invalid(format!(
            "{} is missing or 0, but architecture {arch} has mixture-of-experts layers (llama.cpp asserts at {at})",
            k("expert_count")
        )));
    }
    // Model files that divide by layer 0's head count (scripts/hparams finds
    // them): SIGFPE with none.
    if let Some((_, at)) = crate::hparams::HEADS_REQUIRED.iter().find(|(a, _)| *a == arch) {
        let heads = g.get_u32_or_arr(&k("attention.head_count"))?.and_then(|v| v.first().copied()).unwrap_or(0);
        if heads == 0 {
            return Err(g.invalid(format!(
                "{} is missing or 0 in layer 0, but architecture {arch} divides by it ({at})",
                k("attention.head_count")
            )));
        }
    }
    match arch {
        // src/models/hrm-text.cpp:22-23: the block count is the expanded
        // slot count layers_per_stack * h_cycles * (l_cycles + 1).
        "hrm_text" if g.get_u32(&k("block_count"))?.is_some() => {
            let get = |s: &str| -> Result<u64> { Ok(u64::from(g.get_u32(&k(s))?.unwrap_or(0))) };
            let slots = get("hrm.layers_per_stack")? * get("hrm.h_cycles")? * (get("hrm.l_cycles")? + 1);
            let nextn = u64::from(g.get_u32(&k("nextn_predict_layers"))?.unwrap_or(0));
            if slots != u64::from(n_layer).saturating_sub(nextn) {
                return Err(g.invalid(format!(
                    "{} = {n_layer}: an HRM model has hrm.layers_per_stack * hrm.h_cycles * (hrm.l_cycles + 1) = \
                     {slots} layers besides its nextn layers ({nextn})",
                    k("block_count")
                )));
            }
        }
        // src/models/gemma-embedding.cpp:19-20: the dense projections meet
        // the embedding width.
        "gemma-embedding" => {
            let n_embd = g.get_u32(&k("embedding_length"))?;
            for key in [k("dense_2_feat_in"), k("dense_3_feat_out")] {
                if let (Some(v), Some(n_embd)) = (g.get_u32(&key)?, n_embd) {
                    if v != 0 && v != n_embd {
                        return Err(g.invalid(format!("{key} = {v}: must be 0 or embedding_length = {n_embd}")));
                    }
                }
            }
        }
        // src/models/glm5-next.cpp:45: the indexer's pool divides its top-k.
        "glm5-next" => {
            let (top_k, kpool) = (g.get_u32(&k("attention.indexer.top_k"))?, g.get_u32(&k("attention.indexer.kpool"))?);
            if let (Some(top_k), Some(kpool)) = (top_k, kpool) {
                if kpool > 1 && top_k % kpool != 0 {
                    return Err(g.invalid(format!(
                        "{} = {kpool} must divide {} = {top_k}",
                        k("attention.indexer.kpool"),
                        k("attention.indexer.top_k")
                    )));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The other files of a split model, which llama.cpp opens by name
/// (`llama_split_path` of the first file's prefix): each one's `split.no` is
/// read with `gguf_get_val_u16` without a type check
/// (`src/llama-model-loader.cpp:641`), whose own type assert aborts on another
/// type. A part that is missing or not GGUF is llama.cpp's clean error.
fn validate_split_parts(g: &Gguf, path: &Path) -> Result<()> {
    let Some(count) = g.get_u16("split.count")? else { return Ok(()) };
    if count <= 1 {
        return Ok(());
    }
    let cpath = crate::ffi::path_cstring(path, "model path")?;
    let mut prefix = vec![0u8; 8192];
    // SAFETY: NUL-terminated path; the buffer has prefix.len() writable bytes;
    // llama_split_prefix writes a NUL-terminated prefix and returns its length
    // (0 when the name is not a split name).
    let n = unsafe {
        sys::llama_split_prefix(prefix.as_mut_ptr().cast(), prefix.len(), cpath.as_ptr(), 0, i32::from(count))
    };
    if n <= 0 || n as usize >= prefix.len() {
        return Ok(()); // llama.cpp refuses the name itself ("invalid split file name")
    }
    for idx in 1..i32::from(count) {
        let mut part = vec![0u8; 8192];
        // SAFETY: the prefix is NUL-terminated (written above, within the
        // buffer); the output buffer has part.len() writable bytes; the return
        // is snprintf's length, checked against the buffer before use.
        let m = unsafe {
            sys::llama_split_path(part.as_mut_ptr().cast(), part.len(), prefix.as_ptr().cast(), idx, i32::from(count))
        };
        if m <= 0 || m as usize >= part.len() {
            return Ok(());
        }
        part.truncate(m as usize);
        #[cfg(unix)]
        let part_path =
            std::path::PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(part));
        #[cfg(not(unix))]
        let part_path = std::path::PathBuf::from(String::from_utf8_lossy(&part).into_owned());
        let Ok(part_file) = ModelFile::open(&part_path) else { continue };
        let Ok(pg) = Gguf::read(&part_file, &[]) else { continue };
        if let Some(t) = pg.kv_type("split.no") {
            if t != sys::GGUF_TYPE_UINT16 {
                return Err(g.invalid(format!(
                    "split part {}: split.no has type {}, expected uint16 (llama.cpp reads it unchecked)",
                    part_path.display(),
                    Gguf::type_name(t)
                )));
            }
        }
    }
    Ok(())
}

/// The tokenizer.ggml.* checks.
fn validate_vocab(g: &Gguf) -> Result<()> {
    const TOKENS: &str = "tokenizer.ggml.tokens";
    let model = g.get_str("tokenizer.ggml.model")?;
    let Some(tokens) = g.get_arr_str(TOKENS)? else {
        // llama.cpp throws "cannot find tokenizer vocab" unless the model has
        // no vocabulary at all ("no"/"none").
        return Ok(());
    };
    let n = tokens.len();
    if n == 0 && !matches!(model.as_deref(), Some("no" | "none")) {
        return Err(g.invalid(format!("{TOKENS} is empty")));
    }
    if n > i32::MAX as usize {
        return Err(g.invalid(format!("{TOKENS} has {n} entries, more than token ids can address")));
    }
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    for (i, t) in tokens.into_iter().enumerate() {
        let t = if t.is_empty() { format!("[EMPTY_{i}]").into_bytes() } else { t };
        if let Some(t) = seen.replace(t) {
            return Err(g.invalid(format!(
                "{TOKENS}[{i}] = {:?} duplicates an earlier token (llama.cpp needs unique token strings)",
                String::from_utf8_lossy(&t)
            )));
        }
    }
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        if let Some((_, len)) = g.arr_info(key) {
            if len != n {
                return Err(g.invalid(format!("{key} has {len} entries but {TOKENS} has {n}")));
            }
        } else if g.kv_type(key).is_some() {
            return Err(g.invalid(format!("{key} is not an array")));
        }
    }
    if model.as_deref() == Some("bert") {
        if let Some((sys::GGUF_TYPE_INT32, _)) = g.arr_info("tokenizer.ggml.token_type") {
            let types = g.get_u32_or_arr("tokenizer.ggml.token_type")?.unwrap_or_default();
            if let Some(i) = types.iter().position(|&t| t as i32 == TOKEN_TYPE_BYTE) {
                return Err(g.invalid(format!(
                    "tokenizer.ggml.token_type[{i}] = {TOKEN_TYPE_BYTE} (BYTE): byte tokens are not supported by \
                     the WPM (bert) tokenizer"
                )));
            }
        }
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        if let Some(id) = g.get_u32(key)? {
            if id as usize >= n {
                return Err(g.invalid(format!("{key} = {id}: outside the vocabulary of {n} tokens")));
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "synthetic"))]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
    use std::ffi::CString;
    use std::os::raw::c_char;
    use std::path::PathBuf;
    use std::ptr::NonNull;

    /// A gguf context being edited for the bad-file corpus.
    struct Edit(NonNull<sys::gguf_context>);

    impl Edit {
        /// Copies all key/values of `src` (no tensors).
        fn from(src: &Gguf) -> Edit {
            // SAFETY: returns an owned empty context.
            let ctx = NonNull::new(unsafe { sys::gguf_init_empty() }).unwrap();
            // SAFETY: both contexts valid; gguf_set_kv deep-copies.
            unsafe { sys::gguf_set_kv(ctx.as_ptr(), src.ptr()) };
            Edit(ctx)
        }
        fn key(k: &str) -> CString {
            CString::new(k).unwrap()
        }
        fn u32(self, k: &str, v: u32) -> Self {
            // SAFETY: valid context, NUL-terminated key.
            unsafe { sys::gguf_set_val_u32(self.0.as_ptr(), Self::key(k).as_ptr(), v) };
            self
        }
        fn str(self, k: &str, v: &str) -> Self {
            let v = CString::new(v).unwrap();
            // SAFETY: valid context, NUL-terminated strings (copied).
            unsafe { sys::gguf_set_val_str(self.0.as_ptr(), Self::key(k).as_ptr(), v.as_ptr()) };
            self
        }
        fn remove(self, k: &str) -> Self {
            // SAFETY: valid context, NUL-terminated key.
            unsafe { sys::gguf_remove_key(self.0.as_ptr(), Self::key(k).as_ptr()) };
            self
        }
        fn arr_str(self, k: &str, values: &[Vec<u8>]) -> Self {
            let owned: Vec<CString> = values.iter().map(|v| CString::new(v.clone()).unwrap()).collect();
            let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
            // SAFETY: len valid NUL-terminated strings, copied by gguf.
            unsafe { sys::gguf_set_arr_str(self.0.as_ptr(), Self::key(k).as_ptr(), ptrs.as_mut_ptr(), ptrs.len()) };
            self
        }
        fn arr_u32(self, k: &str, t: sys::gguf_type, values: &[u32]) -> Self {
            // SAFETY: len 4-byte values for a 4-byte element type, copied.
            unsafe {
                sys::gguf_set_arr_data(self.0.as_ptr(), Self::key(k).as_ptr(), t, values.as_ptr().cast(), values.len())
            };
            self
        }
        fn write(self, path: &Path) {
            let c = CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: valid context and path; only the metadata is written.
            assert!(unsafe { sys::gguf_write_to_file(self.0.as_ptr(), c.as_ptr(), true) });
        }
    }

    impl Drop for Edit {
        fn drop(&mut self) {
            // SAFETY: owned context, freed once.
            unsafe { sys::gguf_free(self.0.as_ptr()) };
        }
    }

    fn message(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidModel { message, .. }) => message,
            other => panic!("expected InvalidModel, got {other:?}"),
        }
    }

    fn good(dir: &Path, vocab: VocabKind) -> PathBuf {
        SyntheticModel::new(ModelShape::tiny()).vocab(vocab).write_cached(dir).unwrap()
    }

    #[test]
    fn accepts_synthetic_models() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [VocabKind::Spm, VocabKind::Bpe] {
            validate_model_file(&good(dir.path(), vocab)).unwrap();
            let q = SyntheticModel::new(ModelShape::tiny_k()).vocab(vocab).weight_type(WeightType::Q4_K_M);
            validate_model_file(&q.write_cached(dir.path()).unwrap()).unwrap();
        }
    }

    #[test]
    fn reader_getters_check_types() {
        let dir = tempfile::tempdir().unwrap();
        let g = Gguf::open(&good(dir.path(), VocabKind::Bpe)).unwrap();
        assert_eq!(g.get_u32("llama.block_count").unwrap(), Some(2));
        assert_eq!(g.get_str("general.architecture").unwrap().as_deref(), Some("llama"));
        assert_eq!(g.get_arr_str("tokenizer.ggml.tokens").unwrap().unwrap().len(), 1024);
        assert_eq!(g.get_u32_or_arr("llama.attention.head_count").unwrap(), Some(vec![4]));
        assert_eq!(g.get_u32("no.such.key").unwrap(), None);
        // Wrong types are errors, never gguf.cpp asserts.
        assert!(message(g.get_u32("general.architecture").map(drop)).contains("general.architecture has type"));
        assert!(message(g.get_str("llama.block_count").map(drop)).contains("llama.block_count has type"));
        assert!(message(g.get_arr_str("llama.block_count").map(drop)).contains("not an array"));
        assert!(message(g.get_u32_or_arr("tokenizer.ggml.tokens").map(drop)).contains("array of"));
        assert_eq!(g.n_tensors(), 3 + 9 * 2);
    }

    /// Each bad file, the key its error must name, and the llama.cpp line
    /// that would abort the process if llama.cpp loaded it (read from the
    /// source: these files are never handed to llama.cpp here).
    #[test]
    fn rejects_metadata_that_aborts_llama_cpp() {
        let dir = tempfile::tempdir().unwrap();
        let spm = Gguf::open(&good(dir.path(), VocabKind::Spm)).unwrap();
        let tokens = spm.get_arr_str("tokenizer.ggml.tokens").unwrap().unwrap();
        let mut dup = tokens.clone();
        dup[500] = dup[400].clone();
        let mut empty_dup = tokens.clone();
        empty_dup[10] = Vec::new();
        empty_dup[11] = b"[EMPTY_10]".to_vec();
        let short: Vec<u32> = vec![1; 10];
        let cases: Vec<(&str, Edit, &str)> = vec![
            // llama-model.cpp:1330 GGML_ASSERT(n_layer_all > 0 && n_layer_all <= LLAMA_MAX_LAYERS)
            ("block0", Edit::from(&spm).u32("llama.block_count", 0), "llama.block_count = 0"),
            ("block513", Edit::from(&spm).u32("llama.block_count", 513), "llama.block_count = 513"),
            // llama-model.cpp:1332 GGML_ASSERT(n_layer_nextn <= n_layer_all)
            ("nextn", Edit::from(&spm).u32("llama.nextn_predict_layers", 3), "llama.nextn_predict_layers = 3"),
            // llama-model.cpp:1363 GGML_ASSERT(n_expert <= LLAMA_MAX_EXPERTS)
            ("experts", Edit::from(&spm).u32("llama.expert_count", 1025), "llama.expert_count = 1025"),
            // llama-model.cpp:1364 GGML_ASSERT(n_expert_used_max <= n_expert)
            (
                "used",
                Edit::from(&spm).u32("llama.expert_count", 8).u32("llama.expert_used_count", 9),
                "llama.expert_used_count = 9",
            ),
            (
                "used_arr",
                Edit::from(&spm).u32("llama.expert_count", 8).arr_u32(
                    "llama.expert_used_count",
                    sys::GGUF_TYPE_INT32,
                    &[2, 9],
                ),
                "llama.expert_used_count[1] = 9",
            ),
            // llama-model.cpp:1374 GGML_ASSERT(n_expert_used_max == 0) without experts
            ("used_no_experts", Edit::from(&spm).u32("llama.expert_used_count", 2), "llama.expert_used_count = 2"),
            // llama-model.cpp:1366 GGML_ASSERT(n_expert_used_max > 0)
            ("used0", Edit::from(&spm).u32("llama.expert_count", 8), "llama.expert_used_count = 0"),
            // llama-model.cpp:1369-1371 expert groups
            (
                "groups",
                Edit::from(&spm)
                    .u32("llama.expert_count", 8)
                    .u32("llama.expert_used_count", 2)
                    .u32("llama.expert_group_count", 3),
                "llama.expert_group_count = 3",
            ),
            (
                "group_used",
                Edit::from(&spm)
                    .u32("llama.expert_count", 8)
                    .u32("llama.expert_used_count", 2)
                    .u32("llama.expert_group_count", 4)
                    .u32("llama.expert_group_used_count", 4),
                "llama.expert_group_used_count = 4",
            ),
            // llama-model.cpp:1422 GGML_ASSERT(rope_scaling_type_train != UNSPECIFIED)
            (
                "rope",
                Edit::from(&spm).str("llama.rope.scaling.type", "dynamic"),
                "llama.rope.scaling.type = \"dynamic\"",
            ),
            // llama-vocab.cpp:2578 GGML_ASSERT(id_to_token.size() == token_to_id.size())
            ("dup", Edit::from(&spm).arr_str("tokenizer.ggml.tokens", &dup), "tokenizer.ggml.tokens[500]"),
            ("empty_dup", Edit::from(&spm).arr_str("tokenizer.ggml.tokens", &empty_dup), "tokenizer.ggml.tokens[11]"),
            // llama-model-loader.cpp:1316 GGML_ASSERT(t_meta.ne[dim] >= 1) for {n_embd, n_embd_head_k * n_head}
            ("heads0", Edit::from(&spm).u32("llama.attention.head_count", 0), "llama.attention.head_count = 0"),
            ("kv0", Edit::from(&spm).u32("llama.attention.head_count_kv", 0), "llama.attention.head_count_kv = 0"),
            ("ff0", Edit::from(&spm).u32("llama.feed_forward_length", 0), "llama.feed_forward_length = 0"),
            ("embd0", Edit::from(&spm).u32("llama.embedding_length", 0), "llama.embedding_length = 0"),
            // llama-vocab.cpp:3477 GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL) at tokenize
            ("bos", Edit::from(&spm).u32("tokenizer.ggml.bos_token_id", 1024), "tokenizer.ggml.bos_token_id = 1024"),
            ("eos", Edit::from(&spm).u32("tokenizer.ggml.eos_token_id", 5000), "tokenizer.ggml.eos_token_id = 5000"),
            // llama-vocab.cpp:3241 GGML_ABORT in token_to_byte for WPM
            (
                "bert_byte",
                Edit::from(&spm).str("tokenizer.ggml.model", "bert"),
                "tokenizer.ggml.token_type[3] = 6 (BYTE)",
            ),
            // Throws in llama.cpp (2519, 2537); rejected here too.
            (
                "scores_len",
                Edit::from(&spm).arr_u32("tokenizer.ggml.token_type", sys::GGUF_TYPE_INT32, &short),
                "tokenizer.ggml.token_type has 10 entries",
            ),
            ("no_arch", Edit::from(&spm).remove("general.architecture"), "general.architecture is missing"),
            ("arch_type", Edit::from(&spm).u32("general.architecture", 1), "general.architecture has type"),
            // The allow-list (hparams_table.rs): single keys out of range.
            // llama-graph.cpp:3887 GGML_ABORT("unknown pooling type")
            ("pooling", Edit::from(&spm).u32("llama.pooling_type", 9), "llama.pooling_type = 9"),
            // ggml-backend.cpp:423 tensor read bounds (embeddings copy)
            ("embd_out", Edit::from(&spm).u32("llama.embedding_length_out", 65), "llama.embedding_length_out = 65"),
            // llama-graph.cpp:2109 GGML_ABORT on an unknown gating function
            (
                "gating",
                Edit::from(&spm).str("general.architecture", "deepseek2").u32("deepseek2.expert_gating_func", 7),
                "deepseek2.expert_gating_func = 7",
            ),
            // Relations one architecture's loader asserts.
            // smallthinker.cpp:54 GGML_ASSERT(n_expert > 0 && ...)
            (
                "smallthinker",
                Edit::from(&spm).str("general.architecture", "smallthinker").u32("smallthinker.block_count", 2),
                "smallthinker.expert_count is missing or 0",
            ),
            // lfm2moe.cpp:43 GGML_ASSERT(n_expert && n_expert_used) in MoE layers
            (
                "lfm2moe",
                Edit::from(&spm).str("general.architecture", "lfm2moe").u32("lfm2moe.block_count", 2),
                "lfm2moe.expert_count is missing or 0",
            ),
            // hrm-text.cpp:23 GGML_ASSERT(hparams.n_layer() == n_slot)
            (
                "hrm",
                Edit::from(&spm)
                    .str("general.architecture", "hrm_text")
                    .u32("hrm_text.block_count", 6)
                    .u32("hrm_text.hrm.layers_per_stack", 1)
                    .u32("hrm_text.hrm.h_cycles", 2)
                    .u32("hrm_text.hrm.l_cycles", 1),
                "hrm_text.block_count = 6",
            ),
            // glm5-next.cpp:45 indexer_top_k % indexer_kpool == 0
            (
                "kpool",
                Edit::from(&spm)
                    .str("general.architecture", "glm5-next")
                    .u32("glm5-next.block_count", 2)
                    .u32("glm5-next.attention.indexer.top_k", 10)
                    .u32("glm5-next.attention.indexer.kpool", 4),
                "glm5-next.attention.indexer.kpool = 4 must divide",
            ),
        ];
        // lfm2moe whose layers are all dense needs no experts.
        let dense = dir.path().join("lfm2moe_dense.gguf");
        Edit::from(&spm)
            .str("general.architecture", "lfm2moe")
            .u32("lfm2moe.block_count", 2)
            .u32("lfm2moe.leading_dense_block_count", 2)
            .write(&dense);
        validate_model_file(&dense).unwrap();
        for (name, edit, expect) in cases {
            let path = dir.path().join(format!("{name}.gguf"));
            edit.write(&path);
            let r = validate_model_file(&path);
            assert!(r.is_err(), "{name}: accepted");
            let msg = message(r);
            assert!(msg.contains(expect), "{name}: {msg}");
        }
    }

    #[test]
    fn rejects_truncated_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = good(dir.path(), VocabKind::Bpe);
        let bytes = std::fs::read(&good).unwrap();
        let data_offset = {
            let g = Gguf::open(&good).unwrap();
            // SAFETY: valid context.
            unsafe { sys::gguf_get_data_offset(g.ptr()) }
        };
        let cuts = [0, 3, 4, 8, 16, 24, 100, 5000, data_offset / 2, data_offset - 1, data_offset + 10, bytes.len() - 1];
        for cut in cuts {
            let path = dir.path().join(format!("cut{cut}.gguf"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = message(validate_model_file(&path));
            if cut < data_offset {
                assert!(msg.contains("gguf_init_from_file failed"), "cut {cut}: {msg}");
            } else {
                assert!(msg.contains("truncated?"), "cut {cut}: {msg}");
            }
        }
        let mut state = 12345u64;
        let mut garbage = vec![0u8; 4096];
        for b in &mut garbage {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (state >> 33) as u8;
        }
        let mut magic_then_garbage = b"GGUF".to_vec();
        magic_then_garbage.extend_from_slice(&garbage);
        let mut huge_counts = b"GGUF\x03\0\0\0".to_vec();
        huge_counts.extend_from_slice(&u64::MAX.to_le_bytes());
        huge_counts.extend_from_slice(&u64::MAX.to_le_bytes());
        for (name, content) in [("garbage", garbage), ("magic", magic_then_garbage), ("huge", huge_counts)] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            assert!(message(validate_model_file(&path)).contains("gguf_init_from_file failed"), "{name}");
        }
        assert!(matches!(validate_model_file(&dir.path().join("missing.gguf")), Err(Error::Io { .. })));
        assert!(matches!(validate_model_file(dir.path()), Err(Error::InvalidModel { .. })));
    }
}
