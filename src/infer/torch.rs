//! libtorch through `tch`: TorchScript modules on the CPU or a CUDA device.
//!
//! Every tensor call uses the fallible `f_` form: a bad model or input is
//! an error for the upload, never a panic in a worker.

use std::io::Cursor;
use std::sync::Arc;

use tch::{CModule, Device, Kind, TchError, Tensor};

use super::model::{Engine, Model, ModelError, Pixels};
use crate::config::{InferConfig, InferDevice, Precision};

fn err(e: TchError) -> ModelError {
    let message = e.to_string();
    // Out of memory clears when other batches finish; anything else from a
    // model is a property of the model or the input.
    let retriable = message.contains("out of memory");
    ModelError { message, retriable }
}

/// libtorch, configured once per process.
#[derive(Debug)]
pub struct TchEngine {
    device: Device,
    /// fp32 or bf16 (never `Auto`: decided at start).
    precision: Precision,
}

/// Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX), by the
/// flags Linux reports; elsewhere bf16 is emulated and slower than fp32.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
        s.lines()
            .filter(|l| l.starts_with("flags"))
            .take(1)
            .any(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
    })
}

impl TchEngine {
    /// Picks the device and sets the intra-op thread count (process-wide).
    pub fn new(cfg: &InferConfig) -> Result<Self, ModelError> {
        let device = match cfg.device {
            InferDevice::Cpu => Device::Cpu,
            InferDevice::Auto => Device::cuda_if_available(),
            InferDevice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            InferDevice::Cuda => {
                return Err(ModelError::permanent(
                    "infer.device = \"cuda\" but libtorch sees no CUDA device",
                ));
            }
        };
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            cfg.threads
        };
        tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
        // bf16 on a CPU that has it (each model in the fastest form that
        // keeps the quality bound: `in_bf16`); a GPU runs fp32.
        let precision = match (cfg.precision, device) {
            (_, Device::Cuda(_)) | (Precision::Fp32, _) => Precision::Fp32,
            (Precision::Bf16, _) => Precision::Bf16,
            (Precision::Auto, _) if cpu_has_bf16() => Precision::Bf16,
            (Precision::Auto, _) => Precision::Fp32,
        };
        let engine = Self { device, precision };
        tracing::info!(
            device = %engine.device(),
            precision = precision.as_str(),
            threads,
            "model engine: libtorch"
        );
        crate::telemetry::emit::infer_engine(&engine.device(), precision.as_str());
        Ok(engine)
    }
}

impl TchEngine {
    /// A module read from `bytes`, in eval mode, run in float32.
    fn module(&self, bytes: &[u8]) -> Result<TchModel, ModelError> {
        let mut module = CModule::load_data_on_device(&mut Cursor::new(bytes), self.device)
            .map_err(|e| ModelError::permanent(format!("not a TorchScript module: {e}")))?;
        module.f_set_eval().map_err(err)?;
        Ok(TchModel {
            module,
            device: self.device,
            mode: Mode::Fp32,
        })
    }

    /// The fastest bf16 form of a model that keeps its output within
    /// [`BF16_MEAN`] and [`BF16_MAX`] of float32 on a photo-like probe:
    /// first its weights converted to bfloat16 (no casts between layers:
    /// 1.4x to 2x faster than autocast at 1024² on the transformer),
    /// then bf16 autocast on the float32 weights, else float32. A model
    /// whose code fixes float32 (a convolution of float32 input with the
    /// converted weights fails) or whose arithmetic bf16 cannot carry
    /// takes the next form down; the log says which form each model runs.
    fn in_bf16(&self, bytes: &[u8], mut model: TchModel) -> Result<TchModel, ModelError> {
        let probe = Probe::new();
        let reference = model.run(probe.pixels())?;
        let mut tried = Vec::new();
        // Only a model with such weights is loaded a second time.
        if model.matrix_layers()?.is_empty() {
            tried.push(format!(
                "{}: no convolution or linear weights",
                Mode::Bf16Weights.as_str()
            ));
        } else {
            let weights = self.module(bytes).and_then(|mut m| {
                m.weights_to_bf16()?;
                m.check_contract()?;
                Ok(m)
            });
            match weights {
                Ok(m) => {
                    if let Some(d) = probe.judge(&reference, &m, &mut tried) {
                        d.log(m.mode, &tried);
                        return Ok(m);
                    }
                }
                Err(e) => tried.push(format!("{}: {}", Mode::Bf16Weights.as_str(), e.message)),
            }
        }
        model.mode = Mode::Autocast;
        if let Some(d) = probe.judge(&reference, &model, &mut tried) {
            d.log(model.mode, &tried);
            return Ok(model);
        }
        model.mode = Mode::Fp32;
        tracing::info!(
            precision = model.mode.as_str(),
            tried = tried.join("; "),
            "model probed in bf16: past the bound, it runs in fp32"
        );
        Ok(model)
    }
}

impl Engine for TchEngine {
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let mut model = self.module(bytes)?;
        model.check_contract()?;
        if self.precision == Precision::Bf16 {
            model = self.in_bf16(bytes, model)?;
        }
        Ok(Arc::new(model))
    }

    fn device(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        }
    }

    fn precision(&self) -> &'static str {
        self.precision.as_str()
    }

    fn gemm_gflops(&self, n: usize, bf16: bool) -> Result<f64, ModelError> {
        let _guard = tch::no_grad_guard();
        let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
        let n = n as i64;
        let a = Tensor::f_randn([n, n], (kind, self.device)).map_err(err)?;
        let b = Tensor::f_randn([n, n], (kind, self.device)).map_err(err)?;
        let mut out = a.f_matmul(&b).map_err(err)?;
        // Enough products for about a second at the slower (fp32) rate.
        let mut reps = 0u32;
        let t = std::time::Instant::now();
        while reps < 3 || t.elapsed().as_secs_f64() < 1.0 {
            out = a.f_matmul(&b).map_err(err)?;
            reps += 1;
        }
        // Waits for a device to finish, and keeps the result alive.
        let _ = out
            .f_sum(kind)
            .and_then(|s| s.f_double_value(&[]))
            .map_err(err)?;
        let secs = t.elapsed().as_secs_f64();
        Ok(2.0 * (n as f64).powi(3) * f64::from(reps) / secs / 1e9)
    }
}

/// How a loaded model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Float32 throughout.
    Fp32,
    /// Under CPU autocast to bfloat16, on float32 weights.
    Autocast,
    /// Its weights converted to bfloat16 (the input stays float32, as the
    /// contract says; the model's code converts it).
    Bf16Weights,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Fp32 => "fp32",
            Mode::Autocast => "bf16 autocast",
            Mode::Bf16Weights => "bf16 weights",
        }
    }
}

/// One loaded TorchScript module.
#[derive(Debug)]
pub struct TchModel {
    module: CModule,
    device: Device,
    mode: Mode,
}

impl TchModel {
    /// Converts the parameters of the layers that multiply matrices
    /// (convolutions, linear layers: those whose `weight` has two or more
    /// dimensions, with their biases) to bfloat16 in place. Normalizations
    /// keep their float32 scale and shift (libtorch applies them to bf16
    /// activations in float32; on the transformer this halved the largest
    /// difference to fp32 against converting everything), and buffers (a
    /// filter's kernels and lookup tables) stay as they are. A module with
    /// no such layer has nothing to convert.
    fn weights_to_bf16(&mut self) -> Result<(), ModelError> {
        let matrices = self.matrix_layers()?;
        let mut converted = 0usize;
        for (name, mut p) in self.module.named_parameters().map_err(err)? {
            if p.is_floating_point() && matrices.contains(layer_of(&name)) {
                let b = p.f_to_kind(Kind::BFloat16).map_err(err)?;
                p.f_set_data(&b).map_err(err)?;
                converted += 1;
            }
        }
        if converted == 0 {
            return Err(ModelError::permanent("no convolution or linear weights"));
        }
        self.mode = Mode::Bf16Weights;
        Ok(())
    }

    /// The layers whose `weight` has two or more dimensions (convolutions,
    /// linear layers), by their path in the module.
    fn matrix_layers(&self) -> Result<std::collections::HashSet<String>, ModelError> {
        Ok(self
            .module
            .named_parameters()
            .map_err(err)?
            .iter()
            .filter(|(n, p)| n.rsplit('.').next() == Some("weight") && p.dim() >= 2)
            .map(|(n, _)| layer_of(n).to_owned())
            .collect())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        // Autocast is per thread: on for this call, on this thread.
        let _autocast = (self.mode == Mode::Autocast).then(torch_autocast::CpuAutocast::bf16);
        let y = self.module.forward_ts(&[x]).map_err(err)?;
        // Under autocast the last layer may answer bfloat16: the contract
        // (and the encoder) take float32.
        if y.kind() == Kind::Float {
            Ok(y)
        } else {
            y.f_to_kind(Kind::Float).map_err(err)
        }
    }

    /// The model contract (models/README.md): `N×3×H×W` float in
    /// `[0, 255]` in, the same shape and range out, for any size that is a
    /// multiple of 8, batch items independent of each other.
    fn check_contract(&self) -> Result<(), ModelError> {
        for (n, h, w) in [(1i64, 16i64, 24i64), (2, 32, 16)] {
            let x = Tensor::f_arange(n * 3 * h * w, (Kind::Float, self.device))
                .and_then(|t| t.f_remainder(256))
                .and_then(|t| t.f_view([n, 3, h, w]))
                .map_err(err)?;
            let y = self.forward(&x)?;
            if y.size() != [n, 3, h, w] {
                return Err(ModelError::permanent(format!(
                    "model contract: input {:?} gave output {:?} (must be the same shape)",
                    [n, 3, h, w],
                    y.size()
                )));
            }
            if y.kind() != Kind::Float {
                return Err(ModelError::permanent(format!(
                    "model contract: output is {:?}, must be float32",
                    y.kind()
                )));
            }
            let lo = y.f_min().and_then(|t| t.f_double_value(&[])).map_err(err)?;
            let hi = y.f_max().and_then(|t| t.f_double_value(&[])).map_err(err)?;
            // NaN fails both comparisons.
            if !(lo >= -0.5 && hi <= 255.5) {
                return Err(ModelError::permanent(format!(
                    "model contract: output values span [{lo}, {hi}], must lie in [0, 255]"
                )));
            }
        }
        Ok(())
    }
}

/// The most a bf16 output may differ from fp32 on the probe picture, in
/// 8-bit levels: on average, and at any pixel. A model past it in every
/// bf16 form runs in fp32 (fine edge filters: sketch).
const BF16_MEAN: f64 = 1.0;
const BF16_MAX: u8 = 8;

/// The layer a parameter belongs to: its path without the last part.
fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(l, _)| l)
}

/// The photo-like picture models are probed on in bf16.
struct Probe {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

/// How far a bf16 form's output is from float32's on the probe, in 8-bit
/// levels.
struct Diff {
    mean: f64,
    max: u8,
}

impl Probe {
    fn new() -> Self {
        let (width, height) = (256u32, 256u32);
        Self {
            width,
            height,
            data: crate::image::codec::test_pattern(width, height, 7).into_raw(),
        }
    }

    fn pixels(&self) -> Pixels<'_> {
        Pixels {
            n: 1,
            height: self.height,
            width: self.width,
            data: &self.data,
        }
    }

    /// The model's difference to `reference` when it keeps the bound;
    /// `None` (and why in `tried`) when it does not or fails to run: a
    /// failing form is passed over like one past the bound.
    fn judge(&self, reference: &[u8], model: &TchModel, tried: &mut Vec<String>) -> Option<Diff> {
        match self.diff(reference, model) {
            Ok(d) if d.keeps() => Some(d),
            Ok(d) => {
                tried.push(format!("{}: {d}", model.mode.as_str()));
                None
            }
            Err(e) => {
                tried.push(format!("{}: {}", model.mode.as_str(), e.message));
                None
            }
        }
    }

    fn diff(&self, reference: &[u8], model: &TchModel) -> Result<Diff, ModelError> {
        let out = model.run(self.pixels())?;
        let (mut sum, mut max) = (0u64, 0u8);
        for (a, b) in reference.iter().zip(&out) {
            let d = a.abs_diff(*b);
            sum += u64::from(d);
            max = max.max(d);
        }
        Ok(Diff {
            mean: sum as f64 / reference.len().max(1) as f64,
            max,
        })
    }
}

impl Diff {
    fn keeps(&self) -> bool {
        self.mean <= BF16_MEAN && self.max <= BF16_MAX
    }

    fn log(&self, mode: Mode, tried: &[String]) {
        tracing::info!(
            mean_diff = format!("{:.3}", self.mean),
            max_diff = self.max,
            precision = mode.as_str(),
            tried = tried.join("; "),
            "model probed in bf16"
        );
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mean {:.3}/255, max {}/255", self.mean, self.max)
    }
}

impl Model for TchModel {
    fn run(&self, p: Pixels<'_>) -> Result<Vec<u8>, ModelError> {
        let (n, h, w) = (p.n as i64, i64::from(p.height), i64::from(p.width));
        if p.data.len() as i64 != n * h * w * 3 {
            return Err(ModelError::permanent(format!(
                "batch of {} bytes is not {n}x{h}x{w}x3",
                p.data.len()
            )));
        }
        let x = Tensor::f_from_slice(p.data)
            .and_then(|t| t.f_view([n, h, w, 3]))
            .and_then(|t| t.f_to_device(self.device))
            .and_then(|t| t.f_permute([0, 3, 1, 2]))
            .and_then(|t| t.f_to_kind(Kind::Float))
            .map_err(err)?;
        let y = self.forward(&x)?;
        if y.size() != [n, 3, h, w] {
            return Err(ModelError::permanent(format!(
                "model output {:?} for input {:?}",
                y.size(),
                [n, 3, h, w]
            )));
        }
        let out = y
            .f_clamp(0.0, 255.0)
            .and_then(|t| t.f_round())
            .and_then(|t| t.f_to_kind(Kind::Uint8))
            .and_then(|t| t.f_permute([0, 2, 3, 1]))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_to_device(Device::Cpu))
            .map_err(err)?;
        let mut bytes = vec![0u8; p.data.len()];
        out.f_copy_data_u8(&mut bytes, p.data.len()).map_err(err)?;
        Ok(bytes)
    }
}
