//! The filter's native build for pods that ask for it (`grayscope.io/filter-build: native`): the Envoy dynamic
//! module copied out of the agent's image by an init container into an `emptyDir`, that volume mounted read-only
//! into `istio-proxy` through Istio's annotations, `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` set on `istio-proxy`
//! through `proxy.istio.io/config` `proxyMetadata`, the stats regexp of the module's series, and the label that
//! `istio/native/03-envoyfilter-native.yaml` selects. The label comes last and only from here, so the
//! EnvoyFilter never selects a pod that lacks the file (Envoy would refuse its listeners).
//!
//! Istio must run `istio-proxy` as a regular container for these pods (`sidecar.istio.io/nativeSidecar:
//! "false"`): as a native sidecar it would start before the init containers, and Envoy would build its
//! listeners before the module is there.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, Pod, ResourceRequirements, SeccompProfile, SecurityContext,
        Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::{json, Value};

use crate::inject::{
    append_unique, object_entry, parse_annotation, ISTIO_PROXY_UID, PROXY_CONFIG, USER_VOLUME, USER_VOLUME_MOUNT,
};

/// Pod annotation choosing the filter's build: `native` (the dynamic module) or `wasm` (the default: nothing
/// more than the agent is injected, the WasmPlugin or EnvoyFilter of step 3 loads the filter).
pub const FILTER_BUILD_ANNOTATION: &str = "grayscope.io/filter-build";
/// The label `istio/native/03-envoyfilter-native.yaml` selects, set on pods that get the module.
pub const FILTER_LABEL: &str = "grayscope.io/filter";
/// The init container that copies the module, and the volume it copies into.
pub const MODULE_INIT_CONTAINER: &str = "grayscope-module";
pub const MODULE_VOLUME: &str = "grayscope-module";
/// Where `istio-proxy` sees the module's directory (the path of the EnvoyFilter's `local.filename`).
pub const PROXY_MODULE_DIR: &str = "/var/local/lib/grayscope";
/// Where the init container sees the same volume.
pub const INIT_MODULE_DIR: &str = "/grayscope-module";
/// Where the agent's image carries the module (`istio/package/oci_layout.py`, `grayscope-agent install-module`).
pub const IMAGE_MODULE: &str = "/usr/local/lib/grayscope/libgrayscope_filter.so";
/// The stats inclusion rule of the native build's series (Envoy's stats matcher sees the stored name, in the
/// dynamic modules' namespace, even when the runtime flag strips it from the exposed name).
pub const NATIVE_STATS_INCLUSION_REGEX: &str = r"dynamicmodulescustom\..*grayscope_.*";
/// Where Envoy looks up a dynamic module given by name.
pub const SEARCH_PATH_ENV: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";

const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";

/// The build a pod asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

/// The build `pod` asks for, or why the pod is left alone (an unknown value, or a native sidecar).
pub fn requested(pod: &Pod) -> Result<Build, String> {
    let annotations = pod.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    match get(FILTER_BUILD_ANNOTATION) {
        None | Some("wasm") => Ok(Build::Wasm),
        Some("native") if get(NATIVE_SIDECAR) == Some("true") => Err(format!(
            "annotation {FILTER_BUILD_ANNOTATION}=native needs istio-proxy as a regular container, and \
             {NATIVE_SIDECAR}=true starts it before the module is copied: left alone"
        )),
        Some("native") => Ok(Build::Native),
        Some(other) => Err(format!(
            "annotation {FILTER_BUILD_ANNOTATION}={other:?} is neither \"native\" nor \"wasm\": left alone"
        )),
    }
}

/// Adds the module to an injected pod: init container, volume, Istio annotations and the EnvoyFilter's label.
pub fn place(pod: &mut Pod, image: &str) -> Result<(), String> {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut proxy = parse_annotation(annotations, PROXY_CONFIG)?;
    let matcher = object_entry(&mut proxy, "proxyStatsMatcher", PROXY_CONFIG)?;
    append_unique(
        matcher,
        "inclusionRegexps",
        &[NATIVE_STATS_INCLUSION_REGEX],
        PROXY_CONFIG,
    )?;
    // proxyMetadata entries become environment variables of istio-proxy (Istio's injection template).
    let metadata = object_entry(&mut proxy, "proxyMetadata", PROXY_CONFIG)?;
    metadata.insert(SEARCH_PATH_ENV.to_owned(), json!(PROXY_MODULE_DIR));
    let mut volumes = parse_annotation(annotations, USER_VOLUME)?;
    volumes.insert(MODULE_VOLUME.to_owned(), module_volume_json());
    let mut mounts = parse_annotation(annotations, USER_VOLUME_MOUNT)?;
    mounts.insert(
        MODULE_VOLUME.to_owned(),
        json!({"mountPath": PROXY_MODULE_DIR, "readOnly": true}),
    );
    for (key, value) in [
        (PROXY_CONFIG, proxy),
        (USER_VOLUME, volumes),
        (USER_VOLUME_MOUNT, mounts),
    ] {
        annotations.insert(key.to_owned(), Value::Object(value).to_string());
    }
    annotations.insert(NATIVE_SIDECAR.to_owned(), "false".to_owned());
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(FILTER_LABEL.to_owned(), "native".to_owned());

    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(module_init_container(image));
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: MODULE_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("16Mi".to_owned())),
        }),
        ..Default::default()
    });
    Ok(())
}

/// The same volume as the pod spec's, for `sidecar.istio.io/userVolume` (Istio merges the two by name).
fn module_volume_json() -> Value {
    json!({"emptyDir": {"sizeLimit": "16Mi"}})
}

/// The init container: the agent's image copying its module into the volume, as istio-proxy's uid, with nothing
/// else allowed.
pub fn module_init_container(image: &str) -> Container {
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ]))
    };
    Container {
        name: MODULE_INIT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        args: Some(["install-module", "--to", INIT_MODULE_DIR].map(str::to_owned).to_vec()),
        resources: Some(ResourceRequirements {
            requests: quantities("10m", "16Mi"),
            limits: quantities("100m", "64Mi"),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(ISTIO_PROXY_UID),
            run_as_group: Some(ISTIO_PROXY_UID),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: MODULE_VOLUME.to_owned(),
            mount_path: INIT_MODULE_DIR.to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
