//! Stage kind `demo_data` (to be written).

use crate::{InputRule, StageKind};

pub const KIND: StageKind = StageKind {
    name: "demo_data",
    version: 1,
    about: "",
    params: &[],
    inputs: InputRule { kinds: &[], min: 0, max: 0 },
    sources: |_, _, _| Ok(Vec::new()),
    run: |_| Ok(Default::default()),
};
