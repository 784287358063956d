//! The binary's start-up failures, as a user meets them: a bad configuration exits 64 naming every bad field,
//! and a start without privilege exits non-zero naming the missing capabilities (never a panic), unless the kernel
//! programs are optional (`--kernel-optional true`, what the injector sets): then the agent says the same, and
//! serves its socket and its metrics without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

#[test]
fn bad_configuration_exits_64_naming_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "table_max_entries = 0\nsurprise = \"x\"\n").unwrap();
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(BIN)
        .args(["run", "--netns", "nowhere", "--metrics-addr", "9464", "--config"])
        .arg(&file)
        .env("GRAYSCOPE_CLOSED_GRACE", "forever")
        .output()
        .unwrap();
    drop(serial);
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

/// Held while a test copies the binary and while one starts a process: a file being written cannot be executed
/// (ETXTBSY), and a process started by another test's thread in that window inherits the copy's open descriptor
/// until it execs.
static EXEC: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The agent binary, copied under /tmp (which `nobody` can traverse whatever TMPDIR says), and a command that runs
/// it without privilege: as root, dropped to `nobody` with no capabilities; as another user, as is.
fn unprivileged(dir: &Path) -> (PathBuf, Command) {
    let root = nix::unistd::geteuid().is_root();
    let bin = dir.join("grayscope-agent");
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::fs::copy(BIN, &bin).unwrap();
    drop(serial);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = if root {
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
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    (bin, cmd)
}

#[test]
fn start_without_privilege_names_what_is_missing() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let (_bin, mut cmd) = unprivileged(dir.path());
    let sock = dir.path().join("agent.sock");
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = cmd
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    drop(serial);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing privilege"), "{err}");
    assert!(err.contains("CAP_BPF and CAP_PERFMON"), "{err}");
    assert!(err.contains("setcap cap_bpf,cap_perfmon+ep"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// In a pod, an agent that exits is restarted, and a container that is not running keeps the whole pod out of its
/// Service's endpoints: an agent that cannot load its programs (a kernel without BTF, capabilities refused) would
/// take the application's traffic with it. With `--kernel-optional true` it says why, keeps serving its socket (the
/// filter's reports are received, and count as unlinked) and its metrics, and stops cleanly.
#[test]
fn without_privilege_an_optional_kernel_side_leaves_the_socket_and_metrics_served() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let (bin, mut cmd) = unprivileged(dir.path());
    let sock = dir.path().join("agent.sock");
    let metrics = {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    let log = dir.path().join("agent.log");
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut agent = cmd
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--allowed-uids", "self,0", "--kernel-optional", "true"])
        .args(["--metrics-addr", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    drop(serial);
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        if let Some(text) = scrape(metrics).filter(|_| sock.exists()) {
            break text;
        }
        assert!(Instant::now() < deadline, "the agent never served its metrics");
        thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("missing privilege") && err.contains("CAP_BPF and CAP_PERFMON"),
        "{err}"
    );
    assert!(
        exposition
            .lines()
            .any(|l| l == "grayscope_agent_kernel_programs_attached 0"),
        "{exposition}"
    );
    // The socket answers gRPC: the method table, through the agent's own client.
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let table = Command::new(&bin)
        .arg("methods")
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    drop(serial);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
    assert!(!std::fs::read_to_string(&log).unwrap().contains("panicked"));
}

/// `GET /metrics`, or `None` while nothing answers.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains(" 200 ").then_some(text)
}

/// The environment may hold anything a parent process put there, not only UTF-8 (a file name in another encoding, a
/// value copied from a binary): a variable that is not the agent's is none of its business, and one of its own that
/// is not text is a bad value like any other, named, with the configuration's exit status. Never a panic.
#[test]
fn an_environment_that_is_not_utf8_is_read_without_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.sock");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(BIN)
        .args(["methods", "--socket"])
        .arg(&none)
        .env("SOME_OTHER_PROGRAM_FILE", latin1)
        .output()
        .unwrap();
    drop(serial);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "listing the methods of the agent at {}: cannot connect",
            none.display()
        )),
        "{err}"
    );

    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(BIN)
        .arg("methods")
        .env("GRAYSCOPE_SOCKET", latin1)
        .output()
        .unwrap();
    drop(serial);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("environment variable GRAYSCOPE_SOCKET") && err.contains("UTF-8"),
        "{err}"
    );
}

/// A `GRAYSCOPE_*` variable that is none of the agent's settings (a misspelt one, say) is named in a warning, where
/// it used to be ignored without a word and the setting kept its default. Kubernetes's service links for a Service
/// named `grayscope-…` in the pod's namespace (`<NAME>_SERVICE_HOST`, `<NAME>_PORT_9464_TCP_ADDR`, …) are no
/// settings either, and are left alone: the agent cannot refuse what the cluster puts in every container.
#[test]
fn a_misspelt_environment_variable_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.sock");
    let links = [
        ("GRAYSCOPE_AGENT_SERVICE_HOST", "10.96.0.12"),
        ("GRAYSCOPE_AGENT_SERVICE_PORT", "9464"),
        ("GRAYSCOPE_AGENT_SERVICE_PORT_METRICS", "9464"),
        ("GRAYSCOPE_AGENT_PORT", "tcp://10.96.0.12:9464"),
        ("GRAYSCOPE_AGENT_PORT_9464_TCP", "tcp://10.96.0.12:9464"),
        ("GRAYSCOPE_AGENT_PORT_9464_TCP_PROTO", "tcp"),
        ("GRAYSCOPE_AGENT_PORT_9464_TCP_PORT", "9464"),
        ("GRAYSCOPE_AGENT_PORT_9464_TCP_ADDR", "10.96.0.12"),
    ];
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Only these variables: the test's own environment may hold others of the project (GRAYSCOPE_SKIP_PRIVILEGED).
    let out = Command::new(BIN)
        .env_clear()
        .args(["methods", "--socket"])
        .arg(&none)
        .env("GRAYSCOPE_LINK_WIAT", "2s")
        .envs(links)
        .output()
        .unwrap();
    drop(serial);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let warnings: Vec<_> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("GRAYSCOPE_LINK_WIAT") && warnings[0].contains("GRAYSCOPE_LINK_WAIT"),
        "the warning names the variable and the settings' variables: {err}"
    );
    for (link, _) in links {
        assert!(!err.contains(link), "{link} is a service link: {err}");
    }
}

/// `grayscope-agent run` started without privilege with `--kernel-optional true` (so as any user, without BPF) on a
/// socket in `dir` and a free metrics port, with `args`; returned once it serves both, with its socket, metrics
/// address and log file.
fn serve_unprivileged(dir: &Path, args: &[&str]) -> (std::process::Child, PathBuf, std::net::SocketAddr, PathBuf) {
    let (_bin, mut cmd) = unprivileged(dir);
    let sock = dir.join("agent.sock");
    let metrics = {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    let log = dir.join("agent.log");
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut agent = cmd
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--kernel-optional", "true", "--metrics-addr", &metrics.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    drop(serial);
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(metrics).is_none() || !sock.exists() {
        if let Some(status) = agent.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "the agent never served its metrics");
        thread::sleep(Duration::from_millis(50));
    }
    (agent, sock, metrics, log)
}

/// SIGTERM to `agent`, and its exit status.
fn terminate(mut agent: std::process::Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    agent.wait().unwrap()
}

/// TOML writes an octal number `0o640`; that is the mode it sets, as the string "0640" does, and as the digits
/// `640` read as chmod reads them do. TOML hands over the number's value (416), whose decimal digits are no mode
/// of the same meaning.
#[test]
fn a_socket_mode_written_as_a_toml_octal_integer_is_that_mode() {
    for (written, mode) in [("0o640", 0o640), ("640", 0o640), ("\"0640\"", 0o640), ("0o600", 0o600)] {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, format!("socket_mode = {written}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (agent, sock, _, log) = serve_unprivileged(dir.path(), &["--config", file.to_str().unwrap()]);
        let got = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        let status = terminate(agent);
        assert_eq!(got, mode, "socket_mode = {written}: the socket has mode {got:o}");
        assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
    }
}

/// The socket file is the agent's while it runs, and goes with it: after a clean stop, and after a start that fails
/// once the socket is bound (here the metrics port is another program's), nothing is left at the path for a
/// client to take for a live agent (`test -S`, a readiness check) and to get ECONNREFUSED from.
#[test]
fn the_socket_file_goes_with_the_agent() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let (agent, sock, metrics, log) = serve_unprivileged(dir.path(), &[]);
    let status = terminate(agent);
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
    assert!(
        !sock.exists(),
        "the socket file outlived the agent:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // The same port, now someone else's.
    let taken = TcpListener::bind(metrics).unwrap();
    let (_bin, mut cmd) = unprivileged(dir.path());
    let serial = EXEC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = cmd
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--kernel-optional", "true", "--metrics-addr", &metrics.to_string()])
        .output()
        .unwrap();
    drop(serial);
    drop(taken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("binding the metrics address {metrics}")), "{err}");
    assert!(!sock.exists(), "a failed start left the socket file:\n{err}");
}

/// A stop waits a few seconds for the connections still open ([`sidecar_agent::metrics::DRAIN`]); a second
/// Ctrl-C (or SIGTERM) during that wait is someone who will not wait: the agent stops at once, says so, and
/// leaves no socket file.
#[test]
fn a_second_signal_stops_the_agent_at_once() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let (mut agent, sock, _, log) = serve_unprivileged(dir.path(), &[]);
    // A client that connected and says nothing holds the first stop for the whole drain.
    let _stuck = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    thread::sleep(Duration::from_millis(200));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent did not wait for its open connection"
    );
    let second = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    while agent.try_wait().unwrap().is_none() {
        assert!(
            second.elapsed() < sidecar_agent::metrics::DRAIN / 2,
            "the agent was still stopping {:?} after a second signal",
            second.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let status = agent.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("second signal"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!sock.exists(), "{err}");
}
