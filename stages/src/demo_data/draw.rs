//! Drawing a scene into RGB pixels: a shaded, slightly noisy background and anti-aliased shapes,
//! so that pictures with the same description still differ pixel by pixel.
//!
//! Only arithmetic that IEEE 754 rounds exactly (no trigonometry) is used, so the same scene and
//! random stream give the same pixels on every platform.

use rand::{Rng, RngCore};

use super::scene::{Object, Scene, Shape};

/// Strongest brightness change across the picture from the background's gradient.
const GRADIENT: f64 = 24.0;
/// Largest brightness offset of one object from its nominal colour.
const OBJECT_JITTER: i32 = 10;
/// Per-channel pixel noise is uniform in `-NOISE..=NOISE`.
const NOISE: i32 = 5;

/// Half-side of the square, relative to the radius: shapes of one size look about equally big.
const SQUARE_HALF: f64 = 0.82;
/// Half-width of a cross's arms, relative to the radius: thick enough to survive JPEG at small
/// sizes.
const CROSS_ARM: f64 = 0.34;
/// Inner radius of the star relative to the outer.
const STAR_INNER: f64 = 0.48;
/// The triangle points up; its base sits a little below the centre so the centre is inside.
const TRIANGLE: [(f64, f64); 3] = [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)];

/// sin and cos of 0, 36, ..., 324 degrees, starting at "up" and turning clockwise (in picture
/// coordinates, where y grows downwards): the star's points alternate outer and inner.
const STAR_DIRECTIONS: [(f64, f64); 10] = [
    (0.0, -1.0),
    (0.587_785_252_292_473_1, -0.809_016_994_374_947_5),
    (0.951_056_516_295_153_5, -0.309_016_994_374_947_45),
    (0.951_056_516_295_153_5, 0.309_016_994_374_947_45),
    (0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (0.0, 1.0),
    (-0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.951_056_516_295_153_5, 0.309_016_994_374_947_45),
    (-0.951_056_516_295_153_5, -0.309_016_994_374_947_45),
    (-0.587_785_252_292_473_1, -0.809_016_994_374_947_5),
];

/// Sub-pixel sample offsets for anti-aliasing (a 2x2 grid).
const SAMPLES: [(f64, f64); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];

/// Whether the point (`u`, `v`), in units of the radius from the shape's centre, is inside.
pub fn contains(shape: Shape, u: f64, v: f64) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs() <= SQUARE_HALF && v.abs() <= SQUARE_HALF,
        Shape::Triangle => inside_convex(&TRIANGLE, u, v),
        Shape::Cross => {
            (u.abs() <= CROSS_ARM && v.abs() <= 1.0) || (v.abs() <= CROSS_ARM && u.abs() <= 1.0)
        }
        Shape::Star => inside_star(u, v),
    }
}

/// Point-in-polygon for a convex polygon of either winding.
fn inside_convex(corners: &[(f64, f64)], u: f64, v: f64) -> bool {
    let mut sides = [false; 2];
    for (i, &(x0, y0)) in corners.iter().enumerate() {
        let (x1, y1) = corners[(i + 1) % corners.len()];
        let cross = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0);
        if cross > 0.0 {
            sides[0] = true;
        } else if cross < 0.0 {
            sides[1] = true;
        }
    }
    !(sides[0] && sides[1])
}

/// Even-odd point-in-polygon for the (concave) five-pointed star.
fn inside_star(u: f64, v: f64) -> bool {
    let corner = |i: usize| {
        let (x, y) = STAR_DIRECTIONS[i % STAR_DIRECTIONS.len()];
        let scale = [1.0, STAR_INNER][i % 2];
        (x * scale, y * scale)
    };
    let mut inside = false;
    for i in 0..STAR_DIRECTIONS.len() {
        let (x0, y0) = corner(i);
        let (x1, y1) = corner(i + 1);
        if (y0 > v) != (y1 > v) && u < x0 + (v - y0) * (x1 - x0) / (y1 - y0) {
            inside = !inside;
        }
    }
    inside
}

fn clamp_channel(value: f64) -> u8 {
    value.round().clamp(0.0, 255.0) as u8
}

/// Draws `scene` as a `size` x `size` RGB image (row-major, 3 bytes a pixel), taking the
/// gradient, colour jitter and noise from `rng`.
pub fn render(scene: &Scene, size: u32, rng: &mut impl Rng) -> Vec<u8> {
    let side = size as usize;
    let mut pixels = vec![0u8; side * side * 3];
    fill_background(&mut pixels, side, scene.background.rgb(), rng);
    for object in &scene.objects {
        draw_object(&mut pixels, side, object, rng);
    }
    add_noise(&mut pixels, rng);
    pixels
}

/// A linear brightness gradient in a random direction over the background colour.
fn fill_background(pixels: &mut [u8], side: usize, base: [u8; 3], rng: &mut impl Rng) {
    let (mut dx, mut dy): (f64, f64) = (rng.gen_range(-1.0..=1.0), rng.gen_range(-1.0..=1.0));
    let length = (dx * dx + dy * dy).sqrt();
    if length < 0.1 {
        (dx, dy) = (1.0, 0.0);
    } else {
        (dx, dy) = (dx / length, dy / length);
    }
    let strength = rng.gen_range(-GRADIENT..=GRADIENT);
    let scale = side as f64;
    for (y, row) in pixels.chunks_exact_mut(side * 3).enumerate() {
        let fy = (y as f64 + 0.5) / scale - 0.5;
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let fx = (x as f64 + 0.5) / scale - 0.5;
            let shade = strength * (fx * dx + fy * dy);
            for (channel, &value) in pixel.iter_mut().zip(&base) {
                *channel = clamp_channel(f64::from(value) + shade);
            }
        }
    }
}

/// Paints one object over the picture, blending edge pixels by how much of them it covers.
fn draw_object(pixels: &mut [u8], side: usize, object: &Object, rng: &mut impl Rng) {
    let jitter = f64::from(rng.gen_range(-OBJECT_JITTER..=OBJECT_JITTER));
    let colour = object.colour.rgb().map(|c| f64::from(c) + jitter);
    let scale = side as f64;
    let radius = object.radius * scale;
    let (cx, cy) = (object.x * scale, object.y * scale);
    let span = |centre: f64| {
        let low = (centre - radius).floor().max(0.0) as usize;
        let high = ((centre + radius).ceil() as usize).min(side);
        low..high
    };
    for y in span(cy) {
        for x in span(cx) {
            let covered = SAMPLES
                .iter()
                .filter(|(sx, sy)| {
                    let u = (x as f64 + sx - cx) / radius;
                    let v = (y as f64 + sy - cy) / radius;
                    contains(object.shape, u, v)
                })
                .count();
            if covered == 0 {
                continue;
            }
            let weight = covered as f64 / SAMPLES.len() as f64;
            let start = (y * side + x) * 3;
            for (channel, target) in pixels[start..start + 3].iter_mut().zip(colour) {
                let old = f64::from(*channel);
                *channel = clamp_channel(old + (target - old) * weight);
            }
        }
    }
}

/// Independent uniform noise on every channel of every pixel.
fn add_noise(pixels: &mut [u8], rng: &mut impl RngCore) {
    for pixel in pixels.chunks_exact_mut(3) {
        let bits = rng.next_u32();
        for (i, channel) in pixel.iter_mut().enumerate() {
            // Maps a random byte evenly onto 0..=2*NOISE without a division.
            let byte = ((bits >> (8 * i)) & 0xff) as i32;
            let offset = ((byte * (2 * NOISE + 1)) >> 8) - NOISE;
            *channel = (i32::from(*channel) + offset).clamp(0, 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::scene::{Background, Colour, Layout, Size, SHAPES};
    use super::*;

    #[test]
    fn shapes_contain_their_centre_and_stay_in_their_square() {
        for shape in SHAPES {
            assert!(contains(shape, 0.0, 0.0), "{shape:?}");
            assert!(contains(shape, 0.0, 0.1), "{shape:?}");
            for i in -20..=20 {
                let t = f64::from(i) / 20.0;
                for (u, v) in [(t, 1.01), (t, -1.01), (1.01, t), (-1.01, t)] {
                    assert!(!contains(shape, u, v), "{shape:?} at ({u}, {v})");
                }
            }
        }
        // The shapes are told apart by their outlines.
        assert!(contains(Shape::Square, 0.8, 0.8) && !contains(Shape::Circle, 0.8, 0.8));
        assert!(!contains(Shape::Cross, 0.6, 0.6) && contains(Shape::Cross, 0.9, 0.0));
        assert!(contains(Shape::Star, 0.0, -0.9) && !contains(Shape::Star, 0.45, -0.6));
        assert!(!contains(Shape::Triangle, -0.7, -0.5) && contains(Shape::Triangle, -0.7, 0.6));
    }

    #[test]
    fn rendered_object_has_its_colour_and_the_background_stays_near_its_own() {
        let scene = Scene {
            background: Background::Gray,
            layout: Layout::Single { size: Size::Large },
            objects: vec![Object {
                shape: Shape::Square,
                colour: Colour::Blue,
                x: 0.5,
                y: 0.5,
                radius: 0.25,
            }],
        };
        let side = 64;
        let pixels = render(&scene, side, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(pixels.len(), 64 * 64 * 3);
        let at = |x: usize, y: usize| {
            let i = (y * side as usize + x) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        let far = |a: [u8; 3], b: [u8; 3]| {
            a.iter()
                .zip(b)
                .map(|(&x, y)| (i32::from(x) - i32::from(y)).abs())
                .max()
                .unwrap()
        };
        let tolerance = OBJECT_JITTER + NOISE;
        assert!(far(at(32, 32), Colour::Blue.rgb()) <= tolerance);
        assert!(far(at(2, 2), Background::Gray.rgb()) <= (GRADIENT * 0.75) as i32 + NOISE + 1);
    }
}
