//! Drawing plots with plotters into an in-memory RGB canvas and saving them as PNG: the one place
//! that sets up the font and the encoder for every plot the stages draw (t-SNE maps, the report's
//! charts).
//!
//! The text needs a font, and the machines onenet runs on need not have any installed, so a font
//! ships inside the binary (Open Sans, under `stages/assets/` with its licence). It is a
//! proportional font on purpose: plotters places each glyph at the start of its advance, which
//! leaves narrow glyphs of a monospaced font floating in wide gaps.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::OnceLock;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::StageError;

/// The font family every text element asks for (plotters' default family for legends).
pub const FONT_FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("../assets/OpenSans-Regular.ttf");

/// A plot's drawing area.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// An error while drawing the plot that goes to `path`.
pub fn draw_error(path: &Path, error: impl std::fmt::Display) -> StageError {
    StageError::file(path, format!("drawing plot: {error}"))
}

/// Registers the bundled font with plotters, once per process.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| "the bundled font could not be parsed".to_string())
}

/// Draws into a fresh white canvas of `(width, height)` pixels with `draw`, then writes the
/// canvas to `path` as PNG.
pub fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> Result<(), StageError>,
) -> Result<(), StageError> {
    ensure_font().map_err(|m| draw_error(path, m))?;
    let mut canvas = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut canvas, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(path, e))?;
        draw(&root)?;
        root.present().map_err(|e| draw_error(path, e))?;
    }
    let file = File::create(path).map_err(|e| StageError::io(path, e))?;
    let mut writer = BufWriter::new(file);
    PngEncoder::new(&mut writer)
        .write_image(&canvas, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| StageError::file(path, format!("encoding PNG: {e}")))?;
    let file = writer
        .into_inner()
        .map_err(|e| StageError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| StageError::io(path, e))
}
