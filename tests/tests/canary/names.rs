//! Every metric and label a query names must exist in what Prometheus holds, or the query could only ever be
//! empty (or silently match nothing). The query is parsed (promql-parser), and each vector selector's metric must
//! have series, each matcher's label must be on one of them, and each `by`/`on`/`ignoring` label must be on a
//! series the query selects or made by one of its `label_replace`s.

use std::collections::BTreeSet;

use integration_tests::prometheus::Prometheus;
use promql_parser::parser::{self, Expr};

#[derive(Default)]
struct Names {
    /// (metric or None, matcher label names)
    selectors: Vec<(Option<String>, Vec<String>)>,
    grouping: BTreeSet<String>,
    made: BTreeSet<String>,
}

fn walk(e: &Expr, n: &mut Names) {
    match e {
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                n.grouping.extend(m.labels().labels.iter().cloned());
            }
            walk(&a.expr, n);
            if let Some(p) = &a.param {
                walk(p, n);
            }
        }
        Expr::Unary(u) => walk(&u.expr, n),
        Expr::Binary(b) => {
            if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                n.grouping.extend(m.labels().labels.iter().cloned());
            }
            walk(&b.lhs, n);
            walk(&b.rhs, n);
        }
        Expr::Paren(p) => walk(&p.expr, n),
        Expr::Subquery(s) => walk(&s.expr, n),
        Expr::VectorSelector(vs) => n.selectors.push((
            vs.name.clone(),
            vs.matchers
                .matchers
                .iter()
                .map(|m| m.name.clone())
                .filter(|l| l != "__name__")
                .collect(),
        )),
        Expr::MatrixSelector(ms) => walk(&Expr::VectorSelector(ms.vs.clone()), n),
        Expr::Call(c) => {
            if c.func.name == "label_replace" {
                // label_replace(v, dst, replacement, src, regex): dst is made here, src must exist.
                let s = |i: usize| match c.args.args.get(i).map(|a| a.as_ref()) {
                    Some(Expr::StringLiteral(s)) => s.val.clone(),
                    _ => String::new(),
                };
                n.made.insert(s(1));
                if !s(3).is_empty() {
                    n.grouping.insert(s(3));
                }
            }
            for a in &c.args.args {
                walk(a, n);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// What `expr` names that Prometheus has never seen (in the last `lookback_s` seconds); empty when all is known.
pub fn unknown(prom: &Prometheus, expr: &str, lookback_s: u64) -> Vec<String> {
    let ast = match parser::parse(expr) {
        Ok(ast) => ast,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let mut n = Names::default();
    walk(&ast, &mut n);
    let mut problems = Vec::new();
    let mut seen_labels: BTreeSet<String> = n.made.clone();
    for (metric, labels) in &n.selectors {
        let Some(metric) = metric else { continue };
        let series = prom.series(metric, lookback_s);
        if series.is_empty() {
            problems.push(format!("metric {metric}: no such series"));
            continue;
        }
        let have: BTreeSet<&String> = series.iter().flat_map(|s| s.keys()).collect();
        for l in labels {
            if !have.contains(l) {
                problems.push(format!("label {l} of {metric}: on none of its series"));
            }
        }
        seen_labels.extend(have.into_iter().cloned());
    }
    for l in &n.grouping {
        if !seen_labels.contains(l) {
            problems.push(format!(
                "label {l} (by/on/ignoring/label_replace): on none of the selected series"
            ));
        }
    }
    problems
}
