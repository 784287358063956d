//! The `/stats/prometheus` exposition, asserted as whole lines, and parsed by the reference parser.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::paths;

/// Panics unless `line` (name, labels and value, exactly as Envoy prints it) is in the exposition.
#[track_caller]
pub fn assert_line(exposition: &str, line: &str) {
    if !exposition.lines().any(|l| l == line) {
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        let similar: Vec<&str> = exposition.lines().filter(|l| l.starts_with(name)).collect();
        panic!("missing line\n  {line}\nlines of {name}:\n  {}", similar.join("\n  "));
    }
}

/// Lines of one metric (samples only, no `# TYPE`), with labels and values.
pub fn samples<'a>(exposition: &'a str, metric: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .collect()
}

/// The sum of a metric's values over all its series.
pub fn sum(exposition: &str, metric: &str) -> f64 {
    samples(exposition, metric)
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One sample as the reference parser read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

/// Parses with Python's `prometheus_client` parser; panics with its error if the text does not parse.
pub fn parse(exposition: &str) -> Vec<Sample> {
    let mut child = Command::new(paths::python())
        .arg(paths::tests_file("peers/parse_exposition.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "exposition does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("parser json");
            Sample {
                name: v[0].as_str().unwrap_or("").to_owned(),
                labels: v[1].as_object().cloned().unwrap_or_default(),
                value: v[2].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect()
}
