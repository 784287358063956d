//! Argo Rollouts' side of a measurement, mirrored: resolving args and evaluating the conditions.
//!
//! Args: Argo marshals the metric to JSON and replaces each `{{args.NAME}}` (the tag trimmed of spaces) with the
//! argument's value; an unknown tag is an error. The values here need no JSON quoting.
//!
//! Result: Argo's Prometheus provider turns a vector into a list of its sample values (labels dropped, order kept)
//! and a scalar into a number, and binds it to `result`.
//!
//! Conditions are expr-lang programs (Argo: `expr.Compile(cond, expr.Env(env), expr.AsBool())`), evaluated here by
//! the Rust implementation of expr with the same built-ins (`len`, `all`, `any`, the `#` predicate argument);
//! a result that is not a bool is an error, as `AsBool` makes it. Then Argo's `EvaluateResult`: with both
//! conditions set, failure wins, success if only success holds, Inconclusive when neither holds.
//!
//! Not mirrored: the functions Argo adds to the environment (`asInt`, `asFloat`, and in newer releases `isNaN`,
//! `isInf`, `default`...). The shipped conditions use none; one that did would fail here loudly, not pass. Nor is
//! the run level (`count`, `failureLimit`, `inconclusiveLimit` over successive measurements): this judges one
//! measurement.

use expr::{Context, Value};

/// Replaces `{{args.NAME}}` tags; panics on a tag without an argument, as Argo refuses the run.
pub fn resolve(text: &str, args: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find("}}")
            .unwrap_or_else(|| panic!("unclosed tag in {text}"));
        let tag = rest[open + 2..open + close].trim();
        let value = tag
            .strip_prefix("args.")
            .and_then(|name| args.iter().find(|(n, _)| *n == name))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("failed to resolve {{{{{tag}}}}}"));
        out.push_str(value);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Successful,
    Failed,
    Inconclusive,
}

fn condition(cond: &str, result: &[f64]) -> bool {
    let mut ctx = Context::default();
    ctx.insert(
        "result",
        Value::Array(result.iter().map(|v| Value::Float(*v)).collect()),
    );
    match expr::eval(cond, &ctx) {
        Ok(Value::Bool(b)) => b,
        other => panic!("condition {cond:?} on {result:?}: {other:?} (Argo: AnalysisPhaseError)"),
    }
}

/// Argo's `EvaluateResult` for a vector result.
pub fn evaluate(result: &[f64], success: &str, failure: &str) -> Phase {
    let (ok, failed) = (condition(success, result), condition(failure, result));
    if failed {
        Phase::Failed
    } else if ok {
        Phase::Successful
    } else {
        Phase::Inconclusive
    }
}

#[test]
fn resolves_and_evaluates_as_argo_does() {
    assert_eq!(resolve("{{args.a}}-{{ args.b }}", &[("a", "1"), ("b", "2")]), "1-2");
    assert!(std::panic::catch_unwind(|| resolve("{{args.c}}", &[("a", "1")])).is_err());
    let (ok, bad) = (
        "len(result) > 0 && all(result, {# >= 99})",
        "len(result) > 0 && any(result, {# < 99})",
    );
    assert_eq!(evaluate(&[100.0, 99.0], ok, bad), Phase::Successful);
    assert_eq!(evaluate(&[100.0, 80.0], ok, bad), Phase::Failed);
    assert_eq!(evaluate(&[], ok, bad), Phase::Inconclusive);
    // Unguarded, an empty result would pass: all() of an empty list is true.
    assert_eq!(
        evaluate(&[], "all(result, {# >= 99})", "any(result, {# < 99})"),
        Phase::Successful
    );
}
