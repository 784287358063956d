//! `just package`'s OCI image layouts, inspected with the tools their users have: `skopeo` reads each layout as
//! a registry client would, `umoci` unpacks it. The layouts are written twice from the same inputs and must be
//! byte-identical (so the digest a WasmPlugin pins is reproducible). The filter image is Istio's "compat" Wasm
//! variant and carries `plugin.wasm` byte-identical to `dist/grayscope_filter.wasm`; the agent and webhook images
//! are one layer each, and their binaries run from the unpacked layer alone (chroot: no shell, no host libraries).
//! The agent image also carries the native build, which its own `install-module` (the injector's init container)
//! copies out, byte-identical to `dist/libgrayscope_filter.so`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use integration_tests::paths;
use serde_json::Value;

const VERSION: &str = "0.1.0";

fn injector_bin() -> PathBuf {
    let path = paths::root().join("dist/grayscope-injector");
    assert!(path.exists(), "{} not found: run `just build` first", path.display());
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `just setup`)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the packaging script into `out`; returns image name → manifest digest as it printed them.
fn package(out: &Path) -> BTreeMap<String, String> {
    let text = run(Command::new("python3")
        .arg(paths::root().join("istio/package/oci_layout.py"))
        .arg(out)
        .arg(VERSION)
        .arg(paths::wasm())
        .arg(paths::agent())
        .arg(injector_bin())
        .arg(paths::native()));
    text.lines()
        .map(|l| {
            let (name, digest) = l.split_once(' ').expect("name digest");
            (name.to_owned(), digest.to_owned())
        })
        .collect()
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).expect("prefix").to_owned(),
                    fs::read(&p).expect("read"),
                );
            }
        }
    }
    out
}

fn skopeo_json(args: &[&str], layout: &Path) -> Value {
    let reference = format!("oci:{}:{VERSION}", layout.display());
    serde_json::from_str(&run(Command::new("skopeo").arg("inspect").args(args).arg(&reference))).expect("skopeo json")
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

#[test]
fn the_layouts_are_deterministic_and_what_istio_and_a_container_runtime_expect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let digests = package(&a);
    assert_eq!(package(&b), digests, "same inputs, same digests");
    assert_eq!(files(&a), files(&b), "same inputs, byte-identical layouts");
    assert_eq!(digests.len(), 3);

    for (name, digest) in &digests {
        let layout = a.join(name);
        let inspect = skopeo_json(&[], &layout);
        assert_eq!(
            inspect["Digest"],
            digest.as_str(),
            "{name}: skopeo sees the printed digest"
        );
        let manifest = skopeo_json(&["--raw"], &layout);
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{name}"
        );
        assert_eq!(
            manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json",
            "{name}"
        );
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{name}: one layer");
        assert_eq!(
            layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{name}"
        );
        // The manifest digest is the sha256 of the manifest blob as stored.
        let blob = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let sum = run(Command::new("sha256sum").arg(&blob));
        assert_eq!(format!("sha256:{}", &sum[..64]), *digest, "{name}");
    }

    // The filter: Istio's compat variant, plugin.wasm byte-identical to the built filter and nothing else.
    let filter = a.join("grayscope-filter");
    let manifest = skopeo_json(&["--raw"], &filter);
    assert_eq!(manifest["annotations"]["module.wasm.image/variant"], "compat");
    let rootfs = dir.path().join("filter-rootfs");
    run(Command::new("umoci")
        .args(["raw", "unpack"])
        .args(if is_root() { &[][..] } else { &["--rootless"][..] })
        .arg("--image")
        .arg(format!("{}:{VERSION}", filter.display()))
        .arg(&rootfs));
    let unpacked = files(&rootfs);
    assert_eq!(unpacked.keys().collect::<Vec<_>>(), [Path::new("plugin.wasm")]);
    assert!(
        unpacked[Path::new("plugin.wasm")] == fs::read(paths::wasm()).expect("wasm"),
        "plugin.wasm differs from dist/grayscope_filter.wasm"
    );

    // The agent and the webhook: one binary layer, runnable with nothing but that layer.
    for (name, bin, user) in [
        ("grayscope-agent", paths::agent(), "0:0"),
        ("grayscope-injector", injector_bin(), "65532:65532"),
    ] {
        let layout = a.join(name);
        let config = skopeo_json(&["--config"], &layout);
        let entrypoint = format!("/usr/local/bin/{name}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{name}"
        );
        assert_eq!(config["config"]["User"], user, "{name}");
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!(["PATH=/usr/local/bin"]),
            "{name}"
        );
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some("amd64"))
        );
        let bundle = dir.path().join(format!("{name}-bundle"));
        run(Command::new("umoci")
            .arg("unpack")
            .args(if is_root() { &[][..] } else { &["--rootless"][..] })
            .arg("--image")
            .arg(format!("{}:{VERSION}", layout.display()))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        assert!(
            fs::read(rootfs.join(entrypoint.trim_start_matches('/'))).expect("binary")
                == fs::read(&bin).expect("dist binary"),
            "{name}: the image's binary differs from {}",
            bin.display()
        );
        assert!(!rootfs.join("bin/sh").exists(), "{name}: no shell in the image");
        if is_root() {
            let version = run(Command::new("chroot").arg(&rootfs).arg(&entrypoint).arg("--version"));
            assert!(version.starts_with(name), "{name}: {version}");
        } else {
            eprintln!("skipping the chroot run of {name}: needs root");
        }
        if name == "grayscope-agent" {
            agent_carries_the_native_module(&rootfs, &entrypoint);
        }
    }
}

/// The module in the agent's image, and the init container's command (as the injector writes it) copying it
/// into an empty directory, as into the pod's `emptyDir`.
fn agent_carries_the_native_module(rootfs: &Path, entrypoint: &str) {
    let native = fs::read(paths::native()).expect("dist native module");
    let carried = rootfs.join(sidecar_agent_injector::native::IMAGE_MODULE.trim_start_matches('/'));
    assert!(
        fs::read(&carried).expect("the module in the agent image") == native,
        "{} differs from dist/libgrayscope_filter.so",
        carried.display()
    );
    if !is_root() {
        eprintln!("skipping the chroot run of install-module: needs root");
        return;
    }
    // The volume, an empty directory where the init container mounts it; the command exactly as injected.
    let container = sidecar_agent_injector::native::module_init_container("unused");
    let args = container.args.expect("init container args");
    let mount = &container.volume_mounts.expect("mounts")[0].mount_path;
    let volume = rootfs.join(mount.trim_start_matches('/'));
    fs::create_dir(&volume).expect("volume dir");
    run(Command::new("chroot").arg(rootfs).arg(entrypoint).args(&args));
    let installed = volume.join("libgrayscope_filter.so");
    assert!(
        fs::read(&installed).expect("installed module") == native,
        "install-module's copy differs from dist/libgrayscope_filter.so"
    );
}
