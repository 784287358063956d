use super::*;

fn layers() -> Layers {
    Layers::default()
}

#[test]
fn defaults_are_valid() {
    let c = Config::defaults().unwrap();
    assert_eq!(c.socket, PathBuf::from("/run/grayscope/agent.sock"));
    assert_eq!(c.metrics_addr, "0.0.0.0:9464".parse().unwrap());
    assert_eq!(c.netns, NetnsFilter::Own);
    assert_eq!(c.table_max_entries, 65536);
    assert_eq!(c.closed_grace, Duration::from_secs(30));
    assert_eq!(c.ring_buffer_bytes, 262144);
}

#[test]
fn flags_beat_env_beat_file() {
    let mut l = layers()
        .with_env([
            ("GRAYSCOPE_NETNS".to_owned(), "all".to_owned()),
            ("GRAYSCOPE_CLOSED_GRACE".to_owned(), "5m".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ])
        .with_file_text(
            "/etc/g.toml".into(),
            "netns = \"self\"\nclosed_grace = \"1s\"\ntable_max_entries = 10\n",
        );
    l.flags.insert("closed_grace", "250ms".into());
    let c = parse_config(&l).unwrap();
    assert_eq!(c.netns, NetnsFilter::All);
    assert_eq!(c.closed_grace, Duration::from_millis(250));
    assert_eq!(c.table_max_entries, 10);
    assert!(!l.env.contains_key("PATH"));
}

#[test]
fn netns_forms() {
    for (text, want) in [
        ("self", NetnsFilter::Own),
        ("all", NetnsFilter::All),
        ("4026531840", NetnsFilter::Inode(4026531840)),
        ("/run/netns/blue", NetnsFilter::Path("/run/netns/blue".into())),
    ] {
        assert_eq!(value::netns(text), Ok(want), "{text}");
    }
    for bad in ["", "0", "mine", "99999999999", "relative/path"] {
        assert_eq!(value::netns(bad), Err(ParseError::Netns), "{bad:?}");
    }
}

#[test]
fn durations_and_sizes() {
    let max = Duration::from_secs(86_400);
    assert_eq!(value::duration("500ms", max), Ok(Duration::from_millis(500)));
    assert_eq!(value::duration("30", max), Ok(Duration::from_secs(30)));
    assert_eq!(value::duration("2h", max), Ok(Duration::from_secs(7200)));
    assert!(value::duration("2d", max).is_err());
    assert!(value::duration("25h", max).is_err());
    assert!(value::duration("-1s", max).is_err());
    assert_eq!(value::ring_size("4096"), Ok(4096));
    assert_eq!(value::ring_size("256KiB"), Ok(262144));
    assert_eq!(value::ring_size("1MiB"), Ok(1 << 20));
    for bad in ["4095", "6000", "2048", "2GiB", "4096MiB", "x"] {
        assert_eq!(value::ring_size(bad), Err(ParseError::RingSize), "{bad}");
    }
}

#[test]
fn reports_every_bad_value_with_field_and_origin() {
    let mut l = layers()
        .with_env([("GRAYSCOPE_TABLE_MAX_ENTRIES".to_owned(), "0".to_owned())])
        .with_file_text("/etc/g.toml".into(), "ring_buffer_bytes = 1000\nbogus = 1\nlog = [1]\n");
    l.flags.insert("metrics_addr", "localhost".into());
    l.flags.insert("netns", "mine".into());
    l.flags.insert("closed_grace", "soon".into());
    let err = parse_config(&l).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 7, "{text}");
    for needle in [
        "metrics_addr = \"localhost\" (from flag --metrics-addr)",
        "netns = \"mine\" (from flag --netns)",
        "closed_grace = \"soon\" (from flag --closed-grace)",
        "table_max_entries = \"0\" (from environment variable GRAYSCOPE_TABLE_MAX_ENTRIES)",
        "ring_buffer_bytes = \"1000\" (from key ring_buffer_bytes of config file /etc/g.toml)",
        "unknown key \"bogus\"",
        "key \"log\" must be a string, an integer or a boolean, not a array",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn toml_booleans_set_the_switches_and_are_refused_elsewhere_by_name() {
    let l = layers().with_file_text(
        "/etc/g.toml".into(),
        "kernel_optional = true\naccept_tracepoints = false\nprogram_stats = true\n",
    );
    let c = parse_config(&l).unwrap();
    assert!(c.kernel_optional && !c.accept_tracepoints && c.program_stats);
    let err = parse_config(&layers().with_file_text("/etc/g.toml".into(), "table_max_entries = true\n")).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.problems[0]
            .contains("table_max_entries = \"true\" (from key table_max_entries of config file /etc/g.toml)"),
        "{err}"
    );
}

#[test]
fn bad_toml_and_missing_file_are_reported() {
    let err = parse_config(&layers().with_file_text("/x.toml".into(), "netns = ")).unwrap_err();
    assert!(
        err.problems[0].starts_with("config file /x.toml: not valid TOML"),
        "{err}"
    );
    let err = parse_config(&layers().with_file("/nonexistent/grayscope.toml".into())).unwrap_err();
    assert!(err.problems[0].contains("/nonexistent/grayscope.toml"), "{err}");
}

#[test]
fn socket_path_limit_and_log_filter() {
    let mut l = layers();
    l.flags.insert("socket", format!("/{}", "a".repeat(107)));
    l.flags.insert("log", "info,,=[".into());
    let err = parse_config(&l).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems[0].starts_with("socket = "), "{err}");
    assert!(err.problems[1].starts_with("log = "), "{err}");
}

#[test]
fn serving_settings_defaults_and_forms() {
    let c = Config::defaults().unwrap();
    assert_eq!(c.socket_mode, 0o660);
    assert_eq!(
        c.allowed_uids,
        AllowedUids::Only {
            own: true,
            uids: vec![0]
        }
    );
    assert_eq!(c.max_message_bytes, 4 << 20);
    assert_eq!((c.max_connections, c.max_streams), (64, 64));
    assert_eq!(c.link_wait, Duration::from_millis(500));
    assert_eq!(
        (c.link_pending_max, c.watch_queue, c.methods_max_rows),
        (16384, 1024, 4096)
    );

    let mut l = layers()
        .with_env([("GRAYSCOPE_ALLOWED_UIDS".to_owned(), "any".to_owned())])
        .with_file_text(
            "/etc/g.toml".into(),
            "socket_mode = \"0600\"\nlink_wait = \"2s\"\nwatch_queue = 8\n",
        );
    l.flags.insert("max_message_bytes", "64KiB".into());
    let c = parse_config(&l).unwrap();
    assert_eq!(c.allowed_uids, AllowedUids::Any);
    assert_eq!(c.socket_mode, 0o600);
    assert_eq!(c.link_wait, Duration::from_secs(2));
    assert_eq!(c.watch_queue, 8);
    assert_eq!(c.max_message_bytes, 65536);
    assert_eq!(
        value::uids(" self , 1000,0"),
        Ok(AllowedUids::Only {
            own: true,
            uids: vec![1000, 0]
        })
    );
}

#[test]
fn bad_serving_settings_are_reported_by_field() {
    let mut l = layers().with_env([
        ("GRAYSCOPE_SOCKET_MODE".to_owned(), "0999".to_owned()),
        ("GRAYSCOPE_ALLOWED_UIDS".to_owned(), "root".to_owned()),
    ]);
    l.flags.insert("max_message_bytes", "1GiB".into());
    l.flags.insert("max_connections", "0".into());
    l.flags.insert("link_wait", "2m".into());
    l.flags.insert("watch_queue", "-1".into());
    let err = parse_config(&l).unwrap_err();
    assert_eq!(err.problems.len(), 6, "{err}");
    for needle in [
        "socket_mode = \"0999\" (from environment variable GRAYSCOPE_SOCKET_MODE): expected an octal file mode",
        "allowed_uids = \"root\" (from environment variable GRAYSCOPE_ALLOWED_UIDS): expected `any`",
        "max_message_bytes = \"1GiB\" (from flag --max-message-bytes)",
        "max_connections = \"0\" (from flag --max-connections)",
        "link_wait = \"2m\" (from flag --link-wait): expected a duration such as 500ms, 30s, 5m or 1h, at most 60s",
        "watch_queue = \"-1\" (from flag --watch-queue)",
    ] {
        assert!(err.to_string().contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(value::mode("0o640"), Ok(0o640));
    for bad in ["", "8", "0o", "1000", "rw"] {
        assert_eq!(value::mode(bad), Err(ParseError::Mode), "{bad:?}");
    }
}

#[test]
fn environment_values_that_are_not_utf8_are_named_when_they_are_ours_and_ignored_otherwise() {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt};
    let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
    let l = layers().with_env([
        (OsString::from("GRAYSCOPE_LOG"), bytes(b"caf\xe9")),
        (OsString::from("LC_SOMETHING"), bytes(b"caf\xe9")),
        (bytes(b"GRAYSCOPE_\xe9"), OsString::from("x")),
        (OsString::from("GRAYSCOPE_NETNS"), OsString::from("all")),
    ]);
    let err = parse_config(&l).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.problems[0].starts_with("log = \"caf\\xE9\" (from environment variable GRAYSCOPE_LOG): expected UTF-8"),
        "{err}"
    );
    assert_eq!(l.env.get("GRAYSCOPE_NETNS").map(String::as_str), Some("all"));
}

#[test]
fn unknown_variables_are_kept_for_a_warning_and_service_links_are_not() {
    let l = Layers::default().with_env([
        ("GRAYSCOPE_LINK_WIAT", "2s"),
        ("GRAYSCOPE_SOCKET", "/run/a.sock"),
        ("GRAYSCOPE_CONFIG", "/etc/a.toml"),
        ("GRAYSCOPE_SERVICE_HOST", "10.0.0.1"),
        ("GRAYSCOPE_AGENT_SERVICE_PORT_GRPC_METRICS", "9464"),
        ("GRAYSCOPE_PORT", "tcp://10.0.0.1:80"),
        ("GRAYSCOPE_AGENT_PORT_53_UDP_ADDR", "10.0.0.1"),
        ("GRAYSCOPE_AGENT_PORT_80_SCTP", "sctp://10.0.0.1:80"),
        // Near misses of a link's shape are no link.
        ("GRAYSCOPE_PORT_X_TCP", "x"),
        ("GRAYSCOPE_PORT_80_TCP_HOST", "x"),
        ("GRAYSCOPE_PORT_80_QUIC", "x"),
        ("OTHER_VARIABLE", "x"),
    ]);
    let mut unknown = l.unknown_env.clone();
    unknown.sort();
    assert_eq!(
        unknown,
        [
            "GRAYSCOPE_LINK_WIAT",
            "GRAYSCOPE_PORT_80_QUIC",
            "GRAYSCOPE_PORT_80_TCP_HOST",
            "GRAYSCOPE_PORT_X_TCP"
        ]
    );
    assert!(l.problems.is_empty(), "{:?}", l.problems);
}
