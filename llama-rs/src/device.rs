//! Compute devices as llama.cpp's backends see them, and the default device
//! policy used for loading models.

use crate::ffi::string_from_ptr;
use llama_sys as sys;

/// What kind of device a backend reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The CPU, using system memory.
    Cpu,
    /// A discrete GPU with its own memory.
    Gpu,
    /// An integrated GPU sharing system memory.
    IntegratedGpu,
    /// An accelerator used together with the CPU backend (BLAS, AMX, ...).
    Accelerator,
    /// A device of another machine, served by an RPC server (feature `rpc`,
    /// [`rpc::connect`](crate::rpc::connect)); its description is the endpoint.
    Rpc,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "CPU",
            DeviceKind::Gpu => "GPU",
            DeviceKind::IntegratedGpu => "iGPU",
            DeviceKind::Accelerator => "accelerator",
            DeviceKind::Rpc => "RPC",
        })
    }
}

/// One device of ggml's registry (or of a connected RPC server), at the time
/// [`devices`] was called.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Index in ggml's device registry (stable for the life of the process);
    /// RPC devices are numbered from 2^20 in the order they were connected.
    pub index: usize,
    /// Short name, e.g. `CPU`, `CUDA0`, `ROCm1`.
    pub name: String,
    /// Human description, e.g. the GPU's product name.
    pub description: String,
    /// Name of the backend that provides it, e.g. `CPU`, `CUDA`, `ROCm`.
    pub backend: String,
    /// Device type.
    pub kind: DeviceKind,
    /// PCI bus id or similar, when the backend knows it.
    pub device_id: Option<String>,
    /// Free memory in bytes, as reported by the backend.
    pub memory_free: u64,
    /// Total memory in bytes, as reported by the backend.
    pub memory_total: u64,
}

impl Device {
    /// True for discrete and integrated GPUs.
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu)
    }

    /// The `host:port` of the server, for an RPC device.
    pub fn rpc_endpoint(&self) -> Option<&str> {
        (self.kind == DeviceKind::Rpc).then_some(self.description.as_str())
    }
}

/// Every device that the compiled-in backends registered (the CPU included),
/// then the devices of the RPC servers connected so far.
///
/// `HIP_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` are honoured by the backends
/// themselves, as in any llama.cpp program: they must be set before the first
/// call into llama-rs.
pub fn devices() -> Vec<Device> {
    crate::init();
    // SAFETY: the registry is initialised by init() and never shrinks.
    let count = unsafe { sys::ggml_backend_dev_count() };
    let rpc = crate::rpc::RPC_INDEX_BASE..crate::rpc::RPC_INDEX_BASE + crate::rpc::device_count();
    (0..count).chain(rpc).filter_map(device_info).collect()
}

/// The registry's devices only (no RPC device: asking a server for its
/// memory is a network round trip).
fn local_devices() -> Vec<Device> {
    crate::init();
    // SAFETY: the registry is initialised by init() and never shrinks.
    let count = unsafe { sys::ggml_backend_dev_count() };
    (0..count).filter_map(device_info).collect()
}

/// The device of `all` with [`Device::index`] `index`.
pub(crate) fn find(all: &[Device], index: usize) -> crate::Result<&Device> {
    all.iter().find(|d| d.index == index).ok_or(crate::Error::DeviceOutOfRange { index, count: all.len() })
}

/// The devices a model uses by default: the discrete GPUs (one entry per
/// physical device when two backends see the same one), or, only when there is
/// no discrete GPU, the integrated GPUs if `include_igpu`. Empty on a machine
/// without GPUs (the model then runs on the CPU).
pub fn default_gpus(include_igpu: bool) -> Vec<Device> {
    let all = local_devices();
    let mut gpus: Vec<Device> = Vec::new();
    for d in all.iter().filter(|d| d.kind == DeviceKind::Gpu && d.backend != "RPC") {
        let dup = d.device_id.is_some() && gpus.iter().any(|g| g.device_id == d.device_id);
        if !dup {
            gpus.push(d.clone());
        }
    }
    if gpus.is_empty() && include_igpu {
        gpus.extend(all.iter().filter(|d| d.kind == DeviceKind::IntegratedGpu).cloned());
    }
    gpus
}

pub(crate) fn raw_device(index: usize) -> Option<sys::ggml_backend_dev_t> {
    if let Some(i) = index.checked_sub(crate::rpc::RPC_INDEX_BASE) {
        return crate::rpc::raw_device(i);
    }
    // SAFETY: plain registry queries; the index is checked against the count.
    unsafe {
        if index >= sys::ggml_backend_dev_count() {
            return None;
        }
        let dev = sys::ggml_backend_dev_get(index);
        (!dev.is_null()).then_some(dev)
    }
}

pub(crate) fn device_info(index: usize) -> Option<Device> {
    let dev = raw_device(index)?;
    // SAFETY: `dev` is a live registry device; the strings it returns are owned
    // by the backend and copied at once; props is a plain out-struct.
    unsafe {
        let mut props: sys::ggml_backend_dev_props = std::mem::zeroed();
        sys::ggml_backend_dev_get_props(dev, &mut props);
        let rpc = index >= crate::rpc::RPC_INDEX_BASE;
        let kind = match sys::ggml_backend_dev_type(dev) {
            _ if rpc => DeviceKind::Rpc,
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accelerator,
            _ => return None,
        };
        let (mut free, mut total) = (0usize, 0usize);
        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        let backend = if reg.is_null() { String::new() } else { string_from_ptr(sys::ggml_backend_reg_name(reg)) };
        let device_id = (!props.device_id.is_null()).then(|| string_from_ptr(props.device_id));
        Some(Device {
            index,
            name: string_from_ptr(sys::ggml_backend_dev_name(dev)),
            description: string_from_ptr(sys::ggml_backend_dev_description(dev)),
            backend,
            kind,
            device_id,
            memory_free: free as u64,
            memory_total: total as u64,
        })
    }
}

/// True when the device's backend provides split buffers (needed by
/// [`SplitMode::Row`](crate::SplitMode::Row)). CUDA and HIP in this llama.cpp do not.
pub(crate) fn supports_split_buffers(index: usize) -> bool {
    let Some(dev) = raw_device(index) else { return false };
    // SAFETY: live registry device; the proc-address lookup takes a static
    // NUL-terminated name and only returns a pointer, which is not called.
    unsafe {
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        !reg.is_null()
            && !sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_split_buffer_type".as_ptr()).is_null()
    }
}
