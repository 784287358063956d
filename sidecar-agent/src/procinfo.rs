//! Who a pid is: executable, command line and container, read from `/proc` once per process.
//!
//! The kernel event carries the process start time (`start_boottime` of the thread-group leader). `/proc/<pid>/stat`
//! field 22 is the same clock in ticks, so the cache only reuses (and only creates) an entry when the two agree:
//! a pid reused by another process, or a `/proc` of another pid namespace, never lends its identity.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// The most of a command line the agent keeps, in bytes (arguments joined by spaces, as `Process.command_line`
/// shows them). `/proc/<pid>/cmdline` holds up to 6 MiB (a quarter of the stack limit): whole, one process would
/// make a `ListMethods` row and every `Watch` message of its calls larger than a gRPC client takes by default
/// (4 MiB), and each of its rows would keep a copy. A longer one is cut at a character boundary and ends with `…`.
pub const MAX_COMMAND_LINE_BYTES: usize = 4096;

/// What ends a command line that was cut.
pub const TRUNCATED: char = '…';

/// What the agent knows about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread-group id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// Target of `/proc/<pid>/exe`, when readable.
    pub exe: Option<PathBuf>,
    /// Arguments from `/proc/<pid>/cmdline`, at most [`MAX_COMMAND_LINE_BYTES`] joined ([`split_cmdline`]).
    pub cmdline: Vec<String>,
    /// Container id found in `/proc/<pid>/cgroup`, if the process runs in a container.
    pub container_id: Option<String>,
}

/// Why a process could not be described.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// `/proc/<pid>` is gone or unreadable: the process exited before the agent looked.
    #[error("process {pid} is gone: {source}")]
    Gone {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// `/proc/<pid>` belongs to another process than the one in the event (pid reused, or another pid namespace).
    #[error("pid {pid} now belongs to another process (start {found} ticks, event says {expected})")]
    Reused { pid: u32, expected: u64, found: u64 },
    /// `/proc/<pid>/stat` could not be parsed.
    #[error("cannot parse /proc/{pid}/stat")]
    BadStat { pid: u32 },
}

impl EnrichError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Gone { .. } => "gone",
            Self::Reused { .. } => "pid_reused",
            Self::BadStat { .. } => "bad_stat",
        }
    }
}

/// Cache of [`ProcessInfo`] by pid, bounded.
pub struct ProcessCache {
    proc_root: PathBuf,
    ticks_per_sec: u64,
    capacity: usize,
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
    order: VecDeque<u32>,
}

// === impl ProcessCache ===

impl ProcessCache {
    /// A cache reading `proc_root` (normally `/proc`), holding at most `capacity` processes.
    pub fn new(proc_root: impl Into<PathBuf>, capacity: usize) -> Self {
        let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(100);
        Self {
            proc_root: proc_root.into(),
            ticks_per_sec,
            capacity: capacity.max(1),
            by_pid: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The process `pid` that started at `start_ns` (ns since boot), from the cache or from `/proc`.
    pub fn lookup(&mut self, pid: u32, start_ns: u64) -> Result<Arc<ProcessInfo>, EnrichError> {
        let expected = start_ns / (1_000_000_000 / self.ticks_per_sec);
        if let Some(info) = self.by_pid.get(&pid) {
            if info.start_ticks == expected {
                return Ok(Arc::clone(info));
            }
        }
        let info = Arc::new(read_process(&self.proc_root.join(pid.to_string()), pid, expected)?);
        if self.by_pid.insert(pid, Arc::clone(&info)).is_none() {
            self.order.push_back(pid);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.by_pid.remove(&old);
                }
            }
        }
        Ok(info)
    }

    /// Processes cached.
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// Reads `dir` (`/proc/<pid>`), checking it is the process that started at `expected` ticks.
fn read_process(dir: &Path, pid: u32, expected: u64) -> Result<ProcessInfo, EnrichError> {
    let stat = fs::read_to_string(dir.join("stat")).map_err(|source| EnrichError::Gone { pid, source })?;
    let found = start_ticks(&stat).ok_or(EnrichError::BadStat { pid })?;
    if found != expected {
        return Err(EnrichError::Reused { pid, expected, found });
    }
    let exe = fs::read_link(dir.join("exe")).ok();
    let cmdline = read_cmdline(&dir.join("cmdline")).unwrap_or_default();
    let container_id = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|c| container_id(&c));
    // Read stat again: if the pid was recycled while we read, the files above may describe the newcomer.
    let again = fs::read_to_string(dir.join("stat"))
        .ok()
        .as_deref()
        .and_then(start_ticks);
    if again != Some(expected) {
        return Err(EnrichError::Reused {
            pid,
            expected,
            found: again.unwrap_or(0),
        });
    }
    Ok(ProcessInfo {
        pid,
        start_ticks: expected,
        exe,
        cmdline,
        container_id,
    })
}

/// Length of one clock tick of `/proc/<pid>/stat` (`CLK_TCK`, 100 Hz on Linux), in ns.
pub fn clock_tick_ns() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    1_000_000_000 / hz
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the comm come field 3 (state) onwards; starttime is field 22, the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The arguments of `/proc/<pid>/cmdline` at `path`, reading no more of it than [`split_cmdline`] keeps.
fn read_cmdline(path: &Path) -> io::Result<Vec<String>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        // The bound, the NUL ending the last argument, and one byte to tell a longer line.
        .take(MAX_COMMAND_LINE_BYTES as u64 + 2)
        .read_to_end(&mut bytes)?;
    Ok(split_cmdline(&bytes))
}

/// The NUL-separated arguments of `/proc/<pid>/cmdline`, or of its first bytes, as text (bytes that are not UTF-8
/// become U+FFFD). When there are more than [`MAX_COMMAND_LINE_BYTES`] bytes (besides the NUL ending the last
/// argument), or the text joined by spaces is longer than that, the arguments are cut so that, joined by spaces, they
/// take at most that many bytes, [`TRUNCATED`] included, at the end of the last one kept.
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    let args: Vec<String> = bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The bound holds for the text, not the bytes read: each byte that is not UTF-8 becomes a 3-byte U+FFFD. A read
    // past the bound is cut (and marked) whatever its text, since the file went on.
    let joined = args.iter().map(String::len).sum::<usize>() + args.len().saturating_sub(1);
    if bytes.len() <= MAX_COMMAND_LINE_BYTES && joined <= MAX_COMMAND_LINE_BYTES {
        return args;
    }
    let mut room = MAX_COMMAND_LINE_BYTES - TRUNCATED.len_utf8();
    let mut kept: Vec<String> = Vec::new();
    for mut a in args {
        // The space before it.
        let space = usize::from(!kept.is_empty());
        if room <= space {
            break;
        }
        room -= space;
        if a.len() > room {
            let mut end = room;
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            a.truncate(end);
            kept.push(a);
            break;
        }
        room -= a.len();
        kept.push(a);
    }
    match kept.last_mut() {
        Some(last) => last.push(TRUNCATED),
        None => kept.push(TRUNCATED.to_string()),
    }
    kept
}

/// The container id in a `/proc/<pid>/cgroup` file: the last 64-hex-digit name component, as written by
/// Docker (`/docker/<id>`, `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`), CRI-O
/// (`crio-<id>.scope`) and Kubernetes' cgroupfs driver (`/kubepods/.../<id>`).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.rsplit('/'))
        .filter_map(|component| {
            let c = component.strip_suffix(".scope").unwrap_or(component);
            let id = c.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
        })
        .next()
}

#[cfg(test)]
mod tests;
