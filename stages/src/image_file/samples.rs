//! Image files with the quirks the reader handles (EXIF orientation, 16-bit grey, palette with
//! transparency, junk between JPEG segments), made in memory: for this crate's tests and the
//! integration tests, which check the reader end to end through the stages and tasks.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, ImageFormat, Rgb, RgbImage};

/// A picture that is neither symmetric nor uniform, so that a rotated or mirrored copy differs
/// from it: a blue-to-green vertical gradient, a red disc near the top left and a yellow square
/// near the bottom right.
pub fn scene(width: u32, height: u32) -> RgbImage {
    let (w, h) = (width as f32, height as f32);
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / w, y as f32 / h);
        if (fx - 0.25).powi(2) * w * w + (fy - 0.3).powi(2) * h * h < (0.18 * h).powi(2) {
            return Rgb([220, 30, 30]);
        }
        if (0.6..0.85).contains(&fx) && (0.55..0.9).contains(&fy) {
            return Rgb([240, 210, 20]);
        }
        Rgb([30, (60.0 + 150.0 * fy) as u8, (220.0 - 150.0 * fy) as u8])
    })
}

/// The big-endian TIFF block of an EXIF segment holding only an Orientation tag (1–8).
pub fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut exif = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    // One IFD entry: tag 0x0112 (Orientation), type 3 (SHORT), count 1, the value left-aligned.
    exif.extend_from_slice(&[0x00, 0x01, 0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01]);
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0x00, 0x00]);
    // No next IFD.
    exif.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    exif
}

/// `image` as a JPEG of quality 95, with an EXIF Orientation tag when `orientation` is given.
pub fn jpeg(image: &RgbImage, orientation: Option<u16>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
    if let Some(orientation) = orientation {
        encoder
            .set_exif_metadata(exif_orientation(orientation))
            .expect("the JPEG encoder takes EXIF");
    }
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding a JPEG in memory");
    bytes
}

/// `upright` stored the way a phone stores a portrait photo: turned a quarter to the left, with
/// EXIF orientation 6 ("rotate 90° clockwise to display"), as a JPEG.
pub fn jpeg_stored_rotated(upright: &RgbImage) -> Vec<u8> {
    jpeg(&image::imageops::rotate270(upright), Some(6))
}

/// `image` as a PNG.
pub fn png(image: &image::DynamicImage) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, ImageFormat::Png)
        .expect("encoding a PNG in memory");
    bytes.into_inner()
}

/// A 16-bit greyscale PNG of `scene`'s brightness.
pub fn grey16_png(width: u32, height: u32) -> Vec<u8> {
    let grey = image::DynamicImage::ImageRgb8(scene(width, height)).to_luma16();
    png(&image::DynamicImage::ImageLuma16(grey))
}

/// A palette PNG of four colours in vertical bands, the left band fully transparent red (it
/// shows white), the second half-transparent blue, the others opaque green and black.
pub fn palette_alpha_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(::png::ColorType::Indexed);
    encoder.set_depth(::png::BitDepth::Eight);
    encoder.set_palette(vec![255, 0, 0, 0, 0, 255, 0, 200, 0, 0, 0, 0]);
    encoder.set_trns(vec![0, 128]);
    let mut writer = encoder.write_header().expect("PNG header in memory");
    let pixels: Vec<u8> = (0..height)
        .flat_map(|_| (0..width).map(move |x| (x * 4 / width) as u8))
        .collect();
    writer
        .write_image_data(&pixels)
        .expect("PNG data in memory");
    writer.finish().expect("PNG end in memory");
    bytes
}

/// `jpeg` with a few junk bytes between its first segment and the next, which libjpeg skips
/// with a warning ("extraneous bytes before marker").
pub fn with_junk_between_segments(jpeg: &[u8]) -> Vec<u8> {
    // The first segment after the start-of-image marker: 0xFF, its code, then its length.
    let length = usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
    let at = 4 + length;
    let mut bytes = jpeg[..at].to_vec();
    bytes.extend_from_slice(b"\x00junk\x12\x34");
    bytes.extend_from_slice(&jpeg[at..]);
    bytes
}
