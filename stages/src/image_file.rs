//! The one image reader of onenet. Every stage and task that opens an image file (the `images`
//! and `features` stages, the t-SNE thumbnails, the report, `caption`, `similar-images`) goes
//! through [`read`] or [`decode`], so they all see the same pixels:
//!
//! - the format comes from the content, never from the file name (PNG bytes named `.jpg` are a
//!   PNG); only JPEG and PNG are read;
//! - the EXIF orientation is applied, so pixels, width and height are the picture as displayed;
//! - grey, 16-bit and palette images become 8-bit RGB; transparent parts are composited on white
//!   (what a viewer shows on a white page), never left as whatever colour they hide;
//! - CMYK and YCCK JPEGs are converted the way Pillow and libjpeg do (Adobe polarity);
//! - a JPEG cut short decodes (the decoder fills the rest with grey) but the picture says it is
//!   truncated, so the `images` stage can leave it out and the tasks can warn; a PNG cut short
//!   is refused as truncated;
//! - junk bytes between JPEG segments are skipped, as libjpeg skips them, and noted;
//! - a picture whose decoded size exceeds [`MAX_DECODED_BYTES`] is refused before decoding,
//!   naming the limit (a small file can claim a huge picture).
//!
//! It also says which file names are images ([`has_image_extension`], case-insensitive) and
//! which are hidden or operating-system metadata ([`is_ignored_name`]: `._x.jpg`, `.DS_Store`,
//! `Thumbs.db`), which folder listings skip rather than report as corrupt.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, Rgb, RgbImage};

/// The most bytes a decoded picture may take (its pixels at the decoder's own colour type).
/// The same as the `image` crate's default allocation limit: a 16-bit RGBA picture of about
/// 8,000 × 8,000 pixels, far above any photo a captioner is fed.
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// File extensions read as images, compared case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Names of operating-system metadata files that sit in image folders, compared
/// case-insensitively (names starting with `.` are ignored too).
const SYSTEM_FILES: [&str; 3] = ["Thumbs.db", "ehthumbs.db", "desktop.ini"];

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("unreadable: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an image: the content is neither JPEG nor PNG")]
    UnknownFormat,
    #[error("{0:?} images are not read (only JPEG and PNG)")]
    UnsupportedFormat(ImageFormat),
    #[error(
        "too large: {width}×{height} pixels take {needed_mib} MiB decoded, over the limit of \
         {limit_mib} MiB"
    )]
    TooLarge {
        width: u32,
        height: u32,
        needed_mib: u64,
        limit_mib: u64,
    },
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("corrupt {format:?}: {message}")]
    Corrupt {
        format: ImageFormat,
        message: String,
    },
}

/// A decoded image as displayed: orientation applied, 8-bit RGB, alpha composited on white.
#[derive(Debug, Clone)]
pub struct Picture {
    pub rgb: RgbImage,
    /// The format the content is in (whatever the file name says).
    pub format: ImageFormat,
    /// The EXIF orientation that was applied.
    pub orientation: Orientation,
    /// Set when the file ends before its data does (a JPEG whose missing part the decoder
    /// filled with grey): why it is thought truncated.
    pub truncated: Option<String>,
    /// What was forgiven while reading, e.g. junk bytes skipped between JPEG segments.
    pub notes: Vec<String>,
}

impl Picture {
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    pub fn height(&self) -> u32 {
        self.rgb.height()
    }
}

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`], in any case (`.JPG`, `.Jpeg`).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// Whether a file named `name` is hidden (starts with `.`, which covers macOS's `._x.jpg`
/// AppleDouble files and `.DS_Store`) or operating-system metadata such as `Thumbs.db`: files
/// that are never pictures, whatever their extension.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || SYSTEM_FILES
            .iter()
            .any(|system| name.eq_ignore_ascii_case(system))
}

/// Reads and decodes the image file at `path`.
pub fn read(path: &Path) -> Result<Picture, ImageFileError> {
    decode(&std::fs::read(path)?)
}

/// Decodes an image file's bytes.
pub fn decode(data: &[u8]) -> Result<Picture, ImageFileError> {
    let reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(ImageFileError::Io)?;
    let format = match reader.format() {
        Some(format @ (ImageFormat::Jpeg | ImageFormat::Png)) => format,
        Some(other) => return Err(ImageFileError::UnsupportedFormat(other)),
        None => return Err(ImageFileError::UnknownFormat),
    };
    let mut notes = Vec::new();
    // The decoders forgive a file cut short in different ways (zune-jpeg fills the rest with
    // grey), so the structure is checked here, the same way for every reader.
    let truncated = match format {
        ImageFormat::Jpeg => {
            let walk = walk_jpeg(data);
            if walk.skipped_bytes > 0 {
                notes.push(format!(
                    "{} junk bytes between JPEG segments, skipped as libjpeg skips them",
                    walk.skipped_bytes
                ));
            }
            walk.truncated
        }
        _ => png_truncation(data),
    };
    let corrupt = |e: image::ImageError| match &truncated {
        Some(why) => ImageFileError::Truncated(why.clone()),
        None => ImageFileError::Corrupt {
            format,
            message: e.to_string(),
        },
    };

    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    let needed = decoder.total_bytes();
    if needed > MAX_DECODED_BYTES {
        return Err(ImageFileError::TooLarge {
            width,
            height,
            needed_mib: needed.div_ceil(1024 * 1024),
            limit_mib: MAX_DECODED_BYTES / (1024 * 1024),
        });
    }
    // A malformed EXIF block is no reason to refuse the pixels: they are then taken as stored.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        notes.push(format!(
            "EXIF orientation unreadable ({e}); taken as stored"
        ));
        Orientation::NoTransforms
    });
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if format == ImageFormat::Png {
        if let Some(why) = &truncated {
            // The PNG decoder stops with an error at a cut; one that did not has a bug we
            // should not trust either.
            return Err(ImageFileError::Truncated(why.clone()));
        }
    }
    image.apply_orientation(orientation);
    Ok(Picture {
        rgb: to_rgb_on_white(image),
        format,
        orientation,
        truncated,
        notes,
    })
}

/// 8-bit RGB; transparent pixels are blended onto white (16-bit images are reduced to 8 bits by
/// the `image` crate's conversion, which rounds).
fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u32::from(a);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        Rgb([blend(r), blend(g), blend(b)])
    })
}

/// What walking a JPEG's markers found.
#[derive(Debug, PartialEq)]
struct JpegWalk {
    /// Why the file is thought cut short, if it is.
    truncated: Option<String>,
    /// Bytes that were neither a segment nor entropy-coded data, skipped to the next marker.
    skipped_bytes: usize,
}

/// Walks a JPEG's marker structure to its end-of-image marker: segments are skipped by their
/// lengths and entropy-coded data is scanned to the next real marker. Like libjpeg, bytes where a
/// marker should start are skipped up to the next marker (and counted), and bytes after the
/// end-of-image marker are allowed (some cameras append data there). Running out of data before
/// the end-of-image marker is truncation.
fn walk_jpeg(data: &[u8]) -> JpegWalk {
    let mut walk = JpegWalk {
        truncated: None,
        skipped_bytes: 0,
    };
    let truncated = |mut walk: JpegWalk| {
        walk.truncated = Some("the JPEG data ends before its end-of-image marker".to_string());
        walk
    };
    // `decode` only calls this for content that starts with the start-of-image marker.
    let mut pos = 2;
    loop {
        // Skip to the next 0xFF that starts a marker: 0xFF 0x00 is no marker (it only occurs
        // escaped in entropy-coded data, so here it is junk too).
        loop {
            match data.get(pos..) {
                Some([0xFF, 0xFF, ..]) => pos += 1,
                Some([0xFF, code, ..]) if *code != 0x00 => break,
                Some([0xFF, 0x00, ..]) => {
                    walk.skipped_bytes += 2;
                    pos += 2;
                }
                Some([_, ..]) => {
                    walk.skipped_bytes += 1;
                    pos += 1;
                }
                _ => return truncated(walk),
            }
        }
        let code = data[pos + 1];
        pos += 2;
        match code {
            0xD9 => return walk,
            // Restart markers and TEM stand alone, without a length.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let (Some(&high), Some(&low)) = (data.get(pos), data.get(pos + 1)) else {
            return truncated(walk);
        };
        pos += usize::from(u16::from_be_bytes([high, low]));
        if code == 0xDA {
            // Start of scan: entropy-coded data follows, in which 0xFF 0x00 is an escaped 0xFF
            // and 0xFF 0xD0..=0xD7 are restart markers; any other 0xFF pair starts a marker.
            loop {
                let Some(offset) = data
                    .get(pos..)
                    .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                else {
                    return truncated(walk);
                };
                pos += offset;
                match data.get(pos + 1) {
                    None => return truncated(walk),
                    Some(0x00 | 0xD0..=0xD7) => pos += 2,
                    // Fill byte: the marker code comes later.
                    Some(0xFF) => pos += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Why a PNG is thought cut short: its chunks, each skipped by its length, run past the end of
/// the data before the IEND chunk.
fn png_truncation(data: &[u8]) -> Option<String> {
    // `decode` only calls this for content that starts with the 8-byte PNG signature.
    let mut pos = 8usize;
    loop {
        let Some(header) = data.get(pos..pos + 8) else {
            return Some("the PNG data ends before its IEND chunk".to_string());
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        // IEND has no data; its CRC must be there too.
        if &header[4..8] == b"IEND" && data.len() >= pos + 12 {
            return None;
        }
        // Length, type, data and CRC.
        pos = pos.saturating_add(12).saturating_add(length);
        if pos > data.len() {
            return Some(format!(
                "the PNG data ends inside its {} chunk",
                String::from_utf8_lossy(&header[4..8])
            ));
        }
    }
}

pub mod samples;

#[cfg(test)]
mod tests;
