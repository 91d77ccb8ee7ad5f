//! Run SQL over named tables with Polars.
//!
//! A [`Catalog`] names the tables a query may read: Parquet files (scanned lazily, so a file is
//! read only when a query uses it) and newline-delimited JSON rows held in memory. [`query`]
//! runs one SQL statement over a catalog and returns the result as a [`DataFrame`]; [`write`]
//! renders a result as a text table, JSON, CSV or Parquet.
//!
//! Table names may contain dots and `@` (`captions.captions`, `train@1a2b3c4d.log`): the SQL
//! text is parsed first, every table it names is looked up in the catalog (an unknown one is a
//! [`QueryError::UnknownTable`]), and the query Polars runs names each table as one quoted
//! identifier. The crate knows nothing of where the tables come from.
//!
//! ```no_run
//! use onenet_query::{query, write, Catalog, OutputFormat};
//!
//! let mut catalog = Catalog::new();
//! catalog.add_parquet("captions.captions", "/data/captions.parquet".as_ref());
//! let mut df = query(&catalog, "select split, count(*) as n from captions.captions group by split")?;
//! write(&mut df, OutputFormat::Text, &mut std::io::stdout())?;
//! # Ok::<(), onenet_query::QueryError>(())
//! ```

mod catalog;
mod error;
mod output;
mod resolve;

pub use catalog::{query, Catalog};
pub use error::QueryError;
pub use output::{write, OutputFormat};
/// The result of a [`query`]: a Polars data frame, re-exported so callers need not depend on
/// Polars to name it.
pub use polars::frame::DataFrame;
