//! Call outcome as a small, fixed set of label values: gRPC status names, or HTTP status classes.

/// gRPC status names by code (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
pub const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a `grpc-status` header or trailer value: decimal, blanks around it allowed; `None` if it is none.
pub fn grpc_code(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The outcome label of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// A gRPC status code, 0..=16.
    Grpc(u8),
    /// An HTTP status class, 1..=5 (`1xx` .. `5xx`).
    HttpClass(u8),
    /// No response was sent (the downstream went away, or the stream was reset before headers).
    NoResponse,
}

impl Status {
    /// The outcome of a gRPC call: the `grpc-status` the server sent, else the status implied by the HTTP status
    /// (gRPC's HTTP to gRPC mapping), else `UNKNOWN` / no response.
    pub fn grpc(grpc_status: Option<u64>, http_status: Option<u64>) -> Self {
        match (grpc_status, http_status) {
            (Some(code), _) => Self::Grpc(if code <= 16 { code as u8 } else { 2 }),
            (None, None | Some(0)) => Self::NoResponse,
            (None, Some(http)) => Self::Grpc(grpc_from_http(http)),
        }
    }

    /// The outcome of a plain HTTP call.
    pub fn http(http_status: Option<u64>) -> Self {
        match http_status {
            Some(code @ 100..=599) => Self::HttpClass((code / 100) as u8),
            _ => Self::NoResponse,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc(code) => GRPC_NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN"),
            Self::HttpClass(1) => "1xx",
            Self::HttpClass(2) => "2xx",
            Self::HttpClass(3) => "3xx",
            Self::HttpClass(4) => "4xx",
            Self::HttpClass(_) => "5xx",
            Self::NoResponse => "no_response",
        }
    }

    /// Whether the call failed, in the sense of the OTel conventions: gRPC non-OK, HTTP 5xx, or no response.
    pub fn is_error(self) -> bool {
        match self {
            Self::Grpc(code) => code != 0,
            Self::HttpClass(class) => class >= 5,
            Self::NoResponse => true,
        }
    }
}

/// <https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>
fn grpc_from_http(http: u64) -> u8 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_status_value_is_a_decimal_code() {
        assert_eq!(grpc_code(b"0"), Some(0));
        assert_eq!(grpc_code(b" 14\t"), Some(14));
        for bad in [&b""[..], b"zero", b"1 2", b"-1", b"\xff"] {
            assert_eq!(grpc_code(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_status_wins_over_http() {
        assert_eq!(Status::grpc(Some(5), Some(200)).as_str(), "NOT_FOUND");
        assert_eq!(Status::grpc(Some(0), Some(200)).as_str(), "OK");
        assert_eq!(Status::grpc(Some(99), Some(200)).as_str(), "UNKNOWN");
    }

    #[test]
    fn http_status_maps_when_grpc_status_is_missing() {
        assert_eq!(Status::grpc(None, Some(503)).as_str(), "UNAVAILABLE");
        assert_eq!(Status::grpc(None, Some(404)).as_str(), "UNIMPLEMENTED");
        assert_eq!(Status::grpc(None, Some(200)).as_str(), "UNKNOWN");
        assert_eq!(Status::grpc(None, None).as_str(), "no_response");
        assert_eq!(Status::grpc(None, Some(0)).as_str(), "no_response");
    }

    #[test]
    fn http_classes() {
        assert_eq!(Status::http(Some(204)).as_str(), "2xx");
        assert_eq!(Status::http(Some(431)).as_str(), "4xx");
        assert_eq!(Status::http(Some(503)).as_str(), "5xx");
        assert_eq!(Status::http(Some(0)).as_str(), "no_response");
        assert_eq!(Status::http(Some(600)).as_str(), "no_response");
        assert!(Status::http(Some(500)).is_error());
        assert!(!Status::http(Some(404)).is_error());
    }
}
