//! CPU autocast for libtorch.
//!
//! `tch` exposes autocast only through the old CUDA-only switch. CPU
//! autocast (bfloat16 matrix multiplies and convolutions, with reductions
//! and normalizations kept in float32, as `torch.autocast("cpu")` does in
//! Python) is set by two libtorch functions that torch-sys does not wrap:
//! `at::autocast::set_autocast_enabled(DeviceType, bool)` and
//! `at::autocast::set_autocast_dtype(DeviceType, ScalarType)`. They are
//! plain functions of `libtorch_cpu` taking one-byte enums, so this crate
//! declares them by their (Itanium C++ ABI) names. It is its own crate so
//! that atelier keeps `unsafe_code = "forbid"`.
//!
//! Autocast state is per thread: enter a [`CpuAutocast`] on the thread that
//! runs the forward pass.

use std::marker::PhantomData;

/// `c10::DeviceType::CPU`.
const CPU: i8 = 0;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

unsafe extern "C" {
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn get_autocast_dtype(device: i8) -> i8;
}

/// CPU autocast to bfloat16 on this thread while it lives; the thread's
/// previous state is restored when it drops.
#[derive(Debug)]
pub struct CpuAutocast {
    was_enabled: bool,
    was_dtype: i8,
    /// Per thread: not `Send`.
    _thread: PhantomData<*const ()>,
}

impl CpuAutocast {
    /// Turns CPU autocast to bfloat16 on for this thread.
    pub fn bf16() -> Self {
        // SAFETY: these libtorch functions read and write the calling
        // thread's autocast flags (thread-local state), take and return
        // one-byte enums passed as integers under the C calling convention,
        // and do not throw for the CPU device type.
        unsafe {
            let was_enabled = is_autocast_enabled(CPU);
            let was_dtype = get_autocast_dtype(CPU);
            torch_sys::at_autocast_increment_nesting();
            set_autocast_dtype(CPU, BFLOAT16);
            set_autocast_enabled(CPU, true);
            Self {
                was_enabled,
                was_dtype,
                _thread: PhantomData,
            }
        }
    }

    /// Whether CPU autocast is on for this thread.
    pub fn enabled() -> bool {
        // SAFETY: as in `bf16`: reads this thread's flag.
        unsafe { is_autocast_enabled(CPU) }
    }
}

impl Drop for CpuAutocast {
    fn drop(&mut self) {
        // SAFETY: as in `bf16`; the cache of cast weights is cleared when
        // the outermost autocast region ends, as Python's context does.
        unsafe {
            set_autocast_enabled(CPU, self.was_enabled);
            set_autocast_dtype(CPU, self.was_dtype);
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
        }
    }
}
