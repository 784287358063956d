//! The binary's start-up failures, as a user meets them: a bad configuration exits 64 naming every bad field,
//! and a start without privilege exits non-zero naming the missing capabilities (never a panic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{os::unix::fs::PermissionsExt, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

#[test]
fn bad_configuration_exits_64_naming_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "table_max_entries = 0\nsurprise = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--netns", "nowhere", "--metrics-addr", "9464", "--config"])
        .arg(&file)
        .env("GRAYSCOPE_CLOSED_GRACE", "forever")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for needle in [
        "netns = \"nowhere\" (from flag --netns)",
        "metrics_addr = \"9464\" (from flag --metrics-addr)",
        "closed_grace = \"forever\" (from environment variable GRAYSCOPE_CLOSED_GRACE)",
        "table_max_entries = \"0\" (from key table_max_entries of config file",
        "unknown key \"surprise\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn start_without_privilege_names_what_is_missing() {
    // As root, drop to `nobody` with no capabilities; as another user, run as is.
    let root = nix::unistd::geteuid().is_root();
    // Under /tmp, which `nobody` can traverse whatever TMPDIR says.
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let bin = dir.path().join("grayscope-agent");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let sock = dir.path().join("agent.sock");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = cmd
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing privilege"), "{err}");
    assert!(err.contains("CAP_BPF and CAP_PERFMON"), "{err}");
    assert!(err.contains("setcap cap_bpf,cap_perfmon+ep"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
