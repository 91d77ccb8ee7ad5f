//! The stage graph: execution order and which stages a run of some named stages needs (cycles
//! are rejected when the pipeline file is read, by `config`).

use std::collections::{BTreeSet, HashMap};

use crate::config::Pipeline;

/// Stage indices in an order where every stage comes after its inputs; ties keep file order.
/// The pipeline is known to be acyclic (checked when it was loaded).
pub fn topological_order(pipeline: &Pipeline) -> Vec<usize> {
    let index: HashMap<&str, usize> = pipeline
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut placed = vec![false; pipeline.stages.len()];
    let mut order = Vec::with_capacity(pipeline.stages.len());
    while order.len() < pipeline.stages.len() {
        let next =
            pipeline.stages.iter().enumerate().position(|(i, s)| {
                !placed[i] && s.inputs.iter().all(|n| placed[index[n.as_str()]])
            });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => break,
        }
    }
    order
}

/// The named stages and everything upstream of them (all stages when `names` is empty), in
/// execution order. Unknown names are an error naming them.
pub fn select(pipeline: &Pipeline, names: &[String]) -> Result<Vec<usize>, String> {
    let order = topological_order(pipeline);
    if names.is_empty() {
        return Ok(order);
    }
    let mut wanted: BTreeSet<usize> = BTreeSet::new();
    let mut stack = Vec::new();
    for name in names {
        let i = pipeline
            .stages
            .iter()
            .position(|s| &s.name == name)
            .ok_or_else(|| {
                format!(
                    "no stage `{name}` in {}{}",
                    pipeline.path.display(),
                    crate::config::did_you_mean(
                        name,
                        pipeline.stages.iter().map(|s| s.name.as_str())
                    )
                )
            })?;
        stack.push(i);
    }
    while let Some(i) = stack.pop() {
        if wanted.insert(i) {
            for input in &pipeline.stages[i].inputs {
                if let Some(j) = pipeline.stages.iter().position(|s| &s.name == input) {
                    stack.push(j);
                }
            }
        }
    }
    Ok(order.into_iter().filter(|i| wanted.contains(i)).collect())
}

/// Indices of the stages that read (directly or not) from stage `i`.
pub fn downstream(pipeline: &Pipeline, i: usize) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut stack = vec![i];
    while let Some(k) = stack.pop() {
        let name = &pipeline.stages[k].name;
        for (j, s) in pipeline.stages.iter().enumerate() {
            if s.inputs.contains(name) && found.insert(j) {
                stack.push(j);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pipeline() -> Pipeline {
        // Declared out of order on purpose: execution order must not depend on file order.
        let text = r#"
[stages.images]
kind = "images"
inputs = ["demo"]
[stages.captions]
kind = "captions"
inputs = ["demo"]
[stages.demo]
kind = "demo_data"
[stages.other]
kind = "demo_data"
"#;
        crate::config::parse(Path::new("p.toml"), text, onenet_stages::kinds()).unwrap()
    }

    fn names(p: &Pipeline, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| p.stages[i].name.clone()).collect()
    }

    #[test]
    fn order_puts_inputs_first() {
        let p = pipeline();
        assert_eq!(
            names(&p, &topological_order(&p)),
            ["demo", "images", "captions", "other"]
        );
    }

    #[test]
    fn select_takes_upstream_only() {
        let p = pipeline();
        let sel = select(&p, &["captions".into()]).unwrap();
        assert_eq!(names(&p, &sel), ["demo", "captions"]);
        assert!(select(&p, &["caption".into()])
            .unwrap_err()
            .contains("did you mean `captions`"));
    }

    #[test]
    fn downstream_follows_readers() {
        let p = pipeline();
        let demo = p.stages.iter().position(|s| s.name == "demo").unwrap();
        let down: Vec<String> = names(&p, &downstream(&p, demo).into_iter().collect::<Vec<_>>());
        assert_eq!(down, ["images", "captions"]);
    }
}
