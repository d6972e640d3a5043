//! Inference: model registry, batching and TorchScript execution (tch);
//! the image codec around the model is `crate::image::codec`.
//!
//! - [`model`]: the engine seam; libtorch with the `torch` feature.
//! - [`registry`]: the models topic → the styles the edge accepts and the
//!   one loaded copy of each model.
//! - [`publish`]: `atelier models publish`.
//! - [`worker`]: `atelier infer`, the pipelined, batched, exactly-once
//!   consumer.
//!
//! The model contract lives in `models/README.md`; libtorch is installed by
//! `scripts/fetch-libtorch`.

pub mod model;
pub mod publish;
pub mod registry;
pub mod replay;
#[cfg(feature = "torch")]
mod torch;
pub mod worker;

/// Input and output tensors are `N×3×H×W` float RGB in `[0, 255]`.
pub const MODEL_CONTRACT: &str = "N x 3 x H x W float32 RGB in [0, 255] -> same shape and range";
