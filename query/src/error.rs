//! The one error type of this crate: what can go wrong parsing, resolving, running or writing a
//! query.

use polars::error::PolarsError;

/// Why a query could not be run or its result not written.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query names a table the catalog does not hold. `name` is the name as the query wrote
    /// it with quotes removed and its parts joined by `.` (e.g. `captions.captionz`); `known` is
    /// every name in the catalog, sorted. The message lists them, with a did-you-mean when one
    /// is close.
    #[error("{}", unknown_table_message(.name, .known))]
    UnknownTable {
        /// The table name as the query spelled it.
        name: String,
        /// The names the catalog holds, sorted.
        known: Vec<String>,
    },
    /// The SQL text could not be parsed, or uses SQL that Polars does not support (Polars'
    /// `SQLSyntax` and `SQLInterface` errors), or names a column that does not exist; the
    /// message is Polars'.
    #[error("{0}")]
    Sql(PolarsError),
    /// A table's data could not be read: its Parquet file could not be opened or its NDJSON rows
    /// could not be parsed. The message names the table and gives Polars' reason.
    #[error("reading table `{name}`: {source}")]
    Table {
        /// The catalog name of the table.
        name: String,
        /// Polars' error.
        source: PolarsError,
    },
    /// Any other error Polars reports while running the query or writing its result (a file
    /// that turned unreadable mid-query, a type a format cannot hold, ...); the message is
    /// Polars'.
    #[error("{0}")]
    Polars(PolarsError),
    /// Writing the result to its destination failed (for instance a closed pipe, which has
    /// [`std::io::ErrorKind::BrokenPipe`]).
    #[error("writing the result: {0}")]
    Io(#[from] std::io::Error),
}

impl From<PolarsError> for QueryError {
    /// Polars' SQL errors (and unknown columns, which in SQL are the query's fault) become
    /// [`QueryError::Sql`], the rest [`QueryError::Polars`]; the error is kept whole, with any
    /// context Polars attached.
    fn from(err: PolarsError) -> Self {
        if matches!(
            innermost(&err),
            PolarsError::SQLSyntax(_)
                | PolarsError::SQLInterface(_)
                | PolarsError::ColumnNotFound(_)
        ) {
            QueryError::Sql(err)
        } else {
            QueryError::Polars(err)
        }
    }
}

/// The error under any context Polars wrapped around it.
fn innermost(err: &PolarsError) -> &PolarsError {
    match err {
        PolarsError::Context { error, .. } | PolarsError::ExprContext { error, .. } => {
            innermost(error)
        }
        other => other,
    }
}

/// "unknown table `x` (did you mean `y`?); known tables: a, b" for [`QueryError::UnknownTable`].
fn unknown_table_message(name: &str, known: &[String]) -> String {
    let suggestion = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    let known = if known.is_empty() {
        "no tables are known".to_string()
    } else {
        format!("known tables: {}", known.join(", "))
    };
    format!("unknown table `{name}`{suggestion}; {known}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_table_lists_known_names_and_suggests_a_close_one() {
        let known = vec!["captions.captions".to_string(), "runs".to_string()];
        let err = QueryError::UnknownTable {
            name: "captions.captionz".into(),
            known: known.clone(),
        };
        assert_eq!(
            err.to_string(),
            "unknown table `captions.captionz` (did you mean `captions.captions`?); \
             known tables: captions.captions, runs"
        );
        let err = QueryError::UnknownTable {
            name: "zzz".into(),
            known,
        };
        assert_eq!(
            err.to_string(),
            "unknown table `zzz`; known tables: captions.captions, runs"
        );
        let err = QueryError::UnknownTable {
            name: "zzz".into(),
            known: vec![],
        };
        assert_eq!(err.to_string(), "unknown table `zzz`; no tables are known");
    }
}
