//! libtorch through `tch`: TorchScript modules on the CPU or a CUDA device.
//!
//! Every tensor call uses the fallible `f_` form: a bad model or input is
//! an error for the upload, never a panic in a worker.

use std::io::Cursor;
use std::sync::Arc;

use tch::{CModule, Device, Kind, TchError, Tensor};

use super::model::{Engine, Model, ModelError, Pixels};
use crate::config::{InferConfig, InferDevice};

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
        tracing::info!(device = ?device, threads, "model engine: libtorch");
        Ok(Self { device })
    }
}

impl Engine for TchEngine {
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        let mut module = CModule::load_data_on_device(&mut Cursor::new(bytes), self.device)
            .map_err(|e| ModelError::permanent(format!("not a TorchScript module: {e}")))?;
        module.f_set_eval().map_err(err)?;
        let model = TchModel {
            module,
            device: self.device,
        };
        model.check_contract()?;
        Ok(Arc::new(model))
    }

    fn device(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        }
    }
}

/// One loaded TorchScript module.
#[derive(Debug)]
pub struct TchModel {
    module: CModule,
    device: Device,
}

impl TchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        self.module.forward_ts(&[x]).map_err(err)
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
