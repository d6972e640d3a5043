//! The model seam: an [`Engine`] turns TorchScript bytes into a [`Model`]
//! that runs batches of RGB images. libtorch (through `tch`) is the engine
//! when the crate is built with the `torch` feature; without it there is no
//! engine, and `atelier infer` says so instead of pretending.

use std::sync::Arc;

use crate::config::InferConfig;

/// A model or engine failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    /// What went wrong.
    pub message: String,
    /// Whether running the same batch again may succeed (out of memory on
    /// a busy device); a contract violation or a broken file never does.
    pub retriable: bool,
}

impl ModelError {
    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: false,
        }
    }
}

/// A batch of same-shaped images: `n × height × width × 3` RGB bytes.
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    /// Images in the batch.
    pub n: usize,
    /// Height of each.
    pub height: u32,
    /// Width of each.
    pub width: u32,
    /// The bytes, image after image, row-major, RGB.
    pub data: &'a [u8],
}

/// A loaded style model. One instance serves every task of a process.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Stylizes a batch; the answer has the same layout as the input.
    fn run(&self, input: Pixels<'_>) -> Result<Vec<u8>, ModelError>;
}

/// Loads models.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Loads TorchScript bytes and checks the model contract by running it
    /// once on small inputs.
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn Model>, ModelError>;
    /// Where models run (`cpu`, `cuda:0`).
    fn device(&self) -> String;
    /// The arithmetic they run in (`fp32`, `bf16`).
    fn precision(&self) -> &'static str;
    /// A measured ceiling: GFLOP/s of an `n`×`n` matrix product on this
    /// engine's threads, in fp32 or bf16.
    fn gemm_gflops(&self, n: usize, bf16: bool) -> Result<f64, ModelError>;
}

/// The engine this build has, configured (device, threads).
pub fn engine(cfg: &InferConfig) -> Result<Arc<dyn Engine>, ModelError> {
    #[cfg(feature = "torch")]
    {
        Ok(Arc::new(super::torch::TchEngine::new(cfg)?))
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = cfg;
        Err(ModelError::permanent(
            "this build has no model engine: build with `--features torch` \
             (scripts/up and scripts/test do; see models/README.md)",
        ))
    }
}

/// Whether this build can run models.
pub const HAS_ENGINE: bool = cfg!(feature = "torch");
