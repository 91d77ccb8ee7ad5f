//! Stage kind `report`: one self-contained HTML page for judging the trained network by eye. It
//! shows the pipeline that produced it (graph, keys, times, and what the run computed or reused),
//! the metrics, the training curves, the t-SNE maps, test pictures with their generated and
//! reference captions, the test pictures with the worst and the best captions, and for a few
//! pictures, words and captions their similar pictures, similar
//! words and the pictures found by inverting the captioner.
//!
//! Every picture is inlined as a `data:` URI, so `report.html` opens from disk with no server and
//! no network; the two drawn figures are also written beside it as PNG files.

mod charts;
mod html;

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

use crate::captions::SPECIAL_TOKENS;
use crate::metrics::SimilarityIndex;
use crate::specs::embed::{ImageEmbeddings, WordEmbeddings};
use crate::specs::evaluate::{
    read_examples, read_metrics, read_per_image, read_ranks, Example, ImageScores, Metric, Rank,
    PER_IMAGE_TABLE,
};
use crate::specs::train::{read_log, EpochLog};
use crate::tsne::{IMAGE_PLOT, WORD_PLOT};
use crate::{
    input_of_kind, Effect, InputRule, ParamDefault, ParamSpec, ParamType, StageContext, StageError,
    StageKind, StageReport, UpstreamRecord,
};
use charts::{GraphNode, NodeState};
use html::{data_uri, escape};

pub const KIND: StageKind = StageKind {
    name: "report",
    version: 3,
    about: "One self-contained HTML page: pipeline, metrics, training curves, t-SNE maps, \
            example captions, worst and best captions, and retrievals",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["train", "evaluate", "embed", "tsne"],
        min: 3,
        max: 4,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::NoLibtorch,
    run,
    shards: None,
    files_root: None,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "title",
        ty: ParamType::Str,
        default: ParamDefault::Str("onenet report"),
        effect: Effect::Output,
        help: "Title of the page",
    },
    ParamSpec {
        name: "examples",
        ty: ParamType::Int { min: 0, max: 1000 },
        default: ParamDefault::Int(12),
        effect: Effect::Output,
        help: "Test pictures shown with their generated and reference captions",
    },
    ParamSpec {
        name: "queries",
        ty: ParamType::Int { min: 0, max: 100 },
        default: ParamDefault::Int(4),
        effect: Effect::Output,
        help: "Pictures shown with their similar pictures, and captions with the pictures \
               inversion found for them",
    },
    ParamSpec {
        name: "neighbours",
        ty: ParamType::Int { min: 1, max: 50 },
        default: ParamDefault::Int(5),
        effect: Effect::Output,
        help: "Similar pictures per picture, similar words per word, found pictures per caption",
    },
    ParamSpec {
        name: "words",
        ty: ParamType::Str,
        default: ParamDefault::Str(""),
        effect: Effect::Output,
        help: "Comma-separated words shown with their similar words (empty: the most frequent \
               words of four letters or more)",
    },
    ParamSpec {
        name: "thumbnail_size",
        ty: ParamType::Int { min: 16, max: 1024 },
        default: ParamDefault::Int(128),
        effect: Effect::Output,
        help: "Longest side of the inlined pictures, in pixels",
    },
];

/// The page.
pub const REPORT_FILE: &str = "report.html";
/// The pipeline graph, also inlined in the page.
pub const PIPELINE_PLOT: &str = "pipeline.png";
/// The training curves, also inlined in the page.
pub const TRAINING_PLOT: &str = "training.png";

/// The ids of the page's sections, in order (a browser test looks for them).
pub const SECTIONS: [&str; 9] = [
    "pipeline",
    "metrics",
    "training",
    "maps",
    "captions",
    "caption-scores",
    "similar-images",
    "similar-words",
    "find-images",
];

/// The params of one run, in the types the stage works in.
struct Settings {
    title: String,
    examples: usize,
    queries: usize,
    neighbours: usize,
    words: Vec<String>,
    thumbnail_size: u32,
}

impl Settings {
    fn from_params(params: &crate::Params) -> Result<Self, StageError> {
        let count = |name: &str| -> Result<usize, StageError> {
            usize::try_from(params.int(name)?).map_err(|_| StageError::Param {
                name: name.to_string(),
                message: "must not be negative".to_string(),
            })
        };
        Ok(Settings {
            title: params.str("title")?.to_string(),
            examples: count("examples")?,
            queries: count("queries")?,
            neighbours: count("neighbours")?.max(1),
            words: params
                .str("words")?
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect(),
            thumbnail_size: count("thumbnail_size")?.clamp(16, 1024) as u32,
        })
    }
}

/// Inlined thumbnails of the pictures the page shows, made once per picture.
struct Thumbnails<'a> {
    /// Each picture's file (as the tables name it) and content hash, by image id.
    files: HashMap<&'a str, (&'a str, &'a str)>,
    job: &'a crate::StageJob,
    size: u32,
    made: HashMap<String, Option<String>>,
    /// (image id, why it could not be shown).
    failures: Vec<(String, String)>,
}

impl<'a> Thumbnails<'a> {
    /// An `<img>` of picture `id` (or a visible placeholder if it cannot be read), `title` as its
    /// tooltip.
    fn tag(&mut self, id: &str, title: &str) -> String {
        if !self.made.contains_key(id) {
            let uri = match self.make(id) {
                Ok(uri) => Some(uri),
                Err(why) => {
                    self.failures.push((id.to_string(), why));
                    None
                }
            };
            self.made.insert(id.to_string(), uri);
        }
        match &self.made[id] {
            Some(uri) => format!(
                "<img src=\"{uri}\" alt=\"{}\" title=\"{}\">",
                escape(id),
                escape(title)
            ),
            None => format!(
                "<span class=\"missing\" title=\"{}\">{} could not be read</span>",
                escape(title),
                escape(id)
            ),
        }
    }

    fn make(&self, id: &str) -> Result<String, String> {
        let (name, hash) = self
            .files
            .get(id)
            .ok_or_else(|| "not in the image embeddings table".to_string())?;
        let file = self.job.file_path(name).map_err(|e| e.to_string())?;
        let bytes = crate::files::read_checked(&file, hash).map_err(|e| e.to_string())?;
        // The project's reader: the thumbnail shows what the network was fed, as displayed.
        let picture =
            crate::image_file::decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let small = image::DynamicImage::ImageRgb8(picture.rgb)
            .thumbnail(self.size, self.size)
            .into_rgb8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&small)
            .map_err(|e| format!("{}: encoding thumbnail: {e}", file.display()))?;
        Ok(data_uri("image/jpeg", &jpeg))
    }
}

fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let settings = Settings::from_params(&ctx.params)?;
    let train_dir = &input_of_kind(&ctx.inputs, "train")?.dir;
    let evaluate_dir = &input_of_kind(&ctx.inputs, "evaluate")?.dir;
    let embed_dir = &input_of_kind(&ctx.inputs, "embed")?.dir;
    let tsne_dir = ctx
        .inputs
        .iter()
        .find(|i| i.kind == "tsne")
        .map(|i| i.dir.as_path());

    let log = read_log(train_dir)?;
    let metrics = read_metrics(evaluate_dir)?;
    let examples = read_examples(evaluate_dir)?;
    let queries = read_ranks(evaluate_dir)?;
    // An `evaluate` output from before per-image scores has no such table: the section says so.
    let per_image = if evaluate_dir.join(PER_IMAGE_TABLE).is_file() {
        Some(read_per_image(evaluate_dir)?)
    } else {
        None
    };
    let image_table = ImageEmbeddings::read(embed_dir)?;
    let image_files = image_table.paths;
    let image_hashes = image_table.hashes;
    let images = image_table.vectors.into_index(image_table.image_ids);
    let word_table = WordEmbeddings::read(embed_dir)?;
    let word_counts = word_table.counts;
    let words = word_table.vectors.into_index(word_table.tokens);

    let mut warnings = Vec::new();
    let mut thumbnails = Thumbnails {
        files: images
            .ids()
            .iter()
            .map(String::as_str)
            .zip(
                image_files
                    .iter()
                    .map(String::as_str)
                    .zip(image_hashes.iter().map(String::as_str)),
            )
            .collect(),
        job: ctx.job,
        size: settings.thumbnail_size,
        made: HashMap::new(),
        failures: Vec::new(),
    };

    ctx.progress.start(9, "writing the report");
    let mut body = String::new();
    let computed = ctx.lineage.iter().filter(|r| r.computed_in_run).count();
    let _ = write!(
        body,
        "<h1>{}</h1>\n<p class=\"lead\">Made by stage <code>{}</code> at {} from {} upstream \
         stages ({computed} computed in the run that made this page, {} reused from the \
         artifact store).</p>\n",
        escape(&settings.title),
        escape(&ctx.name),
        utc_text(now_unix()),
        ctx.lineage.len(),
        ctx.lineage.len() - computed,
    );
    pipeline_section(ctx, &mut body)?;
    ctx.progress.inc(1);
    metrics_section(&metrics, &mut body);
    ctx.progress.inc(1);
    training_section(ctx, &log, &mut body)?;
    ctx.progress.inc(1);
    maps_section(tsne_dir, &mut body, &mut warnings)?;
    ctx.progress.inc(1);
    captions_section(&examples, settings.examples, &mut thumbnails, &mut body);
    ctx.progress.inc(1);
    caption_scores_section(per_image.as_deref(), &mut thumbnails, &mut body);
    ctx.progress.inc(1);
    similar_images_section(&examples, &images, &settings, &mut thumbnails, &mut body);
    ctx.progress.inc(1);
    similar_words_section(&words, &word_counts, &settings, &mut body, &mut warnings);
    ctx.progress.inc(1);
    find_images_section(&queries, &settings, &mut thumbnails, &mut body);
    ctx.progress.inc(1);

    // Every picture was decoded by the `images` stage: one that cannot be read now is missing or
    // changed since, and a page made without it would be stored under a key that promises it.
    if let Some((id, why)) = thumbnails.failures.first() {
        return Err(StageError::Input(format!(
            "{} picture(s) could not be read, so no report was written; first: {id}: {why}",
            thumbnails.failures.len()
        )));
    }
    let path = ctx.out_dir.join(REPORT_FILE);
    let page = html::page(&settings.title, &body);
    std::fs::write(&path, &page).map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport {
        device: None,
        metrics: Default::default(),
        warnings,
        notes: vec![format!(
            "{REPORT_FILE}: {} KiB, {} pictures inlined",
            page.len().div_ceil(1024),
            thumbnails.made.values().filter(|t| t.is_some()).count()
        )],
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `unix` seconds as "YYYY-MM-DD HH:MM UTC".
pub fn utc_text(unix: u64) -> String {
    // Days since 1970-01-01 to a civil date, by the usual era arithmetic (400-year cycles).
    let days = (unix / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let seconds = unix % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60
    )
}

/// "1.2 s", "3 min 05 s".
fn duration_text(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        let whole = seconds.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

fn png_uri(path: &Path) -> Result<String, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    Ok(data_uri("image/png", &bytes))
}

fn section_start(body: &mut String, id: &str, heading: &str, lead: &str) {
    let _ = write!(
        body,
        "<section id=\"{id}\">\n<h2>{heading}</h2>\n<p class=\"lead\">{lead}</p>\n"
    );
}

fn pipeline_section(ctx: &StageContext, body: &mut String) -> Result<(), StageError> {
    section_start(
        body,
        "pipeline",
        "Pipeline",
        "The stages this page was made from, in the order they run. Orange: computed by the run \
         that made this page; green: reused from the artifact store (same key, so same inputs, \
         params and code version).",
    );
    let mut nodes: Vec<GraphNode> = ctx
        .lineage
        .iter()
        .map(|r| GraphNode {
            name: r.name.clone(),
            kind: r.kind.clone(),
            detail: short_key(&r.key).to_string(),
            state: if r.computed_in_run {
                NodeState::Computed
            } else {
                NodeState::Reused
            },
            inputs: r.inputs.clone(),
        })
        .collect();
    nodes.push(GraphNode {
        name: ctx.name.to_string(),
        kind: ctx.kind.to_string(),
        detail: "this page".to_string(),
        state: NodeState::ThisPage,
        inputs: ctx.inputs.iter().map(|i| i.name.clone()).collect(),
    });
    let graph = ctx.out_dir.join(PIPELINE_PLOT);
    charts::pipeline_graph(&graph, &nodes)?;
    let _ = write!(
        body,
        "<img class=\"figure\" src=\"{}\" alt=\"pipeline graph\">\n<table>\n<tr><th>stage</th>\
         <th>kind</th><th>key</th><th>state</th><th>made</th><th>time</th><th>inputs</th>\
         <th>params</th></tr>\n",
        png_uri(&graph)?
    );
    for record in &ctx.lineage {
        body.push_str(&lineage_row(record));
    }
    let _ = write!(
        body,
        "<tr><td>{}</td><td>{}</td><td></td><td class=\"this-page\">this page</td><td></td>\
         <td></td><td>{}</td><td></td></tr>\n</table>\n</section>\n",
        escape(&ctx.name),
        escape(&ctx.kind),
        escape(
            &ctx.inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(())
}

fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

fn lineage_row(record: &UpstreamRecord) -> String {
    let state = if record.computed_in_run {
        "computed"
    } else {
        "reused"
    };
    format!(
        "<tr><td>{}</td><td>{}</td><td><code title=\"{}\">{}</code></td><td class=\"{state}\">\
         {state}</td><td class=\"nowrap\">{}</td><td class=\"num\">{}</td><td>{}</td>\
         <td><code>{}</code></td></tr>\n",
        escape(&record.name),
        escape(&record.kind),
        escape(&record.key),
        escape(short_key(&record.key)),
        utc_text(record.created_unix),
        duration_text(record.seconds),
        escape(&record.inputs.join(", ")),
        escape(&record.params.join(", ")),
    )
}

fn number_text(value: f64) -> String {
    if value.is_nan() {
        "–".to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e9 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// A table with one row per method and one column per metric name in `names`.
fn pivot_table(metrics: &[&Metric], names: &[&str], body: &mut String) {
    let mut methods: Vec<&str> = Vec::new();
    for m in metrics {
        if !methods.contains(&m.method.as_str()) {
            methods.push(&m.method);
        }
    }
    body.push_str("<table>\n<tr><th>method</th>");
    for name in names {
        let _ = write!(body, "<th>{}</th>", escape(name));
    }
    body.push_str("</tr>\n");
    for method in methods {
        let _ = write!(body, "<tr><td>{}</td>", escape(method));
        for name in names {
            let value = metrics
                .iter()
                .find(|m| m.method == method && m.name == *name)
                .map_or(f64::NAN, |m| m.value);
            let _ = write!(body, "<td class=\"num\">{}</td>", number_text(value));
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>\n");
}

fn metrics_section(metrics: &[Metric], body: &mut String) {
    section_start(
        body,
        "metrics",
        "Metrics",
        "Measured by the <code>evaluate</code> stage on the held-out split.",
    );
    const CAPTION: [&str; 6] = ["bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l"];
    const RETRIEVAL: [&str; 5] = ["r1", "r5", "r10", "median_rank", "queries"];
    const TRUTH: &str = "truth_accuracy";
    let of = |names: &[&str]| -> Vec<&Metric> {
        metrics
            .iter()
            .filter(|m| names.contains(&m.name.as_str()))
            .collect()
    };
    // The truth-based accuracy exists when `evaluate` read the demo's scenes.
    let truth = metrics.iter().any(|m| m.name == TRUTH);
    let _ = writeln!(
        body,
        "<h3>Captions: corpus scores against every reference</h3>\n<p class=\"note\">On words: \
         the generated words against the references' own, where a generated \
         <code>&lt;unk&gt;</code> matches nothing. BLEU as NLTK's <code>corpus_bleu</code>; \
         CIDEr-D (0 to about 10) and ROUGE-L as the COCO caption evaluation code{}.</p>",
        if truth {
            "; <code>truth_accuracy</code>: the fraction of pictures whose caption names the \
             right shape, colour and count of every object it mentions"
        } else {
            ""
        }
    );
    let caption: Vec<&str> = CAPTION.into_iter().chain(truth.then_some(TRUTH)).collect();
    pivot_table(&of(&caption), &caption, body);
    body.push_str(
        "<h3>Caption → picture retrieval</h3>\n<p class=\"note\"><code>invert_nearest</code>: \
         the pictures nearest (cosine) the picture embedding that makes the caption most likely, \
         found by gradient descent through the frozen captioner; <code>invert</code>: the same, \
         with the nearest few re-ordered by how likely the captioner finds the caption given \
         each (what <code>find-images</code> does); <code>embed</code>: mean word embedding \
         against picture embedding (the baseline).</p>\n",
    );
    pivot_table(&of(&RETRIEVAL), &RETRIEVAL, body);
    let others: Vec<&Metric> = metrics
        .iter()
        .filter(|m| !caption.contains(&m.name.as_str()) && !RETRIEVAL.contains(&m.name.as_str()))
        .collect();
    if !others.is_empty() {
        body.push_str("<h3>Other figures</h3>\n<table>\n<tr><th>metric</th><th>method</th><th>value</th></tr>\n");
        for m in others {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(&m.name),
                escape(&m.method),
                number_text(m.value)
            );
        }
        body.push_str("</table>\n");
    }
    body.push_str("</section>\n");
}

fn training_section(
    ctx: &StageContext,
    log: &[EpochLog],
    body: &mut String,
) -> Result<(), StageError> {
    section_start(
        body,
        "training",
        "Training",
        "Mean masked cross-entropy per real token on the training and dev captions after each \
         epoch, and the dev BLEU-4 and CIDEr-D of greedy captions; the dashed line marks the \
         epoch whose weights the model keeps.",
    );
    if let Some(kept) = log.iter().find(|l| l.kept) {
        let _ = writeln!(
            body,
            "<p>Kept epoch {} of {} (dev CIDEr-D {}, dev BLEU-4 {}); last learning rate {}.</p>",
            kept.epoch,
            log.len(),
            number_text(kept.dev_cider_d),
            number_text(kept.dev_bleu4),
            log.last()
                .map_or(String::new(), |l| format!("{:e}", l.learning_rate))
        );
    }
    let plot = ctx.out_dir.join(TRAINING_PLOT);
    charts::training_curves(&plot, log)?;
    let _ = write!(
        body,
        "<img class=\"figure\" src=\"{}\" alt=\"training curves\">\n</section>\n",
        png_uri(&plot)?
    );
    Ok(())
}

fn maps_section(
    tsne_dir: Option<&Path>,
    body: &mut String,
    warnings: &mut Vec<String>,
) -> Result<(), StageError> {
    section_start(
        body,
        "maps",
        "Embedding maps (t-SNE)",
        "Picture embeddings (thumbnails framed by what the picture shows, when known) and word \
         embeddings (coloured by frequency), laid out in two dimensions so that neighbours stay \
         neighbours.",
    );
    // A `tsne` stage may draw one map or both (its `maps` param).
    let plots: Vec<(std::path::PathBuf, &str)> = tsne_dir
        .map(|dir| {
            [
                (IMAGE_PLOT, "t-SNE of picture embeddings"),
                (WORD_PLOT, "t-SNE of word embeddings"),
            ]
            .into_iter()
            .map(|(file, alt)| (dir.join(file), alt))
            .filter(|(path, _)| path.is_file())
            .collect()
        })
        .unwrap_or_default();
    match tsne_dir {
        Some(_) if !plots.is_empty() => {
            body.push_str("<div class=\"maps\">\n");
            for (path, alt) in plots {
                let _ = writeln!(body, "<img src=\"{}\" alt=\"{alt}\">", png_uri(&path)?);
            }
            body.push_str("</div>\n");
        }
        Some(_) => {
            warnings.push("the `tsne` input drew no map".to_string());
            body.push_str(
                "<p class=\"note\">No maps: the <code>tsne</code> input drew none.</p>\n",
            );
        }
        None => {
            warnings.push("no `tsne` input: the page has no embedding maps".to_string());
            body.push_str(
                "<p class=\"note\">No maps: add a <code>tsne</code> stage to this stage's \
                 inputs.</p>\n",
            );
        }
    }
    body.push_str("</section>\n");
    Ok(())
}

fn captions_section(
    examples: &[Example],
    count: usize,
    thumbnails: &mut Thumbnails,
    body: &mut String,
) {
    section_start(
        body,
        "captions",
        "Generated captions",
        "Held-out pictures with the caption the network writes (greedy and beam search) and the \
         first of the captions people wrote for them.",
    );
    body.push_str("<div class=\"grid\">\n");
    for example in examples.iter().take(count) {
        let _ = writeln!(
            body,
            "<div class=\"card\">{}<dl><dt>greedy</dt><dd>{}</dd><dt>beam search</dt><dd>{}</dd>\
             <dt>reference</dt><dd>{}</dd></dl><code>{}</code></div>",
            thumbnails.tag(&example.image_id, &example.image_id),
            escape(&example.greedy),
            escape(&example.beam),
            escape(&example.reference),
            escape(&example.image_id),
        );
    }
    body.push_str("</div>\n</section>\n");
}

/// How many pictures the worst and the best captions each show.
const WORST_AND_BEST: usize = 6;

/// The test pictures whose beam-search captions have the lowest and the highest CIDEr-D.
fn caption_scores_section(
    per_image: Option<&[ImageScores]>,
    thumbnails: &mut Thumbnails,
    body: &mut String,
) {
    section_start(
        body,
        "caption-scores",
        "Worst and best captions",
        "The test pictures whose beam-search caption has the lowest CIDEr-D, then those with the \
         highest, with every reference caption (as the metrics saw them: words). Every picture's \
         scores are in the <code>evaluate</code> stage's <code>per_image.parquet</code>.",
    );
    let Some(per_image) = per_image else {
        body.push_str(
            "<p class=\"note\">This <code>evaluate</code> output has no per-image scores.</p>\n\
             </section>\n",
        );
        return;
    };
    let mut order: Vec<&ImageScores> = per_image.iter().collect();
    // Lowest first; ties (and NaN, last) by image id so the page does not depend on the sort.
    order.sort_by(|a, b| {
        a.cider_d_beam
            .partial_cmp(&b.cider_d_beam)
            .unwrap_or_else(|| a.cider_d_beam.is_nan().cmp(&b.cider_d_beam.is_nan()))
            .then_with(|| a.image_id.cmp(&b.image_id))
    });
    let worst = order.len().min(WORST_AND_BEST);
    let best = (order.len() - worst).min(WORST_AND_BEST);
    for (title, images) in [
        ("Worst", order[..worst].to_vec()),
        (
            "Best",
            order[order.len() - best..].iter().rev().copied().collect(),
        ),
    ] {
        let _ = writeln!(body, "<h3>{title}</h3>\n<div class=\"grid\">");
        for image in images {
            let references: String = image
                .references
                .iter()
                .map(|r| format!("<li>{}</li>", escape(r)))
                .collect();
            let _ = writeln!(
                body,
                "<div class=\"card\">{}<dl><dt>beam search: CIDEr-D {}, BLEU-4 {}</dt><dd>{}</dd>\
                 <dt>greedy: CIDEr-D {}, BLEU-4 {}</dt><dd>{}</dd><dt>references</dt>\
                 <dd><ul>{references}</ul></dd></dl><code>{}</code></div>",
                thumbnails.tag(&image.image_id, &image.image_id),
                number_text(image.cider_d_beam),
                number_text(image.bleu4_beam),
                escape(&image.beam),
                number_text(image.cider_d_greedy),
                number_text(image.bleu4_greedy),
                escape(&image.greedy),
                escape(&image.image_id),
            );
        }
        body.push_str("</div>\n");
    }
    body.push_str("</section>\n");
}

fn figure(thumbnails: &mut Thumbnails, id: &str, caption: &str, class: &str) -> String {
    format!(
        "<figure class=\"{class}\">{}<figcaption>{}</figcaption></figure>",
        thumbnails.tag(id, id),
        caption
    )
}

fn similar_images_section(
    examples: &[Example],
    images: &SimilarityIndex,
    settings: &Settings,
    thumbnails: &mut Thumbnails,
    body: &mut String,
) {
    section_start(
        body,
        "similar-images",
        "Similar pictures",
        "For a few held-out pictures, the pictures whose embeddings are nearest (cosine), from \
         every split; the score is the cosine similarity.",
    );
    for example in examples.iter().take(settings.queries) {
        let Some(row) = images.row_of(&example.image_id) else {
            continue;
        };
        body.push_str("<div class=\"row\">");
        body.push_str(&figure(
            thumbnails,
            &example.image_id,
            &format!("query<br>{}", escape(&example.image_id)),
            "query",
        ));
        for (i, score) in images.neighbours(row, settings.neighbours, |_| true) {
            let id = images.id(i);
            body.push_str(&figure(
                thumbnails,
                id,
                &format!("{score:.3}<br>{}", escape(id)),
                "",
            ));
        }
        body.push_str("</div>\n");
    }
    body.push_str("</section>\n");
}

/// The words to show: those the params name, else the most frequent words of four letters or more
/// (short words are mostly function words).
fn chosen_words(
    words: &SimilarityIndex,
    counts: &[u64],
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Vec<usize> {
    if !settings.words.is_empty() {
        return settings
            .words
            .iter()
            .filter_map(|w| {
                let row = words.row_of(w);
                if row.is_none() {
                    warnings.push(format!(
                        "param `words`: `{w}` is not in the vocabulary; left out"
                    ));
                }
                row
            })
            .collect();
    }
    let mut rows: Vec<usize> = (0..words.len())
        .filter(|&i| !SPECIAL_TOKENS.contains(&words.id(i)) && words.id(i).chars().count() >= 4)
        .collect();
    rows.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    rows.truncate(settings.queries.max(1));
    rows
}

fn similar_words_section(
    words: &SimilarityIndex,
    counts: &[u64],
    settings: &Settings,
    body: &mut String,
    warnings: &mut Vec<String>,
) {
    section_start(
        body,
        "similar-words",
        "Similar words",
        "Words whose learned embeddings are nearest (cosine), special tokens left out.",
    );
    body.push_str("<table>\n<tr><th>word</th><th>nearest words (cosine)</th></tr>\n");
    let is_word = |i: usize| !SPECIAL_TOKENS.contains(&words.id(i));
    for row in chosen_words(words, counts, settings, warnings) {
        let neighbours: Vec<String> = words
            .neighbours(row, settings.neighbours, is_word)
            .into_iter()
            .map(|(i, score)| format!("{} ({score:.3})", escape(words.id(i))))
            .collect();
        let _ = writeln!(
            body,
            "<tr><td><b>{}</b></td><td>{}</td></tr>",
            escape(words.id(row)),
            neighbours.join(", ")
        );
    }
    body.push_str("</table>\n</section>\n");
}

fn find_images_section(
    queries: &[Rank],
    settings: &Settings,
    thumbnails: &mut Thumbnails,
    body: &mut String,
) {
    section_start(
        body,
        "find-images",
        "Pictures found for a caption (inverting the captioner)",
        "For a few held-out captions: the picture the caption was written for, then the pictures \
         whose embeddings are nearest to the embedding inversion found, best first; the right \
         picture is outlined in green.",
    );
    let mut seen: Vec<&str> = Vec::new();
    for query in queries {
        if seen.len() == settings.queries {
            break;
        }
        if seen.contains(&query.image_id.as_str()) {
            continue;
        }
        seen.push(&query.image_id);
        let _ = write!(
            body,
            "<p><b>“{}”</b> — the right picture ranks {}</p>\n<div class=\"row\">",
            escape(&query.caption),
            query.invert_rank
        );
        body.push_str(&figure(
            thumbnails,
            &query.image_id,
            &format!("written for<br>{}", escape(&query.image_id)),
            "query",
        ));
        for (i, id) in query
            .invert_found
            .iter()
            .take(settings.neighbours)
            .enumerate()
        {
            let class = if *id == query.image_id { "hit" } else { "" };
            body.push_str(&figure(
                thumbnails,
                id,
                &format!("#{}<br>{}", i + 1, escape(id)),
                class,
            ));
        }
        body.push_str("</div>\n");
    }
    body.push_str("</section>\n");
}

#[cfg(test)]
mod tests;
