//! The command-line arguments of the four tasks, shared by `onenet` (which lists them in its
//! help) and the libtorch worker `onenet-torch` (which runs them).

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

/// Output format of a command: readable text, or JSON for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Caption image files with the trained network (features computed on the fly with the
    /// pipeline's backbone), or dataset images by id. Every readable file is captioned; the
    /// unreadable ones are reported and make the exit status 1.
    Caption {
        #[command(flatten)]
        pick: Pick,
        /// Image files (JPEG or PNG, whatever their extension).
        #[arg(required_unless_present = "id")]
        images: Vec<PathBuf>,
        /// A dataset image id, e.g. demo_000123.jpg (repeatable): captioned from the features
        /// the pipeline computed for it.
        #[arg(long, value_name = "IMAGE_ID")]
        id: Vec<String>,
        /// Beam width (1: greedy decoding).
        #[arg(long, default_value_t = 1)]
        beam: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Images most similar to an image file or to a dataset image (cosine of image
    /// embeddings; the query itself is left out).
    SimilarImages {
        #[command(flatten)]
        pick: Pick,
        /// An image file.
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        image: Option<PathBuf>,
        /// A dataset image id, e.g. demo_000123.jpg.
        #[arg(long)]
        id: Option<String>,
        #[arg(short, default_value_t = 5)]
        k: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Words most similar to a word (cosine of the learned word embeddings).
    SimilarWords {
        #[command(flatten)]
        pick: Pick,
        word: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Captions most similar to a text (cosine of mean word embeddings); unknown words are
    /// reported and left out.
    SimilarCaptions {
        #[command(flatten)]
        pick: Pick,
        text: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Images for captions, by inverting the captioner: with its weights frozen, image
    /// embeddings are optimised so the model finds each caption likely (all captions and restarts
    /// as one batch); the real images nearest the result are then re-ordered by how likely the
    /// captioner finds the caption given each (the score: mean log-likelihood per word).
    FindImages {
        #[command(flatten)]
        pick: Pick,
        #[arg(required = true)]
        texts: Vec<String>,
        #[arg(short, default_value_t = 5)]
        k: usize,
        /// Optimisation steps [default: the evaluate stage's `invert_steps` default].
        #[arg(long)]
        steps: Option<usize>,
        /// Random starting embeddings per caption; the one the model likes best is kept
        /// [default: the evaluate stage's `invert_restarts` default].
        #[arg(long)]
        restarts: Option<usize>,
        /// How many of the nearest images (at least k) are re-ordered by the caption's likelihood;
        /// 0 keeps the nearest by cosine, with cosine scores [default: the evaluate stage's
        /// `rerank` default].
        #[arg(long)]
        rerank: Option<usize>,
        /// Seed of the random starting embeddings: the same seed finds the same images
        /// [default: the evaluate stage's `seed` default].
        #[arg(long)]
        seed: Option<i64>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The newest evaluation: BLEU, CIDEr-D and ROUGE-L of generated captions and caption→image
    /// retrieval.
    Metrics {
        #[command(flatten)]
        pick: Pick,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

/// Which outputs a task command reads: by default what the pipeline file resolves to (exactly
/// what `status` calls fresh), the first stage of each kind.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Pick {
    /// Which stage to read when the pipeline has several of a kind (e.g. `train_lstm`);
    /// default: the first in the file.
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
    /// Read the outputs of the variant run recorded as this experiment (`onenet exp show`
    /// lists them).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["key", "set"])]
    pub exp: Option<String>,
    /// Read the object whose key starts with this, and what is upstream of it.
    #[arg(long, value_name = "KEY", conflicts_with = "set")]
    pub key: Option<String>,
    /// Read the variant these overrides make, as `run --set` would (repeatable).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub set: Vec<String>,
}

impl Pick {
    /// The explicit choice of objects, if any (`--set` works through the pipeline instead).
    pub fn choice(&self) -> crate::experiments::Choice {
        match (&self.exp, &self.key) {
            (Some(name), _) => crate::experiments::Choice::Exp(name.clone()),
            (None, Some(key)) => crate::experiments::Choice::Key(key.clone()),
            (None, None) => crate::experiments::Choice::File,
        }
    }
}

impl TaskCommand {
    /// Which outputs the task reads.
    pub fn pick(&self) -> &Pick {
        match self {
            TaskCommand::Caption { pick, .. }
            | TaskCommand::SimilarImages { pick, .. }
            | TaskCommand::SimilarWords { pick, .. }
            | TaskCommand::SimilarCaptions { pick, .. }
            | TaskCommand::FindImages { pick, .. }
            | TaskCommand::Metrics { pick, .. } => pick,
        }
    }
}
