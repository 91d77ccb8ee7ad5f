//! onenet's engine: reads `pipeline.toml`, plans the stage graph, computes content-hashed cache
//! keys, and runs stale stages into a persistent artifact store. The stage kinds themselves live
//! in the `onenet-stages` crate and know nothing of caching.

pub mod config;
pub mod engine;
pub mod environment;
pub mod formats;
pub mod hashing;
pub mod key;
pub mod plan;
pub mod store;
pub mod task_cli;
