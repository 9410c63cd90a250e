//! The model-file allow-list: every hyperparameter key that llama.cpp's
//! loader reads, the GGUF type it accepts and the range of values that its
//! asserts, enum casts and graph builders accept. The table itself
//! ([`RULES`], `hparams_table.rs`) is generated from the pinned tree by
//! `scripts/hparams` (CI runs `scripts/hparams --check`); this module holds
//! its types.

/// The element type llama.cpp reads a key's value as (GGUFMeta accepts
/// exactly that GGUF type and throws on any other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GGUF_TYPE_UINT32` (`uint32_t` destinations, and enums read through one).
    U32,
    /// `GGUF_TYPE_INT32`.
    I32,
    /// `GGUF_TYPE_UINT64` (`uint64_t` array destinations: qwen4exp's PLE
    /// hash constants and head ranges).
    U64,
    /// `GGUF_TYPE_FLOAT32`.
    F32,
    /// `GGUF_TYPE_BOOL`.
    Bool,
    /// `GGUF_TYPE_STRING`.
    Str,
}

/// How the key is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// `get_key`: a scalar of the kind.
    Scalar(Kind),
    /// `get_key_or_arr`: a scalar of the kind, or an array of it with one
    /// element per layer (`block_count`).
    ScalarOrArr(Kind),
    /// `get_arr` / `get_arr_n`: an array of the kind, at most `max_len`
    /// elements (`u32::MAX` when the code takes any length).
    Arr(Kind, u32),
}

/// The values accepted. Every element of an array must be accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Accept {
    /// Any value of the type.
    Any,
    /// An integer in `min..=max`, and when `max_key` names a key present in
    /// the file, also `<=` that key's value (`{arch}` is the architecture).
    Int { min: i64, max: i64, max_key: Option<&'static str> },
    /// A finite float in `min..=max`.
    Float { min: f64, max: f64 },
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

/// One key of the allow-list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rule {
    /// The key; `{arch}` stands for `general.architecture`.
    pub key: &'static str,
    /// How llama.cpp reads it.
    pub read: Read,
    /// The values it accepts.
    pub accept: Accept,
    /// Architectures that read it (their `general.architecture` names);
    /// empty: every architecture.
    pub archs: &'static [&'static str],
    /// Where the range comes from in the pinned tree (path:line and the
    /// construct), shown in the error.
    pub why: &'static str,
}

#[path = "hparams_table.rs"]
mod table;
pub(crate) use table::{ARCHITECTURES, EXPERTS_REQUIRED, HEADS_REQUIRED, RULES};

/// The model architectures (`general.architecture` values) of the pinned
/// llama.cpp, sorted; a file of another architecture is refused by llama.cpp
/// ("unknown model architecture"). Generated from the tree with the
/// allow-list.
pub fn supported_architectures() -> &'static [&'static str] {
    ARCHITECTURES
}

use crate::error::Result;
use crate::gguf::{Gguf, Value};
use llama_sys as sys;
use std::fmt;

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accept::Any => write!(f, "any value"),
            Accept::Int { min, max, max_key: None } => write!(f, "{min}..={max}"),
            Accept::Int { min, max, max_key: Some(k) } => write!(f, "{min}..={max} and <= {k}"),
            Accept::Float { min, max } => write!(f, "finite, {min}..={max}"),
            Accept::OneOf(list) => write!(f, "one of {list:?}"),
        }
    }
}

/// Checks every rule of the table that applies to `arch` against the file's
/// values (and the load-time overrides `g` carries). A key the file does not
/// have is not checked: llama.cpp then uses its default or refuses a missing
/// required key itself (a thrown error, not an abort). Errors name the key,
/// the value, the accepted range and where the range comes from.
pub(crate) fn check(g: &Gguf, arch: &str) -> Result<()> {
    for rule in RULES.iter().filter(|r| r.archs.is_empty() || r.archs.contains(&arch)) {
        let key = rule.key.replace("{arch}", arch);
        let values = match rule.read {
            Read::Scalar(kind) => g.scalar(&key, kind)?.map(|v| vec![v]),
            Read::ScalarOrArr(kind) => g.scalar_or_arr(&key, kind)?,
            Read::Arr(kind, max_len) => {
                let values = g.array(&key, kind)?;
                if let Some(v) = &values {
                    if v.len() as u64 > u64::from(max_len) {
                        return Err(g.invalid(format!(
                            "{key} has {} elements; llama.cpp reads at most {max_len} ({})",
                            v.len(),
                            rule.why
                        )));
                    }
                }
                values
            }
        };
        let is_array = g.kv_type(&key) == Some(sys::GGUF_TYPE_ARRAY);
        for (i, value) in values.iter().flatten().enumerate() {
            if !accepts(g, arch, &rule.accept, value)? {
                let at = if is_array { format!("[{i}]") } else { String::new() };
                let range = rule.accept.to_string().replace("{arch}", arch);
                return Err(
                    g.invalid(format!("{key}{at} = {value}: outside the accepted range ({range}; {})", rule.why))
                );
            }
        }
    }
    Ok(())
}

fn accepts(g: &Gguf, arch: &str, accept: &Accept, value: &Value) -> Result<bool> {
    Ok(match (accept, value) {
        (Accept::Any, _) => true,
        (Accept::Int { min, max, max_key }, Value::Int(v)) => {
            let limit = match max_key {
                Some(k) => g.get_u32(&k.replace("{arch}", arch))?.map(i64::from),
                None => None,
            };
            (*min..=*max).contains(v) && limit.is_none_or(|l| *v <= l)
        }
        (Accept::Float { min, max }, Value::Float(v)) => v.is_finite() && (*min..=*max).contains(&f64::from(*v)),
        (Accept::OneOf(list), Value::Str(s)) => list.contains(&s.as_str()),
        // A rule whose range does not fit the value's kind is a table bug;
        // refuse rather than let an unchecked value through.
        _ => false,
    })
}
