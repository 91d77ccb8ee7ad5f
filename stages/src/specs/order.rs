//! The `order` stage kind as the engine sees it, and the table it writes (name, columns, writer
//! and reader: the stage and every stage that reads its pairs go through these); it runs in the
//! libtorch worker.

use std::path::Path;

use crate::table::{
    read_parquet, required, string_column, strings, u32_column, u32_list_column, u32_lists, u32s,
    write_columns,
};
use crate::{InputRule, ParamSpec, StageError, StageKind};

pub const KIND: StageKind = StageKind {
    name: "order",
    version: 1,
    about: "Pair each caption with its image's feature row; shuffle the train split with a seed",
    params: &[ParamSpec::seed(7, "Seed of the train-split shuffle")],
    inputs: InputRule {
        kinds: &["captions", "features"],
        min: 2,
        max: 2,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Cpu,
    run: crate::worker::run_in_worker,
    shards: None,
    files_root: None,
};

/// Every caption with its image's feature row, split by split, the train split shuffled.
pub const PAIRS_TABLE: &str = "pairs.parquet";

/// The columns of `PAIRS_TABLE`, in order.
pub mod pairs_columns {
    pub const SPLIT: &str = "split";
    pub const IMAGE_ROW: &str = "image_row";
    pub const IMAGE_ID: &str = "image_id";
    pub const CAPTION_NO: &str = "caption_no";
    pub const TOKENS: &str = "tokens";
}

/// One caption of one image, ready for training or evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub split: String,
    /// The image's row in the `features` matrix.
    pub image_row: u32,
    pub image_id: String,
    pub caption_no: u32,
    pub tokens: Vec<u32>,
}

/// Writes `pairs`, in this order, as the pairs table in `dir`.
pub fn write_pairs(dir: &Path, pairs: &[Pair]) -> Result<(), StageError> {
    use pairs_columns::*;
    write_columns(
        &dir.join(PAIRS_TABLE),
        vec![
            required(SPLIT, string_column(pairs.iter().map(|p| &p.split))),
            required(IMAGE_ROW, u32_column(pairs.iter().map(|p| p.image_row))),
            required(IMAGE_ID, string_column(pairs.iter().map(|p| &p.image_id))),
            required(CAPTION_NO, u32_column(pairs.iter().map(|p| p.caption_no))),
            required(
                TOKENS,
                u32_list_column(pairs.iter().map(|p| p.tokens.as_slice())),
            ),
        ],
    )
}

/// Reads the pairs an `order` stage wrote into `dir`, in stored order.
pub fn read_pairs(dir: &Path) -> Result<Vec<Pair>, StageError> {
    use pairs_columns::*;
    let path = dir.join(PAIRS_TABLE);
    let table = read_parquet(&path)?;
    Ok(strings(&path, &table, SPLIT)?
        .into_iter()
        .zip(u32s(&path, &table, IMAGE_ROW)?)
        .zip(strings(&path, &table, IMAGE_ID)?)
        .zip(u32s(&path, &table, CAPTION_NO)?)
        .zip(u32_lists(&path, &table, TOKENS)?)
        .map(
            |((((split, image_row), image_id), caption_no), tokens)| Pair {
                split,
                image_row,
                image_id,
                caption_no,
                tokens,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_read_back_in_the_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let pair = |split: &str, image_row, caption_no, tokens: &[u32]| Pair {
            split: split.into(),
            image_row,
            image_id: format!("img{image_row}"),
            caption_no,
            tokens: tokens.to_vec(),
        };
        let pairs = [
            pair("train", 2, 0, &[1, 5, 6, 2]),
            pair("train", 0, 4, &[1, 2]),
            pair("test", 1, 1, &[]),
        ];
        write_pairs(dir.path(), &pairs).unwrap();
        assert_eq!(read_pairs(dir.path()).unwrap(), pairs);
    }
}
