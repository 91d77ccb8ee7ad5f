//! onenet's engine: reads `pipeline.toml`, plans the stage graph, computes content-hashed cache
//! keys, and runs stale stages into a persistent artifact store. It knows stages only through
//! the `onenet-contract` crate; the kinds themselves (`onenet-stages`, `onenet-torch`) know
//! nothing of caching, and the binaries hand the engine their registry.

pub mod config;
pub mod engine;
pub mod environment;
pub mod execute;
pub mod experiments;
pub mod formats;
pub mod hashing;
pub mod key;
pub mod plan;
pub mod remote;
pub mod shards;
pub mod slurm;
pub mod store;
pub mod task;
pub mod task_cli;
