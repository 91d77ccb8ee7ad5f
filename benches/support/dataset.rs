//! A synthetic dataset in the Flickr8k layout for the benchmarks: photo-sized noisy JPEG files
//! (so decoding and hashing cost what they cost on real photos), five short captions per image,
//! and train/dev/test lists. Generated once per size under the target folder and reused.

use std::fs;
use std::path::Path;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rayon::prelude::*;

/// Images in Flickr8k, and its split sizes (train, dev, test): a dataset of another size keeps
/// the proportions.
pub const FLICKR8K_IMAGES: usize = 8091;
const SPLITS: [(&str, usize); 3] = [
    ("Flickr_8k.trainImages.txt", 6000),
    ("Flickr_8k.devImages.txt", 1000),
    ("Flickr_8k.testImages.txt", 1091),
];
/// Captions per image, as in Flickr8k.
const CAPTIONS_PER_IMAGE: usize = 5;
/// Image size in pixels (every fourth image is portrait: `HEIGHT` x `WIDTH`).
const WIDTH: u32 = 500;
const HEIGHT: u32 = 375;
/// Noise amplitude (per channel, +-) and JPEG quality, tuned for files of about 100 KB.
const NOISE: u32 = 29;
const QUALITY: u8 = 80;

/// Folder names of the Flickr8k layout (the image folder's spelling is the original's).
pub const IMAGE_DIR: &str = "Flicker8k_Dataset";
const TEXT_DIR: &str = "Flickr8k_text";
const TOKEN_FILE: &str = "Flickr8k.token.txt";
/// Written last, so that a dataset with this marker is complete; its content names the
/// generator's settings, so that changing them regenerates the data.
const MARKER: &str = ".complete";

/// A small deterministic generator (SplitMix64), so the dataset depends only on the settings.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> SplitMix {
        SplitMix(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The file name of image `index`, shaped like Flickr8k's (`<number>_<hex>.jpg`).
fn image_name(index: usize) -> String {
    let tag = SplitMix::new(index as u64 ^ 0xF11C).next() >> 24;
    format!("{}_{tag:010x}.jpg", 1_000_000_000 + index)
}

/// The split sizes of a dataset of `images` images, in Flickr8k's proportions.
fn split_sizes(images: usize) -> [(&'static str, usize); 3] {
    let train = images * SPLITS[0].1 / FLICKR8K_IMAGES;
    let dev = images * SPLITS[1].1 / FLICKR8K_IMAGES;
    [
        (SPLITS[0].0, train),
        (SPLITS[1].0, dev),
        (SPLITS[2].0, images - train - dev),
    ]
}

/// The settings the dataset was generated with, as stored in its marker file.
fn dataset_signature(images: usize) -> String {
    format!(
        "images={images} splits={:?} captions={CAPTIONS_PER_IMAGE} size={WIDTH}x{HEIGHT} \
         noise={NOISE} quality={QUALITY}\n",
        split_sizes(images)
    )
}

/// Generates a Flickr8k-style dataset of `images` photo-sized JPEG files (about 100 KB each, 500
/// by 375 pixels), five captions each, at `root`, unless a complete one with the same settings
/// is there. Returns the image file names.
pub fn prepare_dataset(root: &Path, images: usize) -> Vec<String> {
    let names: Vec<String> = (0..images).map(image_name).collect();
    let marker = root.join(MARKER);
    let signature = dataset_signature(images);
    if fs::read_to_string(&marker).ok().as_deref() == Some(signature.as_str()) {
        println!("reusing the complete dataset generated earlier");
        return names;
    }
    if root.exists() {
        println!("removing an incomplete or outdated dataset");
        fs::remove_dir_all(root).unwrap_or_else(|e| panic!("remove {}: {e}", root.display()));
    }
    println!(
        "generating {images} JPEG images of {WIDTH}x{HEIGHT} (noise +-{NOISE}, quality \
         {QUALITY}) on {} threads...",
        rayon::current_num_threads()
    );
    let start = Instant::now();
    let image_dir = root.join(IMAGE_DIR);
    create_dir(&image_dir);
    names.par_iter().enumerate().for_each(|(index, name)| {
        let path = image_dir.join(name);
        fs::write(&path, noisy_jpeg(index as u64))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    });
    write_text_files(root, &names);
    fs::write(&marker, signature).unwrap_or_else(|e| panic!("write {}: {e}", marker.display()));
    println!("generated in {:.1} s", start.elapsed().as_secs_f64());
    names
}

/// A JPEG of a colour gradient under per-pixel noise; the noise keeps the files photo-sized.
fn noisy_jpeg(index: u64) -> Vec<u8> {
    let (width, height) = if index % 4 == 3 {
        (HEIGHT, WIDTH)
    } else {
        (WIDTH, HEIGHT)
    };
    let rotate = (index % 3) as u32;
    let mut rng = SplitMix::new(index);
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let random = rng.next();
            for channel in 0..3u32 {
                let c = (channel + rotate) % 3;
                let base = ((x * 255 / width) * (c + 1) + (y * 255 / height) * (3 - c)) / 4;
                let noise = ((random >> (16 * channel)) & 0xFFFF) as u32 % (2 * NOISE + 1);
                pixels.push((base + noise).saturating_sub(NOISE).min(255) as u8);
            }
        }
    }
    let mut jpeg = Vec::with_capacity(128 * 1024);
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode(&pixels, width, height, ExtendedColorType::Rgb8)
        .expect("encode JPEG");
    jpeg
}

/// The caption file (five short captions per image) and the three split lists.
fn write_text_files(root: &Path, names: &[String]) {
    const WHO: [&str; 8] = [
        "A dog",
        "Two children",
        "A man in a red shirt",
        "A woman",
        "A black and white cat",
        "Three people",
        "A little girl",
        "A brown horse",
    ];
    const DOES: [&str; 6] = [
        "runs across",
        "sits on",
        "jumps over",
        "plays near",
        "walks along",
        "looks at",
    ];
    const WHAT: [&str; 8] = [
        "the grass",
        "a wooden bench",
        "the beach",
        "a snowy hill",
        "the street",
        "a blue ball",
        "the water",
        "a rock",
    ];
    let text_dir = root.join(TEXT_DIR);
    create_dir(&text_dir);
    let mut tokens = String::with_capacity(names.len() * CAPTIONS_PER_IMAGE * 64);
    for (index, name) in names.iter().enumerate() {
        let mut rng = SplitMix::new(index as u64 ^ 0xCA97);
        for n in 0..CAPTIONS_PER_IMAGE {
            let (who, does, what) = (rng.pick(&WHO), rng.pick(&DOES), rng.pick(&WHAT));
            tokens.push_str(&format!("{name}#{n}\t{who} {does} {what} .\n"));
        }
    }
    write(&text_dir.join(TOKEN_FILE), &tokens);
    let mut rest = names;
    for (file, count) in split_sizes(names.len()) {
        let (split, tail) = rest.split_at(count);
        rest = tail;
        let list: String = split.iter().map(|name| format!("{name}\n")).collect();
        write(&text_dir.join(file), &list);
    }
    assert!(
        rest.is_empty(),
        "the split sizes must add up to the image count"
    );
}

fn create_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
