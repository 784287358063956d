//! The plugin configuration: JSON in, a validated [`Config`] out, or every problem named by its field.
//!
//! `{}` (or an empty configuration) is valid and means the documented defaults. Unknown fields are refused, so a
//! typo never silently falls back to a default.

use std::fmt;

use serde::Deserialize;

use crate::{
    gray,
    report::ReportConfig,
    route::Template,
    tenant::{self, RawTenant, TenantConfig},
};

/// Default of `max_interfaces`: distinct interfaces counted per VM before calls go to `other`.
pub const DEFAULT_MAX_INTERFACES: usize = 256;
/// Default of `gray.max_versions`, when no allowlist is given.
pub const DEFAULT_MAX_VERSIONS: usize = 16;
/// Default of `gray.header`.
pub const DEFAULT_GRAY_HEADER: &str = "x-gray-version";
/// Default of `gray.baggage_key`.
pub const DEFAULT_BAGGAGE_KEY: &str = "gray.version";
/// Upper bound for both caps: past that the caps stop protecting Envoy's stat memory.
const MAX_CAP: usize = 10_000;

/// Which side of the workload the filter's listener is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the listener's `traffic_direction` (Istio sets it on every sidecar listener).
    #[default]
    Auto,
    Inbound,
    Outbound,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub direction: Direction,
    /// The `service` label of HTTP interfaces; by default the upstream cluster's name.
    pub service: Option<String>,
    pub max_interfaces: usize,
    pub routes: Vec<Template>,
    pub gray: GrayConfig,
    /// Whether to publish the interface and gray version as filter state for access logs.
    pub filter_state: bool,
    /// Sending call records to the agent.
    pub report: ReportConfig,
    /// The tenant dimension; `None` (the default) leaves it off.
    pub tenant: Option<TenantConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayConfig {
    /// Lowercase request header carrying the version.
    pub header: String,
    /// Baggage member carrying the version.
    pub baggage_key: String,
    /// Version of requests that carry none; `None` leaves them unlabelled (`none`) and unpropagated.
    pub default_version: Option<String>,
    /// When set, only these versions are labelled as such; others count as `unknown`.
    pub allowed_versions: Option<Vec<String>>,
    /// Without an allowlist, distinct versions labelled per VM before the rest count as `other`.
    pub max_versions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            direction: Direction::Auto,
            service: None,
            max_interfaces: DEFAULT_MAX_INTERFACES,
            routes: Vec::new(),
            gray: GrayConfig {
                header: DEFAULT_GRAY_HEADER.to_owned(),
                baggage_key: DEFAULT_BAGGAGE_KEY.to_owned(),
                default_version: None,
                allowed_versions: None,
                max_versions: DEFAULT_MAX_VERSIONS,
            },
            filter_state: true,
            report: ReportConfig::default(),
            tenant: None,
        }
    }
}

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `gray.allowed_versions[1]`.
    pub field: String,
    pub message: String,
}

/// The configuration was refused; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid grayscope plugin configuration: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    direction: Direction,
    service: Option<String>,
    max_interfaces: Option<usize>,
    routes: Vec<RawRoute>,
    gray: RawGray,
    filter_state: Option<bool>,
    report: RawReport,
    tenant: Option<RawTenant>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawReport {
    enabled: Option<bool>,
    cluster: Option<String>,
    flush_interval_ms: Option<u64>,
    max_batch: Option<usize>,
    max_batch_bytes: Option<usize>,
    max_buffer: Option<usize>,
    timeout_ms: Option<u64>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    template: String,
    method: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawGray {
    header: Option<String>,
    baggage_key: Option<String>,
    default_version: Option<String>,
    allowed_versions: Option<Vec<String>>,
    max_versions: Option<usize>,
}

/// Parses and validates the plugin configuration bytes (JSON; empty means `{}`).
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let text = crate::gray::trim_ows(bytes);
    let raw: Raw = if text.is_empty() {
        Raw::default()
    } else if text.first() != Some(&b'{') {
        // serde would accept a JSON array as a struct, field by field; a configuration is an object.
        let problem = Problem {
            field: "(root)".to_owned(),
            message: "must be a JSON object".to_owned(),
        };
        return Err(ConfigError {
            problems: vec![problem],
        });
    } else {
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(root)".to_owned() } else { path };
            ConfigError {
                problems: vec![Problem {
                    field,
                    message: e.into_inner().to_string(),
                }],
            }
        })?
    };
    validate(raw)
}

/// Headers `gray.header` may not name. The filter removes the header when its value is not a valid version (or
/// replaces it with the default one), so the header must be the gray version's alone, never one that HTTP, Envoy,
/// gRPC or the application's tracing and authentication read: a typo'd configuration naming `content-type` would
/// otherwise strip every request's content type.
const NOT_GRAY_HEADERS: [&str; 18] = [
    // Framing and connection options (RFC 9110 §7.6.1, RFC 9112 §6): hop-by-hop, Envoy's to manage.
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Content and routing.
    "content-length",
    "content-type",
    "content-encoding",
    "host",
    "expect",
    // Credentials.
    "authorization",
    "proxy-authorization",
    "cookie",
    // Tracing Envoy and the application propagate (the filter's own `baggage` is refused above).
    "traceparent",
    "tracestate",
    "x-request-id",
];
/// Prefixes of headers owned by Envoy (`x-envoy-`) and by gRPC (`grpc-`, reserved by its wire protocol).
const NOT_GRAY_HEADER_PREFIXES: [&str; 2] = ["x-envoy-", "grpc-"];

fn not_a_gray_header(lowercase: &str) -> bool {
    NOT_GRAY_HEADERS.contains(&lowercase) || NOT_GRAY_HEADER_PREFIXES.iter().any(|p| lowercase.starts_with(p))
}

fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, message: String| {
        problems.push(Problem {
            field: field.to_owned(),
            message,
        })
    };
    let defaults = Config::default();

    let cap = |field: &str, v: Option<usize>, default: usize, bad: &mut dyn FnMut(&str, String)| match v {
        None => default,
        Some(n) if (1..=MAX_CAP).contains(&n) => n,
        Some(n) => {
            bad(field, format!("must be between 1 and {MAX_CAP}, got {n}"));
            default
        }
    };
    let max_interfaces = cap("max_interfaces", raw.max_interfaces, DEFAULT_MAX_INTERFACES, &mut bad);
    let max_versions = cap(
        "gray.max_versions",
        raw.gray.max_versions,
        DEFAULT_MAX_VERSIONS,
        &mut bad,
    );

    if let Some(s) = &raw.service {
        if s.is_empty() || s.len() > 253 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b'=') {
            bad(
                "service",
                format!("must be 1-253 printable characters without ';' or '=', got {s:?}"),
            );
        }
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let method = match r.method {
            Some(m) if crate::interface::http_verb(m.to_ascii_uppercase().as_bytes()) == "_OTHER" => {
                bad(&format!("routes[{i}].method"), format!("unknown HTTP method {m:?}"));
                None
            }
            m => m.map(|m| m.to_ascii_uppercase()),
        };
        match Template::parse(&r.template, method) {
            Ok(t)
                if routes
                    .iter()
                    .any(|o: &Template| o.text == t.text && o.method == t.method) =>
            {
                bad(
                    &format!("routes[{i}].template"),
                    format!("{:?} is listed twice", r.template),
                )
            }
            Ok(t) => routes.push(t),
            Err(e) => bad(&format!("routes[{i}].template"), format!("{:?}: {e}", r.template)),
        }
    }

    let header = raw.gray.header.unwrap_or(defaults.gray.header).to_ascii_lowercase();
    if header.is_empty() || !header.bytes().all(crate::baggage::is_tchar) || header == "baggage" {
        bad(
            "gray.header",
            format!("must be an HTTP header name other than baggage, got {header:?}"),
        );
    } else if not_a_gray_header(&header) {
        bad(
            "gray.header",
            format!(
                "{header:?} is not the filter's to rewrite: it carries the request's framing, content, routing, \
                 credentials or tracing (the filter removes or replaces an invalid version)"
            ),
        );
    }
    let baggage_key = raw.gray.baggage_key.unwrap_or(defaults.gray.baggage_key);
    if baggage_key.is_empty() || !baggage_key.bytes().all(crate::baggage::is_tchar) {
        bad(
            "gray.baggage_key",
            format!("must be a baggage key (an HTTP token), got {baggage_key:?}"),
        );
    }
    let version_problem = |v: &str| {
        if gray::token(v.as_bytes()) != Ok(v) {
            Some(format!(
                "{v:?} is not valid: a version is 1-64 characters of [A-Za-z0-9._-]"
            ))
        } else if gray::is_reserved(v) {
            Some(format!(
                "{v:?} is reserved: none, unknown and other are gray_version labels of the filter's own"
            ))
        } else {
            None
        }
    };
    if let Some(problem) = raw.gray.default_version.as_deref().and_then(version_problem) {
        bad("gray.default_version", problem);
    }
    if let Some(list) = &raw.gray.allowed_versions {
        if list.is_empty() {
            bad(
                "gray.allowed_versions",
                "must not be empty; omit it to allow any version".to_owned(),
            );
        }
        if list.len() > MAX_CAP {
            bad("gray.allowed_versions", format!("at most {MAX_CAP} versions"));
        }
        for (i, v) in list.iter().enumerate() {
            if let Some(problem) = version_problem(v) {
                bad(&format!("gray.allowed_versions[{i}]"), problem);
            } else if list[..i].contains(v) {
                bad(&format!("gray.allowed_versions[{i}]"), format!("{v:?} is listed twice"));
            }
        }
        if let Some(d) = &raw.gray.default_version {
            if !list.contains(d) {
                bad("gray.default_version", format!("{d:?} is not in gray.allowed_versions"));
            }
        }
    }

    let report = validate_report(raw.report, &mut bad);
    let tenant = raw
        .tenant
        .map(|t| tenant::validate_config(t, &header, &baggage_key, &mut bad));

    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Config {
        direction: raw.direction,
        service: raw.service,
        max_interfaces,
        routes,
        gray: GrayConfig {
            header,
            baggage_key,
            default_version: raw.gray.default_version,
            allowed_versions: raw.gray.allowed_versions,
            max_versions,
        },
        filter_state: raw.filter_state.unwrap_or(defaults.filter_state),
        report,
        tenant,
    })
}

/// The largest `report.max_batch`: the agent refuses a `Report` of more records, before decoding it
/// (`proto::codec::MAX_ENTRIES`).
pub const MAX_BATCH: usize = 10_000;

/// The smallest `report.max_batch_bytes`: room for the largest record and the reporter's name.
pub const MIN_BATCH_BYTES: usize = 2 * crate::report::MAX_RECORD_BYTES;
/// The largest `report.max_batch_bytes`: the agent's default message limit (4 MiB).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

fn validate_report(raw: RawReport, bad: &mut dyn FnMut(&str, String)) -> ReportConfig {
    let d = ReportConfig::default();
    fn within<T: PartialOrd + fmt::Display + Copy>(
        field: &str,
        v: Option<T>,
        default: T,
        (lo, hi): (T, T),
        bad: &mut dyn FnMut(&str, String),
    ) -> T {
        match v {
            Some(n) if n < lo || n > hi => {
                bad(field, format!("must be between {lo} and {hi}, got {n}"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }
    let cluster = raw.cluster.unwrap_or(d.cluster.clone());
    if cluster.is_empty() || cluster.len() > 253 || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        bad(
            "report.cluster",
            format!("must be an Envoy cluster name, got {cluster:?}"),
        );
    }
    let max_batch = within("report.max_batch", raw.max_batch, d.max_batch, (1, MAX_BATCH), bad);
    let max_buffer = within(
        "report.max_buffer",
        raw.max_buffer,
        d.max_buffer.max(max_batch),
        (1, 1_000_000),
        bad,
    );
    if max_buffer < max_batch {
        bad(
            "report.max_buffer",
            format!("must be at least report.max_batch ({max_batch}), got {max_buffer}"),
        );
    }
    // Every record must fit in a batch, and a batch in the agent's default message limit (`--max-message-bytes`).
    let max_batch_bytes = within(
        "report.max_batch_bytes",
        raw.max_batch_bytes,
        d.max_batch_bytes,
        (MIN_BATCH_BYTES, MAX_BATCH_BYTES),
        bad,
    );
    ReportConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        cluster,
        flush_interval_ms: within(
            "report.flush_interval_ms",
            raw.flush_interval_ms,
            d.flush_interval_ms,
            (10, 60_000),
            bad,
        ),
        max_batch,
        max_batch_bytes,
        max_buffer,
        timeout_ms: within("report.timeout_ms", raw.timeout_ms, d.timeout_ms, (10, 60_000), bad),
        max_in_flight: within("report.max_in_flight", raw.max_in_flight, d.max_in_flight, (1, 64), bad),
    }
}

#[cfg(test)]
mod tests;
