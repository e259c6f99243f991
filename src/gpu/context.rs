//! The GPU context: adapter and device policy, error capture, and the pipelines (built once).

use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::kernel::Kernels;

/// A wgpu device and queue with everything the layer needs to run on it.
///
/// Build it once and share it: [`Gpu::new`] picks an adapter the way wgpu's tools do
/// (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`, else the high-performance default),
/// [`Gpu::from_device`] wraps a device the caller already has (a renderer's, an ML framework's).
/// Cloning is cheap (the device is reference-counted).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    errors: Arc<Mutex<Vec<String>>>,
    kernels: Arc<OnceLock<Arc<Kernels>>>,
    /// The GEMM variant chosen per shape class on this device (`gpu::stages::gemm::choose`).
    gemm_choices: Arc<Mutex<crate::gpu::stages::gemm::Choices>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.describe()).finish()
    }
}

/// The backends tried when `WGPU_BACKEND` is not set: the native ones this crate targets.
#[cfg(not(target_arch = "wasm32"))]
const NATIVE: wgpu::Backends = wgpu::Backends::VULKAN.union(wgpu::Backends::METAL).union(wgpu::Backends::DX12);
/// In the browser there is one: its WebGPU.
#[cfg(target_arch = "wasm32")]
const NATIVE: wgpu::Backends = wgpu::Backends::BROWSER_WEBGPU;

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::from_env().unwrap_or(NATIVE),
        flags: wgpu::InstanceFlags::from_env_or_default(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// Every adapter wgpu sees with the current environment (`WGPU_BACKEND` honoured). Not in the
/// browser, which offers one adapter, through [`Gpu::new_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::from_env().unwrap_or(NATIVE)))
        .into_iter()
        .map(|a| a.get_info())
        .collect()
}

/// The browser's own words for its adapter (`GPUAdapterInfo`'s vendor, architecture, device and
/// description), which wgpu leaves out of its `AdapterInfo` but for the description, often
/// empty (Chromium's SwiftShader says only "google", "swiftshader").
#[cfg(target_arch = "wasm32")]
async fn browser_adapter_name() -> Option<String> {
    use js_sys::{Function, Promise, Reflect};
    use wasm_bindgen::JsCast;
    let get = |on: &wasm_bindgen::JsValue, key: &str| Reflect::get(on, &key.into()).ok().filter(|v| !v.is_undefined());
    let gpu = get(&get(&js_sys::global(), "navigator")?, "gpu")?;
    let request: Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
    let promise: Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok().filter(|a| !a.is_null())?;
    let info = get(&adapter, "info")?;
    let words: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|key| get(&info, key)?.as_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// One line naming an adapter: name, backend, device type and driver.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}{})",
        info.name,
        info.backend,
        info.device_type,
        if driver.is_empty() { String::new() } else { format!(", {driver}") }
    )
}

impl Gpu {
    /// Picks an adapter and creates a device, blocking.
    ///
    /// Honours `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`), `WGPU_ADAPTER_NAME` (a
    /// substring of the adapter's name) and `WGPU_POWER_PREF`; otherwise asks for the
    /// high-performance adapter among Vulkan, Metal and DX12. Requests the adapter's own limits,
    /// so large buffers work where the hardware allows them. Not in the browser, where nothing
    /// may block: use [`Gpu::new_async`] there.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Gpu> {
        pollster::block_on(Self::new_async())
    }

    /// [`Gpu::new`] as a future; the only way to create a context in the browser (feature
    /// `webgpu`), where it asks for the browser's WebGPU adapter.
    pub async fn new_async() -> Result<Gpu> {
        #[cfg(target_arch = "wasm32")]
        if !wgpu::util::is_browser_webgpu_supported().await {
            return Err(Error::NoAdapter(
                "this browser has no WebGPU (navigator.gpu is missing or offers no adapter); use a \
                 browser with WebGPU on (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), \
                 or start Chromium with --enable-unsafe-webgpu"
                    .into(),
            ));
        }
        let instance = instance();
        let adapter = if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
            // wgpu's own helper panics when nothing matches; a message is more useful.
            let wanted = name.to_lowercase();
            let adapters = instance.enumerate_adapters(wgpu::Backends::from_env().unwrap_or(NATIVE)).await;
            let seen: Vec<String> = adapters.iter().map(|a| describe_adapter(&a.get_info())).collect();
            adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(|| {
                Error::NoAdapter(format!(
                    "no adapter name contains WGPU_ADAPTER_NAME={name:?}; adapters seen: {seen:?}"
                ))
            })?
        } else {
            instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(e.to_string()))?
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("contextual-attention"),
                // Timestamps time the compute pass where the adapter has them; nothing else is needed.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(Error::RequestDevice)?;
        // The device is ours: errors outside the layer's own error scopes (which wgpu would
        // otherwise answer with a panic) and the loss of the device are recorded and reported
        // by the next call.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(format!("device lost ({reason:?}): {msg}"));
        });
        let info = adapter.get_info();
        #[cfg(target_arch = "wasm32")]
        let info = match info.name.is_empty() {
            true => {
                let name = browser_adapter_name().await.unwrap_or_else(|| "the browser's WebGPU adapter".into());
                wgpu::AdapterInfo { name, ..info }
            }
            false => info,
        };
        Ok(Gpu { device, queue, info, errors, kernels: Arc::default(), gemm_choices: Arc::default() })
    }

    /// Wraps a device and queue the caller already has, so that the layer shares it with a
    /// renderer or an ML framework. `info` names the adapter in reports
    /// (`adapter.get_info()`). The caller's error handler and device-lost callback are left as
    /// they are: the layer catches its own errors with error scopes around its work.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Gpu {
        Gpu { device, queue, info, errors: Arc::default(), kernels: Arc::default(), gemm_choices: Arc::default() }
    }

    /// The adapter's description from wgpu.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// One line naming the adapter: name, backend, device type and driver.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The largest storage binding the device allows, in bytes.
    pub fn max_binding(&self) -> u64 {
        let limits = self.device.limits();
        limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
    }

    /// The pipelines, shared by every layer on this context (each compiled on its first use).
    // In the browser wgpu's handles are neither Send nor Sync, and nothing crosses threads.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub(crate) fn kernels(&self) -> Arc<Kernels> {
        self.kernels.get_or_init(|| Arc::new(Kernels::new(&self.device))).clone()
    }

    /// The GEMM variants chosen so far on this device.
    pub(crate) fn gemm_choices(&self) -> std::sync::MutexGuard<'_, crate::gpu::stages::gemm::Choices> {
        self.gemm_choices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` (device calls on this thread) inside error scopes, and turns any
    /// validation, out-of-memory or internal error it caused, or one recorded earlier, into an
    /// [`Error::Gpu`].
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn checked<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let scopes = self.push_error_scopes();
        let result = work();
        // Scopes are popped innermost first.
        let mut caught: Vec<String> = Vec::new();
        for scope in scopes.into_iter().rev() {
            if let Some(e) = pollster::block_on(scope.pop()) {
                caught.push(e.to_string());
            }
        }
        self.take_errors()?;
        if !caught.is_empty() {
            return Err(Error::Gpu(caught.join("; ")));
        }
        result
    }

    /// In the browser a scope's error arrives only after control returns to the page, so
    /// `checked` cannot wait for it: the scopes are popped in the background into the error
    /// sink, and the error is reported by the next call that reads results back (every
    /// readback calls [`take_errors`](Self::take_errors) after it resolves, which is after the
    /// scopes were answered: the browser answers in submission order).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn checked<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        self.take_errors()?;
        let scopes = self.push_error_scopes();
        let result = work();
        // Popped now, innermost first (the browser's scopes are a stack, and a nested call
        // pushes its own); only the answers are awaited later.
        let answers: Vec<_> = scopes.into_iter().rev().map(|scope| scope.pop()).collect();
        let sink = self.errors.clone();
        wasm_bindgen_futures::spawn_local(async move {
            for answer in answers {
                if let Some(e) = answer.await {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                }
            }
        });
        result
    }

    /// The scopes `checked` runs its work in: validation, out of memory, internal (to be popped
    /// in reverse).
    fn push_error_scopes(&self) -> [wgpu::ErrorScopeGuard; 3] {
        [wgpu::ErrorFilter::Validation, wgpu::ErrorFilter::OutOfMemory, wgpu::ErrorFilter::Internal]
            .map(|filter| self.device.push_error_scope(filter))
    }

    /// Turns GPU errors reported since the last call into an [`Error::Gpu`].
    pub(crate) fn take_errors(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            Ok(())
        } else {
            let msg = errors.join("; ");
            errors.clear();
            Err(Error::Gpu(msg))
        }
    }

    /// Blocks until `submission` has finished and its callbacks have run. In the browser `poll`
    /// does nothing (callbacks run when control returns to the page): callers there must not
    /// rely on it.
    pub(crate) fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        Ok(())
    }
}
