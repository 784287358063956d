//! Which interface a request calls.
//!
//! gRPC (any `content-type: application/grpc*`): the `:path` `/pkg.Service/Method` names it. Plain HTTP: the verb
//! plus the route template ([`crate::route`]). Values a client could choose freely never reach a label unchecked:
//! gRPC names must be protobuf names (identifiers, dotted for the service), HTTP verbs outside the standard set
//! become `_OTHER` (as the OTel conventions ask for `http.request.method`).

use crate::route::{self, Template};

/// Label value for a gRPC path that is not `/Service/Method`.
pub const UNKNOWN: &str = "unknown";
/// Longest gRPC service or method name kept as is.
const MAX_GRPC_NAME: usize = 128;

/// The `rpc_system` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RpcSystem {
    Grpc,
    Http,
}

impl RpcSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// An interface, as labels will show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `service` is `pkg.Service`, `method` is `Method`.
    Grpc { service: String, method: String },
    /// `verb` is a standard method or `_OTHER`; `route` is a template or a normalised path.
    Http { verb: &'static str, route: String },
}

impl Interface {
    /// Identifies the interface from the request's pseudo-headers and content type.
    pub fn identify(templates: &[Template], method: &[u8], path: &[u8], content_type: Option<&[u8]>) -> Self {
        if content_type.is_some_and(is_grpc) {
            return match grpc_names(path) {
                Some((service, method)) => Self::Grpc {
                    service: service.to_owned(),
                    method: method.to_owned(),
                },
                None => Self::Grpc {
                    service: UNKNOWN.to_owned(),
                    method: UNKNOWN.to_owned(),
                },
            };
        }
        let verb = http_verb(method);
        Self::Http {
            verb,
            route: route::route(templates, verb, path),
        }
    }

    pub fn system(&self) -> RpcSystem {
        match self {
            Self::Grpc { .. } => RpcSystem::Grpc,
            Self::Http { .. } => RpcSystem::Http,
        }
    }

    /// The `method` label: `Method` for gRPC, `GET /route` for HTTP.
    pub fn method_label(&self) -> String {
        match self {
            Self::Grpc { method, .. } => method.clone(),
            Self::Http { verb, route } => format!("{verb} {route}"),
        }
    }
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web`, ...: anything starting so.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.len() >= 16 && content_type[..16].eq_ignore_ascii_case(b"application/grpc")
}

/// Splits `/pkg.Service/Method`; `None` unless the service is a dotted protobuf name and the method an identifier,
/// each at most [`MAX_GRPC_NAME`] bytes.
pub fn grpc_names(path: &[u8]) -> Option<(&str, &str)> {
    let path = std::str::from_utf8(path).ok()?;
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let bounded = |s: &str| s.len() <= MAX_GRPC_NAME;
    let named = bounded(service) && bounded(method) && service.split('.').all(is_identifier) && is_identifier(method);
    named.then_some((service, method))
}

/// A protobuf identifier: a letter or `_` (protoc accepts a leading underscore), then letters, digits and `_`.
/// So no name a `.proto` can declare starts with a digit, and a dotted one has no empty part.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The OTel `http.request.method` value: a known method, else `_OTHER`.
pub fn http_verb(method: &[u8]) -> &'static str {
    const KNOWN: [&str; 10] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "QUERY",
    ];
    KNOWN
        .iter()
        .find(|k| k.as_bytes() == method)
        .copied()
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_path_names_service_and_method() {
        let i = Interface::identify(&[], b"POST", b"/shop.v1.Orders/Get", Some(b"application/grpc+proto"));
        assert_eq!(
            i,
            Interface::Grpc {
                service: "shop.v1.Orders".into(),
                method: "Get".into()
            }
        );
        assert_eq!(i.method_label(), "Get");
        assert_eq!(i.system().as_str(), "grpc");
    }

    #[test]
    fn malformed_grpc_paths_are_unknown() {
        for path in [
            &b"/"[..],
            b"/svc",
            b"/svc/",
            b"/a/b/c",
            b"/a b/M",
            b"/svc/M;x",
            b"/\xff/M",
            b"no-slash/M",
            b"/1.2/3",
            b"/shop..v1.Orders/Get",
            b"/.shop.v1.Orders/Get",
            b"/shop.v1.Orders./Get",
            b"/shop.v1.9Orders/Get",
            b"/shop.v1.Orders/9Get",
            b"/shop.v1.Orders/G.et",
        ] {
            let i = Interface::identify(&[], b"POST", path, Some(b"application/grpc"));
            assert_eq!(
                i,
                Interface::Grpc {
                    service: UNKNOWN.into(),
                    method: UNKNOWN.into()
                },
                "{path:?}"
            );
        }
        let long = format!("/{}/M", "s".repeat(MAX_GRPC_NAME + 1));
        assert_eq!(grpc_names(long.as_bytes()), None);
        assert_eq!(
            grpc_names(b"/_shop.v1_2.Orders/_Get_2"),
            Some(("_shop.v1_2.Orders", "_Get_2"))
        );
        assert_eq!(grpc_names(b"/Orders/Get"), Some(("Orders", "Get")));
    }

    #[test]
    fn http_uses_verb_and_route() {
        let i = Interface::identify(&[], b"GET", b"/api/v1/orders/7?x", Some(b"application/json"));
        assert_eq!(i.method_label(), "GET /api/v1/orders/{id}");
        assert_eq!(i.system(), RpcSystem::Http);
        let odd = Interface::identify(&[], b"BREW", b"/pot", None);
        assert_eq!(odd.method_label(), "_OTHER /pot");
    }

    #[test]
    fn grpc_content_type_detection() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"Application/GRPC-web+proto"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
    }
}
