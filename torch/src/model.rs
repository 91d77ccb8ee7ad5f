//! The one network: an image encoder, a word embedding and a recurrent decoder that, at every
//! step, reads the image embedding concatenated with the previous word's embedding.
//!
//! `features [B, D] → Linear(D→image_dim) + ReLU` (or, for features of R regions, the same of
//! each region's vector, then the maximum over the regions); `word → Embedding(vocab, embed_dim)`;
//! `concat → GRU|LSTM(hidden) → Linear(hidden→hidden) → Linear(hidden→vocab)` logits. The
//! recurrent state starts from zero for every caption (the original never reset it). Besides
//! training, the model decodes (greedy and beam search) and is inverted: with its weights frozen,
//! an image embedding is optimised so that the model assigns a caption high likelihood.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Reduction, Tensor};

use crate::precision::Precision;
use onenet_stages::captions::{END_ID, PAD_ID, START_ID};
use onenet_stages::StageError;

/// Every hyper-parameter of the network's shape, saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: i64,
    pub feature_dim: i64,
    pub image_dim: i64,
    /// Regions each feature vector holds (`feature_dim` divided evenly; `train` takes it from
    /// the features' pooling): 1 for a pooled vector, read through one linear layer; more for
    /// per-region vectors (grid pooling), each read by one shared linear layer and combined by
    /// their maximum. Absent (1) in older models.
    #[serde(default = "one_region")]
    pub image_regions: i64,
    pub embed_dim: i64,
    pub hidden_dim: i64,
    /// "gru" or "lstm".
    pub rnn: String,
    /// Width of the pretrained (GloVe) word vectors the word embedding projects from; 0 when the
    /// embedding is learned from scratch.
    #[serde(default)]
    pub pretrained_dim: i64,
}

fn one_region() -> i64 {
    1
}

/// How CNN features become the image embedding.
enum ImageEncoder {
    /// `ReLU(Linear(D → image_dim))` of a pooled vector.
    Linear(nn::Linear),
    /// Features [B, R·C] read as R region vectors of C channels (grid pooling):
    /// `ReLU(Linear(C → image_dim))` of each region, then the maximum over the regions, unit by
    /// unit (a Deep Sets encoder, Zaheer et al., 2017, with max as the symmetric function). A
    /// unit that fires on "a red circle" fires in the region that holds it, and the maximum
    /// keeps that without mixing in the other objects, which a global average of the features
    /// does (red and blue channels averaged look like purple).
    Regions { regions: i64, layer: nn::Linear },
}

impl ImageEncoder {
    fn new(root: &nn::Path, config: &ModelConfig) -> Result<ImageEncoder, StageError> {
        let path = root / "image_encoder";
        let regions = config.image_regions;
        if regions <= 1 {
            return Ok(ImageEncoder::Linear(nn::linear(
                path,
                config.feature_dim,
                config.image_dim,
                Default::default(),
            )));
        }
        if config.feature_dim % regions != 0 {
            return Err(StageError::Input(format!(
                "{regions} regions do not divide the {}-d feature vectors evenly",
                config.feature_dim
            )));
        }
        Ok(ImageEncoder::Regions {
            regions,
            layer: nn::linear(
                path,
                config.feature_dim / regions,
                config.image_dim,
                Default::default(),
            ),
        })
    }

    /// Features [B, D] -> image embeddings [B, image_dim].
    fn forward(&self, features: &Tensor) -> Tensor {
        match self {
            ImageEncoder::Linear(linear) => linear.forward(features).relu(),
            ImageEncoder::Regions { regions, layer } => {
                let batch = features.size()[0];
                layer
                    .forward(&features.view([batch, *regions, -1]))
                    .relu()
                    .amax([1i64].as_slice(), false)
            }
        }
    }
}

/// How words become embed_dim-wide vectors.
enum WordEmbedding {
    /// A table learned from scratch.
    Learned(nn::Embedding),
    /// Fixed pretrained vectors [vocab, pretrained_dim] (a non-trainable variable, saved with
    /// the model) through a learned `Linear(pretrained_dim → embed_dim)`.
    Pretrained {
        table: Tensor,
        projection: nn::Linear,
    },
}

enum Recurrent {
    Gru(nn::GRU),
    Lstm(nn::LSTM),
}

/// A recurrent state for a batch, whichever the cell.
pub enum RecurrentState {
    Gru(nn::GRUState),
    Lstm(nn::LSTMState),
}

impl RecurrentState {
    /// The state of the batch rows `index` (for beam search), in that order.
    fn select(&self, index: &Tensor) -> RecurrentState {
        match self {
            RecurrentState::Gru(s) => RecurrentState::Gru(nn::GRUState(s.0.index_select(1, index))),
            RecurrentState::Lstm(s) => {
                let (h, c) = &s.0;
                RecurrentState::Lstm(nn::LSTMState((
                    h.index_select(1, index),
                    c.index_select(1, index),
                )))
            }
        }
    }

    /// The top layer's hidden state, [B, hidden].
    fn output(&self) -> Tensor {
        match self {
            RecurrentState::Gru(s) => s.0.get(-1),
            RecurrentState::Lstm(s) => s.0 .0.get(-1),
        }
    }
}

/// Images a beam search decodes together at most: the step's log-probabilities are
/// [images × width, vocabulary] doubles, which must stay small at a real vocabulary.
pub const BEAM_CHUNK: i64 = 128;

/// One image's beam search: its open beams (tokens, summed log-probability) and its finished
/// captions (tokens, log-probability per token counting `<end>`).
struct ImageBeams {
    open: Vec<(Vec<u32>, f64)>,
    finished: Vec<(Vec<u32>, f64)>,
    done: bool,
}

impl ImageBeams {
    fn new() -> ImageBeams {
        ImageBeams {
            open: vec![(Vec::new(), 0.0)],
            finished: Vec::new(),
            done: false,
        }
    }

    /// Takes one step from the best continuations (`top_scores`, and `top_index` = open beam ×
    /// vocabulary + token, best first): an `<end>` finishes a caption, anything else extends a
    /// beam, until `width` beams are open. Returns the open beam each new beam continues, and
    /// marks the search done once no open beam can beat the best finished caption (or at the
    /// last step).
    fn advance(
        &mut self,
        top_scores: &[f64],
        top_index: &[i64],
        vocab: i64,
        width: i64,
        last_step: bool,
    ) -> Vec<i64> {
        let mut next = Vec::new();
        let mut rows = Vec::new();
        for (&score, &index) in top_scores.iter().zip(top_index) {
            let (row, token) = (index / vocab, index % vocab);
            let mut tokens = self.open[row as usize].0.clone();
            if token == END_ID as i64 {
                let length = (tokens.len() + 1) as f64;
                self.finished.push((tokens, score / length));
            } else {
                tokens.push(token as u32);
                next.push((tokens, score));
                rows.push(row);
            }
            if next.len() as i64 == width {
                break;
            }
        }
        let best_finished = self.finished.iter().map(|f| f.1).fold(f64::MIN, f64::max);
        let open_best = next
            .iter()
            .map(|(t, s)| s / (t.len() + 1) as f64)
            .fold(f64::MIN, f64::max);
        if next.is_empty()
            || (self.finished.len() as i64 >= width && open_best < best_finished)
            || last_step
        {
            if self.finished.is_empty() {
                self.finished.extend(next.into_iter().map(|(t, s)| {
                    let l = t.len().max(1) as f64;
                    (t, s / l)
                }));
            }
            self.done = true;
            return Vec::new();
        }
        self.open = next;
        rows
    }

    /// The best finished caption.
    fn best(self) -> Vec<u32> {
        self.finished
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(t, _)| t)
            .unwrap_or_default()
    }
}

/// The captioning network.
pub struct CaptionModel {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    image_encoder: ImageEncoder,
    embedding: WordEmbedding,
    recurrent: Recurrent,
    /// The recurrent cell's weights in libtorch's order (`weight_ih`, `weight_hh`, `bias_ih`,
    /// `bias_hh`): the same tensors as the cell's, for the mixed-precision path, which passes
    /// bfloat16 copies of them to libtorch's GRU/LSTM.
    recurrent_weights: Vec<Tensor>,
    hidden_layer: nn::Linear,
    output_layer: nn::Linear,
}

impl CaptionModel {
    /// A freshly initialised network (seed the global generator first for reproducibility).
    pub fn new(config: ModelConfig, device: Device) -> Result<CaptionModel, StageError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let image_encoder = ImageEncoder::new(&root, &config)?;
        let embedding = if config.pretrained_dim > 0 {
            WordEmbedding::Pretrained {
                table: root.zeros_no_train(
                    "pretrained_words",
                    &[config.vocab_size, config.pretrained_dim],
                ),
                projection: nn::linear(
                    &root / "word_projection",
                    config.pretrained_dim,
                    config.embed_dim,
                    Default::default(),
                ),
            }
        } else {
            WordEmbedding::Learned(nn::embedding(
                &root / "embedding",
                config.vocab_size,
                config.embed_dim,
                Default::default(),
            ))
        };
        let rnn_config = nn::RNNConfig {
            batch_first: true,
            ..Default::default()
        };
        let input_dim = config.image_dim + config.embed_dim;
        let recurrent = match config.rnn.as_str() {
            "gru" => Recurrent::Gru(nn::gru(
                &root / "rnn",
                input_dim,
                config.hidden_dim,
                rnn_config,
            )),
            "lstm" => Recurrent::Lstm(nn::lstm(
                &root / "rnn",
                input_dim,
                config.hidden_dim,
                rnn_config,
            )),
            other => {
                return Err(StageError::Param {
                    name: "rnn".into(),
                    message: format!("unknown cell {other:?}: expected gru or lstm"),
                })
            }
        };
        let hidden_layer = nn::linear(
            &root / "hidden",
            config.hidden_dim,
            config.hidden_dim,
            Default::default(),
        );
        let output_layer = nn::linear(
            &root / "output",
            config.hidden_dim,
            config.vocab_size,
            Default::default(),
        );
        let variables = vs.variables();
        let recurrent_weights = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
            .iter()
            .map(|name| {
                variables
                    .get(&format!("rnn.{name}"))
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| {
                        StageError::Input(format!("the recurrent cell has no weight `{name}`"))
                    })
            })
            .collect::<Result<Vec<Tensor>, StageError>>()?;
        Ok(CaptionModel {
            config,
            vs,
            image_encoder,
            embedding,
            recurrent,
            recurrent_weights,
            hidden_layer,
            output_layer,
        })
    }

    /// Loads a network saved by `save` (weights file + its config).
    pub fn load(config: ModelConfig, weights: &Path, device: Device) -> Result<Self, StageError> {
        let mut model = CaptionModel::new(config, device)?;
        model
            .vs
            .load(weights)
            .map_err(|e| StageError::file(weights, format!("loading model weights: {e}")))?;
        Ok(model)
    }

    /// Saves the weights as safetensors.
    pub fn save(&self, weights: &Path) -> Result<(), StageError> {
        self.vs
            .save(weights)
            .map_err(|e| StageError::file(weights, format!("saving model weights: {e}")))
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Image embeddings [B, image_dim] of CNN features [B, D].
    pub fn encode_images(&self, features: &Tensor) -> Tensor {
        self.image_encoder.forward(features)
    }

    /// Word embeddings [.., embed_dim] of token ids.
    pub fn embed_words(&self, tokens: &Tensor) -> Tensor {
        match &self.embedding {
            WordEmbedding::Learned(table) => table.forward(tokens),
            WordEmbedding::Pretrained { table, projection } => {
                projection.forward(&Tensor::embedding(table, tokens, -1, false, false))
            }
        }
    }

    /// Sets the pretrained word vectors [vocab, pretrained_dim] of a model built with
    /// `pretrained_dim > 0` (before training; a loaded model has them already).
    pub fn set_pretrained_words(&self, vectors: &Tensor) -> Result<(), StageError> {
        match &self.embedding {
            WordEmbedding::Pretrained { table, .. } if table.size() == vectors.size() => {
                tch::no_grad(|| {
                    let mut table = table.shallow_clone();
                    table.copy_(&vectors.to_device(table.device()));
                });
                Ok(())
            }
            _ => Err(StageError::Input(format!(
                "pretrained word vectors of shape {:?} do not fit this model",
                vectors.size()
            ))),
        }
    }

    /// Logits [B, T, vocab] for each next word, given image embeddings [B, image_dim] and the
    /// input tokens [B, T] (teacher forcing); the state starts at zero.
    pub fn logits_from_embedding(&self, image_embedding: &Tensor, tokens: &Tensor) -> Tensor {
        self.logits_in(image_embedding, tokens, 0.0, Kind::Float)
    }

    /// Mean cross-entropy over the real (non-padding) next tokens of `captions` [B, L], each
    /// `<start> … <end>` padded with 0, given image embeddings [B, image_dim].
    pub fn caption_loss(&self, image_embedding: &Tensor, captions: &Tensor) -> Tensor {
        self.caption_losses(image_embedding, captions, Reduction::Mean, 0.0, Kind::Float)
    }

    /// `caption_loss` as training computes it: with dropout of probability `dropout` (0: none)
    /// and the decoder's matrix products in `precision`. With 0 and f32 it is exactly
    /// `caption_loss`. With bf16 it is mixed-precision training: the weights (and so their
    /// gradients and the optimiser's state) stay f32, each step computes with bfloat16 copies of
    /// them, and the loss is taken on f32 logits, as PyTorch's CPU autocast does.
    pub fn training_loss(
        &self,
        image_embedding: &Tensor,
        captions: &Tensor,
        dropout: f64,
        precision: Precision,
    ) -> Tensor {
        self.caption_losses(
            image_embedding,
            captions,
            Reduction::Mean,
            dropout,
            precision.kind(),
        )
    }

    /// `logits_from_embedding` with dropout of probability `dropout` on the decoder's inputs
    /// (image and word embeddings) and on its recurrent output, as in training (Show and Tell's
    /// placement; the masks come from libtorch's global generator), computed with the weights
    /// and activations cast to `kind` (a no-op for f32; the weights themselves never change
    /// type).
    fn logits_in(
        &self,
        image_embedding: &Tensor,
        tokens: &Tensor,
        dropout: f64,
        kind: Kind,
    ) -> Tensor {
        let drop = |t: Tensor| {
            if dropout > 0.0 {
                t.dropout(dropout, true)
            } else {
                t
            }
        };
        let linear = |layer: &nn::Linear, x: &Tensor| {
            x.linear(
                &layer.ws.to_kind(kind),
                layer.bs.as_ref().map(|b| b.to_kind(kind)).as_ref(),
            )
        };
        let steps = tokens.size()[1];
        let batch = tokens.size()[0];
        let words = drop(self.embed_words(tokens).to_kind(kind));
        let image = drop(image_embedding.to_kind(kind))
            .unsqueeze(1)
            .expand([-1, steps, -1], false);
        let input = Tensor::cat(&[image, words], 2);
        let weights: Vec<Tensor> = self
            .recurrent_weights
            .iter()
            .map(|w| w.to_kind(kind))
            .collect();
        let zeros = || {
            Tensor::zeros(
                [1, batch, self.config.hidden_dim],
                (kind, image_embedding.device()),
            )
        };
        let hidden = match &self.recurrent {
            Recurrent::Gru(_) => {
                input
                    .gru(&zeros(), &weights, true, 1, 0.0, true, false, true)
                    .0
            }
            Recurrent::Lstm(_) => {
                input
                    .lstm(
                        &[zeros(), zeros()],
                        &weights,
                        true,
                        1,
                        0.0,
                        true,
                        false,
                        true,
                    )
                    .0
            }
        };
        linear(
            &self.output_layer,
            &linear(&self.hidden_layer, &drop(hidden)),
        )
    }

    /// Per-caption mean cross-entropy [B] (used by inversion to pick the best restart).
    pub fn per_caption_loss(&self, image_embedding: &Tensor, captions: &Tensor) -> Tensor {
        let length = captions.size()[1];
        let input = captions.narrow(1, 0, length - 1);
        let target = captions.narrow(1, 1, length - 1);
        let logits = self.logits_from_embedding(image_embedding, &input);
        let vocab = self.config.vocab_size;
        let token_losses = logits
            .reshape([-1, vocab])
            .cross_entropy_loss::<Tensor>(
                &target.reshape([-1]),
                None,
                Reduction::None,
                PAD_ID as i64,
                0.0,
            )
            .reshape(target.size());
        let mask = target.ne(PAD_ID as i64).to_kind(Kind::Float);
        (token_losses * &mask).sum_dim_intlist(1, false, Kind::Float)
            / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0)
    }

    fn caption_losses(
        &self,
        image_embedding: &Tensor,
        captions: &Tensor,
        r: Reduction,
        dropout: f64,
        kind: Kind,
    ) -> Tensor {
        let length = captions.size()[1];
        let input = captions.narrow(1, 0, length - 1);
        let target = captions.narrow(1, 1, length - 1);
        self.logits_in(image_embedding, &input, dropout, kind)
            .to_kind(Kind::Float)
            .reshape([-1, self.config.vocab_size])
            .cross_entropy_loss::<Tensor>(&target.reshape([-1]), None, r, PAD_ID as i64, 0.0)
    }

    fn zero_state(&self, batch: i64) -> RecurrentState {
        match &self.recurrent {
            Recurrent::Gru(g) => RecurrentState::Gru(g.zero_state(batch)),
            Recurrent::Lstm(l) => RecurrentState::Lstm(l.zero_state(batch)),
        }
    }

    /// One decoding step: log-probabilities [B, vocab] of the next word and the new state.
    fn step(
        &self,
        image_embedding: &Tensor,
        previous: &Tensor,
        state: &RecurrentState,
    ) -> (Tensor, RecurrentState) {
        let input = Tensor::cat(
            &[image_embedding.shallow_clone(), self.embed_words(previous)],
            1,
        );
        let state = match (&self.recurrent, state) {
            (Recurrent::Gru(g), RecurrentState::Gru(s)) => RecurrentState::Gru(g.step(&input, s)),
            (Recurrent::Lstm(l), RecurrentState::Lstm(s)) => {
                RecurrentState::Lstm(l.step(&input, s))
            }
            _ => unreachable!("a model's state always matches its own cell"),
        };
        let logits = self
            .output_layer
            .forward(&self.hidden_layer.forward(&state.output()));
        (logits.log_softmax(-1, Kind::Float), state)
    }

    /// Greedy captions (token ids without `<start>`/`<end>`) for image embeddings [B, image_dim].
    pub fn greedy(&self, image_embedding: &Tensor, max_len: usize) -> Vec<Vec<u32>> {
        tch::no_grad(|| {
            let batch = image_embedding.size()[0];
            let mut state = self.zero_state(batch);
            let mut previous = Tensor::full([batch], START_ID as i64, (Kind::Int64, self.device()));
            let mut out: Vec<Vec<u32>> = vec![Vec::new(); batch as usize];
            let mut done = vec![false; batch as usize];
            for _ in 0..max_len {
                let (log_probs, next_state) = self.step(image_embedding, &previous, &state);
                state = next_state;
                previous = log_probs.argmax(-1, false);
                let ids = Vec::<i64>::try_from(&previous).unwrap_or_default();
                for (i, &id) in ids.iter().enumerate() {
                    if done[i] {
                        continue;
                    }
                    if id == END_ID as i64 {
                        done[i] = true;
                    } else {
                        out[i].push(id as u32);
                    }
                }
                if done.iter().all(|d| *d) {
                    break;
                }
            }
            out
        })
    }

    /// Beam search for one image embedding [image_dim]: see [`CaptionModel::beam_search_batch`].
    pub fn beam_search(&self, image_embedding: &Tensor, width: usize, max_len: usize) -> Vec<u32> {
        self.beam_search_batch(&image_embedding.unsqueeze(0), width, max_len, &mut |_| {})
            .pop()
            .unwrap_or_default()
    }

    /// Beam search for image embeddings [B, image_dim], all images decoded together: each step
    /// runs the network once on the open beams of every unfinished image (at most `width` each),
    /// and each image then keeps its own best `width` continuations. The caption kept is the one
    /// with the best log-probability divided by its length (counting `<end>`), so long captions
    /// are not penalised merely for having more words; an image stops once no open beam can
    /// beat its best finished one. Images go through in chunks of [`BEAM_CHUNK`], so memory
    /// stays bounded for any B. `on_finished(n)` is told each time n more images are done.
    pub fn beam_search_batch(
        &self,
        image_embeddings: &Tensor,
        width: usize,
        max_len: usize,
        on_finished: &mut dyn FnMut(u64),
    ) -> Vec<Vec<u32>> {
        let count = image_embeddings.size()[0];
        let mut out = Vec::with_capacity(count as usize);
        let mut start = 0;
        while start < count {
            let chunk = image_embeddings.narrow(0, start, BEAM_CHUNK.min(count - start));
            out.extend(self.beam_search_chunk(&chunk, width, max_len, on_finished));
            start += BEAM_CHUNK;
        }
        out
    }

    fn beam_search_chunk(
        &self,
        image_embeddings: &Tensor,
        width: usize,
        max_len: usize,
        on_finished: &mut dyn FnMut(u64),
    ) -> Vec<Vec<u32>> {
        tch::no_grad(|| {
            let width = width.max(1) as i64;
            let device = self.device();
            let vocab = self.config.vocab_size;
            let images = image_embeddings.size()[0] as usize;
            let mut searches: Vec<ImageBeams> = (0..images).map(|_| ImageBeams::new()).collect();
            let mut state = self.zero_state(images as i64);
            for step in 0..max_len {
                // The open beams of the unfinished images, image by image: the state's rows.
                let active: Vec<usize> = (0..images).filter(|&i| !searches[i].done).collect();
                if active.is_empty() {
                    break;
                }
                let mut image_rows = Vec::new();
                let mut previous = Vec::new();
                let mut scores = Vec::new();
                for &i in &active {
                    for (tokens, score) in &searches[i].open {
                        image_rows.push(i as i64);
                        previous.push(tokens.last().map_or(START_ID as i64, |&t| t as i64));
                        scores.push(*score);
                    }
                }
                let image = image_embeddings
                    .index_select(0, &Tensor::from_slice(&image_rows).to_device(device));
                let previous = Tensor::from_slice(&previous).to_device(device);
                let (log_probs, next_state) = self.step(&image, &previous, &state);
                let total = log_probs.to_kind(Kind::Double)
                    + Tensor::from_slice(&scores).to_device(device).unsqueeze(1);
                let last_step = step + 1 == max_len;
                let mut next_rows: Vec<i64> = Vec::new();
                let mut finished_now = 0;
                let mut offset = 0i64;
                for &i in &active {
                    let search = &mut searches[i];
                    let n = search.open.len() as i64;
                    let k = (width * 2).min(n * vocab);
                    let (top_scores, top_index) = total
                        .narrow(0, offset, n)
                        .reshape([-1])
                        .topk(k, 0, true, true);
                    let top_scores = Vec::<f64>::try_from(&top_scores).unwrap_or_default();
                    let top_index = Vec::<i64>::try_from(&top_index).unwrap_or_default();
                    let rows = search.advance(&top_scores, &top_index, vocab, width, last_step);
                    if search.done {
                        finished_now += 1;
                    } else {
                        next_rows.extend(rows.into_iter().map(|row| offset + row));
                    }
                    offset += n;
                }
                if finished_now > 0 {
                    on_finished(finished_now);
                }
                if next_rows.is_empty() {
                    break;
                }
                state = next_state.select(&Tensor::from_slice(&next_rows).to_device(device));
            }
            searches.into_iter().map(ImageBeams::best).collect()
        })
    }

    /// Freezes the weights (for inversion).
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }
}

/// Pads token sequences into a [B, L] int64 tensor (0 = `<pad>`).
pub fn pad_tokens(sequences: &[&[u32]], device: Device) -> Tensor {
    let length = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(2);
    let mut flat = vec![PAD_ID as i64; sequences.len() * length];
    for (i, s) in sequences.iter().enumerate() {
        for (j, &t) in s.iter().enumerate() {
            flat[i * length + j] = t as i64;
        }
    }
    Tensor::from_slice(&flat)
        .reshape([sequences.len() as i64, length as i64])
        .to_device(device)
}

/// Candidate images re-ordered by how likely the captioner finds `caption` given each: `rows`
/// index `image_embeddings` ([N, image_dim], the model's own image embeddings); returns `(row,
/// mean log-likelihood per caption token)`, most likely first (ties by row). Inversion finds the
/// right picture among its nearest few far more often than first (R@10 against R@1); scoring those
/// few with the captioner itself puts it first more often.
pub fn rank_by_likelihood(
    model: &CaptionModel,
    caption: &[u32],
    image_embeddings: &Tensor,
    rows: &[usize],
) -> Vec<(usize, f64)> {
    rank_by_likelihood_batch(model, &[(caption, rows)], image_embeddings)
        .pop()
        .unwrap_or_default()
}

/// `rank_by_likelihood` for many (caption, candidate rows) queries at once: every caption ×
/// candidate pair is scored in one forward pass (padding after `<end>` changes no caption's loss:
/// the decoder reads left to right and padded targets are masked).
pub fn rank_by_likelihood_batch(
    model: &CaptionModel,
    queries: &[(&[u32], &[usize])],
    image_embeddings: &Tensor,
) -> Vec<Vec<(usize, f64)>> {
    let pairs: Vec<(&[u32], usize)> = queries
        .iter()
        .flat_map(|&(caption, rows)| rows.iter().map(move |&r| (caption, r)))
        .collect();
    if pairs.is_empty() {
        return vec![Vec::new(); queries.len()];
    }
    let device = model.device();
    let index: Vec<i64> = pairs.iter().map(|&(_, r)| r as i64).collect();
    let candidates =
        image_embeddings.index_select(0, &Tensor::from_slice(&index).to_device(device));
    let captions: Vec<&[u32]> = pairs.iter().map(|&(c, _)| c).collect();
    let tokens = pad_tokens(&captions, device);
    let losses = tch::no_grad(|| model.per_caption_loss(&candidates, &tokens));
    let losses = Vec::<f64>::try_from(&losses.to_kind(Kind::Double)).unwrap_or_default();
    let mut losses = losses.into_iter();
    queries
        .iter()
        .map(|&(_, rows)| {
            let mut ranked: Vec<(usize, f64)> = rows
                .iter()
                .copied()
                .zip(losses.by_ref().map(|l| -l))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked
        })
        .collect()
}

/// Optimises image embeddings so the frozen model assigns each caption a high likelihood: for
/// each caption, `restarts` embeddings start from U(0, 0.5) (the original's initialisation; starting
/// from real image embeddings instead biases the search toward the start images) and all
/// queries × restarts are optimised together with Adam for `steps` steps. Every caption token
/// after `<start>`, including `<end>`, is a target. Returns, per caption, the embedding of the
/// restart with the lowest final loss, [Q, image_dim], and those losses.
pub fn invert(
    model: &CaptionModel,
    captions: &[&[u32]],
    steps: usize,
    restarts: usize,
    learning_rate: f64,
) -> (Tensor, Vec<f64>) {
    let device = model.device();
    let queries = captions.len() as i64;
    let restarts = restarts.max(1) as i64;
    let repeated: Vec<&[u32]> = captions
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, restarts as usize))
        .collect();
    let tokens = pad_tokens(&repeated, device);
    let mut vs = nn::VarStore::new(device);
    let shape = [queries * restarts, model.config.image_dim];
    let z = vs
        .root()
        .var("z", &shape, nn::Init::Uniform { lo: 0.0, up: 0.5 });
    let mut opt = nn::Optimizer::adam(&vs, learning_rate);
    for _ in 0..steps {
        // The model's own embeddings pass through a ReLU; keep the search in that space.
        let loss = model.caption_loss(&z.relu(), &tokens);
        opt.backward_step(&loss);
    }
    vs.freeze();
    let z = z.relu().detach();
    let losses = tch::no_grad(|| model.per_caption_loss(&z, &tokens));
    let losses = Vec::<f64>::try_from(&losses.to_kind(Kind::Double)).unwrap_or_default();
    let mut best_rows = Vec::with_capacity(queries as usize);
    let mut best_losses = Vec::with_capacity(queries as usize);
    for q in 0..queries as usize {
        let range = q * restarts as usize..(q + 1) * restarts as usize;
        let best = range
            .clone()
            .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
            .unwrap_or(range.start);
        best_rows.push(best as i64);
        best_losses.push(losses[best]);
    }
    let index = Tensor::from_slice(&best_rows).to_device(device);
    (z.index_select(0, &index), best_losses)
}

/// A `nn::Optimizer::adam` shorthand, so callers need not build the config.
trait AdamExt {
    fn adam(vs: &nn::VarStore, lr: f64) -> nn::Optimizer;
}

impl AdamExt for nn::Optimizer {
    fn adam(vs: &nn::VarStore, lr: f64) -> nn::Optimizer {
        use tch::nn::OptimizerConfig;
        nn::Adam::default()
            .build(vs, lr)
            .expect("building Adam over a fresh VarStore cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(rnn: &str) -> CaptionModel {
        tiny_model(rnn, 12, 0)
    }

    /// A small untrained model with `vocab_size` tokens, its weights drawn from `seed`.
    fn tiny_model(rnn: &str, vocab_size: i64, seed: i64) -> CaptionModel {
        tch::manual_seed(seed);
        CaptionModel::new(
            ModelConfig {
                vocab_size,
                feature_dim: 6,
                image_dim: 8,
                image_regions: 1,
                embed_dim: 8,
                hidden_dim: 16,
                rnn: rnn.into(),
                pretrained_dim: 0,
            },
            Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn batched_beam_search_finds_what_one_image_at_a_time_finds() {
        for rnn in ["gru", "lstm"] {
            let model = tiny_model(rnn, 40, 11);
            // More images than one chunk, so the chunking is crossed too.
            let images = BEAM_CHUNK + 9;
            let embeddings = Tensor::randn([images, 8], (Kind::Float, Device::Cpu)) * 3.0;
            for width in [1, 3, 5] {
                let mut finished = 0;
                let batched =
                    model.beam_search_batch(&embeddings, width, 12, &mut |n| finished += n);
                assert_eq!(finished, images as u64, "{rnn}");
                let one_by_one: Vec<Vec<u32>> = (0..images)
                    .map(|i| model.beam_search(&embeddings.get(i), width, 12))
                    .collect();
                assert_eq!(batched, one_by_one, "{rnn}, width {width}");
                // The captions differ between images: the rows were not mixed up.
                let distinct: std::collections::HashSet<_> = batched.iter().collect();
                assert!(distinct.len() > 5, "{rnn}: {distinct:?}");
            }
        }
    }

    /// The regions encoder reads each region through one layer and keeps the maximum: the
    /// embedding does not depend on the order of the regions, equals the linear encoder's on a
    /// single region, and a region count that does not divide the features is an error.
    #[test]
    fn the_regions_encoder_takes_each_units_maximum_over_the_regions() {
        tch::manual_seed(5);
        let config = |feature_dim, image_regions| ModelConfig {
            vocab_size: 12,
            feature_dim,
            image_dim: 8,
            image_regions,
            embed_dim: 8,
            hidden_dim: 16,
            rnn: "gru".into(),
            pretrained_dim: 0,
        };
        let model = CaptionModel::new(config(4 * 6, 4), Device::Cpu).unwrap();
        let regions = Tensor::randn([3, 4, 6], (Kind::Float, Device::Cpu));
        let embedding = model.encode_images(&regions.flatten(1, -1));
        assert_eq!(embedding.size(), [3, 8]);
        let shuffled = regions.index_select(1, &Tensor::from_slice(&[2i64, 0, 3, 1]));
        let again = model.encode_images(&shuffled.flatten(1, -1));
        assert!(embedding.allclose(&again, 1e-6, 1e-6, false));
        // Region by region, through the same weights, the maximum is the embedding.
        let mut single = CaptionModel::new(config(6, 1), Device::Cpu).unwrap();
        single.vs.copy(&model.vs).unwrap();
        let by_hand = Tensor::stack(
            &(0..4)
                .map(|r| single.encode_images(&regions.select(1, r).contiguous()))
                .collect::<Vec<_>>(),
            1,
        )
        .amax([1i64].as_slice(), false);
        assert!(embedding.allclose(&by_hand, 1e-6, 1e-6, false));
        let error = CaptionModel::new(config(25, 4), Device::Cpu).err().unwrap();
        assert!(
            matches!(&error, StageError::Input(message) if message.contains("4 regions")),
            "{error:?}"
        );
    }

    /// Two images, each with its own caption; a few hundred steps must fit them exactly.
    #[test]
    fn learns_to_caption_two_images_and_inversion_finds_them() {
        for rnn in ["gru", "lstm"] {
            let model = tiny(rnn);
            let features =
                Tensor::from_slice(&[1.0f32, 0., 0., 1., 0., 0., 0., 1., 1., 0., 0., 1.])
                    .reshape([2, 6]);
            let a: &[u32] = &[1, 4, 5, 6, 2];
            let b: &[u32] = &[1, 7, 8, 2];
            let tokens = pad_tokens(&[a, b], Device::Cpu);
            let mut opt = nn::Optimizer::adam(&model.vs, 0.01);
            let mut last = 0.0;
            for _ in 0..300 {
                let loss = model.caption_loss(&model.encode_images(&features), &tokens);
                opt.backward_step(&loss);
                last = loss.double_value(&[]);
            }
            assert!(last < 0.05, "{rnn}: loss {last}");
            let emb = tch::no_grad(|| model.encode_images(&features));
            assert_eq!(
                model.greedy(&emb, 10),
                vec![vec![4, 5, 6], vec![7, 8]],
                "{rnn}"
            );
            assert_eq!(
                model.beam_search(&emb.get(0), 3, 10),
                vec![4, 5, 6],
                "{rnn}"
            );
            assert_eq!(model.beam_search(&emb.get(1), 3, 10), vec![7, 8], "{rnn}");

            // Inverting caption b must land nearer image b than image a.
            let (z, losses) = invert(&model, &[b], 100, 4, 0.05);
            assert_eq!(losses.len(), 1);
            let sims = tch::no_grad(|| {
                let zn = &z / z.norm();
                let en = &emb / emb.norm_scalaropt_dim(2, [1], true);
                en.matmul(&zn.transpose(0, 1))
            });
            let sims = Vec::<f32>::try_from(sims.reshape([-1])).unwrap();
            assert!(sims[1] > sims[0], "{rnn}: {sims:?}");

            // Each caption is likelier under its own image, whatever order the candidates come in.
            for (caption, own) in [(a, 0), (b, 1)] {
                for rows in [[0, 1], [1, 0]] {
                    let ranked = rank_by_likelihood(&model, caption, &emb, &rows);
                    assert_eq!(ranked.len(), 2);
                    assert_eq!(ranked[0].0, own, "{rnn}: {ranked:?}");
                    assert!(
                        ranked[0].1 > ranked[1].1 && ranked[0].1 <= 0.0,
                        "{ranked:?}"
                    );
                }
            }
            assert!(rank_by_likelihood(&model, a, &emb, &[]).is_empty());

            // Captions of different lengths scored together rank as each does alone.
            let batch = rank_by_likelihood_batch(&model, &[(a, &[1, 0]), (b, &[0, 1])], &emb);
            for ((caption, rows), ranked) in [(a, [1, 0]), (b, [0, 1])].iter().zip(&batch) {
                let alone = rank_by_likelihood(&model, caption, &emb, rows);
                assert_eq!(ranked.len(), alone.len());
                for (x, y) in ranked.iter().zip(&alone) {
                    assert_eq!(x.0, y.0, "{rnn}: {ranked:?} {alone:?}");
                    assert!((x.1 - y.1).abs() < 1e-5, "{rnn}: {ranked:?} {alone:?}");
                }
            }
        }
    }

    /// Mixed-precision training follows the f32 loss curve, keeps every weight f32, and is as
    /// reproducible as f32 training (which needs libtorch's process-wide generator to itself:
    /// the test runner gives each test its own process).
    #[test]
    fn bf16_training_follows_the_f32_loss_curve() {
        let curve = |rnn: &str, precision: Precision| {
            let model = tiny_model(rnn, 30, 5);
            tch::manual_seed(9);
            let features = Tensor::rand([16, 6], (Kind::Float, Device::Cpu));
            let tokens = Tensor::randint_low(3, 30, [16, 9], (Kind::Int64, Device::Cpu));
            let _ = tokens.narrow(1, 0, 1).fill_(START_ID as i64);
            let _ = tokens.narrow(1, 8, 1).fill_(END_ID as i64);
            let mut optimizer = crate::optim::Adam::new(&model.vs, 0.01);
            let losses: Vec<f64> = (0..60)
                .map(|_| {
                    let loss = model.training_loss(
                        &model.encode_images(&features),
                        &tokens,
                        0.1,
                        precision,
                    );
                    assert_eq!(loss.kind(), Kind::Float);
                    optimizer.backward_step_clip_norm(&loss, 5.0);
                    loss.double_value(&[])
                })
                .collect();
            for (name, weight) in model.vs.variables() {
                assert_eq!(weight.kind(), Kind::Float, "{rnn}: {name}");
            }
            losses
        };
        for rnn in ["gru", "lstm"] {
            let exact = curve(rnn, Precision::F32);
            let mixed = curve(rnn, Precision::Bf16);
            assert_eq!(
                mixed,
                curve(rnn, Precision::Bf16),
                "{rnn}: not reproducible"
            );
            // Learning happened, and the two curves stay together all the way.
            assert!(exact[59] < 0.6 * exact[0], "{rnn}: {exact:?}");
            for (step, (a, b)) in exact.iter().zip(&mixed).enumerate() {
                assert!(
                    (a - b).abs() <= 0.05 * a,
                    "{rnn}, step {step}: f32 {a} vs bf16 {b}"
                );
            }
        }
    }

    #[test]
    fn padding_is_ignored_by_the_loss() {
        let model = tiny("gru");
        let features = Tensor::ones([1, 6], (Kind::Float, Device::Cpu));
        let emb = model.encode_images(&features);
        let short = pad_tokens(&[&[1, 4, 2]], Device::Cpu);
        let padded = Tensor::cat(
            &[
                short.shallow_clone(),
                Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        let a = model.caption_loss(&emb, &short).double_value(&[]);
        let b = model.caption_loss(&emb, &padded).double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}
