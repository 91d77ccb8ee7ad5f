//! Finding the tables a SQL query names and rewriting their names for Polars.
//!
//! Polars' SQL context looks a table up by the *first* part of a dotted name only
//! (`captions.captions` is looked up as `captions`), so dotted catalog names cannot be
//! registered as they are spelled. Instead the query is parsed here with the same parser and
//! options Polars uses, each table it names is resolved against the catalog by joining the
//! name's parts with `.` (quotes removed), and the query text is rewritten so that each such
//! name becomes one quoted identifier, e.g. `captions.captions` → `"captions.captions" AS
//! "captions"`, which Polars then finds under the catalog name. The rest of the text is left
//! exactly as written.
//!
//! An unaliased dotted table gets its last part as an alias (as SQL would let one write
//! `captions.image_id` after `FROM captions.captions`), unless that alias would be ambiguous
//! (two tables of the same last part, or a name already in use as an alias, CTE or table).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{ObjectNamePart, Query, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserOptions};
use sqlparser::tokenizer::Location;

/// The query Polars should run and the catalog names it reads.
#[derive(Debug, PartialEq)]
pub(crate) struct Resolved {
    /// The SQL text with each catalog table named by one quoted identifier.
    pub sql: String,
    /// The catalog names the query reads, sorted, each once.
    pub tables: Vec<String>,
}

/// Why a query's table names could not be resolved.
#[derive(Debug, PartialEq)]
pub(crate) enum ResolveError {
    /// The text is not one statement our parser accepts; Polars will report why.
    Unparsed,
    /// A table name that is neither in the catalog nor a CTE of the query.
    Unknown(String),
}

/// Resolves the tables `sql` names against the catalog names for which `known` is true.
///
/// Names that are CTEs of the query and table functions (`read_parquet('...')`) are left to
/// Polars.
pub(crate) fn resolve(sql: &str, known: impl Fn(&str) -> bool) -> Result<Resolved, ResolveError> {
    let statement = parse_one(sql).ok_or(ResolveError::Unparsed)?;
    let mut found = Collector::default();
    let _ = statement.visit(&mut found);

    // Each table reference, resolved to a catalog name.
    let mut refs = Vec::new();
    for table in &found.tables {
        let name = table.parts.join(".");
        if table.parts.len() == 1 && found.ctes.contains(&name) {
            continue;
        }
        if !known(&name) {
            return Err(ResolveError::Unknown(name));
        }
        refs.push((table, name));
    }

    // Implicit aliases: the last part of each unaliased dotted name, where unambiguous.
    let mut taken: HashSet<&str> = found.aliases.iter().map(String::as_str).collect();
    taken.extend(found.ctes.iter().map(String::as_str));
    taken.extend(refs.iter().map(|(_, name)| name.as_str()));
    let mut by_alias: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (table, name) in &refs {
        if let (false, Some((_, last))) = (table.aliased, name.rsplit_once('.')) {
            by_alias.entry(last).or_default().insert(name);
        }
    }

    let mut edits = Vec::new();
    for (table, name) in &refs {
        let alias = match (table.aliased, name.rsplit_once('.')) {
            (false, Some((_, last))) if !taken.contains(last) && by_alias[last].len() == 1 => {
                format!(" AS {}", quote(last))
            }
            _ => String::new(),
        };
        let (start, end) = (offset(sql, table.start), offset(sql, table.end));
        let (Some(start), Some(end)) = (start, end) else {
            // Spans come from the tokenizer, so this does not happen; if it did, Polars would
            // see the text unchanged rather than a wrong rewrite.
            return Err(ResolveError::Unparsed);
        };
        edits.push((start, end, format!("{}{alias}", quote(name))));
    }
    edits.sort_by_key(|e| e.0);
    edits.dedup_by_key(|e| e.0);

    let mut out = sql.to_string();
    for (start, end, text) in edits.into_iter().rev() {
        out.replace_range(start..end, &text);
    }
    let tables: BTreeSet<String> = refs.into_iter().map(|(_, name)| name).collect();
    Ok(Resolved {
        sql: out,
        tables: tables.into_iter().collect(),
    })
}

/// The one statement in `sql`, parsed as Polars parses it; `None` if it is not exactly one.
fn parse_one(sql: &str) -> Option<Statement> {
    let options = ParserOptions {
        trailing_commas: true,
        ..Default::default()
    };
    let mut statements = Parser::new(&GenericDialect)
        .with_options(options)
        .try_with_sql(sql)
        .ok()?
        .parse_statements()
        .ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// One table named in a query.
#[derive(Debug)]
struct TableRef {
    /// The parts of the name, quotes removed.
    parts: Vec<String>,
    /// Whether the query gives it an alias.
    aliased: bool,
    /// Where the name starts and ends (exclusive) in the query text.
    start: Location,
    end: Location,
}

/// Walks a statement collecting its table references, CTE names and aliases.
#[derive(Default)]
struct Collector {
    tables: Vec<TableRef>,
    ctes: BTreeSet<String>,
    aliases: BTreeSet<String>,
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.clone());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let alias = match factor {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
            _ => None,
        };
        if let Some(alias) = alias {
            self.aliases.insert(alias.name.value.clone());
        }
        if let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        {
            let idents: Option<Vec<_>> = name
                .0
                .iter()
                .map(|part| match part {
                    ObjectNamePart::Identifier(ident) => Some(ident),
                    ObjectNamePart::Function(_) => None,
                })
                .collect();
            if let Some(idents) = idents.filter(|i| !i.is_empty()) {
                self.tables.push(TableRef {
                    parts: idents.iter().map(|i| i.value.clone()).collect(),
                    aliased: alias.is_some(),
                    start: idents[0].span.start,
                    end: idents[idents.len() - 1].span.end,
                });
            }
        }
        ControlFlow::Continue(())
    }
}

/// `name` as a double-quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The byte offset in `text` of a tokenizer location (1-based line and column, counted in
/// characters, a new line after each `\n`); `None` if `text` has no such place.
fn offset(text: &str, at: Location) -> Option<usize> {
    let (mut line, mut column) = (1, 1);
    for (i, ch) in text.char_indices() {
        if (line, column) == (at.line, at.column) {
            return Some(i);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    ((line, column) == (at.line, at.column)).then_some(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &[
        "captions.captions",
        "images.images",
        "train.log",
        "train@1a2b3c4d.log",
        "runs",
    ];

    fn rewrite(sql: &str) -> Result<Resolved, ResolveError> {
        resolve(sql, |name| KNOWN.contains(&name))
    }

    fn rewritten(sql: &str) -> String {
        rewrite(sql).unwrap().sql
    }

    #[test]
    fn dotted_names_become_one_quoted_identifier_with_their_table_as_alias() {
        let r =
            rewrite("select split, count(*) as n from captions.captions group by split").unwrap();
        assert_eq!(
            r.sql,
            r#"select split, count(*) as n from "captions.captions" AS "captions" group by split"#
        );
        assert_eq!(r.tables, vec!["captions.captions"]);
    }

    #[test]
    fn every_spelling_of_an_older_output_resolves_to_its_catalog_name() {
        for sql in [
            r#"select * from "train@1a2b3c4d".log"#,
            r#"select * from "train@1a2b3c4d.log""#,
            r#"select * from "train@1a2b3c4d"."log""#,
            "select * from train@1a2b3c4d.log",
        ] {
            assert_eq!(
                rewritten(sql),
                r#"select * from "train@1a2b3c4d.log" AS "log""#,
                "{sql}"
            );
        }
    }

    #[test]
    fn explicit_aliases_are_kept_and_undotted_names_get_none() {
        assert_eq!(
            rewritten("select * from captions.captions c join runs r on c.x = r.x"),
            r#"select * from "captions.captions" c join "runs" r on c.x = r.x"#
        );
        assert_eq!(rewritten("select * from runs"), r#"select * from "runs""#);
    }

    #[test]
    fn ambiguous_implicit_aliases_are_left_out() {
        // One unaliased table named `log`: it gets the alias.
        assert_eq!(
            rewritten("select * from train.log a join \"train@1a2b3c4d\".log on true"),
            r#"select * from "train.log" a join "train@1a2b3c4d.log" AS "log" on true"#
        );
        // Two: neither does.
        assert_eq!(
            rewritten("select * from train.log, train@1a2b3c4d.log"),
            r#"select * from "train.log", "train@1a2b3c4d.log""#
        );
        // An alias already used elsewhere in the query is not given again.
        assert_eq!(
            rewritten("select * from images.images captions join captions.captions on true"),
            r#"select * from "images.images" captions join "captions.captions" on true"#
        );
    }

    #[test]
    fn names_in_subqueries_and_across_lines_are_rewritten_and_ctes_left_alone() {
        let sql = "with c as (select * from captions.captions)\n\
                   select *\n  from c\n  where image_id in (select image_id from\n images.images)";
        let r = rewrite(sql).unwrap();
        assert_eq!(
            r.sql,
            "with c as (select * from \"captions.captions\" AS \"captions\")\n\
             select *\n  from c\n  where image_id in (select image_id from\n \"images.images\" AS \"images\")"
        );
        assert_eq!(r.tables, vec!["captions.captions", "images.images"]);
    }

    #[test]
    fn text_other_than_table_names_is_kept_as_written() {
        // Non-ASCII text before a name: offsets are counted in characters, then bytes.
        assert_eq!(
            rewritten("select 'é—ü' as s, * from captions.captions where caption = 'a.b'"),
            r#"select 'é—ü' as s, * from "captions.captions" AS "captions" where caption = 'a.b'"#
        );
    }

    #[test]
    fn unknown_names_and_unparsable_text_are_errors() {
        assert_eq!(
            rewrite("select * from captions.captionz"),
            Err(ResolveError::Unknown("captions.captionz".into()))
        );
        assert_eq!(
            rewrite(r#"select * from "train@ffff".log"#),
            Err(ResolveError::Unknown("train@ffff.log".into()))
        );
        assert_eq!(rewrite("select * form runs"), Err(ResolveError::Unparsed));
        assert_eq!(
            rewrite("select 1 from runs; select 2 from runs"),
            Err(ResolveError::Unparsed)
        );
    }

    #[test]
    fn table_functions_are_left_to_polars() {
        assert_eq!(
            rewritten("select * from read_parquet('x.parquet')"),
            "select * from read_parquet('x.parquet')"
        );
    }
}
