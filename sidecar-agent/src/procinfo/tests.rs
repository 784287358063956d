use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn start_ticks_survives_odd_comm() {
    let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 ...";
    assert_eq!(start_ticks(stat), Some(987654));
    assert_eq!(start_ticks("garbage"), None);
    assert_eq!(start_ticks("1 (x) S 1 2"), None);
}

#[test]
fn cmdline_splits_on_nul() {
    assert_eq!(
        split_cmdline(b"/bin/bash\0-c\0echo hi\0"),
        ["/bin/bash", "-c", "echo hi"]
    );
    assert!(split_cmdline(b"").is_empty());
}

#[test]
fn a_long_cmdline_is_cut_to_its_bound_at_a_character_boundary() {
    let joined = |args: &[String]| args.join(" ");
    // Just at the bound: whole.
    let mut exact = vec![b'x'; MAX_COMMAND_LINE_BYTES];
    exact.push(0);
    assert_eq!(joined(&split_cmdline(&exact)), "x".repeat(MAX_COMMAND_LINE_BYTES));
    // Over it: cut, within one argument or between two, never mid-character.
    for (first, fill) in [(10, "x"), (MAX_COMMAND_LINE_BYTES - 4, "x"), (1, "é"), (3, "€")] {
        let mut bytes = vec![b'a'; first];
        bytes.push(0);
        while bytes.len() <= MAX_COMMAND_LINE_BYTES {
            bytes.extend_from_slice(fill.as_bytes());
        }
        let args = split_cmdline(&bytes);
        let line = joined(&args);
        assert!(line.len() <= MAX_COMMAND_LINE_BYTES, "{} bytes", line.len());
        assert!(line.len() >= MAX_COMMAND_LINE_BYTES - 4, "{} bytes", line.len());
        assert!(line.ends_with(TRUNCATED), "{line}");
        assert!(line.starts_with(&"a".repeat(first)), "{line}");
        assert!(!line.contains('\u{FFFD}'), "{line}");
    }
    // Within the bound in bytes, but not valid UTF-8: each bad byte becomes a 3-byte U+FFFD, and the line is still
    // cut to the bound.
    for (bad, args) in [
        (vec![0xff; MAX_COMMAND_LINE_BYTES], 1),
        (b"\xff\0".repeat(MAX_COMMAND_LINE_BYTES / 2), 2048),
    ] {
        let kept = split_cmdline(&bad);
        let line = joined(&kept);
        assert!(
            line.len() <= MAX_COMMAND_LINE_BYTES,
            "{args} arguments: {} bytes",
            line.len()
        );
        assert!(
            line.len() >= MAX_COMMAND_LINE_BYTES - 6,
            "{args} arguments: {} bytes",
            line.len()
        );
        assert!(line.ends_with(TRUNCATED), "{line}");
        assert!(line.starts_with('\u{FFFD}'), "{line}");
    }
    // Nothing but empty arguments (NULs) to the bound.
    assert_eq!(split_cmdline(&[0; MAX_COMMAND_LINE_BYTES + 2]), [TRUNCATED.to_string()]);
}

#[test]
fn only_the_bound_of_a_long_cmdline_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmdline");
    let mut java = b"java\0-cp\0".to_vec();
    java.extend(std::iter::repeat_n(b'j', 5 << 20));
    // The second is read up to the middle of a character: no replacement character is left of it.
    for (bytes, start) in [
        (java, "java -cp jjj"),
        (format!("a{}", "é".repeat(4096)).into_bytes(), "aéé"),
    ] {
        fs::write(&path, &bytes).unwrap();
        let line = read_cmdline(&path).unwrap().join(" ");
        assert!(line.starts_with(start) && !line.contains('\u{FFFD}'), "{line}");
        assert!(line.ends_with(TRUNCATED), "{line}");
        assert!(line.len() <= MAX_COMMAND_LINE_BYTES, "{} bytes", line.len());
    }
}

#[test]
fn container_ids_of_common_runtimes() {
    for cgroup in [
        format!("0::/system.slice/docker-{ID}.scope\n"),
        format!("12:memory:/docker/{ID}\n0::/\n"),
        format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope\n"),
        format!("0::/kubepods/besteffort/pod5f8c/{ID}\n"),
        format!("0::/machine.slice/crio-{ID}.scope\n"),
    ] {
        assert_eq!(container_id(&cgroup).as_deref(), Some(ID), "{cgroup}");
    }
    assert_eq!(container_id("0::/user.slice/user-1000.slice/session-2.scope\n"), None);
    assert_eq!(container_id(""), None);
}

fn fake_proc(root: &Path, pid: u32, start: u64) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    let stat = format!("{pid} (srv) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0");
    fs::write(dir.join("stat"), stat).unwrap();
    fs::write(dir.join("cmdline"), b"srv\0--port\x008080\0").unwrap();
    fs::write(dir.join("cgroup"), format!("0::/docker/{ID}\n")).unwrap();
}

#[test]
fn cache_checks_start_time_and_rereads_reused_pid() {
    let root = tempfile::tempdir().unwrap();
    let mut cache = ProcessCache::new(root.path(), 2);
    let tick_ns = 1_000_000_000 / cache.ticks_per_sec;
    fake_proc(root.path(), 42, 500);

    let info = cache.lookup(42, 500 * tick_ns + 1).unwrap();
    assert_eq!(info.cmdline, ["srv", "--port", "8080"]);
    assert_eq!(info.container_id.as_deref(), Some(ID));
    assert_eq!(info.exe, None, "fake /proc has no exe link");

    // An event of an older process with the same pid is not given the new one's identity.
    let err = cache.lookup(42, 400 * tick_ns).unwrap_err();
    assert!(
        matches!(
            err,
            EnrichError::Reused {
                pid: 42,
                expected: 400,
                found: 500
            }
        ),
        "{err}"
    );

    // The pid is reused: a new process, and the cache follows.
    fake_proc(root.path(), 42, 900);
    let info = cache.lookup(42, 900 * tick_ns).unwrap();
    assert_eq!(info.start_ticks, 900);

    assert_eq!(cache.lookup(7, 0).unwrap_err().reason(), "gone");
    fake_proc(root.path(), 1, 1);
    fake_proc(root.path(), 2, 2);
    cache.lookup(1, tick_ns).unwrap();
    cache.lookup(2, 2 * tick_ns).unwrap();
    assert_eq!(cache.len(), 2, "bounded");
}

#[test]
fn real_self_is_found() {
    let pid = std::process::id();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks = start_ticks(&stat).unwrap();
    let mut cache = ProcessCache::new("/proc", 8);
    let tick_ns = 1_000_000_000 / cache.ticks_per_sec;
    let info = cache.lookup(pid, ticks * tick_ns + tick_ns / 2).unwrap();
    assert_eq!(info.exe, std::env::current_exe().ok());
}
