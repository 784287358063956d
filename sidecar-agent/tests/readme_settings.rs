//! sidecar-agent/README.md's settings against the code and the real binary: the Configuration table (file key,
//! flag, environment variable, default) against `config::FIELDS` and `parse_config`, both ways; its `accepted`
//! column against `parse_config` (each range's ends taken, one unit past each end refused naming the field, two
//! of them by the real binary too); each documented
//! flag and variable really read by `grayscope-agent` (a bad value given that way is refused naming the field and
//! where it came from); and the Commands synopsis against each subcommand's `--help`, whose `[env: ]` and
//! `[default: ]` notes are hand-written too and must say what the table says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, process::Command};

use sidecar_agent::config::{self, parse_config, Config, Layers, FIELDS};

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// A row of the Configuration table, backticks removed, flag without its dashes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    key: String,
    flag: String,
    env: String,
    default: String,
    /// The `accepted` cell as written (backticks kept).
    accepted: String,
}

fn rows() -> Vec<Row> {
    let readme = readme();
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("| key (file)"));
    assert!(
        lines.next().is_some(),
        "no `| key (file) | flag | environment | default | accepted |` table"
    );
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let [key, flag, env, default, accepted] = cells[..] else {
                panic!("five cells expected: {l}")
            };
            let [key, flag, env, default] = [key, flag, env, default].map(|c| c.trim_matches('`'));
            let flag = flag.strip_prefix("--").unwrap_or_else(|| panic!("not a flag: {flag}"));
            Row {
                key: key.into(),
                flag: flag.into(),
                env: env.into(),
                default: default.into(),
                accepted: accepted.into(),
            }
        })
        .collect()
}

/// The configuration with `key` set to `value` as a flag, as the binary would parse it.
fn with_flag(key: &str, value: &str) -> Result<Config, config::ConfigError> {
    let field = FIELDS
        .iter()
        .find(|f| f.key == key)
        .unwrap_or_else(|| panic!("no field {key}"));
    let mut layers = Layers::default();
    layers.flags.insert(field.key, value.to_owned());
    parse_config(&layers)
}

#[test]
fn the_table_is_every_setting_the_parser_reads_with_its_flag_variable_and_default() {
    let documented: BTreeSet<Row> = rows().into_iter().collect();
    let code: BTreeSet<Row> = FIELDS
        .iter()
        .map(|f| Row {
            key: f.key.into(),
            flag: f.flag.into(),
            env: f.env.into(),
            default: String::new(),
            accepted: String::new(),
        })
        .collect();
    let names = |rows: &BTreeSet<Row>| -> BTreeSet<(String, String, String)> {
        rows.iter()
            .map(|r| (r.key.clone(), r.flag.clone(), r.env.clone()))
            .collect()
    };
    let (documented_names, code_names) = (names(&documented), names(&code));
    assert_eq!(rows().len(), documented.len(), "a row listed twice");
    assert!(
        documented_names == code_names,
        "sidecar-agent/README.md's Configuration table against config::FIELDS:\n  only in the README: {:?}\n  \
         only in the code: {:?}",
        documented_names.difference(&code_names).collect::<Vec<_>>(),
        code_names.difference(&documented_names).collect::<Vec<_>>()
    );
    // Each default, given explicitly, is what no setting at all gives.
    let defaults = Config::defaults().unwrap();
    for r in &documented {
        match with_flag(&r.key, &r.default) {
            Ok(c) => assert_eq!(
                c, defaults,
                "{}: the README's default {:?} is not the parser's",
                r.key, r.default
            ),
            Err(e) => panic!("{}: the README's default {:?} is refused: {e}", r.key, r.default),
        }
    }
}

/// How the values of a documented range are counted and written to the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// An integer.
    Count,
    /// Bytes, written without a suffix.
    Bytes,
    /// Bytes, powers of two only: the values past a range's ends are the powers of two next to them.
    PowerOfTwoBytes,
    /// Milliseconds (the parser's finest unit), written `{n}ms`.
    Millis,
    /// A file mode, written in octal with a leading 0.
    Octal,
}

/// A range of the `accepted` column, `LO to HI`, after which `, octal` or `, a power of two` may follow: its ends in
/// the range's unit.
#[derive(Clone, Copy, Debug)]
struct Range {
    unit: Unit,
    lo: u64,
    hi: u64,
}

impl Range {
    fn write(self, n: u64) -> String {
        match self.unit {
            Unit::Count | Unit::Bytes | Unit::PowerOfTwoBytes => n.to_string(),
            Unit::Millis => format!("{n}ms"),
            Unit::Octal => format!("0{n:o}"),
        }
    }

    /// Both ends, as the parser must take them.
    fn ends(self) -> [String; 2] {
        [self.write(self.lo), self.write(self.hi)]
    }

    /// One unit below the range (none below 0) and one above it, as the parser must refuse them.
    fn past(self) -> Vec<String> {
        let (below, above) = match self.unit {
            Unit::PowerOfTwoBytes => (Some(self.lo / 2).filter(|&n| n > 0), self.hi.checked_mul(2)),
            _ => (self.lo.checked_sub(1), self.hi.checked_add(1)),
        };
        [below, above].into_iter().flatten().map(|n| self.write(n)).collect()
    }
}

/// `65,536`, `4 KiB`, `1 GiB`, `60s`, `1ms`, `0777` (with `octal`): the number in bytes or milliseconds where its
/// suffix says which, and that unit.
fn quantity(text: &str, octal: bool) -> Option<(u64, Option<Unit>)> {
    let text: String = text.chars().filter(|&c| c != ',' && c != ' ').collect();
    let (digits, suffix) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n = u64::from_str_radix(digits, if octal { 8 } else { 10 }).ok()?;
    let (times, unit) = match suffix {
        "" => (1, None),
        "ms" => (1, Some(Unit::Millis)),
        "s" => (1_000, Some(Unit::Millis)),
        "m" => (60_000, Some(Unit::Millis)),
        "h" => (3_600_000, Some(Unit::Millis)),
        "KiB" => (1 << 10, Some(Unit::Bytes)),
        "MiB" => (1 << 20, Some(Unit::Bytes)),
        "GiB" => (1 << 30, Some(Unit::Bytes)),
        _ => return None,
    };
    Some((n.checked_mul(times)?, unit))
}

/// The range an `accepted` cell gives, or `None` where it describes the values in words.
fn range(accepted: &str) -> Option<Range> {
    let (span, note) = accepted.split_once(", ").unwrap_or((accepted, ""));
    let (lo, hi) = span.split_once(" to ")?;
    let octal = note == "octal";
    let ((lo, lo_unit), (hi, hi_unit)) = (quantity(lo, octal)?, quantity(hi, octal)?);
    // An end without a suffix, in a range of durations or sizes, is 0.
    let unit = match (lo_unit, hi_unit) {
        (a, b) if a == b => a,
        (None, b) if lo == 0 => b,
        _ => panic!("{accepted:?}: ends of different units"),
    };
    let unit = match (unit, note) {
        (None, "") => Unit::Count,
        (None, "octal") => Unit::Octal,
        (Some(Unit::Bytes), "a power of two") => Unit::PowerOfTwoBytes,
        (Some(unit), "") => unit,
        _ => panic!("{accepted:?}: a range with {note:?}, which this test does not know"),
    };
    Some(Range { unit, lo, hi })
}

#[test]
fn each_setting_s_accepted_values_are_what_the_parser_takes() {
    let mut wrong = Vec::new();
    for r in rows() {
        let field = FIELDS.iter().find(|f| f.key == r.key).unwrap();
        let Some(range) = range(&r.accepted) else {
            // A number, size or duration has a range, not words.
            if quantity(field.default, false).is_some() || r.accepted.is_empty() {
                wrong.push(format!(
                    "{}: no range `LO to HI` for a setting whose default is {}: {:?}",
                    r.key, field.default, r.accepted
                ));
            }
            // Words: each value they quote is one the parser takes.
            for v in r.accepted.split('`').skip(1).step_by(2) {
                if let Err(e) = with_flag(&r.key, v) {
                    wrong.push(format!("{}: {v:?}, quoted in {:?}, is refused: {e}", r.key, r.accepted));
                }
            }
            continue;
        };
        for v in range.ends() {
            if let Err(e) = with_flag(&r.key, &v) {
                wrong.push(format!("{}: {v:?}, an end of {:?}, is refused: {e}", r.key, r.accepted));
            }
        }
        for v in range.past() {
            let named = format!("{} = {v:?} (from flag --{}): ", r.key, r.flag);
            match with_flag(&r.key, &v) {
                Ok(_) => wrong.push(format!("{}: {v:?}, past {:?}, is taken", r.key, r.accepted)),
                Err(e) if e.problems.len() != 1 || !e.problems[0].starts_with(&named) => {
                    wrong.push(format!("{}: {v:?} is refused without naming the field: {e}", r.key));
                }
                Err(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "sidecar-agent/README.md's accepted column against the parser:\n  {}",
        wrong.join("\n  ")
    );
}

/// A value the parser refuses for `key`: empty text for every setting but the log filter, which takes it.
fn bad_value(key: &str) -> &'static str {
    ["", "["]
        .into_iter()
        .find(|v| with_flag(key, v).is_err())
        .unwrap_or_else(|| panic!("{key}: no bad value"))
}

/// Runs `grayscope-agent run` (it stops at the configuration: every value below is refused) and returns stderr.
fn refused_run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{err}");
    err
}

#[test]
fn the_real_binary_reads_each_documented_flag_variable_and_file_key() {
    let rows = rows();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let toml: String = rows
        .iter()
        .map(|r| format!("{} = {:?}\n", r.key, bad_value(&r.key)))
        .collect();
    std::fs::write(&file, toml).unwrap();

    let mut flags = Command::new(BIN);
    flags.arg("run").env_clear();
    let mut env = Command::new(BIN);
    env.arg("run").env_clear();
    for r in &rows {
        flags.arg(format!("--{}={}", r.flag, bad_value(&r.key)));
        env.env(&r.env, bad_value(&r.key));
    }
    let mut by_file = Command::new(BIN);
    by_file.arg("run").env_clear().env("GRAYSCOPE_CONFIG", &file);
    let (flags, env, by_file) = (
        refused_run(&mut flags),
        refused_run(&mut env),
        refused_run(&mut by_file),
    );

    let mut unread = Vec::new();
    for r in &rows {
        let bad = format!("{} = {:?}", r.key, bad_value(&r.key));
        for (stderr, origin) in [
            (&flags, format!("(from flag --{})", r.flag)),
            (&env, format!("(from environment variable {})", r.env)),
            (
                &by_file,
                format!("(from key {} of config file {}", r.key, file.display()),
            ),
        ] {
            if !stderr.contains(&format!("{bad} {origin}")) {
                unread.push(format!("{bad} {origin}"));
            }
        }
    }
    assert!(
        unread.is_empty(),
        "not refused by the real binary:\n  {}",
        unread.join("\n  ")
    );
    // `tail` and `methods` read the socket from GRAYSCOPE_SOCKET too, as the Commands section says.
    for cmd in ["tail", "methods"] {
        let err = refused_run(Command::new(BIN).arg(cmd).env_clear().env("GRAYSCOPE_SOCKET", ""));
        assert!(
            err.contains("socket = \"\" (from environment variable GRAYSCOPE_SOCKET)"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn the_real_binary_takes_the_ends_of_two_documented_ranges_and_refuses_values_past_them() {
    let rows = rows();
    let ranged = |key: &str| {
        let r = rows.iter().find(|r| r.key == key).unwrap();
        (r, range(&r.accepted).unwrap_or_else(|| panic!("{key}: no range")))
    };
    // One given as a flag, the other in the environment.
    let (message, message_range) = ranged("max_message_bytes");
    let (wait, wait_range) = ranged("link_wait");
    let run = || {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").env_clear();
        cmd
    };
    // The ends are taken: the binary stops at the configuration for the empty socket path alone.
    for (m, w) in message_range.ends().iter().zip(wait_range.ends()) {
        let err = refused_run(
            run()
                .arg("--socket=")
                .arg(format!("--{}={m}", message.flag))
                .env(&wait.env, &w),
        );
        assert!(
            err.contains("socket = \"\" (from flag --socket)")
                && !err.contains(&message.key)
                && !err.contains(&wait.key),
            "{} = {m:?} and {} = {w:?}, the ends of their ranges: {err}",
            message.key,
            wait.key
        );
    }
    // One past either end is refused, naming the field and where the value came from.
    for v in message_range.past() {
        let err = refused_run(run().arg(format!("--{}={v}", message.flag)));
        let named = format!("{} = {v:?} (from flag --{}): ", message.key, message.flag);
        assert!(err.contains(&named), "{named}: {err}");
    }
    for v in wait_range.past() {
        let err = refused_run(run().env(&wait.env, &v));
        let named = format!("{} = {v:?} (from environment variable {}): ", wait.key, wait.env);
        assert!(err.contains(&named), "{named}: {err}");
    }
}

/// The README's synopsis of each subcommand: its flags, from the fenced block under `## Commands`.
fn synopsis() -> Vec<(String, BTreeSet<String>)> {
    let readme = readme();
    let block = readme.split("## Commands").nth(1).unwrap().split("```").nth(1).unwrap();
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("grayscope-agent ") {
            let command = rest.split_whitespace().next().unwrap().to_owned();
            out.push((command, BTreeSet::new()));
        }
        let Some((_, flags)) = out.last_mut() else { continue };
        flags.extend(flag_tokens(line));
    }
    out
}

/// The `--flag` words of a line, without dashes.
fn flag_tokens(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',')
        .filter_map(|w| w.strip_prefix("--"))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_end_matches('=').to_owned())
}

/// Each option of `grayscope-agent <command> --help` with its description (the lines up to the next option).
fn help(command: &str) -> Vec<(String, String)> {
    let out = Command::new(BIN).args([command, "--help"]).output().unwrap();
    assert!(out.status.success(), "{command} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut options: Vec<(String, String)> = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("Options:")).skip(1) {
        let t = line.trim_start();
        let t = t
            .get(..4)
            .filter(|p| p.starts_with('-') && p.ends_with(", "))
            .map_or(t, |_| &t[4..]);
        match t.strip_prefix("--") {
            Some(rest) => {
                let (name, description) = rest.split_once(' ').unwrap_or((rest, ""));
                options.push((name.to_owned(), description.to_owned()));
            }
            None => options.last_mut().unwrap().1.push_str(line),
        }
    }
    options.retain(|(name, _)| name != "help" && name != "version");
    options
}

/// The text of a `[note: text]` in a help description.
fn note<'a>(description: &'a str, name: &str) -> Option<&'a str> {
    let (_, rest) = description.split_once(&format!("[{name}: "))?;
    rest.split_once(']').map(|(v, _)| v)
}

#[test]
fn the_commands_synopsis_and_each_help_say_what_the_table_says() {
    let rows = rows();
    let synopsis = synopsis();
    let commands: Vec<&str> = synopsis.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        commands,
        ["run", "trace", "tail", "methods", "install-module"],
        "the README's synopsis"
    );
    let mut wrong = Vec::new();
    for (command, documented) in &synopsis {
        let options = help(command);
        let real: BTreeSet<String> = options.iter().map(|(n, _)| n.clone()).collect();
        for missing in real.difference(documented) {
            wrong.push(format!(
                "{command} --{missing}: in --help, not in the README's synopsis"
            ));
        }
        for stale in documented.difference(&real) {
            wrong.push(format!("{command} --{stale}: in the README's synopsis, not in --help"));
        }
        // Where a flag is a setting of the table, its help names the table's variable and default.
        for (name, description) in &options {
            let Some(r) = rows.iter().find(|r| &r.flag == name) else {
                continue;
            };
            if note(description, "env") != Some(r.env.as_str()) {
                wrong.push(format!(
                    "{command} --{name}: --help's env {:?}, the README's {}",
                    note(description, "env"),
                    r.env
                ));
            }
            let default = note(description, "default").unwrap_or_default();
            if with_flag(&r.key, default).ok() != Config::defaults().ok() {
                wrong.push(format!(
                    "{command} --{name}: --help's default {default:?}, the README's {}",
                    r.default
                ));
            }
        }
    }
    // Every setting of the table is a flag of `run`.
    let run: BTreeSet<String> = help("run").into_iter().map(|(n, _)| n).collect();
    for r in rows.iter().filter(|r| !run.contains(&r.flag)) {
        wrong.push(format!("--{}: in the table, not a flag of run", r.flag));
    }
    assert!(
        wrong.is_empty(),
        "sidecar-agent/README.md against the real binary:\n  {}",
        wrong.join("\n  ")
    );
}
