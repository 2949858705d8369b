//! The cost model behind `Backend::Auto`: whether a host-slice call runs
//! faster on the GPU (upload, kernels, readback, fixed latency) or on the CPU
//! (memory-bound kernels on every core). A pure function of the adapter, the
//! shape and the constants, so every branch is unit-tested without a GPU.
//!
//! The context fills in what it can measure before it asks: the adapter's
//! upload rate (an 8 MiB timed upload, once per device), this machine's CPU
//! rates (a probe of ~10 ms and 16 MiB, once per process), the passes the
//! call's GPU plan makes over its input, and the pipelines it would still
//! have to compile. Only under `Auto` with a hardware GPU: elsewhere nothing
//! is probed.

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
    /// Compiling one pipeline the call needs that the device has not built
    /// yet (first use of a measure and form: pipelines are cached per device).
    pub gpu_pipeline_s: f64,
    /// Host → device bandwidth measured on this adapter (a short timed
    /// upload at the first placement, cached in the context); `None`: the
    /// class's constant above.
    pub upload_measured: Option<f64>,
    /// Input bytes per second the whole CPU backend reached on this machine
    /// (probabilities, logits), measured once per process by a probe of
    /// ≤ 32 MiB; `None`: from the per-thread constants above.
    pub cpu_measured: Option<(f64, f64)>,
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
            gpu_pipeline_s: 20e-3,
            upload_measured: None,
            cpu_measured: None,
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
    /// Passes the GPU kernels make over the input (2 where renormalised log
    /// forms need their sums first).
    pub passes: u32,
    /// Pipelines the call needs that the device has not compiled yet.
    pub new_pipelines: u32,
}

impl Work {
    /// One pass, every pipeline built: what [`Context::placement`](crate::Context::placement) asks about.
    pub fn new(bytes: u64, rows: u64, logits: bool, threads: usize) -> Work {
        Work {
            bytes,
            rows,
            logits,
            threads,
            passes: 1,
            new_pipelines: 0,
        }
    }
}

/// Predicted seconds on the GPU, or `None` when `Auto` must not use it.
pub fn gpu_seconds(adapter: AdapterClass, w: &Work, m: &CostModel) -> Option<f64> {
    let (upload, device) = match adapter {
        AdapterClass::Software => return None,
        AdapterClass::Discrete => (m.upload_discrete, m.device_discrete),
        AdapterClass::Integrated => (m.upload_integrated, m.device_integrated),
    };
    let upload = m.upload_measured.unwrap_or(upload);
    let bytes = w.bytes as f64;
    Some(
        m.gpu_fixed_s
            + w.new_pipelines as f64 * m.gpu_pipeline_s
            + bytes / upload
            + w.passes.max(1) as f64 * bytes / device
            + (w.rows * 16) as f64 / upload,
    )
}

/// Predicted seconds on the CPU.
pub fn cpu_seconds(w: &Work, m: &CostModel) -> f64 {
    let rate = match (m.cpu_measured, w.logits) {
        (Some((probs, _)), false) => probs,
        (Some((_, logits)), true) => logits,
        (None, logits) => {
            let per_thread = if logits {
                m.cpu_thread_logits
            } else {
                m.cpu_thread
            };
            (per_thread * w.threads.max(1) as f64).min(m.cpu_memory)
        }
    };
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
        Work::new(rows * cols * 4 * operands, rows, logits, threads)
    }

    #[test]
    fn measured_rates_replace_the_constants() {
        let m = CostModel::default();
        let w = work(4096, 4096, 2, false, 2);
        // a slow measured link (a PCIe x4 eGPU) moves the call to the CPU
        assert!(prefer_gpu(
            AdapterClass::Discrete,
            &work(4096, 65536, 1, true, 2),
            &m
        ));
        let slow = CostModel {
            upload_measured: Some(1e9),
            ..m
        };
        assert!(!prefer_gpu(
            AdapterClass::Discrete,
            &work(4096, 65536, 1, true, 2),
            &slow
        ));
        let g = gpu_seconds(AdapterClass::Discrete, &w, &slow).unwrap();
        let expect = slow.gpu_fixed_s
            + w.bytes as f64 / 1e9
            + w.bytes as f64 / slow.device_discrete
            + (w.rows * 16) as f64 / 1e9;
        assert!((g - expect).abs() < 1e-12);
        // the measured CPU rate replaces threads × per-thread, per input kind
        let fast_cpu = CostModel {
            cpu_measured: Some((50e9, 1e9)),
            ..m
        };
        let c = cpu_seconds(&w, &fast_cpu);
        assert!((c - (fast_cpu.cpu_fixed_s + w.bytes as f64 / 50e9)).abs() < 1e-12);
        let wl = work(4096, 4096, 1, true, 2);
        let cl = cpu_seconds(&wl, &fast_cpu);
        assert!((cl - (fast_cpu.cpu_fixed_s + wl.bytes as f64 / 1e9)).abs() < 1e-12);
    }

    #[test]
    fn two_passes_and_first_compiles_cost_on_the_gpu_only() {
        let m = CostModel::default();
        let one = work(1024, 4096, 1, true, 2);
        let two = Work { passes: 2, ..one };
        let fresh = Work {
            new_pipelines: 3,
            ..one
        };
        let g1 = gpu_seconds(AdapterClass::Integrated, &one, &m).unwrap();
        let g2 = gpu_seconds(AdapterClass::Integrated, &two, &m).unwrap();
        let g3 = gpu_seconds(AdapterClass::Integrated, &fresh, &m).unwrap();
        assert!((g2 - g1 - one.bytes as f64 / m.device_integrated).abs() < 1e-12);
        assert!((g3 - g1 - 3.0 * m.gpu_pipeline_s).abs() < 1e-12);
        assert_eq!(cpu_seconds(&one, &m), cpu_seconds(&two, &m));
        assert_eq!(cpu_seconds(&one, &m), cpu_seconds(&fresh, &m));
        // a first call that would win on the GPU stays on the CPU while its
        // pipelines would still have to be compiled
        let mid = work(256, 16384, 1, true, 2);
        assert!(prefer_gpu(AdapterClass::Discrete, &mid, &m));
        let mid_fresh = Work {
            new_pipelines: 2,
            ..mid
        };
        assert!(!prefer_gpu(AdapterClass::Discrete, &mid_fresh, &m));
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
