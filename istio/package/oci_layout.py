#!/usr/bin/env python3
"""Writes grayscope's images as OCI image layouts (https://github.com/opencontainers/image-spec), deterministically:
the same inputs give byte-identical blobs and so the same digests (fixed timestamps and owners, sorted JSON, gzip
without name or time).

  oci_layout.py OUT VERSION FILTER_WASM AGENT_BIN INJECTOR_BIN NATIVE_MODULE

writes OUT/grayscope-filter, OUT/grayscope-agent and OUT/grayscope-injector, each tagged VERSION, and prints
"<name> sha256:<manifest digest>" per image. Push one with `skopeo copy oci:OUT/<name>:VERSION docker://...`.

- grayscope-filter is the "compat" variant of a Wasm image that Istio's WasmPlugin pulls: one tar+gzip layer
  holding /plugin.wasm, manifest annotation module.wasm.image/variant=compat. (Istio refuses the media types
  that wasm-to-oci tools write.) WasmPlugin.spec.sha256 is the manifest digest printed here.
- grayscope-agent and grayscope-injector are container images of one layer: the binary under /usr/local/bin and
  the shared libraries it loads (found with ldd), nothing else: no shell, no package manager.
- grayscope-agent also carries the filter's native build (NATIVE_MODULE, an Envoy dynamic module) at
  /usr/local/lib/grayscope/libgrayscope_filter.so: the injector's init container copies it into istio-proxy with
  `grayscope-agent install-module` (the module is loaded by istio-proxy, so its libraries are not needed here).

Python's standard library only: hand-writing these few JSON documents is simpler than adding a build tool, and the
tests inspect the result with skopeo and umoci, which are the real consumers' tools.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = "1970-01-01T00:00:00Z"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)

    def blob(self, data, media_type, annotations=None):
        digest = sha256(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest.split(":")[1]), "wb") as f:
            f.write(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc

    def finish(self, manifest_desc, tag):
        with open(os.path.join(self.path, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))
        manifest_desc = dict(manifest_desc)
        manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest_desc]}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical(index))


def tar_layer(files):
    """files: list of (path inside the image, bytes, mode). Returns (gzip bytes, uncompressed tar digest)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path, _, _ in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        entries = [(d, None, 0o755) for d in dirs] + list(files)
        for path, data, mode in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(tar_bytes)
    return out.getvalue(), sha256(tar_bytes)


def image(layout, tag, files, config_extra, manifest_annotations=None, layer_annotations=None, platform=("amd64", "linux")):
    layer, diff_id = tar_layer(files)
    layer_desc = layout.blob(layer, OCI_LAYER, layer_annotations)
    config = {
        "architecture": platform[0],
        "os": platform[1],
        "created": EPOCH,
        "config": config_extra,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": "grayscope istio/package/oci_layout.py"}],
    }
    config_desc = layout.blob(canonical(config), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer_desc]}
    if manifest_annotations:
        manifest["annotations"] = manifest_annotations
    manifest_desc = layout.blob(canonical(manifest), OCI_MANIFEST)
    layout.finish(manifest_desc, tag)
    return manifest_desc["digest"]


def shared_libraries(binary):
    """The absolute paths of the shared libraries `binary` loads, with the dynamic loader, as ldd lists them."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def binary_image(out, name, tag, binary, user, extra=()):
    files = [(f"usr/local/bin/{name}", open(binary, "rb").read(), 0o755)] + list(extra)
    for lib in shared_libraries(binary):
        files.append((lib.lstrip("/"), open(os.path.realpath(lib), "rb").read(), 0o755))
    # PATH: so that `kubectl exec ... -- grayscope-agent tail` finds the binary.
    config = {"Entrypoint": [f"/usr/local/bin/{name}"], "Env": ["PATH=/usr/local/bin"], "User": user, "WorkingDir": "/"}
    labels = {"org.opencontainers.image.title": name, "org.opencontainers.image.version": tag}
    config["Labels"] = labels
    return image(Layout(os.path.join(out, name)), tag, files, config)


def main(argv):
    if len(argv) != 7:
        sys.exit(__doc__)
    out, tag, wasm, agent, injector, native = argv[1:]
    module = ("usr/local/lib/grayscope/libgrayscope_filter.so", open(native, "rb").read(), 0o644)
    digests = {
        "grayscope-filter": image(
            Layout(os.path.join(out, "grayscope-filter")),
            tag,
            [("plugin.wasm", open(wasm, "rb").read(), 0o644)],
            {},
            manifest_annotations={"module.wasm.image/variant": "compat"},
            layer_annotations={"org.opencontainers.image.title": "plugin.wasm"},
            platform=("wasm", "wasip1"),
        ),
        # The agent runs as root (with only CAP_BPF and CAP_PERFMON, see the injector); the webhook as nobody.
        "grayscope-agent": binary_image(out, "grayscope-agent", tag, agent, "0:0", [module]),
        "grayscope-injector": binary_image(out, "grayscope-injector", tag, injector, "65532:65532"),
    }
    for name, digest in digests.items():
        print(f"{name} {digest}")


if __name__ == "__main__":
    main(sys.argv)
