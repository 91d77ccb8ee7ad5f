//! The stage graph: execution order, cycle detection, and which stages a run of some named stages
//! needs.

use std::collections::{BTreeSet, HashMap};

use crate::config::{Pipeline, StageDecl};

/// A cycle among `stages`, as the names along it (each reads the next) with the first repeated
/// at the end.
pub fn find_cycle(stages: &[StageDecl]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::Unvisited; stages.len()];
    let mut path: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        stages: &[StageDecl],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for input in &stages[i].inputs {
            let Some(&j) = index.get(input.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..]
                        .iter()
                        .map(|&p| stages[p].name.clone())
                        .collect();
                    cycle.push(cycle[0].clone());
                    return Some(cycle);
                }
                Mark::Unvisited => {
                    if let Some(c) = visit(j, stages, index, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }

    (0..stages.len()).find_map(|i| {
        if marks[i] == Mark::Unvisited {
            visit(i, stages, &index, &mut marks, &mut path)
        } else {
            None
        }
    })
}

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
        crate::config::parse(Path::new("p.toml"), text).unwrap()
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
