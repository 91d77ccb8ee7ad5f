//! The records of the stages upstream of a running one, which a stage describing the pipeline
//! (the report) reads.

use std::collections::{BTreeMap, HashSet};

use onenet_contract::UpstreamRecord;

use super::*;

impl Engine {
    /// The records of every stage upstream of `stage`, in execution order. Only read when a stage
    /// is computed, so a run that reuses everything never parses the upstream metadata.
    pub(super) fn lineage(
        &self,
        stage: &PlannedStage,
        history: &RunHistory,
    ) -> Vec<UpstreamRecord> {
        let mut wanted: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = stage
            .key_inputs
            .upstream
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        while let Some(name) = stack.pop() {
            if wanted.insert(name) {
                if let Some(p) = history.planned.iter().find(|p| p.name == name) {
                    stack.extend(p.key_inputs.upstream.iter().map(|(n, _)| n.as_str()));
                }
            }
        }
        history
            .planned
            .iter()
            .filter(|p| wanted.contains(p.name.as_str()))
            .map(|p| {
                let meta = self.store.meta(&p.key);
                UpstreamRecord {
                    name: p.name.clone(),
                    kind: p.key_inputs.kind.clone(),
                    key: p.key.hex(),
                    inputs: p
                        .key_inputs
                        .upstream
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect(),
                    // As the pipeline gave them: what the key holds, with the spelling of
                    // path params and the speed-only params it leaves out.
                    params: p
                        .key_inputs
                        .params
                        .iter()
                        .chain(&p.key_inputs.recorded)
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .map(|(name, value)| format!("{name} = {value}"))
                        .collect(),
                    seconds: meta.as_ref().map_or(0.0, |m| m.seconds),
                    created_unix: meta.as_ref().map_or(0, |m| m.created_unix),
                    computed_in_run: history.computed_in_run.contains(&p.name),
                }
            })
            .collect()
    }
}
