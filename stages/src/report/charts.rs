//! The report's two drawn figures: the pipeline's graph (stages as boxes in columns by depth,
//! coloured by whether the run computed or reused them) and the training curves (train and dev
//! loss, dev BLEU-4 and CIDEr-D, per epoch, with the kept epoch marked).

use std::collections::HashMap;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{draw_error, render, FONT_FAMILY};
use crate::specs::train::EpochLog;
use crate::StageError;

/// One box of the pipeline graph.
#[derive(Debug, Clone)]
pub struct GraphNode {
    pub name: String,
    pub kind: String,
    /// Shown under the name: the short key, or what the node is.
    pub detail: String,
    pub state: NodeState,
    /// Names of the nodes it reads.
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Computed,
    Reused,
    /// The report stage itself.
    ThisPage,
}

impl NodeState {
    fn colour(self) -> RGBColor {
        match self {
            NodeState::Computed => RGBColor(255, 214, 153),
            NodeState::Reused => RGBColor(200, 230, 201),
            NodeState::ThisPage => RGBColor(187, 222, 251),
        }
    }
}

const BOX_WIDTH: i32 = 150;
const BOX_HEIGHT: i32 = 58;
const COLUMN_GAP: i32 = 46;
const ROW_GAP: i32 = 22;
const MARGIN: i32 = 20;

/// Each node's column: the length of the longest path from a node without inputs. Nodes must
/// come in execution order (inputs first); an input not among the nodes counts as depth 0.
fn depths(nodes: &[GraphNode]) -> Vec<usize> {
    let mut depth_of: HashMap<&str, usize> = HashMap::new();
    nodes
        .iter()
        .map(|node| {
            let depth = node
                .inputs
                .iter()
                .filter_map(|input| depth_of.get(input.as_str()))
                .map(|d| d + 1)
                .max()
                .unwrap_or(0);
            depth_of.insert(&node.name, depth);
            depth
        })
        .collect()
}

/// The top-left corner of every node's box, and the canvas size that holds them.
fn layout(nodes: &[GraphNode]) -> (Vec<(i32, i32)>, (u32, u32)) {
    let depths = depths(nodes);
    let columns = depths.iter().max().map_or(0, |d| d + 1);
    let mut rows_in_column = vec![0i32; columns];
    let corners: Vec<(i32, i32)> = depths
        .iter()
        .map(|&d| {
            let row = rows_in_column[d];
            rows_in_column[d] += 1;
            (
                MARGIN + d as i32 * (BOX_WIDTH + COLUMN_GAP),
                MARGIN + row * (BOX_HEIGHT + ROW_GAP),
            )
        })
        .collect();
    let tallest = rows_in_column.iter().copied().max().unwrap_or(1).max(1);
    let width = 2 * MARGIN + columns.max(1) as i32 * (BOX_WIDTH + COLUMN_GAP) - COLUMN_GAP;
    let height = 2 * MARGIN + tallest * (BOX_HEIGHT + ROW_GAP) - ROW_GAP;
    (corners, (width as u32, height as u32))
}

/// Draws the pipeline graph into `path` (PNG).
pub fn pipeline_graph(path: &Path, nodes: &[GraphNode]) -> Result<(), StageError> {
    let (corners, size) = layout(nodes);
    let position: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    render(path, size, |root| {
        let err = |e| draw_error(path, e);
        for (i, node) in nodes.iter().enumerate() {
            let (x, y) = corners[i];
            for input in &node.inputs {
                let Some(&j) = position.get(input.as_str()) else {
                    continue;
                };
                let (sx, sy) = corners[j];
                let from = (sx + BOX_WIDTH, sy + BOX_HEIGHT / 2);
                let to = (x - 2, y + BOX_HEIGHT / 2);
                root.draw(&PathElement::new(vec![from, to], BLACK.stroke_width(2)))
                    .map_err(err)?;
                root.draw(&arrow_head(from, to)).map_err(err)?;
            }
        }
        let centred = Pos::new(HPos::Center, VPos::Center);
        for (node, &(x, y)) in nodes.iter().zip(&corners) {
            root.draw(&Rectangle::new(
                [(x, y), (x + BOX_WIDTH, y + BOX_HEIGHT)],
                node.state.colour().filled(),
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + BOX_WIDTH, y + BOX_HEIGHT)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
            let lines = [
                (node.name.as_str(), 19, 15),
                (&format!("{} · {}", node.kind, node.detail), 14, 40),
            ];
            for (text, size, dy) in lines {
                root.draw(&Text::new(
                    text.to_string(),
                    (x + BOX_WIDTH / 2, y + dy),
                    (FONT_FAMILY, size).into_font().color(&BLACK).pos(centred),
                ))
                .map_err(err)?;
            }
        }
        Ok(())
    })
}

/// A filled triangle pointing along `from → to`, its tip at `to`.
fn arrow_head(from: (i32, i32), to: (i32, i32)) -> Polygon<(i32, i32)> {
    let (dx, dy) = ((to.0 - from.0) as f64, (to.1 - from.1) as f64);
    let length = (dx * dx + dy * dy).sqrt().max(1.0);
    let (ux, uy) = (dx / length, dy / length);
    let (back, half) = (10.0, 5.0);
    let base = (to.0 as f64 - ux * back, to.1 as f64 - uy * back);
    let corner = |side: f64| {
        (
            (base.0 - uy * half * side).round() as i32,
            (base.1 + ux * half * side).round() as i32,
        )
    };
    Polygon::new(vec![to, corner(1.0), corner(-1.0)], BLACK.filled())
}

/// A figure of an epoch (a loss or a dev score).
type PerEpoch = fn(&EpochLog) -> f64;

/// Draws each (name, colour, figure) as a line with a dot per epoch, and a legend entry; epochs
/// whose figure is not finite (no dev split) are left out.
fn draw_per_epoch<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    log: &[EpochLog],
    series: &[(&str, RGBColor, PerEpoch)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for &(name, colour, figure) in series {
        let points: Vec<(f64, f64)> = log
            .iter()
            .filter(|p| figure(p).is_finite())
            .map(|p| (p.epoch as f64, figure(p)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    }
    Ok(())
}

pub const TRAINING_SIZE: (u32, u32) = (1200, 420);

/// Draws the loss curves (left) and the dev BLEU-4 and CIDEr-D curves with the kept epoch marked
/// (right) into `path` (PNG).
pub fn training_curves(path: &Path, log: &[EpochLog]) -> Result<(), StageError> {
    render(path, TRAINING_SIZE, |root| {
        let err = |e| draw_error(path, e);
        let (left, right) = root.split_horizontally(TRAINING_SIZE.0 / 2);
        let last_epoch = log.iter().map(|p| p.epoch).max().unwrap_or(1).max(2) as f64;
        let epochs = 1.0..last_epoch;
        let finite = |v: f64| v.is_finite().then_some(v);
        let highest_loss = log
            .iter()
            .flat_map(|p| [p.train_loss, p.dev_loss])
            .filter_map(finite)
            .fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&left)
            .caption("Loss per epoch", (FONT_FAMILY, 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(epochs.clone(), 0.0..(highest_loss * 1.08).max(1e-6))
            .map_err(err)?;
        let whole = |x: &f64| format!("{x:.0}");
        let ticks = (last_epoch as usize).min(12);
        chart
            .configure_mesh()
            .x_labels(ticks)
            .x_label_formatter(&whole)
            .x_desc("epoch")
            .y_desc("masked cross-entropy")
            .label_style((FONT_FAMILY, 15))
            .draw()
            .map_err(err)?;
        let losses: [(&str, RGBColor, PerEpoch); 2] = [
            ("train", RGBColor(31, 119, 180), |p| p.train_loss),
            ("dev", RGBColor(255, 127, 14), |p| p.dev_loss),
        ];
        draw_per_epoch(&mut chart, log, &losses).map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;

        let highest_score = log
            .iter()
            .flat_map(|p| [p.dev_bleu4, p.dev_cider_d])
            .filter_map(finite)
            .fold(0.0f64, f64::max);
        let top = (highest_score * 1.1).max(0.05);
        let mut chart = ChartBuilder::on(&right)
            .caption("Dev scores per epoch (greedy)", (FONT_FAMILY, 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(epochs, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(ticks)
            .x_label_formatter(&whole)
            .x_desc("epoch")
            .y_desc("score")
            .label_style((FONT_FAMILY, 15))
            .draw()
            .map_err(err)?;
        let scores: [(&str, RGBColor, PerEpoch); 2] = [
            ("BLEU-4", RGBColor(44, 160, 44), |p| p.dev_bleu4),
            ("CIDEr-D", RGBColor(148, 103, 189), |p| p.dev_cider_d),
        ];
        draw_per_epoch(&mut chart, log, &scores).map_err(err)?;
        if let Some(kept) = log.iter().find(|p| p.kept) {
            let x = kept.epoch as f64;
            chart
                .draw_series(DashedLineSeries::new(
                    [(x, 0.0), (x, top)],
                    8,
                    6,
                    BLACK.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("kept (epoch {})", kept.epoch))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT_FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, inputs: &[&str]) -> GraphNode {
        GraphNode {
            name: name.into(),
            kind: "k".into(),
            detail: "d".into(),
            state: NodeState::Reused,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn columns_follow_the_longest_path() {
        let nodes = [
            node("a", &[]),
            node("b", &["a"]),
            node("c", &["a"]),
            node("d", &["b", "a"]),
            node("e", &["c", "d"]),
        ];
        assert_eq!(depths(&nodes), vec![0, 1, 1, 2, 3]);
        let (corners, (width, height)) = layout(&nodes);
        // b and c share a column, one above the other; every box fits on the canvas.
        assert_eq!(corners[1].0, corners[2].0);
        assert!(corners[2].1 > corners[1].1);
        for (x, y) in corners {
            assert!(x + BOX_WIDTH <= width as i32 && y + BOX_HEIGHT <= height as i32);
        }
    }

    #[test]
    fn both_figures_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let graph = dir.path().join("graph.png");
        pipeline_graph(&graph, &[node("a", &[]), node("b", &["a"])]).unwrap();
        let picture = image::open(&graph).unwrap();
        let (width, height) = layout(&[node("a", &[]), node("b", &["a"])]).1;
        assert_eq!((picture.width(), picture.height()), (width, height));

        let curves = dir.path().join("curves.png");
        let log: Vec<EpochLog> = (1..=3)
            .map(|e| EpochLog {
                epoch: e,
                train_loss: 2.0 / e as f64,
                dev_loss: 2.5 / e as f64,
                dev_bleu4: 0.1 * e as f64,
                dev_cider_d: f64::NAN,
                learning_rate: 1e-3,
                kept: false,
                seconds: 1.0,
                samples_per_second: 100.0,
            })
            .collect();
        training_curves(&curves, &log).unwrap();
        let picture = image::open(&curves).unwrap().to_rgb8();
        assert_eq!((picture.width(), picture.height()), TRAINING_SIZE);
        // Something was drawn: not every pixel is the white background.
        assert!(picture.pixels().any(|p| p.0 != [255, 255, 255]));
        // A log with one epoch and NaN dev figures (no dev split) still draws.
        let single = [EpochLog {
            epoch: 1,
            train_loss: 1.0,
            dev_loss: f64::NAN,
            dev_bleu4: f64::NAN,
            dev_cider_d: f64::NAN,
            learning_rate: 1e-3,
            kept: false,
            seconds: 1.0,
            samples_per_second: f64::NAN,
        }];
        training_curves(&curves, &single).unwrap();
    }
}
