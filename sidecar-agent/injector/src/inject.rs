//! When a pod is injected, and what it gets: the agent container (least privilege), one pid namespace for the pod's
//! containers, the `emptyDir` that holds the agent's Unix socket, and the annotations with which Istio's own
//! injector mounts that volume into `istio-proxy` and configures the proxy's stats for grayscope's series; for pods
//! that ask for the native build, what [`crate::native`] adds. A pure function of the pod, its namespace and
//! [`Settings`], so the golden tests cover it whole.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HostPathVolumeSource, Pod, PodSpec,
        ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::{json, Map, Value};

use crate::{
    names,
    native::{self, Build},
    proxy::{self, ProxyIds},
};

/// The injected container's name; its presence marks a pod as injected.
pub const AGENT_CONTAINER: &str = "grayscope-agent";
/// The `emptyDir` shared by the agent and `istio-proxy`.
pub const SOCKET_VOLUME: &str = "grayscope-socket";
/// The host's tracefs, read-only: the agent resolves tracepoint ids there.
pub const TRACEFS_VOLUME: &str = "grayscope-tracefs";
/// Where both containers see the socket volume (the path in `istio/02-agent-cluster.yaml`).
pub const SOCKET_DIR: &str = "/var/run/grayscope";
/// Pod label: `"true"` opts a pod in (in any namespace), `"false"` opts it out.
pub const INJECT_LABEL: &str = "grayscope.io/inject";
/// The uid and gid Istio runs its proxy as by default, which the agent's socket must let in; where the pod says
/// istio-proxy runs as another, the agent follows that ([`crate::proxy`]).
pub const ISTIO_PROXY_UID: i64 = 1337;
/// The agent's own default metrics port (`--metrics-addr`, `sidecar-agent/src/config/mod.rs`).
pub const DEFAULT_METRICS_PORT: i32 = 9464;
/// Namespaces that are never injected, whatever their labels say.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// The stats inclusion rule without which Istio's bootstrap drops every grayscope series
/// (`istio/01-stats-meshconfig.yaml`).
pub const STATS_INCLUSION_REGEX: &str = r"wasmcustom\..*grayscope_.*";
/// Every label the filter emits, as Istio `extraStatTags`.
pub const STAT_TAGS: [&str; 12] = [
    "direction",
    "rpc_system",
    "service",
    "method",
    "gray_version",
    "status",
    "source",
    "reason",
    "cause",
    "outcome",
    "tenant",
    "plugin",
];

pub(crate) const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub(crate) const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub(crate) const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";

/// What the webhook was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent's image, e.g. `registry.example/grayscope/agent:0.1.0`.
    pub agent_image: String,
    /// The webhook's own namespace, never injected (the webhook must not depend on itself).
    pub own_namespace: String,
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The pod as it should be created.
    Inject(Box<Pod>),
    /// Left alone, and why.
    Skip(String),
    /// An injected pod, amended after another webhook changed it (the API server calls the webhook again), and why.
    Amend(Box<Pod>, String),
}

/// Decides for `pod`, created in `namespace`.
pub fn decide(pod: &Pod, namespace: &str, settings: &Settings) -> Decision {
    if let Some(reason) = skip_reason(pod, namespace, settings) {
        return Decision::Skip(reason);
    }
    if injected(pod) {
        return match proxy::follow(pod) {
            Some((amended, ids)) => Decision::Amend(
                Box::new(amended),
                format!(
                    "istio-proxy runs as uid {} and gid {}, which the agent now allows",
                    ids.uid, ids.gid
                ),
            ),
            None => Decision::Skip("already injected".to_owned()),
        };
    }
    let build = match native::requested(pod) {
        Ok(build) => build,
        Err(reason) => return Decision::Skip(reason),
    };
    if let Some(taken) = names::taken(pod, build) {
        return Decision::Skip(taken.to_string());
    }
    let mut out = pod.clone();
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if let Err(reason) = annotate(annotations) {
        return Decision::Skip(reason);
    }
    let spec = out.spec.get_or_insert_with(Default::default);
    // The agent names the processes behind connections by pid, reads them in /proc and checks who reports to it:
    // all of that in the pod's pid namespace, which its containers then share (the kernel programs translate to it,
    // `sidecar-agent/src/ebpf/pidns.rs`). A hostPID pod (Kubernetes refuses both) already shares the node's.
    if spec.host_pid != Some(true) {
        spec.share_process_namespace = Some(true);
    }
    let agent = agent_container(&settings.agent_image, metrics_port(spec), proxy::ids(spec));
    // A pod that runs to completion (a Job's: restartPolicy Never or OnFailure) is done when its regular containers
    // have exited, and the agent never exits: as one of them it would keep the pod running, and its Job unfinished,
    // forever. There it is a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+), which
    // the kubelet stops once the regular containers are done. The API server defaults an absent policy to Always.
    if spec.restart_policy.as_deref().is_some_and(|policy| policy != "Always") {
        spec.init_containers.get_or_insert_with(Vec::new).push(Container {
            restart_policy: Some("Always".to_owned()),
            ..agent
        });
    } else {
        spec.containers.push(agent);
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: SOCKET_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity("1Mi".to_owned())),
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: TRACEFS_VOLUME.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: "/sys/kernel/tracing".to_owned(),
            type_: Some("Directory".to_owned()),
        }),
        ..Default::default()
    });
    if build == Build::Native {
        if let Err(reason) = native::place(&mut out, &settings.agent_image) {
            return Decision::Skip(reason);
        }
    }
    Decision::Inject(Box::new(out))
}

fn skip_reason(pod: &Pod, namespace: &str, settings: &Settings) -> Option<String> {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Some(format!("namespace {namespace} is never injected"));
    }
    if namespace == settings.own_namespace {
        return Some(format!("namespace {namespace} is the injector's own"));
    }
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(INJECT_LABEL));
    if label.is_some_and(|v| v == "false") {
        return Some(format!("opted out by the label {INJECT_LABEL}=false"));
    }
    if let Some(reason) = proxy::opted_out(pod) {
        return Some(reason);
    }
    let spec = pod.spec.as_ref()?;
    // The API server refuses a Windows pod whose containers set runAsUser, runAsGroup, capabilities, a seccomp
    // profile and the other Linux-only fields the agent needs: injecting one would fail its creation.
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Some("a Windows pod (spec.os.name windows) cannot run the agent: not injected".to_owned());
    }
    if spec.host_network == Some(true) {
        return Some("hostNetwork pods share the node's network: not injected".to_owned());
    }
    if spec.share_process_namespace == Some(false) {
        return Some(
            "shareProcessNamespace is false: the agent could not see the pod's processes, not injected".to_owned(),
        );
    }
    None
}

/// The agent's container marks an injected pod; any other of the names the injector adds is the pod's own
/// ([`crate::names`]).
fn injected(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .any(|spec| containers(spec).any(|c| c.name == AGENT_CONTAINER))
}

/// Every container of the pod: its regular ones, then its init containers (native sidecars among them).
pub(crate) fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten())
}

/// The port of the agent's Prometheus endpoint: its default, 9464, unless a container of the pod declares it.
/// The pod's containers share one network namespace, and 9464 is also the OpenTelemetry Prometheus exporter's
/// default: whichever of the application and the agent bound it second would fail, and an agent that exits keeps
/// the pod out of its Service's endpoints. So the agent takes the first port from 9464 on that no container declares.
fn metrics_port(spec: &PodSpec) -> i32 {
    let declared: Vec<i32> = containers(spec)
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .collect();
    (DEFAULT_METRICS_PORT..)
        .find(|port| !declared.contains(port))
        .unwrap_or(DEFAULT_METRICS_PORT)
}

/// The agent: runs as uid 0 for its eBPF capabilities but with istio-proxy's group (1337 unless the pod says
/// otherwise), so its socket (mode 0660) is reachable by istio-proxy, and the agent checks the peer's uid too
/// (`--allowed-uids self,1337`, or the proxy's uid).
fn agent_container(image: &str, metrics_port: i32, proxy: ProxyIds) -> Container {
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ]))
    };
    Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        args: Some(
            [
                "run",
                "--metrics-addr",
                &format!("0.0.0.0:{metrics_port}"),
                "--socket",
                &format!("{SOCKET_DIR}/agent.sock"),
                "--socket-mode",
                "0660",
                "--allowed-uids",
                &proxy.allowed_uids(),
                // An agent that exits keeps the pod out of its Service's endpoints: on a node where the kernel
                // programs cannot load, it serves without them and says so (`kernel_programs_attached 0`).
                "--kernel-optional",
                "true",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("gs-metrics".to_owned()),
            container_port: metrics_port,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: quantities("20m", "32Mi"),
            limits: quantities("200m", "128Mi"),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(proxy.gid),
            run_as_non_root: Some(false),
            // BPF: load programs and maps; PERFMON: attach tracepoints. tracefs is read through the read-only
            // hostPath mount below, as uid 0 (its owner), so no DAC override is needed. SYS_PTRACE: read
            // `/proc/<pid>/exe` and `/proc/<pid>/fd` of the pod's processes of other users (istio-proxy's 1337, the
            // application's), for the executable and the listeners opened before the agent started; the shared pid
            // namespace limits it to the pod, and BPF and PERFMON already reach further.
            capabilities: Some(Capabilities {
                add: Some(vec!["BPF".to_owned(), "PERFMON".to_owned(), "SYS_PTRACE".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: SOCKET_VOLUME.to_owned(),
                mount_path: SOCKET_DIR.to_owned(),
                ..Default::default()
            },
            VolumeMount {
                name: TRACEFS_VOLUME.to_owned(),
                mount_path: "/sys/kernel/tracing".to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Adds grayscope's entries to the Istio annotations, keeping whatever the pod already says in them.
fn annotate(annotations: &mut BTreeMap<String, String>) -> Result<(), String> {
    let mut proxy = parse_annotation(annotations, PROXY_CONFIG)?;
    let matcher = object_entry(&mut proxy, "proxyStatsMatcher", PROXY_CONFIG)?;
    append_unique(matcher, "inclusionRegexps", &[STATS_INCLUSION_REGEX], PROXY_CONFIG)?;
    append_unique(&mut proxy, "extraStatTags", &STAT_TAGS, PROXY_CONFIG)?;

    let mut volumes = parse_annotation(annotations, USER_VOLUME)?;
    volumes.insert(
        SOCKET_VOLUME.to_owned(),
        json!({"emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    );
    let mut mounts = parse_annotation(annotations, USER_VOLUME_MOUNT)?;
    mounts.insert(SOCKET_VOLUME.to_owned(), json!({"mountPath": SOCKET_DIR}));

    for (key, value) in [
        (PROXY_CONFIG, proxy),
        (USER_VOLUME, volumes),
        (USER_VOLUME_MOUNT, mounts),
    ] {
        annotations.insert(key.to_owned(), Value::Object(value).to_string());
    }
    Ok(())
}

/// The annotation's mapping (Istio reads these annotations as YAML, of which JSON is a part); empty if absent.
pub(crate) fn parse_annotation(
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Result<Map<String, Value>, String> {
    let Some(text) = annotations.get(key) else {
        return Ok(Map::new());
    };
    match serde_norway::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(format!("annotation {key} is not a mapping: left alone")),
        Err(e) => Err(format!("annotation {key} does not parse ({e}): left alone")),
    }
}

pub(crate) fn object_entry<'a>(
    map: &'a mut Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    match map.entry(field).or_insert_with(|| Value::Object(Map::new())) {
        Value::Object(inner) => Ok(inner),
        _ => Err(format!("annotation {key}: {field} is not a mapping: left alone")),
    }
}

pub(crate) fn append_unique(
    map: &mut Map<String, Value>,
    field: &str,
    items: &[&str],
    key: &str,
) -> Result<(), String> {
    let Value::Array(list) = map.entry(field).or_insert_with(|| Value::Array(Vec::new())) else {
        return Err(format!("annotation {key}: {field} is not a list: left alone"));
    };
    for item in items {
        if !list.iter().any(|v| v == item) {
            list.push(Value::String((*item).to_owned()));
        }
    }
    Ok(())
}
