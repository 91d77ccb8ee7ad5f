//! The built-in stage kinds of onenet, as plain functions of their inputs and params, and the
//! registry of every kind (the libtorch ones are specs here; their code runs in the worker).
//! The contract they implement is the `onenet-contract` crate, re-exported here.

pub mod canvas;
pub mod captions;
pub mod coco_metrics;
pub mod datasets;
pub mod demo_data;
pub mod flickr;
pub mod image_file;
pub mod images;
pub mod metrics;
pub mod report;
pub mod specs;
pub mod table;
#[cfg(test)]
mod test_python;
pub mod tokenize;
pub mod tsne;

pub use onenet_contract::*;

/// Every built-in stage kind.
pub fn kinds() -> &'static [StageKind] {
    static KINDS: [StageKind; 10] = [
        demo_data::KIND,
        captions::KIND,
        images::KIND,
        specs::features::KIND,
        specs::order::KIND,
        specs::train::KIND,
        specs::embed::KIND,
        specs::evaluate::KIND,
        tsne::KIND,
        report::KIND,
    ];
    &KINDS
}

/// The kind called `name`, if there is one.
pub fn kind(name: &str) -> Option<&'static StageKind> {
    kinds().iter().find(|k| k.name == name)
}
