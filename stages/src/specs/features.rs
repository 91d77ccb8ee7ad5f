//! The `features` stage kind as the engine sees it: params, inputs, the weights file it reads.
//! It runs in the libtorch worker (`onenet-torch`).

use std::path::{Path, PathBuf};

use crate::{
    Effect, InputRule, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageError,
    StageInput, StageKind,
};

pub const KIND: StageKind = StageKind {
    name: "features",
    version: 2,
    about: "Pooled features of every image from a frozen CNN backbone",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["images"],
        min: 1,
        max: 1,
    },
    sources,
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "backbone",
        ty: ParamType::Choice(&["efficientnet_lite0", "inception_v3"]),
        default: ParamDefault::Str("efficientnet_lite0"),
        effect: Effect::Output,
        help: "CNN: efficientnet_lite0 (224 px, 1280-d) or inception_v3 (299 px, 2048-d)",
    },
    ParamSpec {
        name: "weights",
        ty: ParamType::Path {
            what: PathKind::File,
            words: &["random"],
        },
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "ImageNet weights: a .pth or .safetensors file, or \"random\" (tests only)",
    },
    ParamSpec::seed(
        0,
        "Seed of the initial weights when weights = \"random\"",
    ),
    ParamSpec {
        name: "batch_size",
        ty: ParamType::Int { min: 1, max: 4096 },
        default: ParamDefault::Int(8),
        effect: Effect::Output,
        help: "Images per forward pass (4-8 is fastest on two CPU cores). Part of the cache key: \
               libtorch picks its convolution kernels by batch shape, which can change the features in \
               their last bits",
    },
    ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP),
];

/// The weights file named by the params, or None for explicit random weights.
pub fn weights_path(params: &Params, base_dir: &Path) -> Result<Option<PathBuf>, StageError> {
    match params.opt_str("weights") {
        None => Err(StageError::Param {
            name: "weights".into(),
            message: "is not set: give the path of the backbone's ImageNet weights \
                      (`make setup` installs EfficientNet-Lite0's as weights/efficientnet-lite0-57934424.pth), \
                      or \"random\" to use untrained weights on purpose"
                .into(),
        }),
        Some("random") => Ok(None),
        Some(path) => {
            let path = base_dir.join(path);
            if !path.is_file() {
                return Err(StageError::file(
                    &path,
                    "weights file not found (for EfficientNet-Lite0, `make setup` installs it)",
                ));
            }
            Ok(Some(path))
        }
    }
}

fn sources(
    params: &Params,
    _inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    Ok(weights_path(params, base_dir)?
        .map(|path| Source::param_file("weights", path))
        .into_iter()
        .collect())
}
