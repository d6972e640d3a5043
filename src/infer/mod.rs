//! Inference: model registry, batching and TorchScript execution (tch).
//!
//! The model contract lives in `models/README.md`; the libtorch toolchain is
//! installed by `scripts/fetch-libtorch`. The runtime lands with the inference
//! work; this module only names the contract the rest of the crate relies on.

/// Input and output tensors are `N×3×H×W` float RGB in `[0, 255]`.
pub const MODEL_CONTRACT: &str = "N x 3 x H x W float32 RGB in [0, 255] -> same shape and range";
