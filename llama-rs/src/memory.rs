//! Memory per device: what a context and its model hold, and the plan of
//! what they would hold, computed before anything is allocated.

use crate::context::{Context, ContextParams};
use crate::error::Result;
use crate::ffi::check_shim;
use crate::model::{Model, ModelParams};
use llama_sys as sys;
use std::path::Path;

/// Bytes one buffer type holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BufferMemory {
    /// Device name (`CPU`, `CUDA0`, `ROCm1`, ...).
    pub device: String,
    /// Buffer type name (`CUDA0`, `CPU_Mapped`, `CUDA_Host`, ...).
    pub buffer_type: String,
    /// Weights.
    pub model: u64,
    /// KV cache / recurrent state.
    pub context: u64,
    /// Compute buffers.
    pub compute: u64,
}

/// Bytes one device holds, summed over its buffer types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Device name (`CPU`, `CUDA0`, ...).
    pub device: String,
    /// Weights.
    pub model: u64,
    /// KV cache / recurrent state.
    pub context: u64,
    /// Compute buffers.
    pub compute: u64,
}

impl DeviceMemory {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.model + self.context + self.compute
    }
}

/// Sums buffer entries per device, in first-seen order.
pub fn per_device(buffers: &[BufferMemory]) -> Vec<DeviceMemory> {
    let mut out: Vec<DeviceMemory> = Vec::new();
    for b in buffers {
        let i = match out.iter().position(|d| d.device == b.device) {
            Some(i) => i,
            None => {
                out.push(DeviceMemory { device: b.device.clone(), ..Default::default() });
                out.len() - 1
            }
        };
        out[i].model += b.model;
        out[i].context += b.context;
        out[i].compute += b.compute;
    }
    out
}

impl Context<'_> {
    /// What this context and its model hold, per buffer type (llama.cpp's own
    /// accounting of its allocations).
    pub fn memory_breakdown(&self) -> Result<Vec<BufferMemory>> {
        let mut entries = vec![sys::llama_rs_memory_entry::default(); 16];
        let mut n = 0usize;
        loop {
            // SAFETY: live context; the array has entries.len() writable
            // entries; the shim catches C++ exceptions.
            let status =
                unsafe { sys::llama_rs_memory_breakdown(self.as_ptr(), entries.as_mut_ptr(), entries.len(), &mut n) };
            check_shim("llama_get_memory_breakdown", status)?;
            if n <= entries.len() {
                break;
            }
            entries.resize(n, sys::llama_rs_memory_entry::default());
        }
        Ok(entries[..n]
            .iter()
            .map(|e| {
                // SAFETY: buffer types from llama.cpp's breakdown are live for
                // the process; names are static strings, copied.
                let (device, buffer_type) = unsafe {
                    let dev = sys::ggml_backend_buft_get_device(e.buft);
                    // Host buffer types (CPU, CPU_Mapped, CUDA_Host, ...) are RAM,
                    // whatever device they belong to.
                    let dev_name = if dev.is_null() || sys::ggml_backend_buft_is_host(e.buft) {
                        "CPU".to_string()
                    } else {
                        crate::ffi::string_from_ptr(sys::ggml_backend_dev_name(dev))
                    };
                    (dev_name, crate::ffi::string_from_ptr(sys::ggml_backend_buft_name(e.buft)))
                };
                BufferMemory {
                    device,
                    buffer_type,
                    model: e.model as u64,
                    context: e.context as u64,
                    compute: e.compute as u64,
                }
            })
            .collect())
    }
}

/// What loading `path` with these parameters, then creating a context with
/// `ctx_params`, would allocate on each device: computed by llama.cpp's
/// no-alloc dry run (metadata read, allocations simulated, nothing allocated).
/// All split checks of a real load apply.
///
/// In tensor mode llama.cpp accounts the split weights, KV cache and compute
/// buffers to one "Meta" device; the plan shares them out over the real
/// devices in tensor-split proportions (equal when none is given). It does not
/// include the all-reduce library's own buffers (NCCL: about 200 MiB per GPU
/// measured on H200s), which llama.cpp does not account.
pub fn plan_memory(
    path: impl AsRef<Path>,
    params: ModelParams,
    ctx_params: ContextParams,
) -> Result<Vec<DeviceMemory>> {
    Ok(dry_run(path.as_ref(), params, ctx_params)?.plan)
}

struct DryRun {
    plan: Vec<DeviceMemory>,
    /// The GPUs the model would use.
    devices: Vec<crate::Device>,
    n_layer: u32,
    n_ctx: u32,
}

fn dry_run(path: &Path, params: ModelParams, ctx_params: ContextParams) -> Result<DryRun> {
    let split = params.tensor_split_values().to_vec();
    let model = Model::load_with(path, params.dry_run())?;
    let ctx = model.new_context_dry(ctx_params)?;
    let mut plan = per_device(&ctx.memory_breakdown()?);
    let devices: Vec<String> = model.devices().iter().map(|d| d.name.clone()).collect();
    if let Some(i) = plan.iter().position(|d| d.device.starts_with("Meta")) {
        // The dry run accounts the whole weights and KV cache to the meta
        // device: they are split in tensor-split proportions; every device
        // gets the compute buffers.
        let meta = plan.remove(i);
        let shares: Vec<f64> = if split.iter().any(|&v| v > 0.0) {
            (0..devices.len()).map(|k| split.get(k).copied().unwrap_or(0.0) as f64).collect()
        } else {
            vec![1.0; devices.len()]
        };
        let sum: f64 = shares.iter().sum();
        for (name, share) in devices.iter().zip(&shares) {
            let part = |b: u64| (b as f64 * share / sum).round() as u64;
            let slot = match plan.iter().position(|d| &d.device == name) {
                Some(k) => k,
                None => {
                    plan.push(DeviceMemory { device: name.clone(), ..Default::default() });
                    plan.len() - 1
                }
            };
            plan[slot].model += part(meta.model);
            plan[slot].context += part(meta.context);
            plan[slot].compute += meta.compute;
        }
    }
    Ok(DryRun { plan, devices: model.devices().to_vec(), n_layer: model.n_layer(), n_ctx: ctx.n_ctx() })
}

/// Settings of [`fit`].
#[derive(Clone, Debug)]
pub struct FitParams {
    /// Bytes to keep free on every GPU (default 1 GiB).
    pub margin: u64,
    /// Smallest context length `fit` may choose (default 4096, or the
    /// requested length when that is smaller).
    pub min_ctx: u32,
    /// Free bytes per GPU, in the order of the model's device list, instead of
    /// what the devices report now (what-if planning, tests).
    pub free: Option<Vec<u64>>,
}

impl Default for FitParams {
    fn default() -> Self {
        FitParams { margin: 1 << 30, min_ctx: 4096, free: None }
    }
}

/// What [`fit`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// Layers on the GPUs: `None` = all (as [`ModelParams::n_gpu_layers`] takes it).
    pub n_gpu_layers: Option<u32>,
    /// Context length.
    pub n_ctx: u32,
    /// The plan of that choice.
    pub plan: Vec<DeviceMemory>,
}

/// Chooses `n_gpu_layers` and `n_ctx` so that every GPU keeps `fit.margin`
/// bytes free, from memory plans (no allocation): all layers at the requested
/// context length if that fits; else the longest context, halving down to
/// `min_ctx`, that fits with all layers; else the most layers that fit at
/// `min_ctx`. Works in every split mode, tensor mode included (llama.cpp's own
/// fit refuses it); in tensor mode, keep the margin above NCCL's buffers
/// (about 200 MiB per GPU on H200s), which llama.cpp does not account.
/// Errors when not even the CPU-only plan leaves the margin on the GPUs.
pub fn fit(path: impl AsRef<Path>, params: ModelParams, ctx_params: ContextParams, fit: FitParams) -> Result<Fit> {
    let path = path.as_ref();
    let first = dry_run(path, params.clone_settings(), ctx_params.clone())?;
    let free: Vec<u64> = match &fit.free {
        Some(f) if f.len() == first.devices.len() => f.clone(),
        Some(f) => {
            return Err(crate::Error::invalid(
                "fit free memory",
                format!("{} entries", f.len()),
                format!("give one entry per GPU of the model ({})", first.devices.len()),
            ))
        }
        None => {
            let now = crate::devices();
            first.devices.iter().map(|d| now.get(d.index).map_or(0, |n| n.memory_free)).collect()
        }
    };
    let fits = |run: &DryRun| {
        run.devices.iter().zip(&free).all(|(d, &f)| {
            let used: u64 = run.plan.iter().filter(|p| p.device == d.name).map(DeviceMemory::total).sum();
            used.saturating_add(fit.margin) <= f
        })
    };
    let done = |run: DryRun, ngl: Option<u32>| Ok(Fit { n_gpu_layers: ngl, n_ctx: run.n_ctx, plan: run.plan });
    let requested_ngl = u32::try_from(params.n_gpu_layers_value()).ok();
    if fits(&first) {
        return done(first, requested_ngl);
    }
    let min_ctx = fit.min_ctx.min(first.n_ctx).max(1);
    let mut n_ctx = first.n_ctx;
    let mut last = first;
    while n_ctx > min_ctx {
        n_ctx = (n_ctx / 2).max(min_ctx);
        let run = dry_run(path, params.clone_settings(), ctx_params.clone().n_ctx(n_ctx))?;
        if fits(&run) {
            return done(run, requested_ngl);
        }
        last = run;
    }
    // The most layers that fit at min_ctx (the output layer counts as one more).
    let top = requested_ngl.unwrap_or(last.n_layer + 1).min(last.n_layer + 1);
    let (mut lo, mut hi) = (0u32, top);
    let mut best = None;
    while lo <= hi {
        let mid = (lo + hi) / 2;
        let run = dry_run(path, params.clone_settings().n_gpu_layers(Some(mid)), ctx_params.clone().n_ctx(min_ctx))?;
        if fits(&run) {
            best = Some((mid, run));
            lo = mid + 1;
        } else if mid == 0 {
            break;
        } else {
            hi = mid - 1;
        }
    }
    match best {
        Some((ngl, run)) => done(run, Some(ngl)),
        None => Err(crate::Error::invalid(
            "fit",
            format!("margin {} MiB", fit.margin >> 20),
            "even with no layer on the GPUs the plan leaves less than the margin free; lower the margin or free GPU memory",
        )),
    }
}
