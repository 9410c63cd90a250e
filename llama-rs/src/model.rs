//! Loading a GGUF model, the multi-GPU knobs, and what a model knows about itself.

use crate::backend::{clear_log_error, log_cause_or};
use crate::device::{self, Device, DeviceKind};
use crate::error::{Error, Result};
use crate::ffi::{check_shim, cstring, string_from_buffer, string_from_ptr};
use crate::vocab::Vocab;
use llama_sys as sys;
use std::os::raw::c_void;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// How a model is spread over several GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SplitMode {
    /// One GPU only: the device at [`ModelParams::main_gpu`].
    None,
    /// Whole layers (and their KV cache) per GPU, in tensor-split proportions
    /// (by free memory when no split is given). llama.cpp's default.
    #[default]
    Layer,
    /// Rows of each weight matrix across GPUs. Needs split buffers, which the
    /// CUDA and HIP backends of this llama.cpp do not provide: refused there.
    Row,
    /// Tensor parallelism: every layer split across all listed GPUs, partial
    /// results all-reduced. Needs GPUs and flash attention (not off).
    Tensor,
}

impl SplitMode {
    /// The name used on command lines: `none`, `layer`, `row`, `tensor`.
    pub fn name(self) -> &'static str {
        match self {
            SplitMode::None => "none",
            SplitMode::Layer => "layer",
            SplitMode::Row => "row",
            SplitMode::Tensor => "tensor",
        }
    }

    fn raw(self) -> sys::llama_split_mode {
        match self {
            SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
            SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
            SplitMode::Row => sys::LLAMA_SPLIT_MODE_ROW,
            SplitMode::Tensor => sys::LLAMA_SPLIT_MODE_TENSOR,
        }
    }
}

impl std::str::FromStr for SplitMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<SplitMode> {
        match s {
            "none" => Ok(SplitMode::None),
            "layer" => Ok(SplitMode::Layer),
            "row" => Ok(SplitMode::Row),
            "tensor" => Ok(SplitMode::Tensor),
            _ => Err(Error::invalid("split mode", s, "expected none, layer, row or tensor")),
        }
    }
}

impl std::fmt::Display for SplitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the weights are read from the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LoadMode {
    /// llama.cpp decides (mmap where supported).
    #[default]
    Auto,
    /// Memory-map the file.
    Mmap,
    /// Read the file into memory (no mmap).
    NoMmap,
    /// Memory-map and lock the pages in RAM.
    Mlock,
}

impl LoadMode {
    fn raw(self) -> sys::llama_load_mode {
        match self {
            LoadMode::Auto => sys::LLAMA_LOAD_MODE_AUTO,
            LoadMode::Mmap => sys::LLAMA_LOAD_MODE_MMAP,
            LoadMode::NoMmap => sys::LLAMA_LOAD_MODE_NONE,
            LoadMode::Mlock => sys::LLAMA_LOAD_MODE_MMAP_MLOCK,
        }
    }
}

/// A value overriding a GGUF metadata key at load time.
#[derive(Clone, Debug, PartialEq)]
pub enum KvOverride {
    /// Integer value.
    Int(i64),
    /// Float value.
    Float(f64),
    /// Boolean value.
    Bool(bool),
    /// String value (at most 127 bytes).
    Str(String),
}

type ProgressFn = Arc<Mutex<dyn FnMut(f32) -> bool + Send>>;

/// Parameters for [`Model::load`]. Every setter checks nothing; all checks
/// happen in `load`, against the devices actually present. Cloning shares the
/// progress callback.
#[derive(Clone)]
pub struct ModelParams {
    n_gpu_layers: i32,
    split_mode: SplitMode,
    main_gpu: usize,
    tensor_split: Vec<f32>,
    devices: Option<Vec<usize>>,
    include_igpu: bool,
    load_mode: LoadMode,
    vocab_only: bool,
    check_tensors: bool,
    kv_overrides: Vec<(String, KvOverride)>,
    progress: Option<ProgressFn>,
    no_alloc: bool,
    rpc_servers: Vec<String>,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            n_gpu_layers: -1,
            split_mode: SplitMode::Layer,
            main_gpu: 0,
            tensor_split: Vec::new(),
            devices: None,
            include_igpu: false,
            load_mode: LoadMode::Auto,
            vocab_only: false,
            check_tensors: false,
            kv_overrides: Vec::new(),
            progress: None,
            no_alloc: false,
            rpc_servers: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ModelParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelParams")
            .field("n_gpu_layers", &self.n_gpu_layers)
            .field("split_mode", &self.split_mode)
            .field("main_gpu", &self.main_gpu)
            .field("tensor_split", &self.tensor_split)
            .field("devices", &self.devices)
            .field("include_igpu", &self.include_igpu)
            .field("load_mode", &self.load_mode)
            .field("vocab_only", &self.vocab_only)
            .field("kv_overrides", &self.kv_overrides)
            .finish_non_exhaustive()
    }
}

impl ModelParams {
    /// Layers to offload to the GPUs; `None` (the default) offloads all of them.
    /// Without a GPU everything runs on the CPU whatever this says.
    pub fn n_gpu_layers(mut self, n: Option<u32>) -> Self {
        self.n_gpu_layers = n.map_or(-1, |n| n.min(i32::MAX as u32) as i32);
        self
    }

    /// How to spread the model over the GPUs (default [`SplitMode::Layer`]).
    pub fn split_mode(mut self, mode: SplitMode) -> Self {
        self.split_mode = mode;
        self
    }

    /// The GPU used by [`SplitMode::None`], as an index into the model's device
    /// list (see [`ModelParams::devices`]); ignored by the other modes.
    pub fn main_gpu(mut self, index: usize) -> Self {
        self.main_gpu = index;
        self
    }

    /// Proportion of the model per device, in device-list order, e.g.
    /// `[3.0, 1.0]`. Entries must be finite and >= 0, not all zero, and no more
    /// than the devices. Empty (the default): by free memory (layer mode) or
    /// equal (tensor mode).
    pub fn tensor_split(mut self, split: &[f32]) -> Self {
        self.tensor_split = split.to_vec();
        self
    }

    /// The devices to use, as [`Device::index`] values, in order. Default: the
    /// discrete GPUs (see [`crate::default_gpus`]). An empty list means CPU only.
    pub fn devices(mut self, indices: &[usize]) -> Self {
        self.devices = Some(indices.to_vec());
        self
    }

    /// RPC servers (`host:port`, feature `rpc`) whose devices hold layers too;
    /// see [`crate::rpc`]. They are connected at load ([`crate::rpc::connect`])
    /// and, without an explicit [`devices`](Self::devices) list, come first in
    /// the device list, then the local GPUs, as in llama.cpp. With an explicit
    /// list, name the RPC devices in it (their indices come from `connect` or
    /// [`crate::devices`]). Layer split only: tensor split mode over RPC is
    /// refused.
    pub fn rpc_servers<S: AsRef<str>>(mut self, endpoints: &[S]) -> Self {
        self.rpc_servers = endpoints.iter().map(|e| e.as_ref().to_string()).collect();
        self
    }

    /// Let the default device list take integrated GPUs when there is no
    /// discrete GPU (default: false, iGPUs are left out).
    pub fn include_igpu(mut self, yes: bool) -> Self {
        self.include_igpu = yes;
        self
    }

    /// How to read the weights (default [`LoadMode::Auto`]).
    pub fn load_mode(mut self, mode: LoadMode) -> Self {
        self.load_mode = mode;
        self
    }

    /// Load only the vocabulary and metadata, no weights.
    pub fn vocab_only(mut self, yes: bool) -> Self {
        self.vocab_only = yes;
        self
    }

    /// Validate tensor data while loading (slow; catches NaN/corrupt blocks).
    pub fn check_tensors(mut self, yes: bool) -> Self {
        self.check_tensors = yes;
        self
    }

    /// Overrides a metadata key (key at most 127 bytes).
    pub fn kv_override(mut self, key: &str, value: KvOverride) -> Self {
        self.kv_overrides.push((key.to_string(), value));
        self
    }

    /// Called with the load progress in [0, 1]; returning `false` cancels the
    /// load ([`Error::LoadCancelled`]). A panic in it is caught and returned as
    /// [`Error::CallbackPanic`].
    pub fn progress(mut self, f: impl FnMut(f32) -> bool + Send + 'static) -> Self {
        self.progress = Some(Arc::new(Mutex::new(f)));
        self
    }

    /// Metadata only, allocations simulated (llama.cpp's `no_alloc`): for
    /// [`plan_memory`](crate::plan_memory).
    pub(crate) fn dry_run(mut self) -> Self {
        self.no_alloc = true;
        // no_alloc with mmap asserts in llama.cpp (llama-model.cpp:1857).
        self.load_mode = LoadMode::NoMmap;
        self.progress = None;
        self
    }

    /// A copy of every setting but the progress callback (plans and fits
    /// load the metadata many times).
    pub(crate) fn clone_settings(&self) -> ModelParams {
        ModelParams { progress: None, ..self.clone() }
    }

    pub(crate) fn n_gpu_layers_value(&self) -> i32 {
        self.n_gpu_layers
    }

    pub(crate) fn tensor_split_values(&self) -> &[f32] {
        &self.tensor_split
    }

    /// The device list this configuration resolves to on this machine.
    pub fn resolved_devices(&self) -> Result<Vec<Device>> {
        let mut remote = Vec::new();
        for endpoint in &self.rpc_servers {
            remote.extend(crate::rpc::connect(endpoint)?);
        }
        match &self.devices {
            None => {
                remote.extend(device::default_gpus(self.include_igpu));
                Ok(remote)
            }
            Some(indices) => {
                let all = device::devices();
                indices
                    .iter()
                    .map(|&i| {
                        let d = device::find(&all, i)?;
                        if d.kind == DeviceKind::Cpu || d.kind == DeviceKind::Accelerator {
                            return Err(Error::invalid(
                                "device",
                                format!("{i} ({})", d.name),
                                "is not a GPU: list only GPUs; the CPU is always used for what is not offloaded",
                            ));
                        }
                        Ok(d.clone())
                    })
                    .collect()
            }
        }
    }

    /// Checks the split settings against `devices`; what llama.cpp would
    /// reject late, abort on, or silently misread is refused here with the cause.
    fn validate(&self, devices: &[Device]) -> Result<()> {
        let max = max_devices();
        if self.tensor_split.len() > max {
            return Err(Error::invalid(
                "tensor split",
                format!("{} entries", self.tensor_split.len()),
                format!("llama.cpp supports at most {max} devices"),
            ));
        }
        for (index, &value) in self.tensor_split.iter().enumerate() {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::TensorSplit { index, value, reason: "entries must be finite and >= 0".into() });
            }
        }
        if !self.tensor_split.is_empty() {
            if self.tensor_split.iter().all(|&v| v == 0.0) {
                return Err(Error::invalid(
                    "tensor split",
                    format!("{:?}", self.tensor_split),
                    "all entries are zero: give each device a positive share, or no split at all",
                ));
            }
            if self.tensor_split.len() > devices.len() {
                return Err(Error::invalid(
                    "tensor split",
                    format!("{:?}", self.tensor_split),
                    format!(
                        "{} entries for {} device(s) [{}]: give one entry per device",
                        self.tensor_split.len(),
                        devices.len(),
                        names(devices)
                    ),
                ));
            }
        }
        let mode = self.split_mode.name();
        match self.split_mode {
            SplitMode::None => {
                if !devices.is_empty() && self.main_gpu >= devices.len() {
                    return Err(Error::invalid(
                        "main GPU",
                        self.main_gpu,
                        format!("the device list has {} device(s) [{}]", devices.len(), names(devices)),
                    ));
                }
            }
            SplitMode::Layer => {}
            SplitMode::Row => {
                if let Some(d) = devices.iter().find(|d| !device::supports_split_buffers(d.index)) {
                    return Err(Error::SplitMode {
                        mode,
                        reason: format!(
                            "device {} ({}) does not support split buffers; use split mode layer or tensor",
                            d.name, d.backend
                        ),
                    });
                }
            }
            SplitMode::Tensor => {
                if let Some(d) = devices.iter().find(|d| d.kind == DeviceKind::Rpc) {
                    return Err(Error::SplitMode {
                        mode,
                        reason: format!(
                            "device {} is an RPC device ({}): llama.cpp does not support tensor split over RPC; \
                             use split mode layer (tensor_split proportions apply to RPC devices too)",
                            d.name, d.description
                        ),
                    });
                }
                if devices.is_empty() {
                    return Err(Error::SplitMode { mode, reason: "needs at least one GPU; none is available".into() });
                }
                if devices.len() > max {
                    return Err(Error::SplitMode {
                        mode,
                        reason: format!("{} devices given, at most {max} are supported", devices.len()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A load that failed to allocate (a device or host buffer for the weights,
/// or their mapping): says how to ask for less.
fn out_of_memory_hint(message: String) -> String {
    if message.contains("mmap failed") {
        format!(
            "{message}. The file could not be mapped into the address space: check the process's limits \
             (`ulimit -v`), or read it into memory instead (LoadMode::NoMmap)"
        )
    } else if crate::error::is_allocation_failure(&message) {
        format!(
            "{message}. The weights did not fit in memory: lower n_gpu_layers, spread the model over more devices \
             (devices, tensor_split), or let llama_rs::fit choose"
        )
    } else {
        message
    }
}

fn names(devices: &[Device]) -> String {
    devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn max_devices() -> usize {
    // SAFETY: pure query.
    unsafe { sys::llama_max_devices() }
}

/// A loaded model. `Send + Sync`: share it between threads, each with its own
/// [`Context`](crate::Context), either borrowed (`&Model`: contexts and
/// samplers borrow it, [`Model::new_context`], [`Sampler::builder`](crate::Sampler::builder))
/// or through an `Arc<Model>`: contexts and samplers then hold a clone of the
/// `Arc` and are `'static` ([`Model::new_owned_context`],
/// [`Sampler::builder_owned`](crate::Sampler::builder_owned)), which is what
/// a server's shared state or the serving [`Engine`](crate::Engine) needs.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    path: PathBuf,
    devices: Vec<Device>,
    split_mode: SplitMode,
    vocab_only: bool,
    /// Loaded for a memory plan only: nothing allocated, nothing can run.
    pub(crate) dry: bool,
    /// Context creation (and adapter loading) write to the model inside
    /// llama.cpp: serialised per model.
    pub(crate) write_lock: Mutex<()>,
    /// llguidance's view of the vocabulary, built at the first structured
    /// output request.
    guidance: std::sync::OnceLock<crate::guidance::Factory>,
    /// The RPC servers this model uses (none: costs nothing).
    pub(crate) rpc: crate::rpc::RpcWatch,
}

// SAFETY: a loaded llama_model is only read by llama.cpp, except during
// context creation, which llama-rs serialises with `write_lock`.
unsafe impl Send for Model {}
// SAFETY: as above: all shared access is read-only or under `write_lock`.
unsafe impl Sync for Model {}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("split_mode", &self.split_mode).finish()
    }
}

/// How a context or sampler holds its model: borrowed (`Context<'m>`) or
/// through an `Arc` (`Context<'static>`).
#[derive(Clone, Debug)]
pub(crate) enum ModelRef<'m> {
    Borrowed(&'m Model),
    Shared(Arc<Model>),
}

impl std::ops::Deref for ModelRef<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

struct ProgressState {
    f: ProgressFn,
    panic: Option<String>,
    cancelled: bool,
}

extern "C" fn progress_trampoline(progress: f32, user: *mut c_void) -> bool {
    // SAFETY: `user` is the &mut ProgressState that Model::load passed for the
    // duration of the load call; llama.cpp calls back on the loading thread.
    let state = unsafe { &mut *(user as *mut ProgressState) };
    if state.panic.is_some() {
        return false;
    }
    let call = || {
        let mut f = state.f.lock().unwrap_or_else(|e| e.into_inner());
        (*f)(progress)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(go_on) => {
            state.cancelled |= !go_on;
            go_on
        }
        Err(p) => {
            state.panic = Some(crate::ffi::panic_message(&*p));
            false
        }
    }
}

impl Model {
    /// Loads a GGUF model with default parameters (all layers on the GPUs
    /// when there are any, layer split).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(path, ModelParams::default())
    }

    /// Loads a GGUF model. The file's metadata is checked first for what would
    /// make llama.cpp abort, and the split settings against the devices present.
    pub fn load_with(path: impl AsRef<Path>, mut params: ModelParams) -> Result<Model> {
        crate::init();
        let path = path.as_ref().to_path_buf();
        let mut file = crate::gguf::ModelFile::open(&path)?;
        crate::validate::validate(&mut file, &params.kv_overrides)?;
        let devices = params.resolved_devices()?;
        params.validate(&devices)?;

        // SAFETY: returns a plain struct of defaults.
        let mut raw = unsafe { sys::llama_model_default_params() };
        // NULL-terminated device list, always explicit: llama.cpp's own default
        // list would take iGPUs and RPC devices in tensor mode.
        let mut dev_ptrs: Vec<sys::ggml_backend_dev_t> =
            devices.iter().map(|d| device::raw_device(d.index).expect("resolved devices exist")).collect();
        let mut main_gpu = params.main_gpu as i32;
        let mut devices = devices;
        if params.split_mode == SplitMode::None && !dev_ptrs.is_empty() {
            dev_ptrs = vec![dev_ptrs[params.main_gpu]];
            devices = vec![devices[params.main_gpu].clone()];
            main_gpu = 0;
        }
        dev_ptrs.push(std::ptr::null_mut());
        // llama.cpp always reads llama_max_devices() entries.
        let mut split = vec![0f32; max_devices()];
        split[..params.tensor_split.len()].copy_from_slice(&params.tensor_split);
        let overrides = kv_overrides(&params.kv_overrides)?;

        raw.devices = dev_ptrs.as_mut_ptr();
        raw.n_gpu_layers = params.n_gpu_layers;
        raw.split_mode = params.split_mode.raw();
        raw.main_gpu = main_gpu;
        raw.tensor_split = split.as_ptr();
        raw.load_mode = params.load_mode.raw();
        raw.vocab_only = params.vocab_only;
        raw.check_tensors = params.check_tensors;
        raw.no_alloc = params.no_alloc;
        raw.kv_overrides = if params.kv_overrides.is_empty() { std::ptr::null() } else { overrides.as_ptr() };

        let mut state = params.progress.take().map(|f| ProgressState { f, panic: None, cancelled: false });
        if let Some(state) = state.as_mut() {
            raw.progress_callback = Some(progress_trampoline);
            raw.progress_callback_user_data = (state as *mut ProgressState).cast();
        }

        let rpc = crate::rpc::RpcWatch::new(&devices);
        let mut model: *mut sys::llama_model = std::ptr::null_mut();
        // The validated file itself (see ModelFile).
        let c_path = file.c_path()?;
        clear_log_error();
        // SAFETY: every pointer in `raw` (devices, split, overrides, progress
        // state) points into locals that outlive the call; lists are
        // terminated as llama.cpp expects; the shim catches C++ exceptions.
        let status = unsafe { sys::llama_rs_model_load_from_file(c_path.as_ptr(), raw, &mut model) };
        check_shim("llama_model_load_from_file", status)?;
        if let Some(state) = state {
            if let Some(message) = state.panic {
                if let Some(p) = NonNull::new(model) {
                    // SAFETY: a model that loaded despite the panic; freed once here.
                    unsafe { sys::llama_model_free(p.as_ptr()) };
                }
                return Err(Error::CallbackPanic { message });
            }
            if state.cancelled && model.is_null() {
                return Err(Error::LoadCancelled { path });
            }
        }
        if let Err(e) = rpc.check() {
            if let Some(p) = NonNull::new(model) {
                // SAFETY: a model whose RPC server failed while loading; freed once here.
                unsafe { sys::llama_model_free(p.as_ptr()) };
            }
            return Err(e);
        }
        let ptr = NonNull::new(model).ok_or_else(|| Error::ModelLoad {
            path: path.clone(),
            message: out_of_memory_hint(log_cause_or("llama.cpp returned no model")),
        })?;
        if !params.vocab_only {
            if let Err(message) = check_loaded(ptr) {
                // SAFETY: the model just loaded, owned here, freed once.
                unsafe { sys::llama_model_free(ptr.as_ptr()) };
                return Err(Error::InvalidModel { path, message });
            }
        }
        Ok(Model {
            ptr,
            path,
            devices,
            split_mode: params.split_mode,
            vocab_only: params.vocab_only,
            dry: params.no_alloc,
            write_lock: Mutex::new(()),
            guidance: std::sync::OnceLock::new(),
            rpc,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// The shape (`ne[0..4]`) and ggml type of the loaded tensor `name`, if
    /// the model has it.
    pub(crate) fn tensor_info(&self, name: &str) -> Option<([i64; 4], sys::ggml_type)> {
        let c = std::ffi::CString::new(name).ok()?;
        let (mut found, mut ne, mut ty) = (false, [0i64; 4], 0i32);
        // SAFETY: live model; NUL-terminated name; `ne` has the 4 slots the
        // shim writes; the shim catches exceptions.
        let status =
            unsafe { sys::llama_rs_model_tensor_info(self.as_ptr(), c.as_ptr(), &mut found, ne.as_mut_ptr(), &mut ty) };
        (status == 0 && found).then_some((ne, ty as sys::ggml_type))
    }

    /// The raw `llama_model` pointer, for [`crate::sys`] calls the safe API
    /// does not cover (e.g. a context created by hand, as the benchmarks do to
    /// compare against the C API). Valid while `self` lives; never free it.
    /// Using it is `unsafe` and bypasses every check of this crate; create
    /// contexts on it from one thread at a time.
    pub fn as_raw_ptr(&self) -> *mut sys::llama_model {
        self.as_ptr()
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GPUs this model was loaded onto (empty: CPU only).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// True if loaded with [`ModelParams::vocab_only`]: no weights, no contexts.
    pub fn is_vocab_only(&self) -> bool {
        self.vocab_only
    }

    /// The split mode it was loaded with.
    pub fn split_mode(&self) -> SplitMode {
        self.split_mode
    }

    /// The vocabulary.
    pub fn vocab(&self) -> Vocab<'_> {
        // SAFETY: the model is live; the vocab it returns lives as long as it.
        let ptr = unsafe { sys::llama_model_get_vocab(self.as_ptr()) };
        Vocab::new(ptr)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> String {
        self.meta("general.architecture").unwrap_or_default()
    }

    /// llama.cpp's one-line description, e.g. `llama 8B Q4_K - Medium`.
    pub fn description(&self) -> String {
        // SAFETY: writes at most `len` bytes into the buffer.
        string_from_buffer(|buf, len| unsafe { sys::llama_model_desc(self.as_ptr(), buf, len) }).unwrap_or_default()
    }

    /// Number of parameters.
    pub fn n_params(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_params(self.as_ptr()) }
    }

    /// Size of all weights in bytes.
    pub fn size(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_size(self.as_ptr()) }
    }

    /// Context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_ctx_train(self.as_ptr()) }.max(0) as u32
    }

    /// Embedding width.
    pub fn n_embd(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_embd(self.as_ptr()) }.max(0) as u32
    }

    /// Width of an embeddings row ([`Context::embeddings`](crate::Context::embeddings)):
    /// `<arch>.embedding_length_out` when the file sets it, else [`n_embd`](Self::n_embd).
    pub fn n_embd_out(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_embd_out(self.as_ptr()) }.max(0) as u32
    }

    /// Number of layers.
    pub fn n_layer(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_layer(self.as_ptr()) }.max(0) as u32
    }

    /// Number of attention heads.
    pub fn n_head(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_head(self.as_ptr()) }.max(0) as u32
    }

    /// Number of key/value heads.
    pub fn n_head_kv(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_head_kv(self.as_ptr()) }.max(0) as u32
    }

    /// A metadata value as a string, if the key exists.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = cstring("metadata key", key).ok()?;
        // SAFETY: key is NUL-terminated; llama.cpp writes at most `len` bytes.
        string_from_buffer(|buf, len| unsafe { sys::llama_model_meta_val_str(self.as_ptr(), key.as_ptr(), buf, len) })
    }

    /// All metadata as (key, value) strings, in file order. Long arrays are
    /// summarised by llama.cpp.
    pub fn metadata(&self) -> Vec<(String, String)> {
        // SAFETY: live model.
        let n = unsafe { sys::llama_model_meta_count(self.as_ptr()) }.max(0);
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < count; llama.cpp writes at most `len` bytes.
                let k =
                    string_from_buffer(|b, l| unsafe { sys::llama_model_meta_key_by_index(self.as_ptr(), i, b, l) })?;
                // SAFETY: as above.
                let v = string_from_buffer(|b, l| unsafe {
                    sys::llama_model_meta_val_str_by_index(self.as_ptr(), i, b, l)
                })?;
                Some((k, v))
            })
            .collect()
    }

    /// The chat template stored in the model (`tokenizer.chat_template`), or a
    /// named one (`tokenizer.chat_template.<name>`).
    pub fn chat_template(&self, name: Option<&str>) -> Option<String> {
        let name = match name {
            Some(n) => Some(cstring("template name", n).ok()?),
            None => None,
        };
        // SAFETY: name is NULL or NUL-terminated; the returned string is owned
        // by the model and copied at once.
        let ptr = unsafe {
            sys::llama_model_chat_template(self.as_ptr(), name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()))
        };
        // SAFETY: NULL or a NUL-terminated string owned by the live model.
        (!ptr.is_null()).then(|| unsafe { string_from_ptr(ptr) })
    }
}

impl Model {
    /// The structured-output parser factory, built once per model.
    pub(crate) fn guidance_factory(&self) -> Result<crate::guidance::Factory> {
        if let Some(f) = self.guidance.get() {
            return Ok(f.clone());
        }
        let f = crate::guidance::build_factory(self)?;
        Ok(self.guidance.get_or_init(|| f).clone())
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: every Context borrows the model, so none is alive now; the
        // pointer came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.as_ptr()) };
    }
}

/// The shim's check of the hyperparameters as llama.cpp derived them
/// (sliding-window layers, M-RoPE sections, Mamba-2 and RWKV6 head splits):
/// combinations that abort at context creation or the first decode, which
/// depend on per-architecture defaults the metadata validator cannot see.
fn check_loaded(model: NonNull<sys::llama_model>) -> std::result::Result<(), String> {
    let mut why = [0 as std::os::raw::c_char; 512];
    // SAFETY: live model; the buffer has why.len() writable bytes and is
    // NUL-terminated by the shim (snprintf); the shim catches exceptions.
    let status = unsafe { sys::llama_rs_model_check(model.as_ptr(), why.as_mut_ptr(), why.len()) };
    match status {
        0 => Ok(()),
        // SAFETY: NUL-terminated by the shim within the buffer.
        1 => Err(unsafe { crate::ffi::string_from_ptr(why.as_ptr()) }),
        _ => Err(format!("checking the loaded hyperparameters threw: {}", crate::ffi::last_exception())),
    }
}

/// Builds the C override array, terminated by an entry with an empty key.
fn kv_overrides(list: &[(String, KvOverride)]) -> Result<Vec<sys::llama_model_kv_override>> {
    let mut out = Vec::with_capacity(list.len() + 1);
    for (key, value) in list {
        // SAFETY: an all-zero llama_model_kv_override is a valid value (plain C data).
        let mut o: sys::llama_model_kv_override = unsafe { std::mem::zeroed() };
        copy_c_str("kv override key", key, &mut o.key)?;
        match value {
            KvOverride::Int(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
                o.__bindgen_anon_1.val_i64 = *v;
            }
            KvOverride::Float(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_FLOAT;
                o.__bindgen_anon_1.val_f64 = *v;
            }
            KvOverride::Bool(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_BOOL;
                o.__bindgen_anon_1.val_bool = *v;
            }
            KvOverride::Str(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
                // SAFETY: writing the string member of a zeroed union.
                copy_c_str("kv override value", v, unsafe { &mut o.__bindgen_anon_1.val_str })?;
            }
        }
        out.push(o);
    }
    // SAFETY: all-zero = empty key = terminator.
    out.push(unsafe { std::mem::zeroed() });
    Ok(out)
}

fn copy_c_str(what: &'static str, s: &str, dst: &mut [std::os::raw::c_char; 128]) -> Result<()> {
    if s.is_empty() || s.len() >= dst.len() {
        return Err(Error::invalid(what, s, "must be 1 to 127 bytes"));
    }
    if let Some(position) = s.bytes().position(|b| b == 0) {
        return Err(Error::Nul { what, position });
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as std::os::raw::c_char;
    }
    Ok(())
}
