//! Memory per device: what a context and its model hold, and the plan of
//! what they would hold, computed before anything is allocated. (The KV
//! cache's operations, llama.cpp's "memory" API, are `context/kv_cache.rs`.)

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
    /// Buffers of tensor mode's all-reduce (NCCL/RCCL communicators, or
    /// ggml's internal pipeline) that llama.cpp allocates outside its own
    /// accounting: an estimate, see [`all_reduce_reserve`]. Zero in a
    /// [`Context::memory_breakdown`] sum and in every other split mode.
    pub all_reduce: u64,
}

impl DeviceMemory {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.model + self.context + self.compute + self.all_reduce
    }
}

/// How tensor mode's partial results are summed across GPUs (llama.cpp's CUDA
/// and HIP backends pick one when the context is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllReduce {
    /// NCCL (CUDA) or RCCL (HIP) communicators: llama.cpp's choice on Linux
    /// when the backend was built with the library.
    Nccl,
    /// ggml's own pipeline, for exactly 2 GPUs: llama.cpp's choice without
    /// NCCL/RCCL.
    Internal,
    /// ggml's generic butterfly through the meta backend: more than 2 GPUs
    /// without NCCL/RCCL, or `GGML_CUDA_ALLREDUCE=none`.
    Generic,
}

/// Device bytes per GPU that NCCL's communicators took in tensor mode on
/// H200s (NCCL 2.x, CUDA 13, NVLink multicast off), with 2 and with 4 GPUs:
/// llama.cpp does not account them. Measured by `tests/gpu.rs` (see
/// docs/gpu-results.md).
pub const NCCL_RESERVE: u64 = 200 << 20;

/// Device bytes per GPU of ggml's internal 2-GPU all-reduce pipeline: its
/// copy-engine scratch buffer (32 MiB, `GGML_CUDA_AR_COPY_MAX_BYTES`) plus
/// the small arrival ring, rounded to the allocation granularity.
pub const INTERNAL_ALL_REDUCE_RESERVE: u64 = 34 << 20;

/// Which all-reduce llama.cpp will use for a tensor-mode context over these
/// GPUs (`None` when there is none: fewer than 2 GPUs, or a backend without
/// one), as llama.cpp decides it: `GGML_CUDA_ALLREDUCE` (`nccl`, `internal`,
/// `none`) if set, else NCCL/RCCL when the backend was linked with it (seen as
/// the library being loaded in this process), else the internal pipeline for
/// exactly 2 GPUs, else the generic one.
pub fn all_reduce_for(gpus: &[crate::Device]) -> Option<AllReduce> {
    if gpus.len() < 2 || !gpus.iter().all(|d| d.backend == "CUDA" || d.backend == "ROCm") {
        return None;
    }
    let internal_or_generic = || if gpus.len() == 2 { AllReduce::Internal } else { AllReduce::Generic };
    match std::env::var("GGML_CUDA_ALLREDUCE").as_deref() {
        Ok("none") => return Some(AllReduce::Generic),
        Ok("internal") => return Some(internal_or_generic()),
        Ok("nccl") | Err(_) => {}
        // llama.cpp warns and uses the generic path for other values.
        Ok(_) => return Some(AllReduce::Generic),
    }
    Some(if collective_library_loaded() { AllReduce::Nccl } else { internal_or_generic() })
}

/// Whether NCCL or RCCL is mapped into this process (a CUDA/HIP backend built
/// with it links it; with dynamic backends, loading the module maps it).
fn collective_library_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| {
        maps.lines().any(|l| {
            let file = l.rsplit('/').next().unwrap_or("");
            file.starts_with("libnccl.so") || file.starts_with("librccl.so")
        })
    })
}

/// The bytes per GPU that the plan adds for tensor mode's all-reduce, which
/// llama.cpp allocates but does not account: [`NCCL_RESERVE`] for NCCL/RCCL,
/// [`INTERNAL_ALL_REDUCE_RESERVE`] for the internal pipeline, 0 for the generic
/// path. `LLAMA_RS_ALL_REDUCE_RESERVE_MIB` in the environment replaces the
/// figure (e.g. for another NCCL version or topology, or with NCCL's own
/// buffer settings changed).
pub fn all_reduce_reserve(kind: AllReduce) -> u64 {
    if let Some(mib) = std::env::var("LLAMA_RS_ALL_REDUCE_RESERVE_MIB").ok().and_then(|v| v.trim().parse::<u64>().ok())
    {
        return mib << 20;
    }
    match kind {
        AllReduce::Nccl => NCCL_RESERVE,
        AllReduce::Internal => INTERNAL_ALL_REDUCE_RESERVE,
        AllReduce::Generic => 0,
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
/// devices in tensor-split proportions (equal when none is given), and adds to
/// each GPU the all-reduce's own buffers, which llama.cpp does not account
/// ([`DeviceMemory::all_reduce`], estimated by [`all_reduce_reserve`] for the
/// path [`all_reduce_for`] predicts).
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
        let gpus: Vec<crate::Device> = model.devices().iter().filter(|d| d.is_gpu()).cloned().collect();
        if let Some(kind) = all_reduce_for(&gpus) {
            let reserve = all_reduce_reserve(kind);
            for d in plan.iter_mut().filter(|d| gpus.iter().any(|g| g.name == d.device)) {
                d.all_reduce = reserve;
            }
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
/// fit refuses it; the plans include tensor mode's all-reduce buffers, see
/// [`plan_memory`]).
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
            first.devices.iter().map(|d| now.iter().find(|n| n.index == d.index).map_or(0, |n| n.memory_free)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, DeviceKind};

    fn dev(i: usize, backend: &str, kind: DeviceKind) -> Device {
        Device {
            index: i,
            name: format!("{backend}{i}"),
            description: String::new(),
            backend: backend.to_string(),
            kind,
            device_id: None,
            memory_free: 0,
            memory_total: 0,
        }
    }

    #[test]
    fn all_reduce_needs_two_cuda_or_hip_gpus() {
        assert_eq!(all_reduce_for(&[]), None);
        assert_eq!(all_reduce_for(&[dev(0, "CUDA", DeviceKind::Gpu)]), None);
        assert_eq!(all_reduce_for(&[dev(0, "CPU", DeviceKind::Cpu), dev(1, "CPU", DeviceKind::Cpu)]), None);
        assert_eq!(all_reduce_for(&[dev(0, "Vulkan", DeviceKind::Gpu), dev(1, "Vulkan", DeviceKind::Gpu)]), None);
        let two = [dev(0, "ROCm", DeviceKind::Gpu), dev(1, "ROCm", DeviceKind::Gpu)];
        let kind = all_reduce_for(&two).expect("two ROCm GPUs all-reduce");
        // No NCCL/RCCL in a CPU-only test process: the internal pipeline for
        // 2 GPUs (unless GGML_CUDA_ALLREDUCE says otherwise).
        if std::env::var_os("GGML_CUDA_ALLREDUCE").is_none() {
            assert_eq!(kind, AllReduce::Internal);
            let four: Vec<Device> = (0..4).map(|i| dev(i, "CUDA", DeviceKind::Gpu)).collect();
            assert_eq!(all_reduce_for(&four), Some(AllReduce::Generic));
        }
        if std::env::var_os("LLAMA_RS_ALL_REDUCE_RESERVE_MIB").is_none() {
            assert_eq!(all_reduce_reserve(AllReduce::Nccl), NCCL_RESERVE);
            assert_eq!(all_reduce_reserve(AllReduce::Internal), INTERNAL_ALL_REDUCE_RESERVE);
            assert_eq!(all_reduce_reserve(AllReduce::Generic), 0);
        }
    }

    #[test]
    fn per_device_sums_buffers_and_total_counts_everything() {
        let b = |dev: &str, m, c, k| BufferMemory {
            device: dev.into(),
            buffer_type: dev.into(),
            model: m,
            context: c,
            compute: k,
        };
        let sum = per_device(&[b("CUDA0", 10, 2, 1), b("CPU", 5, 0, 0), b("CUDA0", 1, 1, 1)]);
        assert_eq!(sum.len(), 2);
        assert_eq!((sum[0].device.as_str(), sum[0].model, sum[0].context, sum[0].compute), ("CUDA0", 11, 3, 2));
        assert_eq!(sum[0].all_reduce, 0);
        let with_reserve = DeviceMemory { all_reduce: 7, ..sum[0].clone() };
        assert_eq!(with_reserve.total(), 11 + 3 + 2 + 7);
    }
}
