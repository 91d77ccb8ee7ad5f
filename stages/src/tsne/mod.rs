//! Stage kind `tsne`: maps the image and word embeddings of an `embed` stage to two dimensions
//! with Barnes-Hut t-SNE, writes the maps as tables and draws them: every image as a small
//! thumbnail at its place, every word as text at its place. With a `demo_data` input the images
//! are labelled with what they truly show (main colour and shape), so one can see whether the
//! network's image space groups pictures by content.
//!
//! The map is a pure function of the embeddings and the params: the initial layout comes from a
//! seeded stream and every parallel sum is taken in a fixed order, so the thread count never
//! changes a coordinate.

mod affinity;
mod optimise;
mod plot;
mod quadtree;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::captions::SPECIAL_TOKENS;
use crate::demo_data::SCENES_TABLE;
use crate::specs::embed::{ImageEmbeddings, Vectors, WordEmbeddings};
use crate::table::{batch, read_parquet, strings, write_parquet};
use crate::{
    input_of_kind, Effect, InputRule, ParamDefault, ParamSpec, ParamType, Params, RawValue,
    StageContext, StageError, StageKind, StageReport,
};

pub use optimise::{tsne, TsneMap, TsneSettings};

pub const KIND: StageKind = StageKind {
    name: "tsne",
    version: 2,
    about: "Map image and word embeddings to 2-D with Barnes-Hut t-SNE: tables and plots",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["embed", "demo_data"],
        min: 1,
        max: 2,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::NoLibtorch,
    run,
    shards: None,
    files_root: None,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "maps",
        ty: ParamType::Str,
        default: ParamDefault::Str("images, words"),
        effect: Effect::Output,
        help: "Which embeddings to map, comma-separated: `images`, `words` or both",
    },
    ParamSpec {
        name: "perplexity_images",
        ty: ParamType::Float {
            min: 1.0,
            max: 200.0,
        },
        default: ParamDefault::Float(30.0),
        effect: Effect::Output,
        help: "Effective number of neighbours each image keeps close (lowered on small sets)",
    },
    ParamSpec {
        name: "perplexity_words",
        ty: ParamType::Float {
            min: 1.0,
            max: 200.0,
        },
        default: ParamDefault::Float(10.0),
        effect: Effect::Output,
        help: "Effective number of neighbours each word keeps close (lowered on small sets)",
    },
    ParamSpec {
        name: "iterations",
        ty: ParamType::Int {
            min: 1,
            max: 100_000,
        },
        default: ParamDefault::Int(500),
        effect: Effect::Output,
        help: "Gradient steps; the first 250 exaggerate the input similarities",
    },
    ParamSpec {
        name: "learning_rate",
        ty: ParamType::Float {
            min: 0.0,
            max: 100_000.0,
        },
        default: ParamDefault::Float(0.0),
        effect: Effect::Output,
        help: "Step size of the gradient descent, on the scale of the usual Barnes-Hut t-SNE \
               (gradient without its factor 4); 0 picks N/12 (at least 50) for a map of N points",
    },
    ParamSpec::seed(
        7,
        "Random seed of the initial map and of the sample: the same seed gives the same map",
    ),
    ParamSpec {
        name: "max_points",
        ty: ParamType::Int {
            min: 2,
            max: 100_000,
        },
        default: ParamDefault::Int(8000),
        effect: Effect::Output,
        help: "Map at most this many images and words each (a seeded sample of larger sets); \
               the neighbour search grows with its square",
    },
    ParamSpec {
        name: "word_labels",
        ty: ParamType::Int {
            min: 0,
            max: 100_000,
        },
        default: ParamDefault::Int(150),
        effect: Effect::Output,
        help: "The word map writes out this many of the most frequent words; the others are \
               drawn as points (their words stay in the word_tsne table)",
    },
    ParamSpec::threads("CPU threads (0: all cores); the map is the same for any value"),
];

/// The image map: image_id, x, y, label.
pub const IMAGE_TSNE: &str = "image_tsne.parquet";
/// The word map: token, x, y, label.
pub const WORD_TSNE: &str = "word_tsne.parquet";
pub const IMAGE_PLOT: &str = "image_tsne.png";
pub const WORD_PLOT: &str = "word_tsne.png";

/// Barnes-Hut accuracy: cells seen under a side/distance ratio below this act as one body.
const THETA: f64 = 0.5;

/// ChaCha streams under the seed, one per random choice, so that changing one set (say, more
/// words) never changes the other map.
const IMAGE_SAMPLE_STREAM: u64 = 1;
const IMAGE_MAP_STREAM: u64 = 2;
const WORD_SAMPLE_STREAM: u64 = 3;
const WORD_MAP_STREAM: u64 = 4;

/// The maps a `tsne` stage can draw (param `maps`).
const MAPS: [&str; 2] = ["images", "words"];

/// The params of one run, in the types the stage works in.
#[derive(Debug, Clone, Copy)]
struct Settings {
    images: bool,
    words: bool,
    perplexity_images: f64,
    perplexity_words: f64,
    iterations: usize,
    learning_rate: f64,
    seed: u64,
    max_points: usize,
    word_labels: usize,
    threads: usize,
}

/// Checks a value against its declaration once more: `run` may get params that never went
/// through the engine, and a negative count would wrap around in the conversions below.
fn recheck(name: &str, raw: RawValue) -> Result<(), StageError> {
    match PARAMS.iter().find(|spec| spec.name == name) {
        Some(spec) => spec
            .ty
            .check(&raw)
            .map(|_| ())
            .map_err(|message| StageError::Param {
                name: name.to_string(),
                message,
            }),
        None => Ok(()),
    }
}

impl Settings {
    fn from_params(params: &Params) -> Result<Self, StageError> {
        let int = |name: &str| -> Result<i64, StageError> {
            let value = params.int(name)?;
            recheck(name, RawValue::Int(value))?;
            Ok(value)
        };
        let float = |name: &str| -> Result<f64, StageError> {
            let value = params.float(name)?;
            recheck(name, RawValue::Float(value))?;
            Ok(value)
        };
        let maps: Vec<&str> = params
            .str("maps")?
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        let bad_maps = |message: String| StageError::Param {
            name: "maps".to_string(),
            message,
        };
        if let Some(unknown) = maps.iter().find(|m| !MAPS.contains(m)) {
            return Err(bad_maps(format!(
                "unknown map `{unknown}`; the maps are {}",
                MAPS.join(", ")
            )));
        }
        if maps.is_empty() {
            return Err(bad_maps(format!(
                "names no map; give one or more of {}",
                MAPS.join(", ")
            )));
        }
        Ok(Settings {
            images: maps.contains(&"images"),
            words: maps.contains(&"words"),
            perplexity_images: float("perplexity_images")?,
            perplexity_words: float("perplexity_words")?,
            iterations: int("iterations")? as usize,
            learning_rate: float("learning_rate")?,
            seed: int("seed")? as u64,
            max_points: int("max_points")? as usize,
            word_labels: int("word_labels")? as usize,
            threads: int("threads")? as usize,
        })
    }

    fn tsne(&self, perplexity: f64, stream: u64) -> TsneSettings {
        TsneSettings {
            perplexity,
            iterations: self.iterations,
            learning_rate: self.learning_rate,
            theta: THETA,
            seed: self.seed,
            stream,
        }
    }
}

/// What one map came to, for the stage's report.
struct MapSummary {
    mapped: usize,
    total: usize,
    perplexity: f64,
    kl_divergence: f64,
    learning_rate: f64,
}

impl MapSummary {
    /// What `map`, drawn from `total` points (or a sample of them), came to.
    fn of(map: &TsneMap, total: usize) -> Self {
        MapSummary {
            mapped: map.positions.len(),
            total,
            perplexity: map.perplexity,
            kl_divergence: map.kl_divergence,
            learning_rate: map.learning_rate,
        }
    }

    fn note(&self, what: &str) -> String {
        let sample = if self.mapped < self.total {
            format!(" (a sample of {})", self.total)
        } else {
            String::new()
        };
        format!(
            "{} {what}{sample} mapped at perplexity {}, KL {:.3}, learning rate {:.0}",
            self.mapped,
            perplexity_text(self.perplexity),
            self.kl_divergence,
            self.learning_rate
        )
    }
}

fn perplexity_text(perplexity: f64) -> String {
    if perplexity.fract() == 0.0 {
        format!("{perplexity:.0}")
    } else {
        format!("{perplexity:.2}")
    }
}

fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let settings = Settings::from_params(&ctx.params)?;
    let embed_dir = &input_of_kind(&ctx.inputs, "embed")?.dir;
    let scene_labels = match ctx.inputs.iter().find(|input| input.kind == "demo_data") {
        Some(demo) => Some(read_scene_labels(&demo.dir.join(SCENES_TABLE))?),
        None => None,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(settings.threads)
        .build()
        .map_err(|e| StageError::Param {
            name: "threads".to_string(),
            message: format!("cannot start the thread pool: {e}"),
        })?;
    pool.install(|| {
        let mut notes = Vec::new();
        if settings.images {
            let images = map_images(ctx, &settings, embed_dir, scene_labels.as_ref())?;
            notes.push(images.note("images"));
        }
        if settings.words {
            notes.push(map_words(ctx, &settings, embed_dir)?.note("words"));
        }
        Ok(StageReport {
            warnings: Vec::new(),
            notes,
            device: None,
            metrics: Default::default(),
        })
    })
}

/// The label of every demo picture: its main object's colour and shape, e.g. "red circle".
fn read_scene_labels(path: &Path) -> Result<HashMap<String, String>, StageError> {
    let table = read_parquet(path)?;
    let ids = strings(path, &table, "image_id")?;
    let colours = strings(path, &table, "colour")?;
    let shapes = strings(path, &table, "shape")?;
    Ok(ids
        .into_iter()
        .zip(colours.iter().zip(&shapes))
        .map(|(id, (colour, shape))| (id, format!("{colour} {shape}")))
        .collect())
}

/// The rows to map, ascending: all of them, or a seeded sample of `max` when there are more.
fn sample_rows(total: usize, max: usize, seed: u64, stream: u64) -> Vec<usize> {
    if total <= max {
        return (0..total).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut rows = rand::seq::index::sample(&mut rng, total, max).into_vec();
    rows.sort_unstable();
    rows
}

/// The vectors of `rows`, packed in that order.
fn gather(vectors: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| &vectors[r * dim..(r + 1) * dim])
        .copied()
        .collect()
}

/// Writes a map table: a key column, the coordinates and a label per point.
fn write_map(
    path: &Path,
    key_name: &str,
    keys: Vec<&str>,
    positions: &[[f64; 2]],
    labels: &[String],
) -> Result<(), StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(key_name, DataType::Utf8, false),
        Field::new("x", DataType::Float32, false),
        Field::new("y", DataType::Float32, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(keys)),
        Arc::new(Float32Array::from_iter_values(
            positions.iter().map(|p| p[0] as f32),
        )),
        Arc::new(Float32Array::from_iter_values(
            positions.iter().map(|p| p[1] as f32),
        )),
        Arc::new(StringArray::from_iter_values(labels)),
    ];
    write_parquet(path, &batch(path, schema, columns)?)
}

fn map_images(
    ctx: &StageContext,
    settings: &Settings,
    embed_dir: &Path,
    scene_labels: Option<&HashMap<String, String>>,
) -> Result<MapSummary, StageError> {
    let ImageEmbeddings {
        image_ids: ids,
        splits,
        paths: image_paths,
        hashes,
        vectors: Vectors {
            values: vectors,
            dim,
        },
    } = ImageEmbeddings::read(embed_dir)?;

    let rows = sample_rows(
        ids.len(),
        settings.max_points,
        settings.seed,
        IMAGE_SAMPLE_STREAM,
    );
    ctx.progress
        .start(settings.iterations as u64, "t-SNE of image embeddings");
    let map = tsne(
        &gather(&vectors, dim, &rows),
        dim,
        &settings.tsne(settings.perplexity_images, IMAGE_MAP_STREAM),
        ctx.progress,
    );
    let labels: Vec<String> = rows
        .iter()
        .map(|&r| {
            scene_labels
                .and_then(|scenes| scenes.get(&ids[r]))
                .unwrap_or(&splits[r])
                .clone()
        })
        .collect();
    write_map(
        &ctx.out_dir.join(IMAGE_TSNE),
        "image_id",
        rows.iter().map(|&r| ids[r].as_str()).collect(),
        &map.positions,
        &labels,
    )?;

    ctx.progress.start(rows.len() as u64, "loading thumbnails");
    // Every picture was decoded by the `images` stage: one that cannot be read now is missing or
    // changed since, and a map drawn without it would be stored under a key that promises it.
    let thumbnails: Vec<Option<plot::Thumbnail>> = rows
        .par_iter()
        .map(|&r| {
            let file = ctx.file_path(&image_paths[r])?;
            let thumbnail = plot::load_thumbnail(&file, &hashes[r]);
            ctx.progress.inc(1);
            thumbnail.map(Some)
        })
        .collect::<Result<_, StageError>>()?;
    plot::image_plot(
        &ctx.out_dir.join(IMAGE_PLOT),
        &format!(
            "t-SNE of {} image embeddings (perplexity {})",
            rows.len(),
            perplexity_text(map.perplexity)
        ),
        &map.positions,
        &labels,
        &thumbnails,
    )?;
    Ok(MapSummary::of(&map, ids.len()))
}

/// Which of `words` (with their `counts`) are among the `n` most frequent, ties by word.
fn most_frequent(words: &[String], counts: &[u64], n: usize) -> Vec<bool> {
    let mut by_count: Vec<usize> = (0..words.len()).collect();
    by_count.sort_by(|&a, &b| {
        counts[b]
            .cmp(&counts[a])
            .then_with(|| words[a].cmp(&words[b]))
    });
    let mut chosen = vec![false; words.len()];
    for &i in by_count.iter().take(n) {
        chosen[i] = true;
    }
    chosen
}

/// The labels of words, most frequent band first (the legend's order).
const FREQUENCY_BANDS: [&str; 3] = ["count ≥ 100", "count 10–99", "count < 10"];

/// The label of a word: how often it occurs in the training captions, in three bands.
fn frequency_band(count: u64) -> &'static str {
    match count {
        100.. => FREQUENCY_BANDS[0],
        10..=99 => FREQUENCY_BANDS[1],
        _ => FREQUENCY_BANDS[2],
    }
}

fn map_words(
    ctx: &StageContext,
    settings: &Settings,
    embed_dir: &Path,
) -> Result<MapSummary, StageError> {
    let WordEmbeddings {
        tokens,
        counts,
        vectors: Vectors {
            values: vectors,
            dim,
        },
    } = WordEmbeddings::read(embed_dir)?;

    // Padding, start, end and unknown are not words: they would only crowd the map.
    let words: Vec<usize> = (0..tokens.len())
        .filter(|&r| !SPECIAL_TOKENS.contains(&tokens[r].as_str()))
        .collect();
    let rows: Vec<usize> = sample_rows(
        words.len(),
        settings.max_points,
        settings.seed,
        WORD_SAMPLE_STREAM,
    )
    .into_iter()
    .map(|i| words[i])
    .collect();
    ctx.progress
        .start(settings.iterations as u64, "t-SNE of word embeddings");
    let map = tsne(
        &gather(&vectors, dim, &rows),
        dim,
        &settings.tsne(settings.perplexity_words, WORD_MAP_STREAM),
        ctx.progress,
    );
    let labels: Vec<String> = rows
        .iter()
        .map(|&r| frequency_band(counts[r]).to_string())
        .collect();
    let mapped_tokens: Vec<String> = rows.iter().map(|&r| tokens[r].clone()).collect();
    // Only the most frequent words are written out: all of a real vocabulary's would cover
    // each other.
    let mapped_counts: Vec<u64> = rows.iter().map(|&r| counts[r]).collect();
    let written = most_frequent(&mapped_tokens, &mapped_counts, settings.word_labels);
    write_map(
        &ctx.out_dir.join(WORD_TSNE),
        "token",
        mapped_tokens.iter().map(String::as_str).collect(),
        &map.positions,
        &labels,
    )?;
    plot::word_plot(
        &ctx.out_dir.join(WORD_PLOT),
        &format!(
            "t-SNE of {} word embeddings (perplexity {}){}",
            rows.len(),
            perplexity_text(map.perplexity),
            if settings.word_labels < rows.len() {
                format!(", the {} most frequent written", settings.word_labels)
            } else {
                String::new()
            }
        ),
        &map.positions,
        &mapped_tokens,
        &written,
        &labels,
        &FREQUENCY_BANDS,
    )?;
    Ok(MapSummary::of(&map, words.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specs::embed::IMAGE_EMBEDDINGS;
    use crate::table::column;
    use crate::{NoProgress, ParamValue, StageInput};

    /// Writes a small embed output: `images` image rows in three clusters whose files are real
    /// JPEGs under `dir/pictures`, named relative to `dir` (the files root of `run_stage`), and a
    /// vocabulary with the special tokens.
    fn write_embed_dir(dir: &Path, images: usize) -> Vec<String> {
        std::fs::create_dir_all(dir).unwrap();
        let dim = 6;
        let ids: Vec<String> = (0..images).map(|i| format!("img_{i:03}.jpg")).collect();
        let picture_dir = dir.join("pictures");
        std::fs::create_dir_all(&picture_dir).unwrap();
        let mut hashes = Vec::new();
        let paths: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let file = picture_dir.join(id);
                let shade = (i * 40 % 256) as u8;
                image::RgbImage::from_pixel(40, 30, image::Rgb([shade, 90, 200]))
                    .save(&file)
                    .unwrap();
                hashes.push(crate::hash_file(&file).unwrap());
                format!("pictures/{id}")
            })
            .collect();
        let vectors: Vec<f32> = (0..images)
            .flat_map(|i| (0..dim).map(move |d| ((i % 3) * 10 + d) as f32 + (i as f32) * 0.01))
            .collect();
        let splits = (0..images).map(|i| if i % 4 == 0 { "test" } else { "train" });
        ImageEmbeddings {
            image_ids: ids.clone(),
            splits: splits.map(String::from).collect(),
            paths,
            hashes,
            vectors: Vectors {
                values: vectors,
                dim,
            },
        }
        .write(dir)
        .unwrap();

        let words = [
            "<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "star",
            "above", "below", "two", "three", "on", "the",
        ];
        let counts: Vec<u64> = (0..words.len() as u64).map(|i| i * i * 2).collect();
        let word_vectors: Vec<f32> = (0..words.len())
            .flat_map(|i| (0..4).map(move |d| ((i * 7 + d * 3) % 11) as f32))
            .collect();
        WordEmbeddings {
            tokens: words.map(String::from).into(),
            counts,
            vectors: Vectors {
                values: word_vectors,
                dim: 4,
            },
        }
        .write(dir)
        .unwrap();
        ids
    }

    /// A demo output holding only the scenes table, labelling every image but the first.
    fn write_scenes(dir: &Path, ids: &[String]) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(SCENES_TABLE);
        let labelled = &ids[1..];
        let schema = Arc::new(Schema::new(vec![
            Field::new("image_id", DataType::Utf8, false),
            Field::new("shape", DataType::Utf8, false),
            Field::new("colour", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(labelled)),
            Arc::new(StringArray::from_iter_values(
                labelled.iter().map(|_| "circle"),
            )),
            Arc::new(StringArray::from_iter_values(
                labelled.iter().map(|_| "red"),
            )),
        ];
        write_parquet(&path, &batch(&path, schema, columns).unwrap()).unwrap();
    }

    fn params(overrides: &[(&str, ParamValue)]) -> Params {
        let given = overrides
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        Params::with_defaults(KIND.params, given)
    }

    fn run_stage(
        inputs: &[StageInput],
        out_dir: &Path,
        overrides: &[(&str, ParamValue)],
    ) -> Result<StageReport, StageError> {
        std::fs::create_dir_all(out_dir).unwrap();
        let params = params(overrides);
        let mut job =
            crate::StageJob::new("tsne", "tsne", params, inputs.to_vec(), out_dir, out_dir);
        // The pictures' names are relative to the embed output (see `write_embed_dir`).
        job.files_root = inputs
            .iter()
            .find(|i| i.kind == "embed")
            .map(|i| i.dir.clone());
        let ctx = StageContext::new(&job, &NoProgress);
        (KIND.run)(&ctx)
    }

    fn input(kind: &str, dir: &Path) -> StageInput {
        StageInput {
            name: kind.to_string(),
            kind: kind.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    fn fast() -> Vec<(&'static str, ParamValue)> {
        vec![("iterations", ParamValue::Int(300))]
    }

    /// (key, x, y, label) rows of a map table.
    fn read_map(path: &Path, key: &str) -> Vec<(String, f32, f32, String)> {
        let table = read_parquet(path).unwrap();
        let keys = strings(path, &table, key).unwrap();
        let labels = strings(path, &table, "label").unwrap();
        let xs = column::<Float32Array>(path, &table, "x").unwrap().values();
        let ys = column::<Float32Array>(path, &table, "y").unwrap().values();
        (0..keys.len())
            .map(|i| (keys[i].clone(), xs[i], ys[i], labels[i].clone()))
            .collect()
    }

    #[test]
    fn stage_writes_both_maps_and_both_plots() {
        let dir = tempfile::tempdir().unwrap();
        let embed = dir.path().join("embed");
        let demo = dir.path().join("demo");
        let ids = write_embed_dir(&embed, 45);
        write_scenes(&demo, &ids);
        let out = dir.path().join("out");
        let inputs = [input("embed", &embed), input("demo_data", &demo)];
        let report = run_stage(&inputs, &out, &fast()).unwrap();

        let images = read_map(&out.join(IMAGE_TSNE), "image_id");
        assert_eq!(images.len(), 45);
        assert_eq!(images.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), ids);
        // The first image has no scene, so it falls back to its split.
        assert_eq!(images[0].3, "test");
        assert!(images[1..].iter().all(|r| r.3 == "red circle"));
        assert!(images.iter().all(|r| r.1.is_finite() && r.2.is_finite()));

        let words = read_map(&out.join(WORD_TSNE), "token");
        assert_eq!(words.len(), 12, "the four special tokens are left out");
        assert!(words.iter().all(|w| !w.0.starts_with('<')));
        // counts are 2·i²: "a" (i = 4) is 32, "the" (i = 15) 450, "<unk>" would be 18.
        let label_of = |token: &str| words.iter().find(|w| w.0 == token).unwrap().3.clone();
        assert_eq!(label_of("a"), "count 10–99");
        assert_eq!(label_of("the"), "count ≥ 100");

        for plot in [IMAGE_PLOT, WORD_PLOT] {
            let picture = image::open(out.join(plot)).unwrap();
            assert_eq!(
                (picture.width(), picture.height()),
                (plot::PLOT_SIZE, plot::PLOT_SIZE)
            );
            // Something besides the white background was drawn.
            let rgb = picture.to_rgb8();
            let inked = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
            assert!(inked > 1000, "{plot}: only {inked} non-white pixels");
        }
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(report.notes[0].starts_with("45 images mapped at perplexity 14.67"));
    }

    #[test]
    fn a_missing_or_changed_picture_fails_the_stage_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let embed = dir.path().join("embed");
        write_embed_dir(&embed, 30);
        let inputs = [input("embed", &embed)];
        let changed = embed.join("pictures").join("img_007.jpg");
        image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]))
            .save(&changed)
            .unwrap();
        let err = run_stage(&inputs, &dir.path().join("a"), &fast())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("img_007.jpg") && err.contains("content differs"),
            "{err}"
        );
        std::fs::remove_file(&changed).unwrap();
        let err = run_stage(&inputs, &dir.path().join("b"), &fast())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("img_007.jpg") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn stage_is_deterministic_and_labels_by_split_without_demo() {
        let dir = tempfile::tempdir().unwrap();
        let embed = dir.path().join("embed");
        write_embed_dir(&embed, 30);
        let inputs = [input("embed", &embed)];
        let run = |name: &str, seed: i64| {
            let out = dir.path().join(name);
            let mut overrides = fast();
            overrides.push(("seed", ParamValue::Int(seed)));
            run_stage(&inputs, &out, &overrides).unwrap();
            (
                read_map(&out.join(IMAGE_TSNE), "image_id"),
                read_map(&out.join(WORD_TSNE), "token"),
            )
        };
        let first = run("a", 7);
        assert_eq!(first, run("b", 7));
        let other = run("c", 8);
        assert_ne!(first.0, other.0);
        assert_ne!(first.1, other.1);
        assert!(first
            .0
            .iter()
            .all(|row| row.3 == "train" || row.3 == "test"));
    }

    #[test]
    fn max_points_maps_a_seeded_sample() {
        let dir = tempfile::tempdir().unwrap();
        let embed = dir.path().join("embed");
        let ids = write_embed_dir(&embed, 40);
        let out = dir.path().join("out");
        let mut overrides = fast();
        overrides.push(("max_points", ParamValue::Int(25)));
        let report = run_stage(&[input("embed", &embed)], &out, &overrides).unwrap();
        let images = read_map(&out.join(IMAGE_TSNE), "image_id");
        assert_eq!(images.len(), 25);
        // A sample in table order, without repeats.
        let positions: Vec<usize> = images
            .iter()
            .map(|row| ids.iter().position(|id| *id == row.0).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        assert!(report.notes[0].contains("(a sample of 40)"));
        assert_eq!(sample_rows(40, 25, 7, 1), sample_rows(40, 25, 7, 1));
        assert_ne!(sample_rows(40, 25, 7, 1), sample_rows(40, 25, 8, 1));
    }

    #[test]
    fn maps_chooses_which_embeddings_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let embed = dir.path().join("embed");
        write_embed_dir(&embed, 20);
        let inputs = [input("embed", &embed)];
        let out = dir.path().join("words-only");
        let mut only_words = fast();
        only_words.push(("maps", ParamValue::Str(" words ".into())));
        let report = run_stage(&inputs, &out, &only_words).unwrap();
        assert!(out.join(WORD_TSNE).is_file() && out.join(WORD_PLOT).is_file());
        assert!(!out.join(IMAGE_TSNE).exists() && !out.join(IMAGE_PLOT).exists());
        assert_eq!(report.notes.len(), 1);
        assert!(
            report.notes[0].contains("words mapped"),
            "{:?}",
            report.notes
        );

        for (maps, expected) in [
            (
                "images, clouds",
                "unknown map `clouds`; the maps are images, words",
            ),
            (" , ", "names no map"),
        ] {
            let mut bad = fast();
            bad.push(("maps", ParamValue::Str(maps.into())));
            let err = run_stage(&inputs, &dir.path().join("bad"), &bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("param `maps`") && err.contains(expected),
                "{err}"
            );
        }
    }

    #[test]
    fn a_missing_embed_input_or_table_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let err = run_stage(&[input("demo_data", dir.path())], &out, &fast()).unwrap_err();
        assert!(err.to_string().contains("`embed`"), "{err}");
        let err = run_stage(&[input("embed", dir.path())], &out, &fast()).unwrap_err();
        assert!(err.to_string().contains(IMAGE_EMBEDDINGS), "{err}");
    }

    #[test]
    fn the_most_frequent_words_are_written() {
        let words: Vec<String> = ["a", "red", "on", "zebra", "circle"]
            .iter()
            .map(|w| w.to_string())
            .collect();
        let chosen = most_frequent(&words, &[50, 7, 7, 1, 30], 3);
        // a (50), circle (30), then the tie of 7 goes to "on" before "red".
        assert_eq!(chosen, [true, false, true, false, true]);
        assert_eq!(most_frequent(&words, &[1; 5], 0), [false; 5]);
        assert_eq!(most_frequent(&words, &[1; 5], 10), [true; 5]);
    }

    #[test]
    fn frequency_bands() {
        assert_eq!(frequency_band(0), "count < 10");
        assert_eq!(frequency_band(9), "count < 10");
        assert_eq!(frequency_band(10), "count 10–99");
        assert_eq!(frequency_band(99), "count 10–99");
        assert_eq!(frequency_band(100), "count ≥ 100");
    }
}
