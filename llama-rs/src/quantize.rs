//! Quantizing a GGUF model file to another weight type.

use crate::backend::log_error_or;
use crate::error::{Error, Result};
use crate::ffi::shim_value;
use llama_sys as sys;
use std::path::Path;

/// Target weight type of the quantized file (llama.cpp's `llama_ftype`).
/// Types that need an importance matrix (IQ1/IQ2/IQ3_XXS) are not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)] // the names llama.cpp and every GGUF tool use
pub enum Ftype {
    /// All 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 4.5 bits per weight, 32-weight blocks.
    Q4_0,
    /// 5 bits per weight, with offsets.
    Q4_1,
    /// 5.5 bits per weight.
    Q5_0,
    /// 6 bits per weight, with offsets.
    Q5_1,
    /// 8.5 bits per weight.
    Q8_0,
    /// K-quant, 2-bit (rows of 256).
    Q2_K,
    /// K-quant, 3-bit small.
    Q3_K_S,
    /// K-quant, 3-bit medium.
    Q3_K_M,
    /// K-quant, 3-bit large.
    Q3_K_L,
    /// K-quant, 4-bit small.
    Q4_K_S,
    /// K-quant, 4-bit medium.
    Q4_K_M,
    /// K-quant, 5-bit small.
    Q5_K_S,
    /// K-quant, 5-bit medium.
    Q5_K_M,
    /// K-quant, 6-bit.
    Q6_K,
    /// Non-linear 4-bit, 32-weight blocks.
    IQ4_NL,
}

impl Ftype {
    /// Every type, in llama.cpp's order.
    pub const ALL: [Ftype; 18] = [
        Ftype::F32,
        Ftype::F16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q8_0,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q2_K,
        Ftype::Q3_K_S,
        Ftype::Q3_K_M,
        Ftype::Q3_K_L,
        Ftype::Q4_K_S,
        Ftype::Q4_K_M,
        Ftype::Q5_K_S,
        Ftype::Q5_K_M,
        Ftype::Q6_K,
        Ftype::IQ4_NL,
        Ftype::BF16,
    ];

    /// The `llama_ftype` value.
    pub fn raw(self) -> sys::llama_ftype {
        match self {
            Ftype::F32 => sys::LLAMA_FTYPE_ALL_F32,
            Ftype::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            Ftype::BF16 => sys::LLAMA_FTYPE_MOSTLY_BF16,
            Ftype::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Ftype::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Ftype::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Ftype::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Ftype::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            Ftype::Q2_K => sys::LLAMA_FTYPE_MOSTLY_Q2_K,
            Ftype::Q3_K_S => sys::LLAMA_FTYPE_MOSTLY_Q3_K_S,
            Ftype::Q3_K_M => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
            Ftype::Q3_K_L => sys::LLAMA_FTYPE_MOSTLY_Q3_K_L,
            Ftype::Q4_K_S => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Ftype::Q4_K_M => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Ftype::Q5_K_S => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Ftype::Q5_K_M => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Ftype::Q6_K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
            Ftype::IQ4_NL => sys::LLAMA_FTYPE_MOSTLY_IQ4_NL,
        }
    }

    /// The name used by llama-quantize: `Q4_K_M`, `F16`, ...
    pub fn name(self) -> &'static str {
        match self {
            Ftype::F32 => "F32",
            Ftype::F16 => "F16",
            Ftype::BF16 => "BF16",
            Ftype::Q4_0 => "Q4_0",
            Ftype::Q4_1 => "Q4_1",
            Ftype::Q5_0 => "Q5_0",
            Ftype::Q5_1 => "Q5_1",
            Ftype::Q8_0 => "Q8_0",
            Ftype::Q2_K => "Q2_K",
            Ftype::Q3_K_S => "Q3_K_S",
            Ftype::Q3_K_M => "Q3_K_M",
            Ftype::Q3_K_L => "Q3_K_L",
            Ftype::Q4_K_S => "Q4_K_S",
            Ftype::Q4_K_M => "Q4_K_M",
            Ftype::Q5_K_S => "Q5_K_S",
            Ftype::Q5_K_M => "Q5_K_M",
            Ftype::Q6_K => "Q6_K",
            Ftype::IQ4_NL => "IQ4_NL",
        }
    }
}

impl std::fmt::Display for Ftype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Ftype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Ftype> {
        Ftype::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            Error::invalid(
                "quantization type",
                s,
                format!("expected one of {}", Ftype::ALL.map(|t| t.name()).join(", ")),
            )
        })
    }
}

/// Parameters of [`quantize`].
///
/// There is no progress callback: `llama_model_quantize` in this llama.cpp
/// takes none. Progress is only visible in llama.cpp's info logs (one line
/// per tensor, target `llama_cpp` in `tracing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantizeParams {
    /// Target type.
    pub ftype: Ftype,
    /// Worker threads; `None` = all hardware threads.
    pub threads: Option<u32>,
    /// Allow re-quantizing tensors that are already quantized (lossy twice).
    pub allow_requantize: bool,
    /// Quantize `output.weight` too (default true).
    pub quantize_output_tensor: bool,
    /// Every tensor to `ftype`'s type, without llama.cpp's per-tensor mix
    /// (default false).
    pub pure: bool,
}

impl QuantizeParams {
    /// Defaults for `ftype`: all threads, no requantize, output tensor
    /// quantized, llama.cpp's mix.
    pub fn new(ftype: Ftype) -> QuantizeParams {
        QuantizeParams { ftype, threads: None, allow_requantize: false, quantize_output_tensor: true, pure: false }
    }
    /// Sets the thread count.
    pub fn threads(mut self, n: u32) -> Self {
        self.threads = Some(n);
        self
    }
    /// Sets allow_requantize.
    pub fn allow_requantize(mut self, yes: bool) -> Self {
        self.allow_requantize = yes;
        self
    }
    /// Sets quantize_output_tensor.
    pub fn quantize_output_tensor(mut self, yes: bool) -> Self {
        self.quantize_output_tensor = yes;
        self
    }
    /// Sets pure.
    pub fn pure(mut self, yes: bool) -> Self {
        self.pure = yes;
        self
    }
}

impl Default for QuantizeParams {
    fn default() -> Self {
        QuantizeParams::new(Ftype::Q8_0)
    }
}

/// Writes a copy of the model at `input` with its weights converted to
/// `params.ftype` to `output`. The input is checked first for what would make
/// llama.cpp abort while reading it; `output` must not be the input file
/// (llama.cpp maps the input while writing the output). Tensors whose rows do
/// not fit a K-quant's 256-wide blocks fall back to a 32-wide type, as in
/// llama-quantize. Failures come back as [`Error::Quantize`] with llama.cpp's
/// reason.
pub fn quantize(input: &Path, output: &Path, params: QuantizeParams) -> Result<()> {
    crate::init();
    if let Some(t) = params.threads {
        if t == 0 || t > i32::MAX as u32 {
            return Err(Error::invalid("quantize threads", t, "must be between 1 and i32::MAX"));
        }
    }
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if !meta.is_file() {
        return Err(Error::Quantize { path: input.into(), message: "not a regular file".into() });
    }
    // Writing over the mapped input would truncate it under llama.cpp (SIGBUS).
    let same = match std::fs::canonicalize(output) {
        Ok(out) => std::fs::canonicalize(input).map_err(|e| Error::io(input, e))? == out,
        Err(_) => false,
    };
    if same {
        return Err(Error::Quantize {
            path: input.into(),
            message: format!("the output {} is the input file: write to another path", output.display()),
        });
    }
    let mut file = crate::gguf::ModelFile::open(input)?;
    crate::validate::validate(&mut file, &[])?;
    let cin = file.c_path()?;
    let cout = crate::ffi::path_cstring(output, "output path")?;

    // SAFETY: plain struct of defaults (no pointers set: no imatrix,
    // overrides or pruning).
    let mut raw = unsafe { sys::llama_model_quantize_default_params() };
    raw.nthread = params.threads.map_or(0, |t| t as i32);
    raw.ftype = params.ftype.raw();
    raw.allow_requantize = params.allow_requantize;
    raw.quantize_output_tensor = params.quantize_output_tensor;
    raw.pure_ = params.pure;

    let ret: u32 = shim_value(
        "llama_model_quantize",
        // SAFETY: both paths are NUL-terminated and live for the call; `raw`
        // is a valid parameter struct whose pointers are all NULL; the input
        // was validated; the shim catches C++ exceptions (llama_model_quantize
        // also catches its own and returns 1).
        |ret| unsafe { sys::llama_rs_model_quantize(cin.as_ptr(), cout.as_ptr(), &raw, ret) },
    )?;
    if ret != 0 {
        return Err(Error::Quantize { path: input.into(), message: log_error_or("llama_model_quantize failed") });
    }
    Ok(())
}
