//! README.md's plugin configuration table ("The filter", "Plugin configuration") against the parser that Envoy's
//! plugin configuration goes through in both builds (`wasm_filter_core::config::parse`): every field the parser
//! accepts is in the table and every field of the table is accepted; each documented default is what `{}` gets;
//! each documented range and choice is exactly what the parser accepts, and a value past it is refused naming the
//! field; the README's example refusal is the parser's own message. The parser's fields are learnt from the
//! parser (see `probe`), the documentation from the README, so either one changing alone fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod probe;
mod table;

use probe::{at, fields, merge, parse_json, Field, Kind};
use serde_json::{json, Value};
use table::{Bound, Row};
use wasm_filter_core::config::Config;

fn rows() -> Vec<Row> {
    table::rows(table::section(&table::readme(), "### Plugin configuration"))
}

fn row<'a>(rows: &'a [Row], field: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.field == field)
        .unwrap_or_else(|| panic!("README.md's table has no row {field}"))
}

/// A valid configuration in which `field` can be set alone. The `tenant` section needs one of its id sources,
/// which must not be the field under test (its default is what is looked at).
fn base(field: &str) -> Value {
    match field.strip_prefix("tenant.") {
        Some("baggage_key") => json!({"tenant": {"header": "x-tenant-probe"}}),
        Some(_) => json!({"tenant": {"baggage_key": "tenant.probe"}}),
        None => json!({}),
    }
}

fn accepted(field: &str, value: Value) -> Result<Config, String> {
    parse_json(&merge(&base(field), &at(field, value))).map_err(|e| e.to_string())
}

/// Refused, and the refusal names `field` (the project's rule: a bad value is refused naming its field).
fn refused_naming(field: &str, value: Value) -> bool {
    parse_json(&merge(&base(field), &at(field, value))).is_err_and(|e| e.problems.iter().any(|p| p.field == field))
}

#[test]
fn the_table_lists_every_field_the_parser_accepts_and_no_other() {
    let rows = rows();
    let parsed = fields();
    let documented = |path: &str| rows.iter().any(|r| r.field == path);
    // A list's items have no rows: their fields are named in the list's row, as `"template"` in its example.
    let missing: Vec<&Field> = parsed
        .iter()
        .filter(|f| match f.path.split_once("[].") {
            Some((list, name)) => !row(&rows, list).meaning.contains(&format!("\"{name}\"")),
            None => f.kind != Kind::Section && !documented(&f.path),
        })
        .collect();
    let unknown: Vec<&str> = rows
        .iter()
        .map(|r| r.field.as_str())
        .filter(|name| !parsed.iter().any(|f| f.path == *name))
        .collect();
    let twice: Vec<&str> = rows
        .iter()
        .enumerate()
        .filter(|(i, r)| rows[..*i].iter().any(|o| o.field == r.field))
        .map(|(_, r)| r.field.as_str())
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty() && twice.is_empty(),
        "README.md's plugin configuration table against the parser:\n  accepted, not documented: {missing:?}\n  \
         documented, refused as unknown: {unknown:?}\n  documented twice: {twice:?}"
    );
    // The example objects the table gives (a route) are accepted as written; `{name}` is a template's syntax.
    for f in parsed.iter().filter(|f| f.kind == Kind::ObjectList) {
        let meaning = &row(&rows, &f.path).meaning;
        for example in table::code_spans(meaning).into_iter().filter(|s| s.starts_with("{\"")) {
            let item: Value = serde_json::from_str(example).unwrap_or_else(|e| panic!("{}: {example}: {e}", f.path));
            assert!(
                accepted(&f.path, json!([item])).is_ok(),
                "{}: the README's example {example} is refused",
                f.path
            );
        }
    }
}

/// Whether the parsed configuration holds a value for a field whose README default is prose (`none`, `absent
/// (off)`, `the upstream cluster`): the parser leaves those unset and the filter decides at run time.
fn holds_value(c: &Config, field: &str) -> bool {
    let tenant = || c.tenant.as_ref().expect("the probe's tenant section");
    match field {
        "service" => c.service.is_some(),
        "gray.default_version" => c.gray.default_version.is_some(),
        "gray.allowed_versions" => c.gray.allowed_versions.is_some(),
        "tenant" => c.tenant.is_some(),
        "tenant.header" => tenant().header.is_some(),
        "tenant.baggage_key" => tenant().baggage_key.is_some(),
        "tenant.tier_header" => tenant().tier_header.is_some(),
        "tenant.hash_key" => tenant().hash_key.is_some(),
        other => panic!("README.md gives {other} a default in words: teach holds_value where the parser keeps it"),
    }
}

#[test]
fn each_documented_default_is_what_an_empty_configuration_gets() {
    let mut wrong = Vec::new();
    for r in rows() {
        let empty = parse_json(&base(&r.field)).unwrap();
        if r.default.starts_with('`') {
            // A value: setting it explicitly must change nothing.
            let literal = table::code_spans(&r.default)[0];
            let value: Value = serde_json::from_str(literal).unwrap_or_else(|e| panic!("{}: {literal}: {e}", r.field));
            match accepted(&r.field, value) {
                Ok(c) if c == empty => {}
                Ok(_) => wrong.push(format!("{} = {literal} is not what {{}} gets", r.field)),
                Err(e) => wrong.push(format!("{} = {literal} is refused: {e}", r.field)),
            }
        } else if holds_value(&empty, &r.field) {
            wrong.push(format!("{}: documented as {:?}, but {{}} sets it", r.field, r.default));
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md's defaults against the parser:\n  {}",
        wrong.join("\n  ")
    );
}

/// The documented lower bound: a number, or the default of the field of the same section it names.
fn lower(rows: &[Row], field: &str, lo: &Bound) -> u64 {
    match lo {
        Bound::Number(n) => *n,
        Bound::Field(name) => {
            let sibling = field
                .rsplit_once('.')
                .map_or(name.clone(), |(section, _)| format!("{section}.{name}"));
            let default = &row(rows, &sibling).default;
            table::code_spans(default)[0]
                .parse()
                .unwrap_or_else(|e| panic!("{sibling}: {default}: {e}"))
        }
    }
}

#[test]
fn each_number_documents_its_range_and_the_parser_keeps_it() {
    let rows = rows();
    let parsed = fields();
    let mut wrong = Vec::new();
    for f in &parsed {
        if f.kind == Kind::Number
            && !rows
                .iter()
                .any(|r| r.field == f.path && table::range(&r.meaning).is_some())
        {
            wrong.push(format!("{}: a number without a documented (lo–hi) range", f.path));
        }
    }
    for r in &rows {
        let Some(range) = table::range(&r.meaning) else {
            continue;
        };
        let kind = &parsed.iter().find(|f| f.path == r.field).expect("a parser field").kind;
        let lo = lower(&rows, &r.field, &range.lo);
        // A number is probed as itself, text by its length in bytes (`tenant.hash_key`).
        let value = |n: u64| match kind {
            Kind::Number => json!(n),
            _ => json!("k".repeat(usize::try_from(n).unwrap())),
        };
        for n in [lo, range.hi] {
            if let Err(e) = accepted(&r.field, value(n)) {
                wrong.push(format!(
                    "{} = {n}, inside the documented range, is refused: {e}",
                    r.field
                ));
            }
        }
        for n in lo.checked_sub(1).into_iter().chain([range.hi + 1]) {
            if !refused_naming(&r.field, value(n)) {
                wrong.push(format!(
                    "{} = {n}, outside the documented range, is not refused naming it",
                    r.field
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md's ranges against the parser:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn each_choice_field_lists_exactly_the_values_the_parser_takes() {
    let rows = rows();
    for f in fields() {
        let Kind::Enum(mut variants) = f.kind else { continue };
        // `inbound`, `outbound`, or `auto`: from ...: the choices are the code spans before the first colon.
        let meaning = &row(&rows, &f.path).meaning;
        let choices = meaning.split_once(':').map_or(meaning.as_str(), |(c, _)| c);
        let mut documented: Vec<&str> = table::code_spans(choices);
        documented.sort_unstable();
        variants.sort();
        assert_eq!(
            documented, variants,
            "{}: README.md's choices against the parser's",
            f.path
        );
    }
}

/// Lists and maps hold at most what their row says (`(at most N`), or, saying nothing, far more than anyone
/// configures.
#[test]
fn each_collection_holds_what_its_row_says() {
    const UNBOUNDED: u64 = 20_000;
    let rows = rows();
    let items = |f: &Field, n: u64| {
        let list: Vec<Value> = (0..n).map(|i| json!(format!("v{i}"))).collect();
        // A map (`tenant.tenants`, id → label) when the parser refuses a list there.
        match accepted(&f.path, json!(["v0"])) {
            Err(e) if e.contains("expected a map") => {
                Value::Object((0..n).map(|i| (format!("id{i}"), json!(format!("l{i}")))).collect())
            }
            _ => Value::Array(list),
        }
    };
    let mut wrong = Vec::new();
    for f in fields().iter().filter(|f| f.kind == Kind::Collection) {
        match table::at_most(&row(&rows, &f.path).meaning) {
            Some(n) => {
                if let Err(e) = accepted(&f.path, items(f, n)) {
                    wrong.push(format!("{}: {n} items, the documented most, refused: {e}", f.path));
                }
                if !refused_naming(&f.path, items(f, n + 1)) {
                    wrong.push(format!("{}: {} items not refused naming it", f.path, n + 1));
                }
            }
            None => {
                if let Err(e) = accepted(&f.path, items(f, UNBOUNDED)) {
                    wrong.push(format!(
                        "{}: no bound documented, but {UNBOUNDED} items are refused: {e}",
                        f.path
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md's collection bounds against the parser:\n  {}",
        wrong.join("\n  ")
    );
}

/// The refusal the README quotes is word for word what the parser says for the value it names.
#[test]
fn the_readme_quotes_the_parsers_refusal() {
    const PREFIX: &str = "invalid grayscope plugin configuration: ";
    let readme = table::readme();
    let section = table::section(&readme, "### Plugin configuration");
    let quoted = table::code_spans(section)
        .into_iter()
        .find(|s| s.starts_with(PREFIX))
        .expect("an example refusal in the Plugin configuration section");
    let (field, message) = quoted[PREFIX.len()..].split_once(": ").unwrap();
    let got: u64 = message
        .rsplit_once("got ")
        .and_then(|(_, n)| n.parse().ok())
        .expect("`got N` in the example");
    let e = parse_json(&at(field, json!(got))).expect_err("the example's value is refused");
    assert_eq!(e.to_string(), quoted);
}
