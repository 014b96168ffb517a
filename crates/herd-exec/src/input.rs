//! Input items: lines of text, CSV rows or JSON Lines objects.
//!
//! - **Lines**: every line is an item, without its `\n` or `\r\n`. An empty
//!   line is an empty item, and runs, as with GNU parallel (without `-r`). A
//!   last line without a newline is an item too.
//! - **CSV**: the first row is the header and names the fields (`{column}`);
//!   every other row is an item. `{}` is the row written back as CSV: the
//!   fields joined with commas, a field quoted (`"a,b"`, `"say ""hi"""`) only
//!   if it holds a comma, a quote or a line break — for ordinary rows that is
//!   the line as written. Every row must have as many fields as the header.
//!   Blank lines are skipped (the `csv` crate's rule).
//! - **JSON Lines**: every line is one JSON object; `{}` is the line's JSON
//!   text (without surrounding white space), `{key}` a top-level field
//!   (strings as they are, `null` as empty, other values as JSON). Blank lines
//!   are skipped. The fields are the keys of every object together, in order
//!   of first appearance; an object without one of them gives it as empty.
//!
//! Errors carry the line number (1-based, counting the header) and say what to do.

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use crate::template::Item;

/// How an input is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// One item per line.
    #[default]
    Lines,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file's extension says: `.csv`, `.jsonl` or `.ndjson`
    /// (any case); lines for anything else.
    pub fn from_path(path: &Path) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Format::Csv,
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => Format::Lines,
        }
    }
}

/// The items of an input, and the fields their placeholders may name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Items {
    /// The items, in input order.
    pub items: Vec<Item>,
    /// The CSV header, or the keys of the JSON Lines objects; empty for lines.
    pub fields: Vec<String>,
}

/// An input that cannot be read as its format says.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading failed.
    #[error("cannot read the input at line {line}")]
    Read {
        /// The line being read.
        line: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not UTF-8.
    #[error("line {line} is not valid UTF-8: convert the input to UTF-8 (e.g. with iconv)")]
    NotUtf8 {
        /// The line.
        line: u64,
    },
    /// A CSV row is malformed.
    #[error("line {line}: {problem}")]
    Csv {
        /// The line.
        line: u64,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A JSON Lines line is not JSON.
    #[error(
        "line {line} is not valid JSON: each line of a JSON Lines input must be one JSON object"
    )]
    Json {
        /// The line.
        line: u64,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON Lines line is JSON, but not an object.
    #[error(
        "line {line} holds {found}, not an object: each line of a JSON Lines input must be one JSON object ({{\"key\": value, ...}})"
    )]
    NotObject {
        /// The line.
        line: u64,
        /// What it holds ("an array", "a string", ...).
        found: &'static str,
    },
}

/// Reads every item of `reader` as `format` says.
pub fn read_items(reader: impl BufRead, format: Format) -> Result<Items, InputError> {
    match format {
        Format::Lines => read_lines(reader),
        Format::Csv => read_csv(reader),
        Format::Jsonl => read_jsonl(reader),
    }
}

/// Calls `each` with every line (1-based number, text without its line end).
fn for_each_line(
    mut reader: impl BufRead,
    mut each: impl FnMut(u64, &str) -> Result<(), InputError>,
) -> Result<(), InputError> {
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        line += 1;
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| InputError::Read { line, source })?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let text = std::str::from_utf8(&buf).map_err(|_| InputError::NotUtf8 { line })?;
        each(line, text)?;
    }
}

fn read_lines(reader: impl BufRead) -> Result<Items, InputError> {
    let mut items = Vec::new();
    for_each_line(reader, |_, text| {
        items.push(Item::new(text));
        Ok(())
    })?;
    Ok(Items {
        items,
        fields: Vec::new(),
    })
}

fn read_jsonl(reader: impl BufRead) -> Result<Items, InputError> {
    let mut items = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut known = std::collections::HashSet::new();
    for_each_line(reader, |line, text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let value: Value =
            serde_json::from_str(text).map_err(|source| InputError::Json { line, source })?;
        let Value::Object(object) = value else {
            return Err(InputError::NotObject {
                line,
                found: kind(&value),
            });
        };
        for key in object.keys() {
            if !known.contains(key) {
                known.insert(key.clone());
                fields.push(key.clone());
            }
        }
        items.push(Item::with_fields(text, object));
        Ok(())
    })?;
    Ok(Items { items, fields })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_csv(reader: impl BufRead) -> Result<Items, InputError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let header = csv.headers().map_err(|e| csv_error(e, 1))?.clone();
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        if name.is_empty() {
            return Err(InputError::Csv {
                line: 1,
                problem: format!(
                    "column {} of the header has no name: name every column, the header row names the fields",
                    i + 1
                ),
            });
        }
        if fields.iter().any(|f| f == name) {
            return Err(InputError::Csv {
                line: 1,
                problem: format!(
                    "the header names column {name:?} twice: give every column its own name"
                ),
            });
        }
        fields.push(name.to_string());
    }
    let mut items = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(e, line)),
        }
        let mut map = Map::new();
        for (name, value) in fields.iter().zip(record.iter()) {
            map.insert(name.clone(), Value::String(value.to_string()));
        }
        items.push(Item::with_fields(csv_row(&record), map));
    }
    Ok(Items { items, fields })
}

/// A record written back as one CSV row, quoting only where needed.
fn csv_row(record: &csv::StringRecord) -> String {
    let mut row = String::new();
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        if field.contains([',', '"', '\n', '\r']) {
            row.push('"');
            row.push_str(&field.replace('"', "\"\""));
            row.push('"');
        } else {
            row.push_str(field);
        }
    }
    row
}

fn csv_error(error: csv::Error, fallback_line: u64) -> InputError {
    let line = error.position().map_or(fallback_line, |p| p.line());
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => return InputError::NotUtf8 { line },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            return InputError::Csv {
                line,
                problem: format!(
                    "the row has {len} fields but the header has {expected_len}: give every row as many fields as the header, and quote fields that hold commas (\"a,b\")"
                ),
            };
        }
        _ => {}
    }
    let problem = format!("invalid CSV: {error}");
    match error.into_kind() {
        csv::ErrorKind::Io(source) => InputError::Read { line, source },
        _ => InputError::Csv { line, problem },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &Items) -> Vec<&str> {
        items.items.iter().map(|i| i.text.as_str()).collect()
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.CSV")), Format::Csv);
        assert_eq!(Format::from_path(Path::new("b.jsonl")), Format::Jsonl);
        assert_eq!(Format::from_path(Path::new("b.ndjson")), Format::Jsonl);
        assert_eq!(Format::from_path(Path::new("b.txt")), Format::Lines);
        assert_eq!(Format::from_path(Path::new("-")), Format::Lines);
    }

    #[test]
    fn lines_keep_empty_ones_and_drop_line_ends() {
        let items = read_items(&b"a\r\n\nb c\nlast"[..], Format::Lines).unwrap();
        assert_eq!(texts(&items), ["a", "", "b c", "last"]);
        assert!(items.fields.is_empty());
        let items = read_items(&b"a\n"[..], Format::Lines).unwrap();
        assert_eq!(texts(&items), ["a"], "a final newline ends a line, no more");
        assert!(
            read_items(&b""[..], Format::Lines)
                .unwrap()
                .items
                .is_empty()
        );
        let err = read_items(&b"ok\n\xff\n"[..], Format::Lines).unwrap_err();
        assert!(matches!(err, InputError::NotUtf8 { line: 2 }), "{err:?}");
    }

    #[test]
    fn csv_rows_have_fields() {
        let input = "name,size\nfoo.txt,3\n\n\"a,b\",\"say \"\"hi\"\"\"\n";
        let items = read_items(input.as_bytes(), Format::Csv).unwrap();
        assert_eq!(items.fields, ["name", "size"]);
        assert_eq!(texts(&items), ["foo.txt,3", "\"a,b\",\"say \"\"hi\"\"\""]);
        assert_eq!(items.items[1].field("name"), "a,b");
        assert_eq!(items.items[1].field("size"), "say \"hi\"");
        assert!(read_items(&b""[..], Format::Csv).unwrap().items.is_empty());
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = read_items(&b"a,b\n1,2\n1,2,3\n"[..], Format::Csv).unwrap_err();
        assert!(matches!(err, InputError::Csv { line: 3, .. }), "{err:?}");
        assert!(
            err.to_string().contains("3 fields but the header has 2"),
            "{err}"
        );
        let err = read_items(&b"a,a\n1,2\n"[..], Format::Csv).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = read_items(&b"a,\n1,2\n"[..], Format::Csv).unwrap_err();
        assert!(err.to_string().contains("column 2"), "{err}");
        let err = read_items(&b"a\n\xff\n"[..], Format::Csv).unwrap_err();
        assert!(matches!(err, InputError::NotUtf8 { line: 2 }), "{err:?}");
    }

    #[test]
    fn jsonl_objects_have_fields() {
        let input = "{\"b\": 1, \"a\": \"x\"}\n\n  {\"c\": null}  \r\n";
        let items = read_items(input.as_bytes(), Format::Jsonl).unwrap();
        assert_eq!(items.fields, ["a", "b", "c"]);
        assert_eq!(texts(&items), ["{\"b\": 1, \"a\": \"x\"}", "{\"c\": null}"]);
        assert_eq!(items.items[0].field("a"), "x");
        assert_eq!(items.items[0].field("b"), "1");
        assert_eq!(items.items[1].field("a"), "");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let err = read_items(&b"{}\n[1]\n"[..], Format::Jsonl).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::NotObject {
                    line: 2,
                    found: "an array"
                }
            ),
            "{err:?}"
        );
        let err = read_items(&b"{}\n{}\n{oops\n"[..], Format::Jsonl).unwrap_err();
        assert!(matches!(err, InputError::Json { line: 3, .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("line 3 is not valid JSON"),
            "{err}"
        );
    }
}
