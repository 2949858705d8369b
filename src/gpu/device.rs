//! Adapter choice and device creation.

use crate::cost::AdapterClass;
use crate::error::{Error, Result};

/// Whether an adapter is real hardware (discrete, integrated or virtual GPU),
/// as opposed to a software rasteriser such as llvmpipe/lavapipe: one
/// classification, the cost model's.
fn is_hardware(t: wgpu::DeviceType) -> bool {
    matches!(
        AdapterClass::of(t),
        AdapterClass::Discrete | AdapterClass::Integrated
    )
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The best adapter: hardware first; a software one only if `allow_software`.
pub(crate) fn pick_adapter(allow_software: bool) -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        // Vulkan, Metal, DX12: GL adds probing noise and no compute path we need
        desc.backends = wgpu::Backends::PRIMARY;
    }
    // report out-of-memory before the driver fails where the backend can
    // tell (Vulkan with VK_EXT_memory_budget, D3D12)
    desc.memory_budget_thresholds = wgpu::MemoryBudgetThresholds {
        for_resource_creation: Some(90),
        for_device_loss: None,
    };
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    // Compute needs storage buffers in compute shaders: skip adapters without them (GL ES 3.0).
    adapters.retain(|a| a.limits().max_storage_buffers_per_shader_stage >= 4);
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        // Vulkan first among equals: the best-tested path
        (
            rank(info.device_type),
            info.backend != wgpu::Backend::Vulkan,
        )
    });
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend)
        })
        .collect();
    adapters
        .into_iter()
        .find(|a| allow_software || is_hardware(a.get_info().device_type))
        .ok_or_else(|| {
            Error::NoAdapter(if names.is_empty() {
                "no adapter at all".into()
            } else {
                format!("only software adapters: {}", names.join(", "))
            })
        })
}

/// Whether host and device share memory: an integrated GPU or a software
/// adapter (a virtual GPU may not).
pub(crate) fn shares_memory(t: wgpu::DeviceType) -> bool {
    matches!(t, wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::Cpu)
}

/// A device with the adapter's own limits (large bindings) and two optional
/// features where the adapter has them: `MAPPABLE_PRIMARY_BUFFERS` where host
/// and device share memory (inputs are then written into the storage buffers
/// themselves; on a discrete GPU such buffers would live in slow host-visible
/// memory), and `SUBGROUP` if `subgroups` (the reductions' butterflies). `MemoryHints::MemoryUsage`: with the default (`Performance`)
/// buffers are carved from 128-256 MiB blocks, and one buffer kept in the
/// pool keeps its whole block resident.
pub(crate) fn request_device(
    adapter: &wgpu::Adapter,
    subgroups: bool,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let mut wanted = wgpu::Features::empty();
    if shares_memory(adapter.get_info().device_type) {
        wanted |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
    }
    if subgroups {
        wanted |= wgpu::Features::SUBGROUP;
    }
    let features = adapter.features() & wanted;
    let desc = wgpu::DeviceDescriptor {
        label: Some("kullback"),
        required_features: features,
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    };
    Ok(pollster::block_on(adapter.request_device(&desc))?)
}
