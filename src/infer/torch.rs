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
        // bf16 autocast on a CPU that has it (measured about 2x fp32 on
        // AMX, within 1/255 on average); a GPU runs fp32.
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

impl Engine for TchEngine {
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let mut module = CModule::load_data_on_device(&mut Cursor::new(bytes), self.device)
            .map_err(|e| ModelError::permanent(format!("not a TorchScript module: {e}")))?;
        module.f_set_eval().map_err(err)?;
        let mut model = TchModel {
            module,
            device: self.device,
            bf16: false,
        };
        model.check_contract()?;
        if self.precision == Precision::Bf16 {
            model.bf16 = model.keeps_quality_in_bf16()?;
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

/// One loaded TorchScript module.
#[derive(Debug)]
pub struct TchModel {
    module: CModule,
    device: Device,
    /// Run under CPU autocast to bfloat16.
    bf16: bool,
}

impl TchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        // Autocast is per thread: on for this call, on this thread.
        let _autocast = self.bf16.then(torch_autocast::CpuAutocast::bf16);
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
/// 8-bit levels: on average, and at any pixel.
const BF16_MEAN: f64 = 1.0;
const BF16_MAX: u8 = 8;

impl TchModel {
    /// Whether this model's bf16 output stays within [`BF16_MEAN`] and
    /// [`BF16_MAX`] of its fp32 output on a photo-like probe picture. A
    /// model whose arithmetic bf16 cannot carry (fine edge filters) runs in
    /// fp32 instead, and says so.
    fn keeps_quality_in_bf16(&mut self) -> Result<bool, ModelError> {
        let (w, h) = (256u32, 256u32);
        let probe = crate::image::codec::test_pattern(w, h, 7).into_raw();
        let px = || Pixels {
            n: 1,
            height: h,
            width: w,
            data: &probe,
        };
        self.bf16 = false;
        let fp32 = self.run(px())?;
        self.bf16 = true;
        let bf16 = self.run(px())?;
        let (mut sum, mut max) = (0u64, 0u8);
        for (a, b) in fp32.iter().zip(&bf16) {
            let d = a.abs_diff(*b);
            sum += u64::from(d);
            max = max.max(d);
        }
        let mean = sum as f64 / fp32.len() as f64;
        let keeps = mean <= BF16_MEAN && max <= BF16_MAX;
        tracing::info!(
            mean_diff = format!("{mean:.3}"),
            max_diff = max,
            precision = if keeps { "bf16" } else { "fp32" },
            "model probed in bf16{}",
            if keeps {
                ""
            } else {
                ": past the bound, it runs in fp32"
            }
        );
        Ok(keeps)
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
