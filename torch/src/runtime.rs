//! The one place that decides where libtorch computes: the device and the CPU thread count.
//!
//! Every libtorch stage asks `Runtime::for_stage`, the worker reports the same decision to the
//! engine with each result, and the engine keys a stage by what `best_device_name` says
//! (`onenet-torch device`): so the device in a cache key is the device the stage ran on. A stage
//! kind declares in its spec whether it may use a GPU (`DeviceUse::Best`) or runs on the CPU by
//! design (`DeviceUse::Cpu`, where a GPU would only change results without saving time).

use onenet_stages::{DeviceUse, StageContext, StageError};
use tch::Device;

/// Where one stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    pub device: Device,
}

impl Runtime {
    /// Decides the device of the running stage from its kind's spec and applies its `threads`
    /// param (0 or absent: libtorch's default, every core).
    pub fn for_stage(ctx: &StageContext) -> Result<Runtime, StageError> {
        if let Some(threads) = ctx.params.get("threads") {
            set_threads(ctx.params.int("threads").map_err(|_| StageError::Param {
                name: "threads".into(),
                message: format!("expected an integer, found {threads}"),
            })?);
        }
        Ok(Runtime {
            device: device_for(kind_device_use(&ctx.kind)),
        })
    }

    /// The device's name as keys and reports spell it.
    pub fn device_name(&self) -> &'static str {
        device_name(self.device)
    }
}

/// The spec's device use of the stage kind `kind` (a kind the stages crate does not know runs on
/// the CPU).
pub fn kind_device_use(kind: &str) -> DeviceUse {
    onenet_stages::kind(kind).map_or(DeviceUse::Cpu, |k| k.device)
}

/// The device a stage with this device use runs on here: CUDA when the spec allows it and
/// libtorch can use a CUDA device (which honours `CUDA_VISIBLE_DEVICES`), else the CPU.
pub fn device_for(device_use: DeviceUse) -> Device {
    match device_use {
        DeviceUse::Best if tch::Cuda::is_available() => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// `cpu` or `cuda`: what enters a cache key (one GPU or another of the same kind compute alike).
pub fn device_name(device: Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Mps => "mps",
        Device::Vulkan => "vulkan",
    }
}

/// The device a `DeviceUse::Best` stage would run on here, by name.
pub fn best_device_name() -> &'static str {
    device_name(device_for(DeviceUse::Best))
}

/// libtorch's CPU thread count from a `threads` param (0 = leave libtorch's default, all cores).
pub fn set_threads(threads: i64) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_by_design_stays_on_the_cpu_and_best_follows_libtorch() {
        assert_eq!(device_for(DeviceUse::Cpu), Device::Cpu);
        let expected = if tch::Cuda::is_available() {
            "cuda"
        } else {
            "cpu"
        };
        assert_eq!(best_device_name(), expected);
        assert_eq!(kind_device_use("order"), DeviceUse::Cpu);
        assert_eq!(kind_device_use("features"), DeviceUse::Best);
    }
}
