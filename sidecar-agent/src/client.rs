//! A gRPC client of the agent over its Unix socket, and the output of `grayscope-agent tail` and `methods`.
//!
//! `tail` prints one line per call:
//!
//! ```text
//! 2026-11-27T02:40:00.123Z  pid=4242 (python3)  outbound  grpc pkg.Greeter/SayHello  gray=v2  status=OK  1.234ms
//! 2026-11-27T02:40:00.125Z  unlinked(no_connection)  inbound  http GET /items/{id}  gray=-  status=2xx  0.870ms
//! 2026-11-27T02:40:00.126Z  pid=4242 (python3)  inbound  grpc pkg.Greeter/SayHello  gray=v2  tenant=free  status=OK  41.002ms
//! -- lost 17 calls (this watcher read too slowly)
//! ```
//!
//! `tenant=` is there only when the filter's tenant dimension is on (the record has a tenant label).

use std::{
    fmt::Write as _,
    io::Write,
    path::{Path, PathBuf},
};

use hyper_util::rt::TokioIo;
use proto::v1::{
    collector_client::CollectorClient, CallRecord, Direction, LinkState, LinkedCall, ListMethodsRequest,
    ListMethodsResponse, MethodStats, WatchRequest, WatchResponse,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected. The message leaves the path to the caller's context, which names the
    /// socket with what it was doing (`watching the calls of the agent at ...`), so that it is said once.
    #[error("cannot connect: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// A call ended with an error status: the agent's answer, or the transport's own (a broken connection, a
    /// socket that another program listens on, an answer over the size limit), which tonic reports the same way.
    #[error("{rpc} failed")]
    Call {
        /// The method called.
        rpc: &'static str,
        /// The status it ended with.
        #[source]
        status: CallStatus,
    },
    /// The agent answered a `ListMethods` page with the very token it was asked for: following it would ask for the
    /// same page forever.
    #[error("ListMethods: the agent sent back the page token it was given, so the listing would never end")]
    PageTokenRepeated,
    /// A watch stream ended with an error: UNAVAILABLE when the agent stops, or the connection broke.
    #[error("the watch stream ended")]
    WatchEnded(#[source] CallStatus),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

/// A gRPC status as a cause: its code and message, then what caused it (tonic's own `Display` repeats all three).
#[derive(Debug)]
pub struct CallStatus(pub tonic::Status);

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for CallStatus {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// A Collector client on the agent's Unix socket at `socket` (HTTP/2 over the socket; the URI is a placeholder).
pub async fn connect(socket: impl AsRef<Path>) -> Result<CollectorClient<Channel>, ClientError> {
    let path = socket.as_ref().to_path_buf();
    let p = path.clone();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let p = p.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
    });
    let channel = Endpoint::from_static("http://grayscope-agent.local")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect { path, source })?;
    // gRPC's default limit on a received message (4 MiB), as any client has: the agent's answers are bounded
    // below it, a method table by its pages.
    Ok(CollectorClient::new(channel))
}

/// The whole method table, page after page of `ListMethods`.
pub async fn list_methods(client: &mut CollectorClient<Channel>) -> Result<Vec<MethodStats>, ClientError> {
    follow_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let request = ListMethodsRequest {
                page_size: 0,
                page_token,
            };
            client.list_methods(request).await.map(tonic::Response::into_inner)
        }
    })
    .await
}

/// Asks `page` for each page in turn, from the empty token to the answer without one.
async fn follow_pages<F, Fut>(mut page: F) -> Result<Vec<MethodStats>, ClientError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<ListMethodsResponse, tonic::Status>>,
{
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let answer = page(page_token.clone()).await.map_err(|status| ClientError::Call {
            rpc: "ListMethods",
            status: CallStatus(status),
        })?;
        rows.extend(answer.methods);
        if answer.next_page_token.is_empty() {
            return Ok(rows);
        }
        // The agent's tokens name the last row sent, so each one moves forward; one that does not would loop.
        if answer.next_page_token == page_token {
            return Err(ClientError::PageTokenRepeated);
        }
        page_token = answer.next_page_token;
    }
}

/// Streams calls matching `filter` into `out`, one line each, until `shutdown` completes (`Ok`) or the stream ends.
/// The agent ends it only when it stops, with UNAVAILABLE: that is [`ClientError::WatchEnded`], so that a script
/// running `tail` sees the agent went away rather than a clean end.
pub async fn tail(
    socket: &Path,
    filter: WatchRequest,
    mut out: impl Write,
    shutdown: impl std::future::Future,
) -> Result<(), ClientError> {
    let mut client = connect(socket).await?;
    let mut stream = client
        .watch(filter)
        .await
        .map_err(|status| ClientError::Call {
            rpc: "Watch",
            status: CallStatus(status),
        })?
        .into_inner();
    tokio::pin!(shutdown);
    loop {
        let msg = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            m = stream.message() => m.map_err(|s| ClientError::WatchEnded(CallStatus(s)))?,
        };
        let Some(msg) = msg else { return Ok(()) };
        if !written(&mut out, &watch_lines(&msg))? {
            return Ok(());
        }
    }
}

/// Prints the method table into `out`.
pub async fn methods(socket: &Path, mut out: impl Write) -> Result<(), ClientError> {
    let mut client = connect(socket).await?;
    let rows = list_methods(&mut client).await?;
    written(&mut out, &methods_table(&rows))?;
    Ok(())
}

/// Writes `text` to `out` and flushes it: `false` when the reader has gone (a closed pipe, `tail | head -1`), which is
/// how a user says they have seen enough, and a normal end, as for `trace`.
fn written(out: &mut impl Write, text: &str) -> Result<bool, ClientError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The lines of one watch message: the lost-calls notice when there is one, then the call.
pub fn watch_lines(msg: &WatchResponse) -> String {
    let mut s = String::new();
    if msg.lost > 0 {
        let _ = writeln!(s, "-- lost {} calls (this watcher read too slowly)", msg.lost);
    }
    if let Some(call) = &msg.call {
        s.push_str(&call_line(call));
        s.push('\n');
    }
    s
}

/// One call: time, process, direction, interface, gray version, tenant (when there is one), status, latency.
pub fn call_line(call: &LinkedCall) -> String {
    let c = call.call.clone().unwrap_or_default();
    let time = rfc3339_millis(if c.start_time_unix_nano != 0 {
        c.start_time_unix_nano
    } else {
        call.received_unix_nano
    });
    let process = match (&call.process, LinkState::try_from(call.link)) {
        (Some(p), _) => format!("pid={} ({})", p.pid, p.command),
        (None, Ok(LinkState::NoAddress)) => "unlinked(no_address)".to_owned(),
        (None, _) => "unlinked(no_connection)".to_owned(),
    };
    let tenant = if c.tenant.is_empty() {
        String::new()
    } else {
        format!("  tenant={}", c.tenant)
    };
    let line = format!(
        "{time}  {process}  {}  {}  gray={}{tenant}  status={}  {:.3}ms",
        direction(c.direction),
        interface(&c),
        dash(&c.gray_version),
        dash(&c.status),
        ms(c.duration_ns),
    );
    // Every control character in it came from a field.
    shown(&line).into_owned()
}

/// `s` with its control characters escaped as Rust writes them (`\n`, `\u{1b}`): what reporters, declaring
/// applications and command lines (any process sets its own) say is printed, never obeyed by the terminal, and a
/// line stays one line.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// `grpc pkg.Service/Method` or `http VERB route`.
fn interface(c: &CallRecord) -> String {
    if c.rpc_method.is_empty() {
        format!("http {} {}", dash(&c.http_request_method), dash(&c.http_route))
    } else {
        format!("grpc {}", c.rpc_method)
    }
}

fn direction(d: i32) -> &'static str {
    match Direction::try_from(d) {
        Ok(Direction::Inbound) => "inbound",
        Ok(Direction::Outbound) => "outbound",
        _ => "-",
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[allow(clippy::cast_precision_loss)]
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The method table with aligned columns.
pub fn methods_table(rows: &[MethodStats]) -> String {
    let header = [
        "SYSTEM", "SERVICE", "METHOD", "GRAY", "TENANT", "DIR", "PID", "COMMAND", "CALLS", "ERRORS", "P50_MS",
        "P99_MS", "MAX_MS", "PEERS", "DECLARED",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for r in rows {
        let l = r.latency.unwrap_or_default();
        let declared = r.declared.as_ref().map_or_else(
            || "-".to_owned(),
            |d| format!("{}->{}", dash(&d.input_type), dash(&d.output_type)),
        );
        let peers = if r.peers.is_empty() {
            "-".to_owned()
        } else {
            r.peers.join(",")
        };
        let row: Vec<String> = vec![
            dash(&r.rpc_system_name).to_owned(),
            dash(&r.service).to_owned(),
            dash(&r.method).to_owned(),
            dash(&r.gray_version).to_owned(),
            dash(&r.tenant).to_owned(),
            direction(r.direction).to_owned(),
            r.process.as_ref().map_or_else(|| "-".to_owned(), |p| p.pid.to_string()),
            r.process.as_ref().map_or("-", |p| dash(&p.command)).to_owned(),
            r.calls.to_string(),
            r.errors.to_string(),
            format!("{:.3}", l.p50_ms),
            format!("{:.3}", l.p99_ms),
            format!("{:.3}", l.max_ms),
            peers,
            declared,
        ];
        table.push(row.iter().map(|cell| shown(cell).into_owned()).collect());
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| table.iter().map(|row| row[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-27T02:40:00.123Z` for ns since the Unix epoch (UTC, proleptic Gregorian).
pub fn rfc3339_millis(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns / 1_000_000) % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use proto::v1::{LatencySummary, Process};

    use super::*;

    /// A page of one row named `name`, pointing at `next`.
    fn page(name: &str, next: &str) -> ListMethodsResponse {
        ListMethodsResponse {
            methods: vec![MethodStats {
                method: name.to_owned(),
                ..MethodStats::default()
            }],
            next_page_token: next.to_owned(),
        }
    }

    /// Runs the paging loop against `pages` (token asked for → answer), recording the tokens asked for.
    fn follow(pages: &[(&str, ListMethodsResponse)]) -> (Result<Vec<String>, ClientError>, Vec<String>) {
        let mut asked = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let result = rt.block_on(follow_pages(|token| {
            asked.push(token.clone());
            let answer = pages.iter().find(|(t, _)| *t == token).map(|(_, p)| p.clone());
            // A loop that does not stop ends here, failing the test instead of hanging it.
            let looping = asked.len() > 10;
            async move {
                if looping {
                    return Err(tonic::Status::aborted("asked more than 10 pages"));
                }
                answer.ok_or_else(|| tonic::Status::invalid_argument("page_token"))
            }
        }));
        (result.map(|rows| rows.into_iter().map(|r| r.method).collect()), asked)
    }

    #[test]
    fn pages_are_followed_to_the_last() {
        let (rows, asked) = follow(&[("", page("a", "t1")), ("t1", page("b", "t2")), ("t2", page("c", ""))]);
        assert_eq!(rows.unwrap(), ["a", "b", "c"]);
        assert_eq!(asked, ["", "t1", "t2"]);
    }

    #[test]
    fn a_page_token_sent_back_unchanged_ends_the_listing_with_an_error() {
        let (rows, asked) = follow(&[("", page("a", "t1")), ("t1", page("b", "t1"))]);
        assert!(matches!(rows, Err(ClientError::PageTokenRepeated)), "{rows:?}");
        assert_eq!(asked, ["", "t1"]);
    }

    #[test]
    fn a_failed_page_names_the_call() {
        let (rows, _) = follow(&[("", page("a", "gone"))]);
        let err = rows.unwrap_err();
        assert_eq!(err.to_string(), "ListMethods failed");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("InvalidArgument: page_token"));
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_millis(1_795_746_000_000_000_000), "2026-11-27T02:20:00.000Z");
    }

    #[test]
    fn call_lines() {
        let mut call = LinkedCall {
            call: Some(CallRecord {
                direction: Direction::Outbound as i32,
                rpc_method: "pkg.Greeter/SayHello".into(),
                gray_version: "v2".into(),
                status: "OK".into(),
                duration_ns: 1_234_000,
                start_time_unix_nano: 1_000_000_000,
                ..CallRecord::default()
            }),
            link: LinkState::Linked as i32,
            process: Some(Process {
                pid: 4242,
                command: "python3".into(),
                ..Process::default()
            }),
            ..LinkedCall::default()
        };
        assert_eq!(
            call_line(&call),
            "1970-01-01T00:00:01.000Z  pid=4242 (python3)  outbound  grpc pkg.Greeter/SayHello  gray=v2  status=OK  1.234ms"
        );
        call.call.as_mut().unwrap().tenant = "free".into();
        assert_eq!(
            call_line(&call),
            "1970-01-01T00:00:01.000Z  pid=4242 (python3)  outbound  grpc pkg.Greeter/SayHello  gray=v2  tenant=free  \
             status=OK  1.234ms"
        );
        call.call.as_mut().unwrap().tenant.clear();
        call.process = None;
        call.link = LinkState::NoConnection as i32;
        let c = call.call.as_mut().unwrap();
        c.rpc_method.clear();
        c.http_request_method = "GET".into();
        c.http_route = "/items".into();
        c.gray_version.clear();
        let text = watch_lines(&WatchResponse {
            call: Some(call),
            lost: 3,
        });
        assert_eq!(
            text,
            "-- lost 3 calls (this watcher read too slowly)\n\
             1970-01-01T00:00:01.000Z  unlinked(no_connection)  outbound  http GET /items  gray=-  status=OK  1.234ms\n"
        );
    }

    /// What a reporter, a declaring application or any process's command line says is printed, never obeyed: a
    /// terminal's control sequences and line breaks come out escaped, so a line stays one line and clears nothing.
    #[test]
    fn control_characters_from_the_agent_are_shown_escaped() {
        let hostile = "x\u{1b}[2J\ny\r\u{7}";
        let call = LinkedCall {
            call: Some(CallRecord {
                direction: Direction::Inbound as i32,
                http_request_method: "GET".into(),
                http_route: hostile.into(),
                gray_version: hostile.into(),
                tenant: hostile.into(),
                status: hostile.into(),
                ..CallRecord::default()
            }),
            link: LinkState::Linked as i32,
            process: Some(Process {
                pid: 1,
                command: hostile.into(),
                ..Process::default()
            }),
            ..LinkedCall::default()
        };
        let row = MethodStats {
            service: hostile.into(),
            method: hostile.into(),
            peers: vec![hostile.into()],
            process: Some(Process {
                pid: 1,
                command: hostile.into(),
                ..Process::default()
            }),
            ..MethodStats::default()
        };
        for (text, lines) in [
            (
                watch_lines(&WatchResponse {
                    call: Some(call),
                    lost: 0,
                }),
                1,
            ),
            (methods_table(&[row]), 2),
        ] {
            assert_eq!(text.lines().count(), lines, "{text:?}");
            assert!(text.lines().all(|l| !l.contains(char::is_control)), "{text:?}");
            assert!(text.contains(r"x\u{1b}[2J\ny\r\u{7}"), "{text}");
        }
    }

    #[test]
    fn the_method_table_is_aligned() {
        let row = MethodStats {
            rpc_system_name: "grpc".into(),
            service: "pkg.Greeter".into(),
            method: "SayHello".into(),
            gray_version: "v2".into(),
            direction: Direction::Inbound as i32,
            process: Some(Process {
                pid: 7,
                command: "server".into(),
                ..Process::default()
            }),
            tenant: "enterprise".into(),
            calls: 12,
            errors: 1,
            latency: Some(LatencySummary {
                p50_ms: 1.5,
                p99_ms: 2.0,
                max_ms: 2.25,
                ..LatencySummary::default()
            }),
            ..MethodStats::default()
        };
        let text = methods_table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("SYSTEM  SERVICE      METHOD    GRAY  TENANT      DIR      PID  COMMAND  CALLS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("grpc    pkg.Greeter  SayHello  v2    enterprise  inbound  7    server   12"),
            "{text}"
        );
        assert_eq!(lines[0].find("P50_MS"), lines[1].find("1.500"), "{text}");
    }
}
