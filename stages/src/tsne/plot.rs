//! The two scatter plots of a t-SNE map, drawn with plotters into an RGB buffer and saved as PNG:
//! images as small thumbnails at their positions (framed in their label's colour), words as text.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{draw_error, render, Area, FONT_FAMILY};
use crate::StageError;

/// Width and height of both plots, in pixels.
pub const PLOT_SIZE: u32 = 1200;

/// Longest side of an image's thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 24;

/// Width of the coloured frame around a thumbnail.
const FRAME: i32 = 2;

/// Distinct colours for the most frequent labels; the rest share `OTHER`.
const PALETTE: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
    RGBColor(0, 128, 128),
    RGBColor(255, 215, 0),
    RGBColor(75, 0, 130),
    RGBColor(0, 100, 0),
    RGBColor(70, 70, 70),
];
const OTHER: RGBColor = RGBColor(190, 190, 190);

/// An image scaled down to fit `THUMBNAIL_SIZE`, as packed RGB bytes.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Reads (with the project's reader, so as displayed) and scales down the image at `path`; the
/// error says why it could not be read.
pub fn load_thumbnail(path: &Path, hash: &str) -> Result<Thumbnail, StageError> {
    let bytes = crate::files::read_checked(path, hash)?;
    let picture = crate::image_file::decode(&bytes)
        .map_err(|e| StageError::file(path, format!("cannot read image: {e}")))?;
    let small = image::DynamicImage::ImageRgb8(picture.rgb)
        .thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        .into_rgb8();
    Ok(Thumbnail {
        width: small.width(),
        height: small.height(),
        rgb: small.into_raw(),
    })
}

/// The colour of each label: the most frequent labels (ties by name) get the palette's colours in
/// order, so the same data always gets the same colours.
struct LabelColours {
    /// (label, colour, points) for the legend, most frequent first.
    legend: Vec<(String, RGBColor, usize)>,
    others: usize,
}

impl LabelColours {
    fn new(labels: &[String]) -> Self {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for label in labels {
            *counts.entry(label).or_default() += 1;
        }
        let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let legend = ranked
            .iter()
            .zip(PALETTE)
            .map(|(&(label, count), colour)| (label.to_string(), colour, count))
            .collect();
        LabelColours {
            legend,
            others: ranked.len().saturating_sub(PALETTE.len()),
        }
    }

    /// Colours for labels that have a natural order (`order`, which must list every label that
    /// occurs): the legend follows it, leaving out labels without points.
    fn in_order(labels: &[String], order: &[&str]) -> Self {
        let legend = order
            .iter()
            .map(|&label| (label, labels.iter().filter(|l| *l == label).count()))
            .filter(|&(_, count)| count > 0)
            .zip(PALETTE)
            .map(|((label, count), colour)| (label.to_string(), colour, count))
            .collect();
        LabelColours { legend, others: 0 }
    }

    fn colour(&self, label: &str) -> RGBColor {
        self.legend
            .iter()
            .find(|(name, _, _)| name == label)
            .map_or(OTHER, |&(_, colour, _)| colour)
    }
}

/// Axis ranges that hold every point with a margin, equal in x and y so the map is not stretched
/// (t-SNE distances mean the same in both directions).
fn square_ranges(positions: &[[f64; 2]]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut low, mut high) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in positions {
        for axis in 0..2 {
            low[axis] = low[axis].min(p[axis]);
            high[axis] = high[axis].max(p[axis]);
        }
    }
    if positions.is_empty() {
        (low, high) = ([-1.0; 2], [1.0; 2]);
    }
    let half = ((high[0] - low[0]).max(high[1] - low[1]) / 2.0).max(1e-6) * 1.06;
    let centre = |axis: usize| (low[axis] + high[axis]) / 2.0;
    (
        centre(0) - half..centre(0) + half,
        centre(1) - half..centre(1) + half,
    )
}

type MapChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart on `root` whose equal x and y ranges hold every position.
fn square_chart<'a, 'b>(
    path: &Path,
    root: &'a Area<'b>,
    title: &str,
    positions: &[[f64; 2]],
    margin: u32,
) -> Result<MapChart<'a, 'b>, StageError> {
    let (x_range, y_range) = square_ranges(positions);
    ChartBuilder::on(root)
        .caption(title, (FONT_FAMILY, 28))
        .margin(margin)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| draw_error(path, e))
}

/// Adds a legend entry per coloured label (and one for the grey rest) and draws the legend.
fn draw_legend<'a, 'b: 'a>(
    path: &Path,
    chart: &mut MapChart<'a, 'b>,
    colours: &LabelColours,
) -> Result<(), StageError> {
    let mut entries: Vec<(String, RGBColor)> = colours
        .legend
        .iter()
        .map(|(label, colour, count)| (format!("{label} ({count})"), *colour))
        .collect();
    if colours.others > 0 {
        entries.push((format!("{} other labels", colours.others), OTHER));
    }
    if entries.is_empty() {
        return Ok(());
    }
    for (text, colour) in entries {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(|e| draw_error(path, e))?
            .label(text)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_error(path, e))
}

/// Plots images as thumbnails framed in their label's colour; an image without a thumbnail (its
/// file could not be read) is drawn as a dot of that colour instead.
pub fn image_plot(
    path: &Path,
    title: &str,
    positions: &[[f64; 2]],
    labels: &[String],
    thumbnails: &[Option<Thumbnail>],
) -> Result<(), StageError> {
    let colours = LabelColours::new(labels);
    render(path, (PLOT_SIZE, PLOT_SIZE), |root| {
        let mut chart = square_chart(path, root, title, positions, 30)?;
        for ((position, label), thumbnail) in positions.iter().zip(labels).zip(thumbnails) {
            let colour = colours.colour(label);
            let point = (position[0], position[1]);
            match thumbnail {
                Some(thumb) => {
                    let (x, y) = chart.backend_coord(&point);
                    let (w, h) = (thumb.width as i32, thumb.height as i32);
                    let corner = (x - w / 2, y - h / 2);
                    root.draw(&Rectangle::new(
                        [
                            (corner.0 - FRAME, corner.1 - FRAME),
                            (corner.0 + w + FRAME, corner.1 + h + FRAME),
                        ],
                        colour.filled(),
                    ))
                    .map_err(|e| draw_error(path, e))?;
                    let bitmap = BitMapElement::with_ref(
                        corner,
                        (thumb.width, thumb.height),
                        thumb.rgb.as_slice(),
                    )
                    .ok_or_else(|| draw_error(path, "thumbnail size does not match its pixels"))?;
                    root.draw(&bitmap).map_err(|e| draw_error(path, e))?;
                }
                None => chart
                    .plotting_area()
                    .draw(&Circle::new(point, 5, colour.filled()))
                    .map_err(|e| draw_error(path, e))?,
            }
        }
        draw_legend(path, &mut chart, &colours)
    })
}

/// Plots words at their positions, coloured by label: as text where `written` says so, else as
/// a point (drawn first, so text stays on top). The legend lists the labels in `label_order`.
pub fn word_plot(
    path: &Path,
    title: &str,
    positions: &[[f64; 2]],
    words: &[String],
    written: &[bool],
    labels: &[String],
    label_order: &[&str],
) -> Result<(), StageError> {
    let colours = LabelColours::in_order(labels, label_order);
    render(path, (PLOT_SIZE, PLOT_SIZE), |root| {
        let mut chart = square_chart(path, root, title, positions, 40)?;
        let centred = Pos::new(HPos::Center, VPos::Center);
        let points = positions.iter().zip(labels).zip(written);
        chart
            .draw_series(
                points
                    .clone()
                    .filter(|(_, &w)| !w)
                    .map(|((position, label), _)| {
                        Circle::new(
                            (position[0], position[1]),
                            3,
                            colours.colour(label).mix(0.6).filled(),
                        )
                    }),
            )
            .map_err(|e| draw_error(path, e))?;
        chart
            .draw_series(points.zip(words).filter(|((_, &w), _)| w).map(
                |(((position, label), _), word)| {
                    let style = (FONT_FAMILY, 18)
                        .into_font()
                        .color(&colours.colour(label))
                        .pos(centred);
                    Text::new(word.clone(), (position[0], position[1]), style)
                },
            ))
            .map_err(|e| draw_error(path, e))?;
        draw_legend(path, &mut chart, &colours)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_labels_keep_their_order_in_the_legend() {
        let mut labels: Vec<String> = vec!["rare".to_string(); 9];
        labels.push("common".to_string());
        let colours = LabelColours::in_order(&labels, &["common", "middle", "rare"]);
        let legend: Vec<(&str, usize)> = colours
            .legend
            .iter()
            .map(|(label, _, count)| (label.as_str(), *count))
            .collect();
        assert_eq!(legend, [("common", 1), ("rare", 9)]);
    }

    #[test]
    fn frequent_labels_get_colours_first() {
        let mut labels: Vec<String> = (0..20).map(|i| format!("rare {i:02}")).collect();
        labels.extend(std::iter::repeat_n("common".to_string(), 5));
        let colours = LabelColours::new(&labels);
        assert_eq!(colours.legend[0].0, "common");
        assert_eq!(colours.colour("common"), PALETTE[0]);
        assert_eq!(colours.others, 21 - PALETTE.len());
        assert_eq!(colours.colour("rare 19"), OTHER);
    }

    #[test]
    fn ranges_are_square_and_hold_every_point() {
        let (x, y) = square_ranges(&[[0.0, 0.0], [10.0, 2.0]]);
        assert!((x.end - x.start - (y.end - y.start)).abs() < 1e-12);
        assert!(x.start < 0.0 && x.end > 10.0 && y.start < 0.0 && y.end > 2.0);
        let (x, _) = square_ranges(&[[3.0, 3.0]]);
        assert!(x.start < 3.0 && x.end > 3.0);
    }
}
