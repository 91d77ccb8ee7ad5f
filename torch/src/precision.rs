//! The number format of a stage's heavy arithmetic: the `precision` param of `features` (the
//! backbone's weights and activations) and of `train` (the matrix products of mixed-precision
//! training). One type for both, so the two params read and fail the same way.

use onenet_stages::{Params, StageError};
use tch::Kind;

/// f32, or bfloat16 where the CPU's matrix units make it pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// bfloat16 (8-bit mantissa, f32's range): about twice as fast on CPUs with AVX-512 BF16 or
    /// AMX, whose matrix units oneDNN then uses; slow on CPUs without them. What stays f32 is
    /// each stage's choice (the `features` output, the trained weights and the optimiser's state).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The precision called `name` (`f32` or `bf16`); otherwise an error naming the param
    /// `precision`.
    pub fn from_name(name: &str) -> Result<Precision, StageError> {
        Precision::ALL
            .into_iter()
            .find(|precision| precision.name() == name)
            .ok_or_else(|| StageError::Param {
                name: "precision".into(),
                message: format!("unknown precision `{name}` (known: f32, bf16)"),
            })
    }

    /// The `precision` param of a stage (whose spec gives its default).
    pub fn of_params(params: &Params) -> Result<Precision, StageError> {
        Precision::from_name(params.str("precision")?)
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The libtorch element type of this precision.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_blame_the_param() {
        for precision in Precision::ALL {
            assert_eq!(Precision::from_name(precision.name()).unwrap(), precision);
        }
        let error = Precision::from_name("fp8").unwrap_err();
        assert!(
            matches!(&error, StageError::Param { name, message } if name == "precision" && message.contains("fp8")),
            "{error}"
        );
    }
}
