//! Reads README.md's plugin configuration table: one [`Row`] per field, cells as written.

/// One row of the table: `| field | default | meaning |`.
#[derive(Debug, Clone)]
pub struct Row {
    /// The dotted field, without its backticks (`report.max_batch`).
    pub field: String,
    /// The default cell as written (`` `256` ``, `none`, `the upstream cluster`).
    pub default: String,
    pub meaning: String,
}

/// The README the table lives in, read at test time so that a change to it is checked without a rebuild.
pub fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The section of `readme` under the heading `heading`, up to the next heading of any level.
pub fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let body = &readme[start + heading.len() + 2..];
    body.find("\n#").map_or(body, |end| &body[..end])
}

/// The rows of the first table in `text` whose header starts with `| field | default |`.
pub fn rows(text: &str) -> Vec<Row> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("| field | default |"));
    assert!(
        lines.next().is_some(),
        "no `| field | default | meaning |` table in:\n{text}"
    );
    lines
        .skip(1) // the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let [field, default, meaning] = cells[..] else {
                panic!("a row of three cells expected: {line}")
            };
            Row {
                field: field.trim_matches('`').to_owned(),
                default: default.to_owned(),
                meaning: meaning.to_owned(),
            }
        })
        .collect()
}

/// The code spans of `text`, in order: `` `a` and `b` `` gives `a`, `b`.
pub fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The documented range of a row: the first `(lo–hi` of its meaning. `lo` may name another field of the same
/// section (`` (`max_batch`–1000000 ``): its lower bound is then that field's value. `bytes` when the range reads
/// `(lo–hi bytes`, a length for text fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub lo: Bound,
    pub hi: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Number(u64),
    Field(String),
}

pub fn range(meaning: &str) -> Option<Range> {
    meaning.match_indices('(').find_map(|(i, _)| {
        let inside = &meaning[i + 1..];
        let (lo, rest) = inside.split_once('–')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let hi = digits.parse().ok()?;
        let lo = match lo.strip_prefix('`').and_then(|l| l.strip_suffix('`')) {
            Some(field) => Bound::Field(field.to_owned()),
            None => Bound::Number(lo.parse().ok()?),
        };
        Some(Range { lo, hi })
    })
}

/// The documented size bound of a list or map: `(at most N` in its meaning.
pub fn at_most(meaning: &str) -> Option<u64> {
    let (_, rest) = meaning.split_once("(at most ")?;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
