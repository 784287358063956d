//! The end of a call, the same in every shell: its outcome from the response, its `service` label, its metrics
//! observation and its call record. The shells read Envoy's facts their own way (properties in wasm, attributes in
//! the dynamic module) and hand over the ones that are needed only sometimes as closures, so a fact nobody needs is
//! never read: a hostcall saved on every request.

use std::borrow::Cow;

use super::Decision;
use crate::{
    grpc_web::TrailerScan,
    interface::{Interface, UNKNOWN},
    metrics::{Call, Side},
    report::{self, CallContext, Record},
    status::Status,
};

const CANCELLED_CODE: u8 = 1;
const UNKNOWN_CODE: u64 = 2;

/// A call's duration from two readings of a clock that can step (the wasm shell's only cheap clock is Envoy's wall
/// clock): `None` when a reading is missing or the clock went back between them, and the shell then asks the host
/// for the duration instead.
pub fn elapsed_ns(start: Option<u64>, end: Option<u64>) -> Option<u64> {
    match (start, end) {
        (Some(start), Some(end)) => end.checked_sub(start),
        _ => None,
    }
}

/// A gRPC call's `grpc-status` as its response streams by, for when Envoy no longer has it by the time the call is
/// logged, which is what its `response.grpc_status` would read:
/// - the trailers of a gRPC response, which Envoy's gRPC-Web filter (when it comes before this one, so that this one
///   sees the call as gRPC) moves into the body and then clears;
/// - the trailer frame at the end of a gRPC-Web response's body (this filter sees gRPC-Web; see [`crate::grpc_web`]).
///
/// The shells feed it from their response trailer and body hooks; a status seen there wins over Envoy's at the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedStatus {
    trailers: Option<u64>,
    body: Option<TrailerScan>,
}

impl StreamedStatus {
    /// What to watch for a call: `None` for an HTTP call, which has no `grpc-status`; the body only for gRPC-Web.
    pub fn of(decision: &Decision) -> Option<Self> {
        match decision.interface {
            Interface::Grpc { .. } => Some(Self {
                trailers: None,
                body: decision.grpc_web.then(TrailerScan::default),
            }),
            Interface::Http { .. } => None,
        }
    }

    /// The value of the response's `grpc-status` trailer.
    pub fn trailer(&mut self, value: &[u8]) {
        self.trailers = crate::status::grpc_code(value);
    }

    /// Whether the body is read: only a gRPC-Web call's, and only until its status is found (or it shows it is no
    /// gRPC-Web body: an error page from a proxy on the way).
    pub fn wants_body(&self) -> bool {
        self.body.as_ref().is_some_and(|b| !b.done())
    }

    /// The next chunk of the response body.
    pub fn body(&mut self, chunk: &[u8]) {
        if let Some(scan) = &mut self.body {
            scan.feed(chunk);
        }
    }

    /// The status the response carried in its trailers or its trailer frame, if it did.
    pub fn status(&self) -> Option<u64> {
        self.trailers
            .or_else(|| self.body.as_ref().and_then(TrailerScan::status))
    }
}

/// Envoy's response flags (`response.flags`: one bit per `StreamInfo::CoreResponseFlag`, by its value) that say the
/// downstream went away before the response ended: `DC` (DownstreamConnectionTermination, 14) and `DR`
/// (DownstreamRemoteReset, 28).
pub const DOWNSTREAM_GONE: u64 = 1 << 14 | 1 << 28;

impl Decision {
    /// The call's outcome. An HTTP call has its status class. A gRPC call with no HTTP status (Envoy reports 0 when
    /// nothing was sent) got no response. Otherwise it has the `grpc-status` its response carried: `streamed` (seen
    /// in its trailers or its trailer frame), else `grpc_status` (Envoy's `response.grpc_status`, read only then).
    ///
    /// A response of HTTP 200 that carried none never ended: Envoy then guesses UNKNOWN, gRPC's reading of a missing
    /// status. When the downstream went away (`downstream_gone`, read only then: the client reset the stream or
    /// closed its connection, as a client that cancels or whose deadline passed does), the caller cut it off: the
    /// call counts as CANCELLED, as a gRPC server reports it, rather than as the server error UNKNOWN is.
    pub fn status<E>(
        &self,
        http_status: Option<u64>,
        streamed: Option<u64>,
        grpc_status: impl FnOnce() -> Result<Option<u64>, E>,
        downstream_gone: impl FnOnce() -> Result<bool, E>,
    ) -> Result<Status, E> {
        Ok(match (&self.interface, http_status) {
            (Interface::Http { .. }, code) => Status::http(code),
            (Interface::Grpc { .. }, None | Some(0)) => Status::NoResponse,
            (Interface::Grpc { .. }, code @ Some(_)) if streamed.is_some() => Status::grpc(streamed, code),
            (Interface::Grpc { .. }, code) => {
                let envoy = grpc_status()?;
                // Envoy's UNKNOWN for a 200 may be its guess or the server's own trailers-only UNKNOWN; a server
                // that answered so completed the call, and the downstream cannot have gone before its end.
                let unended = code == Some(200) && matches!(envoy, None | Some(UNKNOWN_CODE));
                if unended && downstream_gone()? {
                    Status::Grpc(CANCELLED_CODE)
                } else {
                    Status::grpc(envoy, code)
                }
            }
        })
    }

    /// The call's `service` label: a gRPC interface names its own; an HTTP one the configured service, else the
    /// upstream cluster that `cluster` reads only then, else `unknown`.
    pub fn service<'a, E>(
        &'a self,
        configured: Option<&'a str>,
        cluster: impl FnOnce() -> Result<Option<String>, E>,
    ) -> Result<Cow<'a, str>, E> {
        Ok(match (&self.interface, configured) {
            (Interface::Grpc { service, .. }, _) => Cow::Borrowed(service.as_str()),
            (Interface::Http { .. }, Some(s)) => Cow::Borrowed(s),
            (Interface::Http { .. }, None) => cluster()?.map_or(Cow::Borrowed(UNKNOWN), Cow::Owned),
        })
    }

    /// What the metrics observe of the call.
    pub fn observed<'a>(&'a self, side: Side, service: &'a str, status: Status, duration_ns: u64) -> Call<'a> {
        Call {
            side,
            interface: &self.interface,
            http_service: service,
            version: self.version.as_deref(),
            status,
            duration_ms: duration_ns / 1_000_000,
            tenant: self.tenant.as_ref().map(|t| &t.tenant),
        }
    }

    /// The call's record for the agent; `tenant` is the bounded label the metrics gave it.
    pub fn record<'a>(
        &'a self,
        side: Side,
        service: &'a str,
        status: Status,
        ctx: &CallContext<'a>,
        tenant: Option<&'a str>,
    ) -> Record<'a> {
        report::record(
            side,
            &self.interface,
            service,
            self.version.as_deref(),
            status,
            self.request_id.as_deref(),
            self.trace_id.as_deref(),
            ctx,
        )
        .with_tenant(tenant)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::{config::Config, headers::Headers, request::decide};

    fn decision(path: &str, content_type: Option<&str>) -> Decision {
        let mut pairs: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":path", path.as_bytes())];
        if let Some(ct) = content_type {
            pairs.push((b"content-type", ct.as_bytes()));
        }
        decide(&Config::default(), &Headers::from_pairs(pairs))
    }

    fn never<T>() -> Result<T, &'static str> {
        Err("read although not needed")
    }

    fn is<T>(value: T) -> impl FnOnce() -> Result<T, &'static str> {
        move || Ok(value)
    }

    #[test]
    fn a_grpc_call_without_a_response_reads_no_grpc_status() {
        let d = decision("/shop.v1.Orders/Get", Some("application/grpc"));
        assert_eq!(d.status(None, None, never, never), Ok(Status::NoResponse));
        assert_eq!(d.status(Some(0), None, never, never), Ok(Status::NoResponse));
        assert_eq!(d.status(Some(0), Some(0), never, never), Ok(Status::NoResponse));
        assert_eq!(d.status(Some(200), None, is(Some(5)), never), Ok(Status::Grpc(5)));
        assert_eq!(
            d.status(Some(200), None, || Err("hostcall failed"), never),
            Err("hostcall failed")
        );
    }

    #[test]
    fn a_streamed_grpc_status_is_the_servers_and_reads_nothing_more() {
        let d = decision("/shop.v1.Orders/Get", Some("application/grpc"));
        assert_eq!(d.status(Some(200), Some(0), never, never), Ok(Status::Grpc(0)));
        assert_eq!(d.status(Some(200), Some(2), never, never), Ok(Status::Grpc(2)));
        assert_eq!(d.status(Some(200), Some(99), never, never), Ok(Status::Grpc(2)));
    }

    #[test]
    fn a_grpc_response_the_downstream_cut_off_is_cancelled() {
        let d = decision("/shop.v1.Orders/Watch", Some("application/grpc"));
        // HTTP 200 and no grpc-status: Envoy's guess (UNKNOWN), or nothing.
        assert_eq!(d.status(Some(200), None, is(Some(2)), is(true)), Ok(Status::Grpc(1)));
        assert_eq!(d.status(Some(200), None, is(None), is(true)), Ok(Status::Grpc(1)));
        assert_eq!(d.status(Some(200), None, is(Some(2)), is(false)), Ok(Status::Grpc(2)));
        assert_eq!(
            d.status(Some(200), None, is(Some(2)), || Err("hostcall failed")),
            Err("hostcall failed")
        );
        // A status the server sent, or what a non-200 answer means, is the server's: the flags are not read.
        assert_eq!(d.status(Some(200), None, is(Some(14)), never), Ok(Status::Grpc(14)));
        assert_eq!(d.status(Some(200), None, is(Some(0)), never), Ok(Status::Grpc(0)));
        assert_eq!(d.status(Some(503), None, is(Some(14)), never), Ok(Status::Grpc(14)));
        assert_eq!(d.status(Some(503), None, is(None), never), Ok(Status::Grpc(14)));
    }

    #[test]
    fn an_http_call_has_its_status_class_and_reads_no_grpc_status() {
        let d = decision("/x", None);
        assert_eq!(d.status(Some(503), None, never, never), Ok(Status::HttpClass(5)));
        assert_eq!(d.status(None, None, never, never), Ok(Status::NoResponse));
        assert_eq!(d.status(Some(200), None, never, never), Ok(Status::HttpClass(2)));
    }

    #[test]
    fn the_cluster_is_read_only_for_http_without_a_configured_service() {
        let grpc = decision("/shop.v1.Orders/Get", Some("application/grpc"));
        assert_eq!(grpc.service(None, never).as_deref(), Ok("shop.v1.Orders"));
        let http = decision("/x", None);
        assert_eq!(http.service(Some("backend"), never).as_deref(), Ok("backend"));
        let from_cluster = http.service(None, || Ok::<_, Infallible>(Some("outbound|80||b".to_owned())));
        assert_eq!(from_cluster.as_deref(), Ok("outbound|80||b"));
        assert_eq!(http.service(None, || Ok::<_, Infallible>(None)).as_deref(), Ok(UNKNOWN));
    }

    #[test]
    fn a_streamed_status_watches_grpc_trailers_and_only_a_grpc_web_body() {
        assert_eq!(StreamedStatus::of(&decision("/x", Some("application/json"))), None);

        let mut grpc = StreamedStatus::of(&decision("/shop.v1.Orders/Get", Some("application/grpc"))).expect("gRPC");
        assert!(!grpc.wants_body());
        grpc.body(b"\x80\x00\x00\x00\x0egrpc-status:0\r\n");
        assert_eq!(grpc.status(), None);
        grpc.trailer(b" 9 ");
        assert_eq!(grpc.status(), Some(9));
        grpc.trailer(b"nine");
        assert_eq!(grpc.status(), None);

        let mut web =
            StreamedStatus::of(&decision("/shop.v1.Orders/Get", Some("application/grpc-web-text"))).expect("gRPC-Web");
        assert!(web.wants_body());
        web.body(b"gAAAAA5ncnBjLXN0YXR1czo0DQo=");
        assert_eq!(web.status(), Some(4));
        assert!(!web.wants_body(), "read on after the status was found");
        // Trailers, when a host has them too, are what the server sent last.
        web.trailer(b"0");
        assert_eq!(web.status(), Some(0));

        // A body that is no gRPC-Web (a proxy's error page) is not read on.
        let mut page = StreamedStatus::of(&decision("/shop.v1.Orders/Get", Some("application/grpc-web"))).expect("web");
        page.body(b"<html>upstream connect error");
        assert!(!page.wants_body());
        assert_eq!(page.status(), None);
    }
}
