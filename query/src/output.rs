//! Writing a query result as a text table, JSON, CSV or Parquet.

use std::io::Write;
use std::str::FromStr;
use std::sync::Once;

use polars::prelude::*;

use crate::error::QueryError;

/// How [`write`] renders a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Polars' table display: a `shape: (rows, columns)` line, then a box-drawn table whose
    /// header gives each column's name and type. Every row, column and value is shown in full
    /// (see [`write`]). For people, not programs.
    Text,
    /// One JSON array of row objects, `[{"column": value, ...}, ...]`, keys in column order;
    /// lists are arrays, nulls `null`. Followed by a newline.
    Json,
    /// CSV as RFC 4180 describes it: a header line of column names, then one line per row,
    /// separated by commas, a field quoted (with `""` for `"`) when it holds a comma, quote or
    /// line break. Lines end with `\n`. A list or fixed-size array value (an embedding) is
    /// written as its JSON array text, e.g. `"[1,2,3]"`.
    Csv,
    /// A Parquet file (Polars' writer, zstd-compressed), column types as in the result. Binary:
    /// callers should not send it to a terminal.
    Parquet,
}

impl OutputFormat {
    /// The lowercase name of each format, as [`FromStr`] accepts them.
    pub const NAMES: [&'static str; 4] = ["text", "json", "csv", "parquet"];
}

impl FromStr for OutputFormat {
    type Err = String;

    /// Parses `text`, `json`, `csv` or `parquet` (any case); the error lists those names.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            _ => Err(format!(
                "unknown output format `{s}` (expected one of: {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Writes `df` to `out` in `format` (see [`OutputFormat`] for each shape). `df` is mutable
/// because Polars' writers rechunk it in place; its contents do not change.
///
/// Polars reads its display limits only from environment variables, so the first
/// [`OutputFormat::Text`] write sets, for the whole process, `POLARS_FMT_MAX_ROWS` and
/// `POLARS_FMT_MAX_COLS` to `-1` (no limit), `POLARS_FMT_TABLE_CELL_LIST_LEN` to `-1` and
/// `POLARS_FMT_STR_LEN` to 65000 characters (Polars' layout overflows on "no limit" there), and
/// `POLARS_TABLE_WIDTH` to `-1` (no wrapping) unless it is already set. Styling variables
/// (`POLARS_FMT_TABLE_FORMATTING`, ...) are left to the user.
///
/// # Errors
///
/// [`QueryError::Io`] if `out` fails (e.g. a closed pipe); [`QueryError::Polars`] if a
/// writer cannot hold one of the result's types.
pub fn write(
    df: &mut DataFrame,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), QueryError> {
    let mut out = Recording { out, error: None };
    let written = write_to(df, format, &mut out);
    // Polars' writers may report a failing destination as some other error; the destination's
    // own error is the one to give.
    match (written, out.error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(error)) => Err(QueryError::Io(error)),
        (Err(err), None) => Err(err),
    }
}

/// [`write`], to a destination that records its errors.
fn write_to(
    df: &mut DataFrame,
    format: OutputFormat,
    out: &mut Recording,
) -> Result<(), QueryError> {
    match format {
        OutputFormat::Text => {
            show_everything();
            writeln!(out, "{df}")?;
        }
        OutputFormat::Json => {
            JsonWriter::new(&mut *out)
                .with_json_format(JsonFormat::Json)
                .finish(df)
                .map_err(QueryError::Polars)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let mut flat = lists_as_json_text(df)?;
            CsvWriter::new(&mut *out)
                .include_header(true)
                .finish(&mut flat)
                .map_err(QueryError::Polars)?;
        }
        OutputFormat::Parquet => {
            ParquetWriter::new(&mut *out)
                .finish(df)
                .map_err(QueryError::Polars)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A destination that keeps the first error it returned (other than an interruption, which
/// writers retry).
struct Recording<'a> {
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

impl Recording<'_> {
    fn record<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        result.map_err(|error| {
            let copy = std::io::Error::new(error.kind(), error.to_string());
            if error.kind() != std::io::ErrorKind::Interrupted {
                self.error.get_or_insert(error);
            }
            copy
        })
    }
}

impl Write for Recording<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.out.write(buf);
        self.record(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.out.flush();
        self.record(result)
    }
}

/// Sets Polars' display limits so that a frame's `Display` shows all of it (once per process).
fn show_everything() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, value) in [
            ("POLARS_FMT_MAX_ROWS", "-1"),
            ("POLARS_FMT_MAX_COLS", "-1"),
            ("POLARS_FMT_TABLE_CELL_LIST_LEN", "-1"),
            // Polars adds to this limit when laying out a column, so it must stay finite;
            // column widths are u16.
            ("POLARS_FMT_STR_LEN", "65000"),
        ] {
            std::env::set_var(name, value);
        }
        if std::env::var_os("POLARS_TABLE_WIDTH").is_none() {
            std::env::set_var("POLARS_TABLE_WIDTH", "-1");
        }
    });
}

/// `df` with every list and fixed-size array column (e.g. embeddings) replaced by a string
/// column of its values as JSON arrays, since CSV has neither.
fn lists_as_json_text(df: &DataFrame) -> Result<DataFrame, QueryError> {
    let mut flat = df.clone();
    for column in df.columns() {
        let column = match column.dtype() {
            DataType::List(_) => column.clone(),
            DataType::Array(inner, _) => column
                .cast(&DataType::List(inner.clone()))
                .map_err(QueryError::Polars)?,
            _ => continue,
        };
        let list = column.list().map_err(QueryError::Polars)?;
        let text: StringChunked = (0..list.len())
            .map(|i| list.get_as_series(i).map(|series| json_array(&series)))
            .collect();
        flat.with_column(text.with_name(column.name().clone()).into_column())
            .map_err(QueryError::Polars)?;
    }
    Ok(flat)
}

/// The values of `series` as the text of a JSON array.
fn json_array(series: &Series) -> String {
    let mut text = String::from("[");
    for (i, value) in series.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        json_value(&value, &mut text);
    }
    text.push(']');
    text
}

/// Appends `value` to `text` as JSON: numbers and booleans as themselves (floats in full
/// precision, a non-finite one as `null`), nested lists and arrays as arrays, anything else as a JSON string of its display.
fn json_value(value: &AnyValue, text: &mut String) {
    use std::fmt::Write as _;
    match value {
        AnyValue::Null => text.push_str("null"),
        AnyValue::Boolean(b) => write!(text, "{b}").unwrap(),
        AnyValue::Float32(f) if !f.is_finite() => text.push_str("null"),
        AnyValue::Float64(f) if !f.is_finite() => text.push_str("null"),
        // Rust's shortest round-trip form, not Polars' display, which rounds.
        AnyValue::Float32(f) => write!(text, "{f}").unwrap(),
        AnyValue::Float64(f) => write!(text, "{f}").unwrap(),
        v if v.is_primitive_numeric() => write!(text, "{v}").unwrap(),
        AnyValue::List(inner) | AnyValue::Array(inner, _) => text.push_str(&json_array(inner)),
        AnyValue::String(s) => json_string(s, text),
        AnyValue::StringOwned(s) => json_string(s, text),
        other => json_string(&other.to_string(), text),
    }
}

/// Appends `s` to `text` as a quoted JSON string.
fn json_string(s: &str, text: &mut String) {
    use std::fmt::Write as _;
    text.push('"');
    for ch in s.chars() {
        match ch {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            '\t' => text.push_str("\\t"),
            c if u32::from(c) < 0x20 => write!(text, "\\u{:04x}", u32::from(c)).unwrap(),
            c => text.push(c),
        }
    }
    text.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{sample_catalog, strings};
    use crate::query;
    use std::io::Cursor;

    /// Captions joined to their images: strings (one with a comma and quotes), ints, a list.
    fn sample_result(dir: &std::path::Path) -> DataFrame {
        query(
            &sample_catalog(dir),
            "select c.image_id, c.caption_no, c.caption, c.tokens, i.width \
             from captions.captions c join images.images i on c.image_id = i.image_id \
             order by c.image_id, c.caption_no",
        )
        .unwrap()
    }

    fn written(df: &mut DataFrame, format: OutputFormat) -> Vec<u8> {
        let mut out = Vec::new();
        write(df, format, &mut out).unwrap();
        out
    }

    #[test]
    fn json_is_an_array_of_row_objects() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = sample_result(dir.path());
        let out = written(&mut df, OutputFormat::Json);
        let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[0],
            serde_json::json!({
                "image_id": "a.jpg", "caption_no": 0, "caption": "a dog",
                "tokens": [1, 2], "width": 640
            })
        );
        assert_eq!(rows[4]["caption"], "birds, \"flying\"");
        assert_eq!(rows[5]["tokens"], serde_json::json!([]));
    }

    #[test]
    fn csv_reads_back_with_lists_as_json_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = sample_result(dir.path());
        let out = written(&mut df, OutputFormat::Csv);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("image_id,caption_no,caption,tokens,width\n"),
            "{text}"
        );
        assert!(
            text.contains("c.jpg,1,\"birds, \"\"flying\"\"\",[6],800\n"),
            "{text}"
        );
        let back = CsvReader::new(Cursor::new(out)).finish().unwrap();
        assert_eq!(back.shape(), (6, 5));
        for name in ["image_id", "caption_no", "caption", "width"] {
            assert_eq!(strings(&back, name), strings(&df, name), "{name}");
        }
        assert_eq!(
            strings(&back, "tokens"),
            ["[1,2]", "[1,3,2]", "[1,4]", "[5,6]", "[6]", "[]"]
        );
    }

    #[test]
    fn embeddings_are_json_arrays_in_csv_and_json() {
        let vectors = Series::new(
            "embedding".into(),
            [
                Series::new("".into(), [0.5f32, -1.0]),
                Series::new("".into(), [2.0f32, 0.123_456_79]),
            ],
        )
        .cast(&DataType::Array(Box::new(DataType::Float32), 2))
        .unwrap();
        let mut df = df!("token" => ["a", "b"]).unwrap();
        df.with_column(vectors.into()).unwrap();

        let csv = String::from_utf8(written(&mut df, OutputFormat::Csv)).unwrap();
        assert_eq!(
            csv,
            "token,embedding\na,\"[0.5,-1]\"\nb,\"[2,0.12345679]\"\n"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&written(&mut df, OutputFormat::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"token": "a", "embedding": [0.5, -1.0]},
                {"token": "b", "embedding": [2.0, 0.123_456_79]},
            ])
        );
    }

    #[test]
    fn parquet_reads_back_equal_to_the_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = sample_result(dir.path());
        let out = written(&mut df, OutputFormat::Parquet);
        assert!(out.starts_with(b"PAR1"));
        let back = ParquetReader::new(Cursor::new(out)).finish().unwrap();
        assert!(back.equals_missing(&df), "{back}\n{df}");
        assert_eq!(back.schema(), df.schema());
    }

    #[test]
    fn text_shows_every_row_column_and_character() {
        let long = "a caption far longer than the thirty characters Polars shows by default";
        let mut df = df!(
            "i" => (0..50i64).collect::<Vec<_>>(),
            "text" => (0..50).map(|i| format!("{long} #{i}")).collect::<Vec<_>>(),
        )
        .unwrap();
        for extra in 0..10 {
            let column = Series::new(format!("extra_{extra}").into(), vec![extra; 50]);
            df.with_column(column.into()).unwrap();
        }
        let out = String::from_utf8(written(&mut df, OutputFormat::Text)).unwrap();
        assert!(out.starts_with("shape: (50, 12)"), "{out}");
        assert!(!out.contains('…'), "{out}");
        for i in 0..50 {
            assert!(out.contains(&format!("{long} #{i} ")), "row {i}:\n{out}");
        }
        for extra in 0..10 {
            assert!(out.contains(&format!("extra_{extra}")), "{out}");
        }
        // One line per row, none wrapped.
        let row_lines = out.lines().filter(|l| l.contains(long)).count();
        assert_eq!(row_lines, 50, "{out}");
    }

    #[test]
    fn text_of_a_query_result_lists_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = sample_result(dir.path());
        let out = String::from_utf8(written(&mut df, OutputFormat::Text)).unwrap();
        assert!(out.starts_with("shape: (6, 5)"), "{out}");
        assert!(out.contains("birds, \"flying\""), "{out}");
        assert!(out.contains("[1, 3, 2]"), "{out}");
    }

    #[test]
    fn formats_parse_from_their_names() {
        for (name, format) in OutputFormat::NAMES.iter().zip([
            OutputFormat::Text,
            OutputFormat::Json,
            OutputFormat::Csv,
            OutputFormat::Parquet,
        ]) {
            assert_eq!(name.parse(), Ok(format));
        }
        assert_eq!("JSON".parse(), Ok(OutputFormat::Json));
        let err = "xml".parse::<OutputFormat>().unwrap_err();
        assert!(err.contains("text, json, csv, parquet"), "{err}");
    }

    #[test]
    fn a_failing_destination_is_an_io_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut df = sample_result(dir.path());
        for format in [
            OutputFormat::Text,
            OutputFormat::Json,
            OutputFormat::Csv,
            OutputFormat::Parquet,
        ] {
            match write(&mut df, format, &mut Closed) {
                Err(QueryError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{format:?}")
                }
                other => panic!("{format:?}: {other:?}"),
            }
        }
    }
}
