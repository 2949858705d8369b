//! Shader modules, bind-group layouts and pipelines: built once per device and
//! cached (pipelines on first use, keyed by their override constants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::widen::Dtype;

/// Override constants of the rows kernel (see the top of shaders/rows.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowKey {
    pub merge: bool,
    /// The inputs are read four values per load (the vec4 module).
    pub vec4: bool,
    /// How p and q are stored (a half one picks a module of its own).
    pub dtypes: (Dtype, Dtype),
    pub measure: u32,
    pub p_form: u32,
    pub q_form: u32,
    pub has_q: bool,
    pub p_online: bool,
    pub q_online: bool,
    pub normalized: bool,
    pub p_norm: bool,
    pub q_norm: bool,
    pub renorm: bool,
    pub check_sums: bool,
}

/// Everything built on one device.
#[derive(Debug)]
pub(crate) struct Pipelines {
    rows_module: wgpu::ShaderModule,
    rows_vec4_module: wgpu::ShaderModule,
    /// Modules for operands stored as half, built on first use (with
    /// subgroup reductions where `subgroups` says).
    half_modules: Mutex<HashMap<(bool, Dtype, Dtype), wgpu::ShaderModule>>,
    rows_layout: wgpu::PipelineLayout,
    pub(crate) rows_bgl: wgpu::BindGroupLayout,
    pub(crate) total_bgl: wgpu::BindGroupLayout,
    pub(crate) total: wgpu::ComputePipeline,
    /// The reductions use subgroup operations (shaders/subgroups.wgsl).
    pub(crate) subgroups: bool,
    cache: Mutex<HashMap<RowKey, Arc<wgpu::ComputePipeline>>>,
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Pipelines {
    /// The pipelines of `device`: built once per context; clones of a
    /// context share them. (A registry keyed by `wgpu::Device` is not safe:
    /// its equality compares ids that repeat across wgpu instances.)
    /// `subgroups`: the device has `Features::SUBGROUP` and the reductions use it.
    pub(crate) fn for_device(device: &wgpu::Device, subgroups: bool) -> Result<Arc<Pipelines>> {
        // our shaders failing validation is our bug: report it, never panic in
        // the caller's uncaptured-error handler
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let p = Arc::new(Pipelines::new(device, subgroups));
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!("building kullback's pipelines: {e}")));
        }
        Ok(p)
    }

    fn new(device: &wgpu::Device, subgroups: bool) -> Pipelines {
        use crate::gpu::wgsl;
        let (rows, rows_vec4, total) = if subgroups {
            (
                &wgsl::ROWS_SUBGROUPS,
                &wgsl::ROWS_VEC4_SUBGROUPS,
                &wgsl::TOTAL_SUBGROUPS,
            )
        } else {
            (&wgsl::ROWS, &wgsl::ROWS_VEC4, &wgsl::TOTAL)
        };
        let rows_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kullback.rows"),
            source: wgpu::ShaderSource::Wgsl(rows.as_str().into()),
        });
        let rows_vec4_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kullback.rows.vec4"),
            source: wgpu::ShaderSource::Wgsl(rows_vec4.as_str().into()),
        });
        let total_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kullback.total"),
            source: wgpu::ShaderSource::Wgsl(total.as_str().into()),
        });
        // p, q, partial states, records, params: four storage buffers, the
        // budget of Limits::downlevel_defaults()
        let rows_bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("kullback.rows"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, false),
                storage(3, false),
                uniform(4),
            ],
        });
        let total_bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("kullback.total"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, false),
                storage(3, false),
                uniform(4),
            ],
        });
        let rows_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("kullback.rows"),
            bind_group_layouts: &[Some(&rows_bgl)],
            immediate_size: 0,
        });
        let total_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("kullback.total"),
            bind_group_layouts: &[Some(&total_bgl)],
            immediate_size: 0,
        });
        let total = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("kullback.total"),
            layout: Some(&total_layout),
            module: &total_module,
            entry_point: Some("total_main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Pipelines {
            rows_module,
            rows_vec4_module,
            half_modules: Mutex::new(HashMap::new()),
            rows_layout,
            rows_bgl,
            total_bgl,
            total,
            subgroups,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The rows pipeline for `key`, built on first use (in the caller's error
    /// scope, if any: the host path has one).
    /// How many distinct `keys` are not built yet.
    pub(crate) fn uncached(&self, keys: impl Iterator<Item = RowKey>) -> u32 {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let new: std::collections::HashSet<RowKey> =
            keys.filter(|k| !cache.contains_key(k)).collect();
        new.len() as u32
    }

    pub(crate) fn rows(&self, device: &wgpu::Device, key: RowKey) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        let constants = [
            ("MEASURE", key.measure as f64),
            ("P_FORM", key.p_form as f64),
            ("Q_FORM", key.q_form as f64),
            ("HAS_Q", b(key.has_q)),
            ("P_ONLINE", b(key.p_online)),
            ("Q_ONLINE", b(key.q_online)),
            ("NORMALIZED", b(key.normalized)),
            ("P_NORM", b(key.p_norm)),
            ("Q_NORM", b(key.q_norm)),
            ("RENORM", b(key.renorm)),
            ("CHECK_SUMS", b(key.check_sums)),
        ];
        let module = if key.dtypes.0.is_half() || key.dtypes.1.is_half() {
            let mut m = self.half_modules.lock().unwrap_or_else(|e| e.into_inner());
            m.entry((key.vec4, key.dtypes.0, key.dtypes.1))
                .or_insert_with(|| {
                    let vec = if key.vec4 { 4 } else { 1 };
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some("kullback.rows.half"),
                        source: wgpu::ShaderSource::Wgsl(
                            crate::gpu::wgsl::rows(vec, key.dtypes, self.subgroups).into(),
                        ),
                    })
                })
                .clone()
        } else if key.vec4 {
            self.rows_vec4_module.clone()
        } else {
            self.rows_module.clone()
        };
        let pipeline = Arc::new(
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(if key.merge {
                    "kullback.rows.merge"
                } else {
                    "kullback.rows"
                }),
                layout: Some(&self.rows_layout),
                module: &module,
                entry_point: Some(if key.merge { "merge_main" } else { "rows_main" }),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            }),
        );
        cache.insert(key, pipeline.clone());
        pipeline
    }
}
