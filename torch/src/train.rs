//! Stage kind `train`: trains the caption model on the ordered pairs with mini-batches, dropout
//! and Adam, measuring dev loss, dev BLEU-4 and dev CIDEr-D every epoch, keeping the best epoch's
//! weights (or the last's), decaying the learning rate on a plateau and stopping early as the
//! params say, checkpointing every epoch so a killed run resumes exactly, and writing the model
//! (safetensors + JSON config + its vocabulary) and a training log.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::features::FeatureMatrix;
use crate::input_dir;
use crate::model::{pad_tokens, CaptionModel, ModelConfig};
use crate::optim::Adam;
use crate::precision::Precision;
use onenet_stages::captions::{
    self, read_reference_words, CaptionWord, Vocabulary, CAPTIONS_TABLE, VOCAB_TABLE,
};
use onenet_stages::coco_metrics::cider_d;
use onenet_stages::metrics::corpus_bleu;
use onenet_stages::specs;
use onenet_stages::specs::order::{read_pairs, Pair};
use onenet_stages::specs::train::{write_log, EpochLog, MODEL_FILE, MODEL_INFO};
use onenet_stages::{StageContext, StageError, StageReport};

const CHECKPOINT_INFO: &str = "checkpoint.json";

/// What `model.json` holds: the network's shape, the vocabulary it was trained on, and every
/// training hyper-parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub config: ModelConfig,
    pub vocab_hash: String,
    pub max_length: usize,
    pub hyper_parameters: BTreeMap<String, String>,
    /// The epoch whose weights were saved (see the `select` param); absent from a checkpoint's
    /// copy, which describes the training rather than its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_epoch: Option<u32>,
}

/// What decides which epoch is kept, when the learning rate decays and when training stops.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Which dev score is maximised; None keeps the last epoch and never stops early.
    pub select: Option<fn(&EpochLog) -> f64>,
    pub learning_rate: f64,
    /// Epochs without a better score before stopping; 0 never stops.
    pub patience: u32,
    pub lr_decay: f64,
    pub lr_patience: u32,
}

/// Where training stands after the epochs of a log, as `Schedule::replay` finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleState {
    /// The epoch whose weights are kept so far.
    pub kept: Option<u32>,
    /// The learning rate of the next epoch.
    pub learning_rate: f64,
    /// Whether training stops here.
    pub stop: bool,
}

impl Schedule {
    fn from_params(p: &onenet_stages::Params) -> Result<Schedule, StageError> {
        let select: Option<fn(&EpochLog) -> f64> = match p.str("select")? {
            "dev_cider" => Some(|l| l.dev_cider_d),
            "dev_bleu4" => Some(|l| l.dev_bleu4),
            _ => None,
        };
        Ok(Schedule {
            select,
            learning_rate: p.float("learning_rate")?,
            patience: p.int("patience")? as u32,
            lr_decay: p.float("lr_decay")?,
            lr_patience: p.int("lr_patience")? as u32,
        })
    }

    /// Replays the decisions over the epochs of `log`, in order: an epoch is kept when its score
    /// is higher than every earlier one (a NaN score, as without dev images, never is: then the
    /// last epoch is kept); after `lr_patience` epochs without a better score the learning rate
    /// is multiplied by `lr_decay` (and the count starts again); after `patience` such epochs
    /// training stops. Derived from the log alone, so a resumed training decides exactly as an
    /// uninterrupted one.
    pub fn replay(&self, log: &[EpochLog]) -> ScheduleState {
        let mut state = ScheduleState {
            kept: None,
            learning_rate: self.learning_rate,
            stop: false,
        };
        let Some(score_of) = self.select else {
            state.kept = log.last().map(|l| l.epoch);
            return state;
        };
        let mut best = f64::NEG_INFINITY;
        let (mut since_best, mut since_decay) = (0u32, 0u32);
        for epoch in log {
            let score = score_of(epoch);
            if score.is_nan() {
                // No dev score to judge by: neither a plateau nor progress.
                continue;
            }
            if score > best {
                best = score;
                state.kept = Some(epoch.epoch);
                since_best = 0;
                since_decay = 0;
            } else {
                since_best += 1;
                since_decay += 1;
                if self.lr_decay < 1.0 && since_decay >= self.lr_patience {
                    state.learning_rate *= self.lr_decay;
                    since_decay = 0;
                }
            }
            state.stop = self.patience > 0 && since_best >= self.patience;
        }
        if state.kept.is_none() {
            state.kept = log.last().map(|l| l.epoch);
        }
        state
    }
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    info: ModelInfo,
    log: Vec<EpochLog>,
    /// The optimiser's step count; its moments are in the epoch's `adam` file (see
    /// `epoch_file`), the weights in its `weights` file.
    optimiser_steps: i64,
}

/// A trained model with its vocabulary, as the tasks load it.
pub struct TrainedModel {
    pub model: CaptionModel,
    pub vocab: Vocabulary,
    pub info: ModelInfo,
}

impl TrainedModel {
    /// Loads what a `train` stage wrote into `dir`, with its weights frozen.
    pub fn load(dir: &Path, device: Device) -> Result<TrainedModel, StageError> {
        let info_path = dir.join(MODEL_INFO);
        let info: ModelInfo = serde_json::from_slice(
            &std::fs::read(&info_path).map_err(|e| StageError::io(&info_path, e))?,
        )
        .map_err(|e| StageError::file(&info_path, e.to_string()))?;
        let vocab = Vocabulary::read(&dir.join(VOCAB_TABLE))?;
        if vocab.hash() != info.vocab_hash {
            return Err(StageError::file(
                &info_path,
                "the vocabulary beside the model is not the one it was trained on",
            ));
        }
        let mut model = CaptionModel::load(info.config.clone(), &dir.join(MODEL_FILE), device)?;
        // A trained model is only used for inference and inversion: frozen weights spare every
        // inversion step the weight gradients (a third of its time).
        model.freeze();
        Ok(TrainedModel { model, vocab, info })
    }
}

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let p = &ctx.params;
    let device = crate::runtime::Runtime::for_stage(ctx)?.device;
    let seed = p.int("seed")? as u64;
    let epochs = p.int("epochs")? as u32;
    let batch_size = p.int("batch_size")? as usize;
    let max_length = p.int("max_length")? as usize;

    let pairs = read_pairs(input_dir(ctx, &specs::order::KIND)?)?;
    let features_dir = input_dir(ctx, &specs::features::KIND)?;
    let features = FeatureMatrix::read(features_dir, device)?;
    // Grid-pooled features hold one vector per region, which the model reads one by one.
    let image_regions = crate::features::pooling_of_output(features_dir)?.regions();
    let captions_dir = input_dir(ctx, &captions::KIND)?;
    let vocab_path = captions_dir.join(VOCAB_TABLE);
    let vocab = Vocabulary::read(&vocab_path)?;
    // Dev BLEU compares words, the references' own: see `reference_words_of`.
    let words_by_caption = read_reference_words(&captions_dir.join(CAPTIONS_TABLE))?;
    let glove = match glove_dir(p, &ctx.base_dir) {
        Some(dir) => Some(crate::glove::vectors_for(&dir, &vocab)?),
        None => None,
    };

    let info = ModelInfo {
        config: ModelConfig {
            vocab_size: vocab.len() as i64,
            feature_dim: features.features.size()[1],
            image_dim: p.int("image_dim")?,
            image_regions,
            embed_dim: p.int("embed_dim")?,
            hidden_dim: p.int("hidden_dim")?,
            rnn: p.str("rnn")?.to_string(),
            pretrained_dim: glove.as_ref().map_or(0, |g| g.dim),
        },
        vocab_hash: vocab.hash(),
        max_length,
        hyper_parameters: p.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        kept_epoch: None,
    };
    let schedule = Schedule::from_params(p)?;
    let dropout = p.float("dropout")?;
    let precision = Precision::of_params(p)?;

    let train: Vec<&Pair> = pairs.iter().filter(|p| p.split == "train").collect();
    let dev: Vec<&Pair> = pairs.iter().filter(|p| p.split == "dev").collect();
    if train.is_empty() {
        return Err(StageError::Input(
            "the order stage has no train pairs".into(),
        ));
    }

    tch::manual_seed(seed as i64);
    let mut model = CaptionModel::new(info.config.clone(), device)?;
    if let Some(glove) = &glove {
        model.set_pretrained_words(&glove.table)?;
    }
    let mut optimizer = Adam::new(&model.vs, p.float("learning_rate")?);
    let (mut log, resumed) = resume(&ctx.scratch_dir, &info, &mut model, &mut optimizer)?;

    let bucket = p.int("bucket")? as usize;
    let lengths: Vec<usize> = train.iter().map(|p| p.tokens.len()).collect();
    let mut state = schedule.replay(&log);
    for epoch in log.len() as u32 + 1..=epochs {
        if state.stop {
            break;
        }
        optimizer.set_learning_rate(state.learning_rate);
        // Dropout masks come from libtorch's generator: seeding it per epoch makes an epoch's
        // masks the same whether the training resumed before it or not.
        tch::manual_seed((seed ^ (u64::from(epoch) << 32)) as i64);
        let start = Instant::now();
        // Each epoch's batches depend only on (seed, epoch), so a resumed run sees the same.
        let batches = epoch_batches(
            &lengths,
            batch_size,
            bucket,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch) << 32)),
        );
        ctx.progress
            .start(batches.len() as u64, &format!("epoch {epoch}/{epochs}"));
        let mut loss_sum = 0.0;
        let mut token_batches = 0usize;
        let mut samples = 0usize;
        for (step, chunk) in batches.iter().enumerate() {
            let batch: Vec<&Pair> = chunk.iter().map(|&i| train[i]).collect();
            samples += batch.len();
            let (images, tokens) = tensors_of(&batch, &features, device);
            let loss =
                model.training_loss(&model.encode_images(&images), &tokens, dropout, precision);
            optimizer.backward_step_clip_norm(&loss, 5.0);
            loss_sum += loss.double_value(&[]);
            token_batches += 1;
            ctx.progress.inc(1);
            // Every tenth batch, and the last, so the bar ends on the epoch's mean loss.
            if step % 10 == 0 || step + 1 == batches.len() {
                let rate = samples as f64 / start.elapsed().as_secs_f64();
                ctx.progress.set_message(&format!(
                    "epoch {epoch}/{epochs} loss {:.3} {rate:.0} samples/s",
                    loss_sum / token_batches as f64
                ));
            }
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let dev_loss = mean_loss(&model, &dev, &features, device);
        let dev = dev_scores(
            &model,
            &dev,
            &features,
            p.int("dev_images")? as usize,
            max_length,
            &vocab,
            &words_by_caption,
        )?;
        log.push(EpochLog {
            epoch,
            train_loss: loss_sum / token_batches.max(1) as f64,
            dev_loss,
            dev_bleu4: dev.bleu4,
            dev_cider_d: dev.cider_d,
            learning_rate: state.learning_rate,
            kept: false,
            seconds: start.elapsed().as_secs_f64(),
            samples_per_second: train.len() as f64 / train_seconds,
        });
        state = schedule.replay(&log);
        // Under `select = "last"` the last epoch's weights are the model: no copy needed.
        if schedule.select.is_some() && state.kept == Some(epoch) {
            save_best(&ctx.scratch_dir, &model, epoch)?;
        }
        save_checkpoint(
            &ctx.scratch_dir,
            &info,
            &log,
            state.kept,
            &model,
            &optimizer,
        )?;
    }

    let kept = state.kept;
    let last = log.last().map(|l| l.epoch);
    let model_path = ctx.out_dir.join(MODEL_FILE);
    if kept == last {
        model.save(&model_path)?;
    } else {
        let best = epoch_file(&ctx.scratch_dir, "best", kept.unwrap_or(0));
        std::fs::copy(&best, &model_path).map_err(|e| StageError::io(&best, e))?;
    }
    for epoch in &mut log {
        epoch.kept = Some(epoch.epoch) == kept;
    }
    let info_path = ctx.out_dir.join(MODEL_INFO);
    let saved = ModelInfo {
        kept_epoch: kept,
        ..info.clone()
    };
    std::fs::write(
        &info_path,
        serde_json::to_vec_pretty(&saved).unwrap_or_default(),
    )
    .map_err(|e| StageError::io(&info_path, e))?;
    std::fs::copy(&vocab_path, ctx.out_dir.join(VOCAB_TABLE))
        .map_err(|e| StageError::io(&vocab_path, e))?;
    // The lemma table travels with the vocabulary: `Vocabulary::read` reads it from beside the
    // model, so the tasks read queries as lemmas for a model trained on lemmas.
    let lemma_path = vocab_path.with_file_name(captions::LEMMA_TABLE);
    if lemma_path.is_file() {
        std::fs::copy(&lemma_path, ctx.out_dir.join(captions::LEMMA_TABLE))
            .map_err(|e| StageError::io(&lemma_path, e))?;
    }
    write_log(&ctx.out_dir, &log)?;

    let mut report = StageReport::default();
    if let Some(glove) = &glove {
        report.notes.push(format!(
            "word embedding: GloVe {}-d vectors of {} of {} vocabulary words, projected to {}",
            glove.dim,
            glove.found,
            vocab.len(),
            info.config.embed_dim
        ));
    }
    if let Some(kept) = log.iter().find(|l| l.kept) {
        report.metrics = [
            ("train_loss", kept.train_loss),
            ("dev_loss", kept.dev_loss),
            ("dev_bleu4", kept.dev_bleu4),
            ("dev_cider_d", kept.dev_cider_d),
            ("kept_epoch", f64::from(kept.epoch)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        let stopped = if (log.len() as u32) < epochs {
            " (stopped early)"
        } else {
            ""
        };
        report.notes.push(format!(
            "{} epochs{stopped}, kept epoch {} ({}): train loss {:.3}, dev loss {:.3}, dev BLEU-4 \
             {:.3}, dev CIDEr-D {:.3}, {:.0} samples/s",
            log.len(),
            kept.epoch,
            p.str("select")?,
            kept.train_loss,
            kept.dev_loss,
            kept.dev_bleu4,
            kept.dev_cider_d,
            log.last().map_or(f64::NAN, |l| l.samples_per_second)
        ));
    }
    if resumed > 0 {
        report.notes.push(format!(
            "resumed after epoch {resumed} from a checkpoint of the weights and the optimiser state"
        ));
    }
    Ok(report)
}

/// The GloVe folder a `glove` param names, if any.
fn glove_dir(params: &onenet_stages::Params, base_dir: &Path) -> Option<std::path::PathBuf> {
    params.opt_str("glove").map(|dir| base_dir.join(dir))
}

/// One epoch's batches of `batch_size` (indices into `lengths`, the caption lengths in tokens),
/// every index once. The indices are shuffled; with `bucket` > 1 each run of `bucket` batches'
/// worth is then sorted by length (a stable sort: equal lengths keep their shuffled order) and
/// cut into batches, and the batches are shuffled — the length bucketing of sequence models
/// (e.g. Khomenko et al. 2016; `BucketIterator` of torchtext), so that a batch is padded to the
/// length of its own captions while the epoch's order stays random. With `bucket` ≤ 1 the
/// batches are the shuffled indices cut in order, as before bucketing existed.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    bucket: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    if bucket <= 1 {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches = Vec::with_capacity(order.len().div_ceil(batch_size));
    for pool in order.chunks(batch_size.saturating_mul(bucket)) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// Image features [B, D] and padded tokens [B, L] of a batch of pairs.
pub fn tensors_of(batch: &[&Pair], features: &FeatureMatrix, device: Device) -> (Tensor, Tensor) {
    let rows: Vec<i64> = batch.iter().map(|p| p.image_row as i64).collect();
    let images = features
        .features
        .index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let sequences: Vec<&[u32]> = batch.iter().map(|p| p.tokens.as_slice()).collect();
    (images, pad_tokens(&sequences, device))
}

/// Mean caption loss over `pairs` (NaN when there are none).
fn mean_loss(
    model: &CaptionModel,
    pairs: &[&Pair],
    features: &FeatureMatrix,
    device: Device,
) -> f64 {
    if pairs.is_empty() {
        return f64::NAN;
    }
    tch::no_grad(|| {
        let mut total = 0.0;
        let mut count = 0.0;
        for chunk in pairs.chunks(256) {
            let (images, tokens) = tensors_of(chunk, features, device);
            let loss = model.caption_loss(&model.encode_images(&images), &tokens);
            total += loss.double_value(&[]) * chunk.len() as f64;
            count += chunk.len() as f64;
        }
        total / count
    })
}

/// Greedy captions of `pairs`' distinct images (the first `limit` by feature row), each with
/// the pairs of its reference captions.
pub fn greedy_captions<'a>(
    model: &CaptionModel,
    pairs: &[&'a Pair],
    features: &FeatureMatrix,
    limit: usize,
    max_length: usize,
) -> CaptionedImages<'a> {
    let mut references: BTreeMap<u32, Vec<&'a Pair>> = BTreeMap::new();
    for &p in pairs {
        references.entry(p.image_row).or_default().push(p);
    }
    let rows: Vec<u32> = references.keys().copied().take(limit).collect();
    let device = model.device();
    let mut hypotheses = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(256) {
        let index: Vec<i64> = chunk.iter().map(|&r| r as i64).collect();
        let images = features
            .features
            .index_select(0, &Tensor::from_slice(&index).to_device(device));
        let embedding = tch::no_grad(|| model.encode_images(&images));
        hypotheses.extend(model.greedy(&embedding, max_length));
    }
    let references = rows.iter().map(|r| references[r].clone()).collect();
    CaptionedImages {
        hypotheses,
        references,
    }
}

/// Generated captions of some images (token ids) with the pairs of each image's reference
/// captions.
pub struct CaptionedImages<'a> {
    pub hypotheses: Vec<Vec<u32>>,
    pub references: Vec<Vec<&'a Pair>>,
}

/// The reference words of `captions` (pairs of one image), looked up by image id and caption
/// number in what `onenet_stages::captions::read_reference_words` read.
///
/// # Errors
/// If a caption is not in the captions table: the pairs then come from another captions stage.
pub fn reference_words_of(
    captions: &[&Pair],
    words_by_caption: &HashMap<(String, u32), Vec<CaptionWord>>,
) -> Result<Vec<Vec<CaptionWord>>, StageError> {
    captions
        .iter()
        .map(|pair| {
            words_by_caption
                .get(&(pair.image_id.clone(), pair.caption_no))
                .cloned()
                .ok_or_else(|| {
                    StageError::Input(format!(
                        "caption {} of {} is not in the captions table: the `order` and \
                         `captions` inputs must come from the same captions",
                        pair.caption_no, pair.image_id
                    ))
                })
        })
        .collect()
}

/// Corpus scores of greedy dev captions (NaN when there are none).
struct DevScores {
    bleu4: f64,
    cider_d: f64,
}

/// Corpus BLEU-4 and CIDEr-D of greedy captions of the first `limit` dev images, on words: the
/// generated words against the references' own (see `reference_words_of`).
fn dev_scores(
    model: &CaptionModel,
    dev: &[&Pair],
    features: &FeatureMatrix,
    limit: usize,
    max_length: usize,
    vocab: &Vocabulary,
    words_by_caption: &HashMap<(String, u32), Vec<CaptionWord>>,
) -> Result<DevScores, StageError> {
    if dev.is_empty() || limit == 0 {
        return Ok(DevScores {
            bleu4: f64::NAN,
            cider_d: f64::NAN,
        });
    }
    let captioned = greedy_captions(model, dev, features, limit, max_length);
    let references: Vec<Vec<Vec<CaptionWord>>> = captioned
        .references
        .iter()
        .map(|captions| reference_words_of(captions, words_by_caption))
        .collect::<Result<_, _>>()?;
    let hypotheses: Vec<Vec<CaptionWord>> = captioned
        .hypotheses
        .iter()
        .map(|ids| vocab.caption_words(ids))
        .collect();
    let scores = corpus_bleu(&references, &hypotheses, 4)
        .map_err(|e| StageError::Input(format!("dev BLEU: {e}")))?;
    let cider = cider_d(&references, &hypotheses)
        .map_err(|e| StageError::Input(format!("dev CIDEr-D: {e}")))?;
    Ok(DevScores {
        bleu4: scores.get(4).unwrap_or(0.0),
        cider_d: cider.corpus,
    })
}

/// The scratch file of epoch `epoch`'s weights (`kind` "weights" or "adam", the optimiser's
/// state) or of the best epoch's weights ("best"). Every file is named by its epoch, and the
/// checkpoint info names the epoch it belongs to, so a kill at any moment leaves either the
/// previous checkpoint or the new one whole.
fn epoch_file(scratch: &Path, kind: &str, epoch: u32) -> PathBuf {
    scratch.join(format!("checkpoint-{kind}-{epoch}.safetensors"))
}

/// Saves the current weights as epoch `epoch`'s best weights (before the checkpoint that counts
/// this epoch is written, so a checkpoint never names a best epoch whose weights are missing).
fn save_best(scratch: &Path, model: &CaptionModel, epoch: u32) -> Result<(), StageError> {
    let tmp = scratch.join("best.tmp.safetensors");
    model.save(&tmp)?;
    let best = epoch_file(scratch, "best", epoch);
    std::fs::rename(&tmp, &best).map_err(|e| StageError::io(&best, e))
}

/// Loads the scratch checkpoint if it belongs to this very configuration.
fn resume(
    scratch: &Path,
    info: &ModelInfo,
    model: &mut CaptionModel,
    optimizer: &mut Adam,
) -> Result<(Vec<EpochLog>, u32), StageError> {
    let info_path = scratch.join(CHECKPOINT_INFO);
    let Ok(bytes) = std::fs::read(&info_path) else {
        return Ok((Vec::new(), 0));
    };
    let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(&bytes) else {
        return Ok((Vec::new(), 0));
    };
    let Some(done) = checkpoint.log.last().map(|l| l.epoch) else {
        return Ok((Vec::new(), 0));
    };
    if checkpoint.info != *info {
        return Ok((Vec::new(), 0));
    }
    let weights = epoch_file(scratch, "weights", done);
    model
        .vs
        .load(&weights)
        .map_err(|e| StageError::file(&weights, format!("loading checkpoint: {e}")))?;
    optimizer.load(
        &epoch_file(scratch, "adam", done),
        checkpoint.optimiser_steps,
    )?;
    Ok((checkpoint.log, done))
}

/// Writes the weights and optimiser state of the log's last epoch under that epoch's names, then
/// the info that names them by rename (the commit point), then removes older epochs' files.
fn save_checkpoint(
    scratch: &Path,
    info: &ModelInfo,
    log: &[EpochLog],
    kept: Option<u32>,
    model: &CaptionModel,
    optimizer: &Adam,
) -> Result<(), StageError> {
    let Some(epoch) = log.last().map(|l| l.epoch) else {
        return Ok(());
    };
    for kind in ["weights", "adam"] {
        let tmp = scratch.join(format!("checkpoint-{kind}.tmp.safetensors"));
        if kind == "weights" {
            model.save(&tmp)?;
        } else {
            optimizer.save(&tmp)?;
        }
        let path = epoch_file(scratch, kind, epoch);
        std::fs::rename(&tmp, &path).map_err(|e| StageError::io(&path, e))?;
    }
    let checkpoint = Checkpoint {
        info: info.clone(),
        log: log.to_vec(),
        optimiser_steps: optimizer.steps(),
    };
    let info_tmp = scratch.join("checkpoint.tmp.json");
    let info_path = scratch.join(CHECKPOINT_INFO);
    std::fs::write(
        &info_tmp,
        serde_json::to_vec(&checkpoint).unwrap_or_default(),
    )
    .map_err(|e| StageError::io(&info_tmp, e))?;
    std::fs::rename(&info_tmp, &info_path).map_err(|e| StageError::io(&info_path, e))?;
    // What the new checkpoint no longer needs: older epochs' state and best weights not kept.
    for older in 1..epoch {
        for kind in ["weights", "adam"] {
            let _ = std::fs::remove_file(epoch_file(scratch, kind, older));
        }
        if Some(older) != kept {
            let _ = std::fs::remove_file(epoch_file(scratch, "best", older));
        }
    }
    Ok(())
}

/// Distinct image rows of `pairs` with all their captions, in first-seen order.
pub fn captions_by_image<'a>(pairs: &[&'a Pair]) -> Vec<(u32, Vec<&'a Pair>)> {
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut out: Vec<(u32, Vec<&Pair>)> = Vec::new();
    for p in pairs {
        let slot = *index.entry(p.image_row).or_insert_with(|| {
            out.push((p.image_row, Vec::new()));
            out.len() - 1
        });
        out[slot].1.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(scores: &[f64]) -> Vec<EpochLog> {
        scores
            .iter()
            .enumerate()
            .map(|(i, &score)| EpochLog {
                epoch: i as u32 + 1,
                train_loss: 1.0,
                dev_loss: 1.0,
                dev_bleu4: 0.0,
                dev_cider_d: score,
                learning_rate: f64::NAN,
                kept: false,
                seconds: 1.0,
                samples_per_second: 1.0,
            })
            .collect()
    }

    fn schedule(patience: u32, lr_decay: f64, lr_patience: u32) -> Schedule {
        Schedule {
            select: Some(|l| l.dev_cider_d),
            learning_rate: 1.0,
            patience,
            lr_decay,
            lr_patience,
        }
    }

    #[test]
    fn the_best_epoch_is_kept_and_patience_stops_training() {
        let s = schedule(2, 1.0, 1);
        let scores = [0.1, 0.5, 0.4, 0.3, 0.9];
        assert_eq!(s.replay(&log(&scores[..2])).kept, Some(2));
        let state = s.replay(&log(&scores[..3]));
        assert_eq!((state.kept, state.stop), (Some(2), false));
        // Two epochs without a better score: stop, keeping epoch 2.
        let state = s.replay(&log(&scores[..4]));
        assert_eq!((state.kept, state.stop), (Some(2), true));
        assert_eq!(state.learning_rate, 1.0);
        // Without patience it goes on and later keeps the better epoch 5.
        let state = schedule(0, 1.0, 1).replay(&log(&scores));
        assert_eq!((state.kept, state.stop), (Some(5), false));
    }

    #[test]
    fn the_learning_rate_decays_after_lr_patience_epochs_on_a_plateau() {
        let s = schedule(0, 0.5, 2);
        let rates: Vec<f64> = (0..=6)
            .map(|n| {
                s.replay(&log(&[0.5, 0.4, 0.4, 0.4, 0.4, 0.6][..n.min(6)]))
                    .learning_rate
            })
            .collect();
        // Decays after epochs 3 and 5 (two epochs each without beating 0.5); epoch 6 improves.
        assert_eq!(rates, [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn without_dev_scores_or_under_select_last_the_last_epoch_is_kept() {
        let nan = f64::NAN;
        let state = schedule(1, 0.5, 1).replay(&log(&[nan, nan, nan]));
        assert_eq!(
            (state.kept, state.stop, state.learning_rate),
            (Some(3), false, 1.0)
        );
        let last = Schedule {
            select: None,
            ..schedule(1, 0.5, 1)
        };
        let state = last.replay(&log(&[0.9, 0.1, 0.1]));
        assert_eq!(
            (state.kept, state.stop, state.learning_rate),
            (Some(3), false, 1.0)
        );
    }

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn bucketed_batches_hold_every_pair_once_are_seeded_and_pad_less() {
        // Caption lengths spread like Flickr8k's: mostly 8-14 tokens, some up to 40.
        let lengths: Vec<usize> = (0..5000usize)
            .map(|i| 8 + (i * 7919 % 13) + if i % 17 == 0 { i % 26 } else { 0 })
            .collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let plain = epoch_batches(&lengths, 64, 0, &mut rng(3));
        let bucketed = epoch_batches(&lengths, 64, 50, &mut rng(3));
        for batches in [&plain, &bucketed] {
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 64));
        }
        assert_eq!(bucketed, epoch_batches(&lengths, 64, 50, &mut rng(3)));
        assert_ne!(bucketed, epoch_batches(&lengths, 64, 50, &mut rng(4)));
        let tokens: usize = lengths.iter().sum();
        assert!(
            padded(&bucketed) < padded(&plain) && padded(&bucketed) < tokens * 11 / 10,
            "padded tokens: bucketed {}, plain {}, real {tokens}",
            padded(&bucketed),
            padded(&plain)
        );
        // Without bucketing, the batches are the shuffled order cut in pieces, as before.
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut rng(3));
        assert_eq!(plain.concat(), order);
    }
}
