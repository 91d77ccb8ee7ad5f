use image::DynamicImage;

use super::samples::{
    grey16_png, jpeg, jpeg_stored_rotated, palette_alpha_png, png, scene,
    with_junk_between_segments,
};
use super::*;

/// Mean absolute difference of two same-sized pictures, per channel value.
fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

#[test]
fn the_format_comes_from_the_content() {
    let picture = decode(&png(&DynamicImage::ImageRgb8(scene(30, 20)))).unwrap();
    assert_eq!(picture.format, ImageFormat::Png);
    assert_eq!(picture.rgb, scene(30, 20));
    assert!(matches!(
        decode(b"GIF89a and more").unwrap_err(),
        ImageFileError::UnsupportedFormat(ImageFormat::Gif)
    ));
    assert!(matches!(
        decode(b"plain text, no image").unwrap_err(),
        ImageFileError::UnknownFormat
    ));
}

#[test]
fn exif_orientation_is_applied() {
    let upright = scene(80, 48);
    let plain = decode(&jpeg(&upright, Some(1))).unwrap();
    let rotated = decode(&jpeg_stored_rotated(&upright)).unwrap();
    assert_eq!(rotated.orientation, Orientation::Rotate90);
    assert_eq!(plain.orientation, Orientation::NoTransforms);
    assert_eq!(rotated.rgb.dimensions(), (80, 48));
    // The same picture up to JPEG's loss; a picture left sideways would not even have the size.
    let difference = mean_difference(&plain.rgb, &rotated.rgb);
    assert!(difference < 3.0, "{difference}");
    assert!(mean_difference(&plain.rgb, &upright) < 3.0);
}

#[test]
fn grey_16_bit_and_palette_with_alpha_become_rgb_on_white() {
    let grey = decode(&grey16_png(40, 30)).unwrap();
    assert_eq!(grey.rgb.dimensions(), (40, 30));
    let expected = DynamicImage::ImageRgb8(scene(40, 30)).to_luma8();
    let pixel = grey.rgb.get_pixel(5, 5).0;
    assert_eq!(pixel[0], pixel[1]);
    assert!(pixel[0].abs_diff(expected.get_pixel(5, 5).0[0]) <= 1);

    let palette = decode(&palette_alpha_png(40, 10)).unwrap();
    // Bands: transparent red shows white, half-transparent blue is light blue, then opaque
    // green and black.
    assert_eq!(palette.rgb.get_pixel(2, 5).0, [255, 255, 255]);
    assert_eq!(palette.rgb.get_pixel(12, 5).0, [127, 127, 255]);
    assert_eq!(palette.rgb.get_pixel(22, 5).0, [0, 200, 0]);
    assert_eq!(palette.rgb.get_pixel(32, 5).0, [0, 0, 0]);
}

#[test]
fn junk_between_jpeg_segments_is_skipped_with_a_note() {
    let clean = jpeg(&scene(48, 40), None);
    let junk = with_junk_between_segments(&clean);
    let walk = walk_jpeg(&junk);
    assert_eq!(walk.truncated, None);
    assert_eq!(walk.skipped_bytes, 7);
    let picture = decode(&junk).unwrap();
    assert_eq!(picture.truncated, None);
    assert_eq!(picture.rgb, decode(&clean).unwrap().rgb);
    assert!(
        picture.notes[0].contains("7 junk bytes"),
        "{:?}",
        picture.notes
    );
}

#[test]
fn truncated_files_are_flagged() {
    let whole = jpeg(&scene(64, 64), None);
    assert_eq!(walk_jpeg(&whole).truncated, None);
    let mut trailing = whole.clone();
    trailing.extend_from_slice(b"camera trailer");
    assert_eq!(walk_jpeg(&trailing).truncated, None);
    for cut in [3, 100, whole.len() / 2, whole.len() - 1] {
        let flagged = match decode(&whole[..cut]) {
            Ok(picture) => picture.truncated.is_some(),
            Err(e) => matches!(e, ImageFileError::Truncated(_)),
        };
        assert!(flagged, "cut at {cut}");
    }
    let whole = png(&DynamicImage::ImageRgb8(scene(64, 64)));
    assert!(png_truncation(&whole).is_none());
    for cut in [20, whole.len() / 2, whole.len() - 1] {
        let err = decode(&whole[..cut]).unwrap_err();
        assert!(
            err.to_string().starts_with("truncated"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn a_picture_too_large_to_decode_is_refused_naming_the_limit() {
    let mut bomb = jpeg(&scene(16, 16), None);
    // The frame header (SOF0, 0xFF 0xC0): length, precision, then height and width.
    let sof = bomb
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let err = decode(&bomb).unwrap_err();
    assert_eq!(
        err.to_string(),
        "too large: 60000×60000 pixels take 10300 MiB decoded, over the limit of 512 MiB"
    );
}

#[test]
fn image_and_ignored_names() {
    for name in ["a.jpg", "b.JPG", "c.Jpeg", "d.png", "e.PNG"] {
        assert!(has_image_extension(Path::new(name)), "{name}");
    }
    for name in ["a.gif", "jpg", "a.jpg.txt", "a"] {
        assert!(!has_image_extension(Path::new(name)), "{name}");
    }
    for name in [
        "._a.jpg",
        ".DS_Store",
        "Thumbs.db",
        "thumbs.DB",
        ".hidden.png",
    ] {
        assert!(is_ignored_name(name), "{name}");
    }
    for name in ["a.jpg", "_a.jpg", "a.DS_Store"] {
        assert!(!is_ignored_name(name), "{name}");
    }
}

/// `image` in naive CMYK (K from the brightest channel), 4 bytes a pixel, not inverted.
fn to_cmyk(image: &RgbImage) -> Vec<u8> {
    image
        .pixels()
        .flat_map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            let k = 255 - r.max(g).max(b);
            let ink = |c: u32| {
                if k == 255 {
                    0
                } else {
                    (255 - c - k) * 255 / (255 - k)
                }
            };
            [ink(r), ink(g), ink(b), k].map(|v| v as u8)
        })
        .collect()
}

/// Pillow's RGB decode of the image file at `path` (its CMYK conversion is libjpeg's output in
/// Adobe's polarity, the reference a user's Python code would see).
fn pillow_rgb(path: &Path) -> RgbImage {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys\n\
                  from PIL import Image\n\
                  rgb = Image.open(sys.argv[1]).convert('RGB')\n\
                  sys.stdout.buffer.write(b'%d %d\\n' % rgb.size + rgb.tobytes())";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 (with Pillow: `make test-deps`)");
    assert!(
        out.status.success(),
        "Pillow (`make test-deps` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newline = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    let size = String::from_utf8_lossy(&out.stdout[..newline]).to_string();
    let (width, height) = size.split_once(' ').unwrap();
    RgbImage::from_raw(
        width.parse().unwrap(),
        height.parse().unwrap(),
        out.stdout[newline + 1..].to_vec(),
    )
    .unwrap()
}

fn mean_colour(image: &RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for p in image.pixels() {
        for (total, value) in sum.iter_mut().zip(p.0) {
            *total += f64::from(value);
        }
    }
    sum.map(|s| s / f64::from(image.width() * image.height()))
}

/// CMYK (Adobe transform 0) and YCCK (transform 2) JPEGs decode to Pillow's colours.
#[test]
fn cmyk_and_ycck_jpegs_decode_to_pillows_colours() {
    let upright = scene(96, 64);
    let cmyk = to_cmyk(&upright);
    let dir = tempfile::tempdir().unwrap();
    for (name, colour) in [
        ("cmyk.jpg", jpeg_encoder::ColorType::Cmyk),
        ("ycck.jpg", jpeg_encoder::ColorType::CmykAsYcck),
    ] {
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&cmyk, 96, 64, colour)
            .unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let ours = match read(&path) {
            Ok(picture) => picture.rgb,
            // Refusing with a reason is also right; decoding to other colours is not.
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        let pillow = pillow_rgb(&path);
        let (a, b) = (mean_colour(&ours), mean_colour(&pillow));
        println!("{name}: ours {a:.1?}, Pillow {b:.1?}");
        for c in 0..3 {
            assert!(
                (a[c] - b[c]).abs() <= 2.0,
                "{name}: ours {a:?}, Pillow {b:?}"
            );
        }
        let difference = mean_difference(&ours, &pillow);
        assert!(
            difference <= 3.0,
            "{name}: {difference} per value from Pillow"
        );
        // And both are the picture, not its negative.
        assert!(mean_difference(&ours, &upright) <= 6.0, "{name}");
    }
}
