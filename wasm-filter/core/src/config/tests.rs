use super::*;

fn err(json: &str) -> ConfigError {
    parse(json.as_bytes()).unwrap_err()
}

fn fields(e: &ConfigError) -> Vec<&str> {
    e.problems.iter().map(|p| p.field.as_str()).collect()
}

#[test]
fn empty_and_braces_mean_defaults() {
    assert_eq!(parse(b"").unwrap(), Config::default());
    assert_eq!(parse(b" {} ").unwrap(), Config::default());
    let d = Config::default();
    assert_eq!(d.gray.header, "x-gray-version");
    assert_eq!(d.gray.baggage_key, "gray.version");
    assert_eq!(d.max_interfaces, DEFAULT_MAX_INTERFACES);
    assert!(d.filter_state);
}

#[test]
fn full_configuration() {
    let c = parse(
        br#"{"direction":"outbound","service":"orders","max_interfaces":50,
             "routes":[{"template":"/api/v1/orders/{id}","method":"get"},{"template":"/healthz"}],
             "gray":{"header":"X-Canary","baggage_key":"canary","default_version":"v1",
                     "allowed_versions":["v1","v2"],"max_versions":4},
             "filter_state":false}"#,
    )
    .unwrap();
    assert_eq!(c.direction, Direction::Outbound);
    assert_eq!(c.service.as_deref(), Some("orders"));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].method.as_deref(), Some("GET"));
    assert_eq!(c.gray.header, "x-canary");
    assert_eq!(c.gray.allowed_versions, Some(vec!["v1".to_owned(), "v2".to_owned()]));
    assert!(!c.filter_state);
}

#[test]
fn unknown_fields_are_named() {
    let e = err(r#"{"gray":{"hedaer":"x"}}"#);
    assert_eq!(fields(&e), ["gray.hedaer"]);
    assert!(e.to_string().contains("unknown field `hedaer`"), "{e}");
    assert_eq!(fields(&err(r#"{"max_interface":3}"#)), ["max_interface"]);
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(fields(&err(r#"{"max_interfaces":"many"}"#)), ["max_interfaces"]);
    assert_eq!(fields(&err(r#"{"direction":"sideways"}"#)), ["direction"]);
    assert_eq!(fields(&err(r#"{"routes":[{"template":1}]}"#)), ["routes[0].template"]);
    assert_eq!(fields(&err("not json")), ["(root)"]);
    assert_eq!(fields(&err("[]")), ["(root)"]);
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let e = err(r#"{"max_interfaces":0,"service":"a;b",
            "routes":[{"template":"nope"},{"template":"/x","method":"FETCH"},{"template":"/y"},{"template":"/y"}],
            "gray":{"header":"bad header","baggage_key":"","default_version":"v 1",
                    "allowed_versions":["v1","v1","x/y"],"max_versions":100000}}"#);
    assert_eq!(
        fields(&e),
        [
            "max_interfaces",
            "gray.max_versions",
            "service",
            "routes[0].template",
            "routes[1].method",
            "routes[3].template",
            "gray.header",
            "gray.baggage_key",
            "gray.default_version",
            "gray.allowed_versions[1]",
            "gray.allowed_versions[2]",
            "gray.default_version",
        ]
    );
    let text = e.to_string();
    assert!(
        text.starts_with("invalid grayscope plugin configuration: max_interfaces: must be between 1 and"),
        "{text}"
    );
}

#[test]
fn reserved_labels_are_refused_as_versions_and_the_field_named() {
    let e = err(r#"{"gray":{"default_version":"other"}}"#);
    assert_eq!(fields(&e), ["gray.default_version"]);
    assert_eq!(
        e.to_string(),
        "invalid grayscope plugin configuration: gray.default_version: \"other\" is reserved: none, unknown and \
         other are gray_version labels of the filter's own"
    );
    let e = err(r#"{"gray":{"allowed_versions":["v1","none","v2","unknown"],"default_version":"none"}}"#);
    assert_eq!(
        fields(&e),
        [
            "gray.default_version",
            "gray.allowed_versions[1]",
            "gray.allowed_versions[3]"
        ]
    );
    assert!(e.problems.iter().all(|p| p.message.contains("is reserved")), "{e}");
    // Labels are case-sensitive, so these are versions; a value that is not a token says so, reserved or not.
    let c = parse(br#"{"gray":{"allowed_versions":["Other","NONE"],"default_version":"Other"}}"#).unwrap();
    assert_eq!(c.gray.default_version.as_deref(), Some("Other"));
    let e = err(r#"{"gray":{"default_version":" other"}}"#);
    assert!(e.to_string().contains("is not valid"), "{e}");
}

#[test]
fn empty_allowlist_and_default_outside_it_are_refused() {
    assert_eq!(
        fields(&err(r#"{"gray":{"allowed_versions":[]}}"#)),
        ["gray.allowed_versions"]
    );
    assert_eq!(
        fields(&err(r#"{"gray":{"allowed_versions":["v2"],"default_version":"v1"}}"#)),
        ["gray.default_version"]
    );
    assert_eq!(fields(&err(r#"{"gray":{"header":"baggage"}}"#)), ["gray.header"]);
}

#[test]
fn report_settings_that_cannot_work_are_refused() {
    // A budget no record fits in, or over the agent's default message limit.
    let e = err(r#"{"report":{"max_batch_bytes":1000}}"#);
    assert_eq!(fields(&e), ["report.max_batch_bytes"]);
    assert!(
        e.to_string().contains(&format!(
            "must be between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES}, got 1000"
        )),
        "{e}"
    );
    assert_eq!(
        fields(&err(r#"{"report":{"max_batch_bytes":8388608}}"#)),
        ["report.max_batch_bytes"]
    );
    // A full batch the buffer can never hold.
    assert_eq!(
        fields(&err(r#"{"report":{"max_batch":500,"max_buffer":100}}"#)),
        ["report.max_buffer"]
    );
    let ok = parse(br#"{"report":{"max_batch_bytes":65536}}"#).unwrap();
    assert_eq!(ok.report.max_batch_bytes, 65536);
    assert_eq!(Config::default().report.max_batch_bytes, 1 << 20);
}

#[test]
fn a_gray_header_that_http_envoy_grpc_or_tracing_owns_is_refused() {
    for name in [
        "Content-Type",
        "content-length",
        "transfer-encoding",
        "host",
        "authorization",
        "traceparent",
    ] {
        let e = err(&format!(r#"{{"gray":{{"header":"{name}"}}}}"#));
        assert_eq!(fields(&e), ["gray.header"], "{name}");
        assert!(e.to_string().contains("is not the filter's to rewrite"), "{name}: {e}");
    }
    for name in ["x-envoy-upstream-canary", "grpc-timeout", "x-request-id"] {
        assert_eq!(
            fields(&err(&format!(r#"{{"gray":{{"header":"{name}"}}}}"#))),
            ["gray.header"],
            "{name}"
        );
    }
    // Names that merely resemble them are the operator's to choose.
    for name in ["x-canary", "x-content-version", "x-gray-host", "x-grpc-version"] {
        assert!(
            parse(format!(r#"{{"gray":{{"header":"{name}"}}}}"#).as_bytes()).is_ok(),
            "{name}"
        );
    }
}
