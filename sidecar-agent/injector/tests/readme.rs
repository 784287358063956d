//! What the READMEs say about the injector against the injector: its flags (README.md, "Install in Istio") against
//! `grayscope-injector --help` of the real binary, both ways, with their variables and defaults; and each
//! `grayscope.io/...` label or annotation, and the namespace label, the READMEs name against the code's constants
//! and the webhook's selectors, with the values the READMEs give them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use k8s_openapi::api::core::v1::Pod;
use sidecar_agent_injector::{inject::INJECT_LABEL, native};

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-injector");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(flag, variable, default)`; a flag without a default is required (`required` in the README).
type Flag = (String, String, String);

/// The README's table of the injector's flags: `| flag | environment | default | meaning |`.
fn documented_flags() -> BTreeSet<Flag> {
    let readme = read("README.md");
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("| injector flag |"));
    assert!(
        lines.next().is_some(),
        "README.md has no `| injector flag | environment | default |` table"
    );
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            (cells[0].into(), cells[1].into(), cells[2].into())
        })
        .collect()
}

/// The flags of `grayscope-injector --help`, with clap's `[env: X=]` and `[default: Y]` notes.
fn real_flags() -> BTreeSet<Flag> {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let note = |line: &str, name: &str| {
        let (_, rest) = line.split_once(&format!("[{name}: "))?;
        rest.split_once(']').map(|(v, _)| v.trim_end_matches('=').to_owned())
    };
    help.lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("--").map(|rest| (l, rest)))
        .filter(|(_, rest)| !rest.starts_with("help") && !rest.starts_with("version"))
        .map(|(line, rest)| {
            let flag = format!("--{}", rest.split_whitespace().next().unwrap());
            let env = note(line, "env").unwrap_or_default();
            (
                flag,
                env,
                note(line, "default").unwrap_or_else(|| "required".to_owned()),
            )
        })
        .collect()
}

#[test]
fn the_readme_documents_each_flag_of_the_real_binary() {
    let (documented, real) = (documented_flags(), real_flags());
    assert!(
        documented == real,
        "README.md's injector flags against grayscope-injector --help:\n  only in the README: {:?}\n  only in \
         --help: {:?}",
        documented.difference(&real).collect::<Vec<_>>(),
        real.difference(&documented).collect::<Vec<_>>()
    );
}

/// Each `grayscope.io/<name>` (and `grayscope-injection`) in the READMEs, with the value written after it when the
/// README gives one in the same code span (`` `grayscope.io/filter-build: native` ``).
fn named_in_readmes() -> Vec<(String, Option<String>, &'static str)> {
    let mut out = Vec::new();
    for path in ["README.md", "istio/native/README.md", "sidecar-agent/README.md"] {
        for span in read(path).split('`').skip(1).step_by(2) {
            let (name, value) = span
                .split_once(": ")
                .map_or((span, None), |(n, v)| (n, Some(v.trim_matches('"'))));
            let name = name.split('=').next().unwrap_or(name);
            if name.starts_with("grayscope.io/") || name == "grayscope-injection" {
                out.push((name.to_owned(), value.map(str::to_owned), path));
            }
        }
    }
    out
}

#[test]
fn each_label_and_annotation_the_readmes_name_is_the_injectors() {
    let webhook = read("istio/injector/07-mutatingwebhook.yaml");
    let code = [INJECT_LABEL, native::FILTER_BUILD_ANNOTATION, native::FILTER_LABEL];
    let named = named_in_readmes();
    for (name, value, path) in &named {
        let known = code.contains(&name.as_str()) || webhook.contains(&format!("key: {name}"));
        assert!(
            known,
            "{path} names {name}, which neither the injector nor its webhook selectors use"
        );
        // The values a README gives are the ones the code takes.
        match (name.as_str(), value.as_deref()) {
            (n, Some(v)) if n == native::FILTER_BUILD_ANNOTATION => {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"annotations": {n: v}}
                }))
                .unwrap();
                assert!(
                    native::requested(&pod).is_ok(),
                    "{path}: {n}: {v} is refused by the injector"
                );
            }
            (n, Some(v)) if n == INJECT_LABEL => {
                assert!(
                    webhook.contains(&format!("{n}: \"{v}\"")) || webhook.contains(&format!("[\"{v}\"]")),
                    "{path}: {n}: {v}"
                );
            }
            _ => {}
        }
    }
    // And the other way: each name the injector reads or writes is in README.md.
    for name in code {
        assert!(
            named.iter().any(|(n, _, path)| n == name && *path == "README.md"),
            "README.md never names {name}"
        );
    }
}
