//! The agent exactly as grayscope-injector configures it in a pod accepts Istio's proxy on its socket and no one
//! else: the real agent (eBPF and all, so root), started with the injected container's arguments and its
//! `runAsGroup: 1337`, and real `grayscope-agent methods` clients run as uid/gid 1337 (istio-proxy) and as others.
//! Two layers refuse strangers: the socket file's mode `0660` with group 1337, then the agent's own peer-uid check
//! (`--allowed-uids self,1337`) for a stranger that is in the group. Where the pod says istio-proxy runs as another
//! uid and gid (OpenShift's range), the agent lets in that one, and 1337 is a stranger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{agent::privileged, paths};
use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use sidecar_agent_injector::inject::{self, Decision, Settings};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The injected agent container of a pod that opted in, with an istio-proxy running as `proxy` (uid, gid) if given.
fn injected_agent(proxy: Option<(i64, i64)>) -> Container {
    let mut pod = Pod::default();
    pod.metadata.labels = Some(BTreeMap::from([(inject::INJECT_LABEL.to_owned(), "true".to_owned())]));
    let mut spec = k8s_openapi::api::core::v1::PodSpec::default();
    if let Some((uid, gid)) = proxy {
        spec.containers.push(Container {
            name: "istio-proxy".to_owned(),
            security_context: Some(SecurityContext {
                run_as_user: Some(uid),
                run_as_group: Some(gid),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    pod.spec = Some(spec);
    let settings = Settings {
        agent_image: "agent".to_owned(),
        own_namespace: "grayscope-system".to_owned(),
    };
    let Decision::Inject(pod) = inject::decide(&pod, "shop", &settings) else {
        panic!("the pod should be injected")
    };
    pod.spec
        .expect("spec")
        .containers
        .into_iter()
        .find(|c| c.name == inject::AGENT_CONTAINER)
        .expect("agent")
}

/// `grayscope-agent methods` on `socket` as `uid`:`gid` (no supplementary groups).
fn methods_as(uid: u32, gid: u32, socket: &Path) -> Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ])
        .arg(paths::agent())
        .args(["methods", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)")
}

/// The agent started as the injector configures `container` in a pod (its arguments, uid 0 and its `runAsGroup`)
/// on a socket in a fresh directory, once `grayscope-agent methods` as the proxy (`proxy`: uid, gid) gets an answer.
struct Started {
    agent: Killed,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start_until_the_proxy_is_answered(container: &Container, proxy: (u32, u32)) -> Started {
    let sc = container.security_context.clone().expect("security context");
    assert_eq!(sc.run_as_user, Some(0), "runAsUser");
    let gid = sc.run_as_group.expect("runAsGroup");

    let dir = tempfile::tempdir().expect("tempdir");
    // The emptyDir of a pod: world-traversable, so the socket's own mode is what decides.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("agent.sock");
    let mut args = container.args.clone().expect("args");
    let at = args.iter().position(|a| a == "--socket").expect("--socket") + 1;
    assert_eq!(args[at], format!("{}/agent.sock", inject::SOCKET_DIR));
    args[at] = socket.display().to_string();
    let metrics = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let at = args.iter().position(|a| a == "--metrics-addr").expect("--metrics-addr") + 1;
    args[at] = metrics.to_string();
    let log = tempfile::NamedTempFile::new().expect("log");
    // runAsUser 0 and the container's runAsGroup: the group is what the kubelet would give the container's process.
    let child = Command::new("setpriv")
        .args([format!("--regid={gid}"), "--clear-groups".to_owned(), "--".to_owned()])
        .arg(paths::agent())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("spawn the agent");
    let mut agent = Killed(child);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = agent.0.try_wait().expect("wait") {
            panic!(
                "the agent exited with {status}:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        let out = methods_as(proxy.0, proxy.1, &socket);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "istio-proxy's uid {} never got an answer: {}\nagent log:\n{}",
            proxy.0,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Started {
        agent,
        socket,
        _dir: dir,
    }
}

#[track_caller]
fn assert_refused_by_the_file_mode(uid: u32, gid: u32, socket: &Path) {
    let out = methods_as(uid, gid, socket);
    assert!(!out.status.success(), "uid {uid} must be refused");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Permission denied (os error 13)"),
        "uid {uid} refused by the file mode: {said}"
    );
}

#[test]
fn the_injected_agent_accepts_istio_proxy_uid_1337_and_refuses_others() {
    if !privileged() {
        return;
    }
    let container = injected_agent(None);
    let gid = container.security_context.as_ref().and_then(|sc| sc.run_as_group);
    assert_eq!(gid, Some(inject::ISTIO_PROXY_UID));
    let Started { agent, socket, _dir } = start_until_the_proxy_is_answered(&container, (1337, 1337));

    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(i64::from(meta.gid()), inject::ISTIO_PROXY_UID, "socket group");

    // A stranger outside the group cannot even open the socket file.
    assert_refused_by_the_file_mode(1338, 1338, &socket);
    // A stranger inside the group opens it, and the agent refuses its uid.
    let in_group = methods_as(1338, 1337, &socket);
    assert!(
        !in_group.status.success(),
        "uid 1338 in group 1337 must be refused by the agent"
    );
    let said = String::from_utf8_lossy(&in_group.stderr);
    assert!(
        said.contains("uid 1338 may not use the grayscope agent"),
        "refused by the agent: {said}"
    );
    drop(agent);
}

#[test]
fn the_injected_agent_accepts_the_uid_istio_proxy_runs_as_in_the_pod() {
    if !privileged() {
        return;
    }
    // What Istio's injector gives istio-proxy on OpenShift: the top of the namespace's uid range, not 1337.
    let proxy = (1_000_650_000, 1_000_650_000);
    let container = injected_agent(Some((i64::from(proxy.0), i64::from(proxy.1))));
    let Started { agent, socket, _dir } = start_until_the_proxy_is_answered(&container, proxy);

    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(meta.gid(), proxy.1, "socket group");
    // Istio's default uid is a stranger here.
    assert_refused_by_the_file_mode(1337, 1337, &socket);
    drop(agent);
}
