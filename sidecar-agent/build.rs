//! Compiles the kernel programs (`../ebpf/*.bpf.c`) with clang into `OUT_DIR/<name>.bpf.o`, where
//! `src/ebpf/objects.rs` embeds them.
//!
//! - `GRAYSCOPE_SKIP_EBPF_BUILD=1` writes empty objects instead, so `cargo clippy`/`check`/`doc` need no clang
//!   (lint-only runs). The agent refuses an empty object at start-up with an error that says so.
//! - `GRAYSCOPE_CLANG` names the compiler; by default `clang-19`, then `clang`.
//! - Without clang or the libbpf headers the build fails and says to run `just setup`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const SKIP_VAR: &str = "GRAYSCOPE_SKIP_EBPF_BUILD";
const CLANG_VAR: &str = "GRAYSCOPE_CLANG";
const SETUP_HINT: &str = "run `just setup` (it installs clang-19, libbpf-dev and linux-libc-dev), \
     or set GRAYSCOPE_SKIP_EBPF_BUILD=1 for a lint-only build whose agent cannot start";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ebpf_dir = manifest.join("..").join("ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");
    println!("cargo:rerun-if-env-changed={CLANG_VAR}");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    let sources = match list(&ebpf_dir) {
        Ok(s) => s,
        Err(e) => fail(&format!("cannot list {}: {e}", ebpf_dir.display())),
    };
    let skip = env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    if skip {
        println!("cargo:warning={SKIP_VAR} is set: embedding empty eBPF objects; this agent cannot start");
    }
    let clang = if skip { None } else { Some(find_clang()) };
    for src in &sources {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let obj = out_dir.join(name.replace(".bpf.c", ".bpf.o"));
        match &clang {
            None => write(&obj, b""),
            Some(clang) => compile(clang, src, &ebpf_dir.join("include"), &obj),
        }
    }
}

/// `ebpf/*.bpf.c`, plus a rerun-if-changed line for every source and header.
fn list(ebpf_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for dir in [ebpf_dir.to_path_buf(), ebpf_dir.join("include")] {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".h") || name.ends_with(".c") {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            if name.ends_with(".bpf.c") {
                sources.push(path);
            }
        }
    }
    sources.sort();
    Ok(sources)
}

fn find_clang() -> String {
    let candidates = match env::var(CLANG_VAR) {
        Ok(c) if !c.is_empty() => vec![c],
        _ => vec!["clang-19".to_owned(), "clang".to_owned()],
    };
    for c in &candidates {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.clone();
        }
    }
    fail(&format!(
        "no C compiler for the eBPF programs (tried {}): {SETUP_HINT}",
        candidates.join(", ")
    ))
}

fn compile(clang: &str, src: &Path, include: &Path, obj: &Path) {
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf headers (/usr/include/bpf/bpf_helpers.h) are missing: {SETUP_HINT}"
        ));
    }
    let status = Command::new(clang)
        .args([
            "-g",
            "-O2",
            "-Wall",
            "-Werror",
            "-Werror=undef",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
        ])
        .arg("-I")
        .arg(include)
        .args(["-I", "/usr/include/x86_64-linux-gnu", "-c"])
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "{clang} failed on {} ({s}); see the diagnostics above",
            src.display()
        )),
        Err(e) => fail(&format!("cannot run {clang}: {e}: {SETUP_HINT}")),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = fs::write(path, bytes) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: grayscope eBPF build: {msg}");
    println!("cargo:warning=grayscope eBPF build: {msg}");
    exit(1)
}
