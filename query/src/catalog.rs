//! The named tables a query may read, and running a query over them.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::error::QueryError;
use crate::resolve::{resolve, ResolveError};

/// The tables a query may read, by name.
///
/// Names are free-form strings; the ones a query can spell are made of SQL identifier parts
/// joined by `.` (e.g. `captions.captions`, `train@1a2b3c4d.log`, `runs`); see [`query`] for
/// how a query spells them. Adding a table reads nothing: a Parquet file is scanned, and NDJSON
/// rows parsed, only when a query uses the table.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tables: BTreeMap<String, Source>,
}

/// Where a table's rows come from.
#[derive(Debug, Clone)]
enum Source {
    /// A Parquet file.
    Parquet(PathBuf),
    /// Newline-delimited JSON objects, one row per line.
    Ndjson(Arc<Vec<u8>>),
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) table `name` as the Parquet file at `path`.
    ///
    /// The file is not opened here; a query that uses the table scans it lazily (reading only
    /// the columns and row groups the query needs), and a missing or unreadable file is then a
    /// [`QueryError::Table`] or [`QueryError::Polars`]. The column types are the file's own.
    pub fn add_parquet(&mut self, name: &str, path: &Path) {
        self.tables
            .insert(name.to_string(), Source::Parquet(path.to_path_buf()));
    }

    /// Adds (or replaces) table `name` as newline-delimited JSON: one JSON object per line,
    /// each a row, keys the column names (a key missing from a line is null there). Blank
    /// lines are skipped; no bytes at all make a table of no rows and no columns.
    ///
    /// The bytes are parsed when a query uses the table, inferring each column's type from
    /// all rows; rows that are not JSON objects are then a [`QueryError::Table`].
    pub fn add_ndjson(&mut self, name: &str, bytes: Vec<u8>) {
        self.tables
            .insert(name.to_string(), Source::Ndjson(Arc::new(bytes)));
    }

    /// The names of the tables, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    /// Table `name` as a lazy frame.
    fn frame(&self, name: &str) -> Result<LazyFrame, QueryError> {
        let table_error = |source| QueryError::Table {
            name: name.to_string(),
            source,
        };
        match &self.tables[name] {
            Source::Parquet(path) => {
                let args = ScanArgsParquet {
                    // The path is a file, not a pattern or a partitioned directory.
                    glob: false,
                    hive_options: HiveOptions::new_disabled(),
                    ..Default::default()
                };
                let path = PlRefPath::try_from_path(path).map_err(table_error)?;
                LazyFrame::scan_parquet(path, args).map_err(table_error)
            }
            Source::Ndjson(bytes) => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(DataFrame::empty().lazy());
                }
                let df = JsonReader::new(Cursor::new(bytes.as_slice()))
                    .with_json_format(JsonFormat::JsonLines)
                    .infer_schema_len(None)
                    .finish()
                    .map_err(table_error)?;
                Ok(df.lazy())
            }
        }
    }
}

/// Runs one SQL statement (Polars' SQL dialect) over the tables of `catalog` and returns its
/// result.
///
/// A table is named by its catalog name's parts, each an identifier that may be quoted:
/// `captions.captions`, `"train@1a2b3c4d".log`, `"train@1a2b3c4d.log"` and (`@` being an
/// identifier character) `train@1a2b3c4d.log` all name the catalog table of that dotted name.
/// A dotted table without an alias can be referred to by its last part
/// (`captions.image_id` after `from captions.captions`) unless that is ambiguous in the query;
/// give aliases to join two tables whose names end alike.
///
/// # Errors
///
/// * [`QueryError::UnknownTable`] if the query names a table that is neither in the catalog
///   nor one of the query's CTEs;
/// * [`QueryError::Sql`] for text that does not parse as one statement, SQL Polars does not
///   support, or an unknown column, with Polars' message;
/// * [`QueryError::Table`] if an NDJSON table's rows do not parse, or a table's path is not
///   UTF-8;
/// * [`QueryError::Polars`] for any other error Polars reports while running the query (a
///   Parquet file that is missing or not Parquet, a type error, ...).
pub fn query(catalog: &Catalog, sql: &str) -> Result<DataFrame, QueryError> {
    let mut context = SQLContext::new();
    let sql = match resolve(sql, |name| catalog.tables.contains_key(name)) {
        Ok(resolved) => {
            for name in &resolved.tables {
                context.register(name, catalog.frame(name)?);
            }
            resolved.sql
        }
        Err(ResolveError::Unknown(name)) => {
            return Err(QueryError::UnknownTable {
                name,
                known: catalog.names(),
            })
        }
        // Polars parses the text with the same parser and says what is wrong with it.
        Err(ResolveError::Unparsed) => sql.to_string(),
    };
    Ok(context.execute(&sql)?.collect()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;

    /// A catalog of small tables written with Polars into `dir`:
    ///
    /// * `captions.captions`: image_id, split, caption_no (u32), caption, tokens (list<u32>)
    /// * `images.images`: image_id, path, width (u32), height (u32)
    /// * `train@1a2b3c4d.log`: step (i64), loss (f64), tags (list<str>), ok (bool)
    /// * `runs`: NDJSON rows of run_id, stage, action, seconds
    pub(crate) fn sample_catalog(dir: &Path) -> Catalog {
        let mut catalog = Catalog::new();
        let mut captions = df!(
            "image_id" => ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "c.jpg", "c.jpg"],
            "split" => ["train", "train", "test", "train", "train", "train"],
            "caption_no" => [0u32, 1, 0, 0, 1, 2],
            "caption" => ["a dog", "a brown dog", "a cat", "two birds", "birds, \"flying\"", "sky"],
        )
        .unwrap();
        let tokens = Series::new(
            "tokens".into(),
            [
                Series::new("".into(), [1u32, 2]),
                Series::new("".into(), [1u32, 3, 2]),
                Series::new("".into(), [1u32, 4]),
                Series::new("".into(), [5u32, 6]),
                Series::new("".into(), [6u32]),
                Series::new("".into(), Vec::<u32>::new()),
            ],
        );
        captions.with_column(tokens.into()).unwrap();
        let mut images = df!(
            "image_id" => ["a.jpg", "b.jpg", "c.jpg"],
            "path" => ["img/a.jpg", "img/b.jpg", "img/c.jpg"],
            "width" => [640u32, 320, 800],
            "height" => [480u32, 240, 600],
        )
        .unwrap();
        let mut log = df!(
            "step" => [1i64, 2, 3],
            "loss" => [2.5f64, 1.25, 0.5],
            "ok" => [true, true, false],
        )
        .unwrap();
        let tags = Series::new(
            "tags".into(),
            [
                Series::new("".into(), ["warmup"]),
                Series::new("".into(), ["warmup", "lr"]),
                Series::new("".into(), Vec::<&str>::new()),
            ],
        );
        log.with_column(tags.into()).unwrap();
        for (name, df) in [
            ("captions.captions", &mut captions),
            ("images.images", &mut images),
            ("train@1a2b3c4d.log", &mut log),
        ] {
            let path = dir.join(format!("{name}.parquet"));
            ParquetWriter::new(File::create(&path).unwrap())
                .finish(df)
                .unwrap();
            catalog.add_parquet(name, &path);
        }
        catalog.add_ndjson("runs", RUNS.as_bytes().to_vec());
        catalog
    }

    const RUNS: &str = r#"{"run_id":"r1","stage":"captions","action":"computed","seconds":1.5}
{"run_id":"r1","stage":"train","action":"computed","seconds":10.0}
{"run_id":"r2","stage":"captions","action":"reused","seconds":0.0}

{"run_id":"r2","stage":"train","action":"computed","seconds":12.5}
"#;

    /// The values of column `name` of `df` as strings, in row order.
    pub(crate) fn strings(df: &DataFrame, name: &str) -> Vec<String> {
        let column = df.column(name).unwrap().as_materialized_series();
        (0..df.height())
            .map(|i| column.str_value(i).unwrap().into_owned())
            .collect()
    }

    #[test]
    fn a_group_by_over_a_dotted_table_counts_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        let df = query(
            &catalog,
            "select split, count(*) as n from captions.captions group by split order by split",
        )
        .unwrap();
        assert_eq!(strings(&df, "split"), ["test", "train"]);
        assert_eq!(strings(&df, "n"), ["1", "5"]);
    }

    #[test]
    fn two_dotted_tables_join_with_aliases_or_by_their_last_part() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        for sql in [
            "select c.caption, i.width from captions.captions c \
             join images.images i on c.image_id = i.image_id \
             where c.split = 'train' order by c.caption",
            "select captions.caption, images.width from captions.captions \
             join images.images on captions.image_id = images.image_id \
             where captions.split = 'train' order by captions.caption",
            "select caption, width from captions.captions, images.images \
             where captions.image_id = images.image_id and split = 'train' order by caption",
        ] {
            let df = query(&catalog, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(
                strings(&df, "caption"),
                [
                    "a brown dog",
                    "a dog",
                    "birds, \"flying\"",
                    "sky",
                    "two birds"
                ],
                "{sql}"
            );
            assert_eq!(
                strings(&df, "width"),
                ["640", "640", "800", "800", "800"],
                "{sql}"
            );
        }
    }

    #[test]
    fn the_ndjson_runs_table_can_be_queried() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        let df = query(
            &catalog,
            "select stage, sum(seconds) as seconds, count(*) as runs from runs \
             where action = 'computed' group by stage order by stage",
        )
        .unwrap();
        assert_eq!(strings(&df, "stage"), ["captions", "train"]);
        assert_eq!(strings(&df, "seconds"), ["1.5", "22.5"]);
        assert_eq!(strings(&df, "runs"), ["1", "2"]);
    }

    #[test]
    fn an_older_output_is_queried_under_each_quoted_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        for sql in [
            r#"select step, loss from "train@1a2b3c4d".log where ok order by step"#,
            r#"select step, loss from "train@1a2b3c4d.log" where ok order by step"#,
            r#"select log.step, log.loss from train@1a2b3c4d.log where log.ok order by 1"#,
        ] {
            let df = query(&catalog, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(strings(&df, "step"), ["1", "2"], "{sql}");
            assert_eq!(strings(&df, "loss"), ["2.5", "1.25"], "{sql}");
        }
        // Its list column survives the scan.
        let df = query(
            &catalog,
            r#"select step, tags from "train@1a2b3c4d".log order by step"#,
        )
        .unwrap();
        let tags = df.column("tags").unwrap().list().unwrap();
        let lens: Vec<_> = (0..tags.len())
            .map(|i| tags.get_as_series(i).unwrap().len())
            .collect();
        assert_eq!(lens, [1, 2, 0]);
    }

    #[test]
    fn an_unknown_table_names_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        let err = query(&catalog, "select * from captions.caption").unwrap_err();
        let QueryError::UnknownTable { name, known } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name, "captions.caption");
        assert_eq!(
            known,
            &[
                "captions.captions",
                "images.images",
                "runs",
                "train@1a2b3c4d.log"
            ]
        );
        let message = err.to_string();
        assert!(
            message.contains("did you mean `captions.captions`?"),
            "{message}"
        );
        for name in known {
            assert!(message.contains(name.as_str()), "{message}");
        }
    }

    #[test]
    fn syntax_and_column_errors_carry_polars_message() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample_catalog(dir.path());
        let err = query(&catalog, "selec * from runs").unwrap_err();
        assert!(matches!(err, QueryError::Sql(_)), "{err:?}");
        assert!(err.to_string().contains("selec"), "{err}");
        let err = query(&catalog, "select nope from captions.captions").unwrap_err();
        assert!(matches!(err, QueryError::Sql(_)), "{err:?}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_parquet_file_is_read_only_when_a_query_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = sample_catalog(dir.path());
        let missing = dir.path().join("missing.parquet");
        catalog.add_parquet("gone.table", &missing);
        let df = query(&catalog, "select count(*) as n from images.images").unwrap();
        assert_eq!(strings(&df, "n"), ["3"]);
        let err = query(&catalog, "select * from gone.table").unwrap_err();
        assert!(
            matches!(err, QueryError::Polars(_) | QueryError::Table { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing.parquet"), "{err}");
    }

    #[test]
    fn malformed_ndjson_is_an_error_naming_its_table() {
        let mut catalog = Catalog::new();
        catalog.add_ndjson("runs", b"{\"a\":1}\nnot json\n".to_vec());
        let err = query(&catalog, "select * from runs").unwrap_err();
        assert!(
            matches!(&err, QueryError::Table { name, .. } if name == "runs"),
            "{err:?}"
        );
        let mut catalog = Catalog::new();
        catalog.add_ndjson("runs", Vec::new());
        let df = query(&catalog, "select * from runs").unwrap();
        assert_eq!(df.shape(), (0, 0));
    }

    #[test]
    fn names_are_sorted() {
        let mut catalog = Catalog::new();
        catalog.add_ndjson("runs", Vec::new());
        catalog.add_parquet("b.t", Path::new("/nonexistent/b.parquet"));
        catalog.add_parquet("a@12.t", Path::new("/nonexistent/a.parquet"));
        assert_eq!(catalog.names(), ["a@12.t", "b.t", "runs"]);
    }
}
