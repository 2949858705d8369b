//! The cost model behind `Backend::Auto`: whether a host-slice call runs
//! faster on the GPU (upload, kernels, readback, fixed latency) or on the CPU
//! (memory-bound kernels on every core). A pure function of the adapter, the
//! shape and the constants, so every branch is unit-tested without a GPU.

/// What `Auto` knows about the GPU it could use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    /// A software rasteriser (llvmpipe/lavapipe, `DeviceType::Cpu`): never chosen by `Auto`.
    Software,
    /// A discrete GPU: inputs cross PCIe, the kernels read device memory.
    Discrete,
    /// An integrated or virtual GPU: a copy in shared memory, slower kernels.
    Integrated,
}

impl AdapterClass {
    pub(crate) fn of(t: wgpu::DeviceType) -> AdapterClass {
        match t {
            wgpu::DeviceType::DiscreteGpu => AdapterClass::Discrete,
            wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu => {
                AdapterClass::Integrated
            }
            wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => AdapterClass::Software,
        }
    }
}

/// Constants of the model (seconds, bytes per second). The defaults are
/// deliberately round: the choice only matters near the break-even point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Fixed cost of a GPU call: buffer setup, submit, map, wake-up.
    pub gpu_fixed_s: f64,
    /// Host → device copy bandwidth (discrete: PCIe).
    pub upload_discrete: f64,
    /// Host → device copy bandwidth (integrated: a copy in shared memory).
    pub upload_integrated: f64,
    /// Kernel read bandwidth (discrete).
    pub device_discrete: f64,
    /// Kernel read bandwidth (integrated).
    pub device_integrated: f64,
    /// Fixed cost of a CPU call (threads).
    pub cpu_fixed_s: f64,
    /// Host memory read bandwidth the CPU kernels can reach in all.
    pub cpu_memory: f64,
    /// Input bytes one CPU thread turns into terms per second (logs included).
    pub cpu_thread: f64,
    /// The same for logits (an exp per element on top).
    pub cpu_thread_logits: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            gpu_fixed_s: 150e-6,
            upload_discrete: 12e9,
            upload_integrated: 20e9,
            device_discrete: 1000e9,
            device_integrated: 60e9,
            cpu_fixed_s: 20e-6,
            cpu_memory: 20e9,
            cpu_thread: 6e9,
            cpu_thread_logits: 3e9,
        }
    }
}

/// The work of one call, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// Bytes of input the kernels read (both arguments).
    pub bytes: u64,
    /// Output rows (records read back).
    pub rows: u64,
    /// Whether an argument is logits (or log-probabilities being renormalised).
    pub logits: bool,
    /// CPU threads available.
    pub threads: usize,
}

/// Predicted seconds on the GPU, or `None` when `Auto` must not use it.
pub fn gpu_seconds(adapter: AdapterClass, w: &Work, m: &CostModel) -> Option<f64> {
    let (upload, device) = match adapter {
        AdapterClass::Software => return None,
        AdapterClass::Discrete => (m.upload_discrete, m.device_discrete),
        AdapterClass::Integrated => (m.upload_integrated, m.device_integrated),
    };
    let bytes = w.bytes as f64;
    Some(m.gpu_fixed_s + bytes / upload + bytes / device + (w.rows * 16) as f64 / upload)
}

/// Predicted seconds on the CPU.
pub fn cpu_seconds(w: &Work, m: &CostModel) -> f64 {
    let per_thread = if w.logits {
        m.cpu_thread_logits
    } else {
        m.cpu_thread
    };
    let rate = (per_thread * w.threads.max(1) as f64).min(m.cpu_memory);
    m.cpu_fixed_s + w.bytes as f64 / rate
}

/// `true` when `Auto` should run this call on the GPU.
pub fn prefer_gpu(adapter: AdapterClass, w: &Work, m: &CostModel) -> bool {
    gpu_seconds(adapter, w, m).is_some_and(|g| g < cpu_seconds(w, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(rows: u64, cols: u64, operands: u64, logits: bool, threads: usize) -> Work {
        Work {
            bytes: rows * cols * 4 * operands,
            rows,
            logits,
            threads,
        }
    }

    #[test]
    fn no_or_software_adapter_is_never_chosen() {
        let m = CostModel::default();
        let big = work(16384, 16384, 2, true, 1);
        assert!(!prefer_gpu(AdapterClass::Software, &big, &m));
        assert!(!prefer_gpu(AdapterClass::Software, &big, &m));
    }

    #[test]
    fn small_work_stays_on_the_cpu() {
        let m = CostModel::default();
        for a in [AdapterClass::Discrete, AdapterClass::Integrated] {
            assert!(!prefer_gpu(a, &work(1, 1000, 2, false, 2), &m));
            assert!(!prefer_gpu(a, &work(1, 1000, 1, true, 2), &m));
        }
    }

    #[test]
    fn large_work_goes_to_a_discrete_gpu_when_the_cpu_is_compute_bound() {
        let m = CostModel::default();
        // 2 cores on logits: 6 GB/s of terms, below PCIe
        assert!(prefer_gpu(
            AdapterClass::Discrete,
            &work(4096, 65536, 1, true, 2),
            &m
        ));
        assert!(prefer_gpu(
            AdapterClass::Discrete,
            &work(16384, 16384, 2, false, 1),
            &m
        ));
    }

    #[test]
    fn a_cpu_at_memory_speed_beats_copying_over_pcie() {
        let m = CostModel::default();
        // 16 cores reach host memory bandwidth (20 GB/s) > PCIe (12 GB/s)
        assert!(!prefer_gpu(
            AdapterClass::Discrete,
            &work(16384, 16384, 2, false, 16),
            &m
        ));
    }

    #[test]
    fn integrated_gpu_and_break_even() {
        let m = CostModel::default();
        assert!(prefer_gpu(
            AdapterClass::Integrated,
            &work(4096, 65536, 1, true, 1),
            &m
        ));
        assert!(!prefer_gpu(
            AdapterClass::Integrated,
            &work(64, 1000, 2, false, 2),
            &m
        ));
        // the fixed latency decides at the break-even point
        let w = work(256, 1024, 2, false, 2);
        let g = gpu_seconds(AdapterClass::Discrete, &w, &m).unwrap();
        assert!(g > m.gpu_fixed_s && cpu_seconds(&w, &m) < g);
    }
}
