//! Inference: image codec, model registry, batching and TorchScript
//! execution (tch).
//!
//! - [`codec`]: what the upload edge checks (sniffed type, header size,
//!   completeness) and the pixels around the model (decode, scale, pad to
//!   a shape bucket, crop, encode).
//! - [`model`]: the engine seam; libtorch with the `torch` feature.
//! - [`registry`]: the models topic → the styles the edge accepts and the
//!   one loaded copy of each model.
//! - [`publish`]: `atelier models publish`.
//! - [`worker`]: `atelier infer`, the pipelined, batched, exactly-once
//!   consumer.
//!
//! The model contract lives in `models/README.md`; libtorch is installed by
//! `scripts/fetch-libtorch`.

pub mod codec;
pub mod model;
pub mod publish;
pub mod registry;
#[cfg(feature = "torch")]
mod torch;
pub mod worker;

/// Input and output tensors are `N×3×H×W` float RGB in `[0, 255]`.
pub const MODEL_CONTRACT: &str = "N x 3 x H x W float32 RGB in [0, 255] -> same shape and range";
