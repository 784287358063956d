//! The names the injector gives what it adds, and the pods that already use one of them. A second container or
//! volume of the same name makes the API server refuse the pod (the webhook answered, so `failurePolicy: Ignore`
//! does not help), and an entry of Istio's `sidecar.istio.io/userVolume*` annotations of the same name would be
//! silently replaced. Renaming ours instead would break what relies on them (`-c grayscope-agent`, the scrape
//! job's `gs-metrics` container, the idempotency check), so such a pod is left alone, and the audit annotation
//! says which name is taken. The same goes for the paths where the injector mounts its volumes in istio-proxy: Istio
//! adds the pod's own mounts there too (its `userVolumeMount` entries, and the mounts of a container named
//! `istio-proxy` in the pod, which Istio merges into the proxy), and two mounts at one path are refused.

use k8s_openapi::api::core::v1::Pod;

use crate::{
    inject::{self, parse_annotation, SOCKET_DIR, SOCKET_VOLUME, TRACEFS_VOLUME, USER_VOLUME, USER_VOLUME_MOUNT},
    native::{Build, MODULE_INIT_CONTAINER, MODULE_VOLUME, PROXY_MODULE_DIR},
    proxy::PROXY_CONTAINER,
};

/// A name the injector adds that the pod already uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Taken {
    /// A container or init container of that name.
    #[error("the pod already has a container named {0}, a name the injector adds: not injected")]
    Container(&'static str),
    /// A volume of that name.
    #[error("the pod already has a volume named {0}, a name the injector adds: not injected")]
    Volume(&'static str),
    /// An entry of an Istio annotation keyed by volume name.
    #[error("annotation {annotation} already names {name}, a name the injector adds: not injected")]
    Annotation {
        annotation: &'static str,
        name: &'static str,
    },
    /// A mount of istio-proxy at a path where the injector mounts one of its volumes there.
    #[error("{by} already mounts {volume} at {path}, where the injector mounts {what} in istio-proxy: not injected")]
    MountPath {
        /// The annotation or the container that says so.
        by: String,
        volume: String,
        path: &'static str,
        what: &'static str,
    },
}

/// The paths where the injector mounts its volumes in istio-proxy, and what each holds.
fn proxy_mounts(build: Build) -> &'static [(&'static str, &'static str)] {
    match build {
        Build::Wasm => &[(SOCKET_DIR, "the agent's socket")],
        Build::Native => &[
            (SOCKET_DIR, "the agent's socket"),
            (PROXY_MODULE_DIR, "the filter's native module"),
        ],
    }
}

/// The first of `mounts` (volume name, mount path) at one of the injector's paths in istio-proxy.
fn at_our_path<'a>(
    build: Build,
    mut mounts: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<(String, &'static str, &'static str)> {
    // `/var/run/grayscope/` and `/var/run/grayscope` are one directory.
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    mounts.find_map(|(volume, path)| {
        let &(ours, what) = proxy_mounts(build).iter().find(|(ours, _)| same(path, ours))?;
        Some((volume.to_owned(), ours, what))
    })
}

/// The first name of those the injector would add for `build` that `pod` already uses. The agent's own container
/// is not among them: a pod that has it is already injected ([`crate::inject`] checks that first).
pub fn taken(pod: &Pod, build: Build) -> Option<Taken> {
    let (containers, volumes): (&[&'static str], &[&'static str]) = match build {
        Build::Wasm => (&[], &[SOCKET_VOLUME, TRACEFS_VOLUME]),
        Build::Native => (
            &[MODULE_INIT_CONTAINER],
            &[SOCKET_VOLUME, TRACEFS_VOLUME, MODULE_VOLUME],
        ),
    };
    let ours = |names: &[&'static str], name: &str| names.iter().copied().find(|ours| *ours == name);
    if let Some(spec) = &pod.spec {
        if let Some(name) = inject::containers(spec).find_map(|c| ours(containers, &c.name)) {
            return Some(Taken::Container(name));
        }
        if let Some(name) = spec.volumes.iter().flatten().find_map(|v| ours(volumes, &v.name)) {
            return Some(Taken::Volume(name));
        }
        let proxy = inject::containers(spec).filter(|c| c.name == PROXY_CONTAINER);
        let mounts = proxy
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .map(|m| (m.name.as_str(), m.mount_path.as_str()));
        if let Some((volume, path, what)) = at_our_path(build, mounts) {
            return Some(Taken::MountPath {
                by: format!("container {PROXY_CONTAINER}"),
                volume,
                path,
                what,
            });
        }
    }
    // Istio turns these entries into a volume of the pod and a mount of istio-proxy, keyed by name. An annotation
    // that does not parse is reported by the injection itself, so it is looked at no further here.
    let annotations = pod.metadata.annotations.as_ref()?;
    let by_name = [USER_VOLUME, USER_VOLUME_MOUNT].into_iter().find_map(|annotation| {
        let entries = parse_annotation(annotations, annotation).ok()?;
        let name = volumes.iter().copied().find(|name| entries.contains_key(*name))?;
        Some(Taken::Annotation { annotation, name })
    });
    by_name.or_else(|| {
        let entries = parse_annotation(annotations, USER_VOLUME_MOUNT).ok()?;
        let mounts = entries
            .iter()
            .filter_map(|(volume, mount)| Some((volume.as_str(), mount.get("mountPath")?.as_str()?)));
        let (volume, path, what) = at_our_path(build, mounts)?;
        Some(Taken::MountPath {
            by: format!("annotation {USER_VOLUME_MOUNT}"),
            volume,
            path,
            what,
        })
    })
}
