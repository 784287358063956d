//! The per-request decision, made once on the request headers: which interface is called, which gray version the
//! request carries, its tenant when that dimension is on, what was refused, and how the `x-gray-version` and
//! `baggage` headers must be rewritten.
//!
//! Precedence of the version: a valid header, else a valid baggage member, else the configured default. Whatever
//! was invalid is reported (and counted by the caller) and never forwarded; the request itself always goes on.

use crate::{
    baggage,
    config::Config,
    gray::{self, Invalid, Source},
    headers::Headers,
    interface::Interface,
    tenant::{self, Resolved},
};

/// What to do with one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward as received (no hostcall).
    Keep,
    /// Replace every occurrence with this single value.
    Set(String),
    /// Remove every occurrence.
    Remove,
}

/// Everything the filter decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub interface: Interface,
    /// The version that is propagated and counted; `None` when the request has none.
    pub version: Option<String>,
    /// Refused candidates, in the order they were read.
    pub invalid: Vec<(Source, Invalid)>,
    pub baggage_dropped_malformed: usize,
    pub baggage_dropped_over_limit: usize,
    pub gray_header: Rewrite,
    pub baggage_header: Rewrite,
    /// Envoy's `x-request-id` (set before filters run), for the call record.
    pub request_id: Option<String>,
    /// The trace id of the request's one valid W3C `traceparent`, for the call record.
    pub trace_id: Option<String>,
    /// The tenant and what was refused on the way; `None` when the dimension is off.
    pub tenant: Option<Resolved>,
    /// A gRPC-Web call (`application/grpc-web...`): its status comes at the end of the response body.
    pub grpc_web: bool,
}

/// Decides on a request from its headers.
pub fn decide(cfg: &Config, headers: &Headers<'_>) -> Decision {
    let interface = Interface::identify(
        &cfg.routes,
        headers.first(":method").unwrap_or_default(),
        headers.first(":path").unwrap_or_default(),
        headers.first("content-type"),
    );
    let mut invalid = Vec::new();

    let from_header = {
        let mut values = headers.all(&cfg.gray.header);
        match (values.next(), values.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                invalid.push((Source::Header, Invalid::Duplicated));
                None
            }
            (Some(v), None) => gray::validate(v).map_err(|r| invalid.push((Source::Header, r))).ok(),
        }
    };

    let key = cfg.gray.baggage_key.as_str();
    let keys = baggage::Keys {
        gray: key,
        other: cfg.tenant.as_ref().and_then(|t| t.baggage_key.as_deref()),
    };
    let parsed = baggage::parse(headers.all("baggage"), keys);
    let from_baggage = {
        let mut members = parsed.members.iter().filter(|m| m.key == key);
        match (members.next(), members.next()) {
            // A malformed member is an opinion too: beside a well-formed one it makes two, and neither is taken (as
            // for the tenant's member, and for a header sent twice).
            _ if parsed.malformed_gray => {
                invalid.push((Source::Baggage, Invalid::BadEncoding));
                None
            }
            (None, _) => None,
            (Some(_), Some(_)) => {
                invalid.push((Source::Baggage, Invalid::Duplicated));
                None
            }
            (Some(m), None) => match m.decoded_value() {
                Some(v) => gray::validate(v.as_bytes())
                    .map(str::to_owned)
                    .map_err(|r| invalid.push((Source::Baggage, r)))
                    .ok(),
                None => {
                    invalid.push((Source::Baggage, Invalid::BadEncoding));
                    None
                }
            },
        }
    };

    // Read from the same headers and baggage: the dimension costs no hostcall, and leaves both untouched.
    let tenant = cfg.tenant.as_ref().map(|t| tenant::resolve(t, headers, &parsed));

    let version = from_header
        .map(str::to_owned)
        .or(from_baggage)
        .or_else(|| cfg.gray.default_version.clone());

    let gray_header = {
        let mut values = headers.all(&cfg.gray.header);
        let (first, second) = (values.next(), values.next());
        match (&version, first, second) {
            (Some(v), Some(only), None) if only == v.as_bytes() => Rewrite::Keep,
            (Some(v), _, _) => Rewrite::Set(v.clone()),
            (None, None, _) => Rewrite::Keep,
            (None, Some(_), _) => Rewrite::Remove,
        }
    };

    let rendered = baggage::render(&parsed, key, version.as_deref());
    let baggage_header = match (rendered.header, parsed.headers) {
        (None, 0) => Rewrite::Keep,
        (None, _) => Rewrite::Remove,
        (Some(h), 1) if headers.first("baggage") == Some(h.as_bytes()) => Rewrite::Keep,
        (Some(h), _) => Rewrite::Set(h),
    };

    let grpc_web = matches!(interface, Interface::Grpc { .. })
        && headers.first("content-type").is_some_and(crate::grpc_web::is_grpc_web);
    Decision {
        interface,
        version,
        invalid,
        baggage_dropped_malformed: parsed.malformed,
        baggage_dropped_over_limit: rendered.dropped_over_limit,
        gray_header,
        baggage_header,
        request_id: headers
            .first("x-request-id")
            .and_then(|v| String::from_utf8(v.to_vec()).ok()),
        trace_id: crate::report::trace_id(headers.all("traceparent")),
        tenant,
        grpc_web,
    }
}

mod ending;
pub use ending::{elapsed_ns, StreamedStatus, DOWNSTREAM_GONE};

#[cfg(test)]
mod tests;
