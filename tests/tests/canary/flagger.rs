//! Flagger's side of a check, mirrored: rendering a MetricTemplate query and judging its result.
//!
//! Rendering: Flagger runs the query through Go's text/template with one niladic function per model field
//! (`name`, `namespace`, `target`, `service`, `ingress`, `interval`) and `variables`, the Canary's
//! `templateVariables` map, reached as `{{ variables.KEY }}`. The templates use no other template syntax, so this
//! substitutes exactly those actions (spaces inside the braces allowed, as Go allows them) and panics on any other
//! action; Go would print `<no value>` for a missing variable, this panics instead.
//!
//! Judging (Flagger's Prometheus provider and scheduler): the result's *last* sample is the value; no sample is
//! `ErrNoValuesFound` ("Halt advancement no values found", a failed check that is not a verdict on the canary);
//! otherwise `value < min` or `value > max` of `thresholdRange` fails. A NaN compares false both ways, so Flagger
//! would pass it: the test asserts that no query ever returns NaN.

use std::collections::BTreeMap;

use integration_tests::prometheus::Sample;

/// What Flagger renders a template with.
pub struct Model<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub target: &'a str,
    pub interval: &'a str,
    pub variables: BTreeMap<String, String>,
}

/// The query as Flagger sends it to Prometheus.
pub fn render(template: &str, m: &Model<'_>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find("}}")
            .unwrap_or_else(|| panic!("unclosed action in {template}"));
        let action = rest[open + 2..open + close].trim();
        let value = match action {
            "name" => m.name.to_owned(),
            "namespace" => m.namespace.to_owned(),
            "target" => m.target.to_owned(),
            "interval" => m.interval.to_owned(),
            // The service and ingress functions exist too; the grayscope templates do not use them.
            _ => match action.strip_prefix("variables.") {
                Some(key) => m
                    .variables
                    .get(key)
                    .unwrap_or_else(|| panic!("templateVariables has no {key}"))
                    .clone(),
                None => panic!("Flagger has no template function {action:?}"),
            },
        };
        out.push_str(&value);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Pass(f64),
    Fail(f64),
    /// No sample: Flagger halts the advancement, counting a failed check, and says "no values found".
    NoData,
}

/// Flagger's verdict on a query result for `thresholdRange` {min, max}.
pub fn judge(result: &[Sample], min: Option<f64>, max: Option<f64>) -> Verdict {
    let Some(last) = result.last() else {
        return Verdict::NoData;
    };
    let v = last.value;
    if min.is_some_and(|min| v < min) || max.is_some_and(|max| v > max) {
        Verdict::Fail(v)
    } else {
        Verdict::Pass(v)
    }
}

#[test]
fn renders_and_judges_as_flagger_does() {
    let m = Model {
        name: "orders",
        namespace: "shop",
        target: "orders",
        interval: "1m",
        variables: [("canary_version".to_owned(), "v2".to_owned())].into(),
    };
    assert_eq!(
        render(
            "{{ namespace }}/{{target}}-{{ name }}[{{ interval }}] {{ variables.canary_version }}",
            &m
        ),
        "shop/orders-orders[1m] v2"
    );
    assert!(std::panic::catch_unwind(|| render("{{ variables.nope }}", &m)).is_err());
    assert!(std::panic::catch_unwind(|| render("{{ .Target }}", &m)).is_err());
    let s = |v: f64| Sample {
        labels: BTreeMap::new(),
        value: v,
    };
    assert_eq!(judge(&[], Some(99.0), None), Verdict::NoData);
    // The last sample counts.
    assert_eq!(judge(&[s(50.0), s(99.5)], Some(99.0), None), Verdict::Pass(99.5));
    assert_eq!(judge(&[s(1.6)], None, Some(1.5)), Verdict::Fail(1.6));
    // NaN compares false both ways: Flagger passes it, which is why the queries must never give one.
    assert!(matches!(
        judge(&[s(f64::NAN)], Some(99.0), Some(100.0)),
        Verdict::Pass(_)
    ));
}
