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
    Ok(plan)
}
