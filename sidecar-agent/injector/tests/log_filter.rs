//! The injector's log filter, as a pod's environment sets it: a value that is no filter is refused at start with
//! the setting named, like every other bad setting, instead of being replaced by `info` without a word.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn a_log_filter_that_does_not_parse_is_refused_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_grayscope-injector"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/cert.pem"])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .env("GRAYSCOPE_LOG", "info,grayscope=loud")
        .output()
        .expect("run grayscope-injector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("GRAYSCOPE_LOG") && stderr.contains("info,grayscope=loud"),
        "the refusal does not name the setting and its value:\n{stderr}"
    );
    assert!(
        !stderr.contains("/nonexistent"),
        "it went on to load the certificate:\n{stderr}"
    );
}
