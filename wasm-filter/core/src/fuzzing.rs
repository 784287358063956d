//! The bodies of the fuzz targets (`wasm-filter/core/fuzz`), shared with `cargo test`, which replays the seed
//! corpus and every saved crash input through them. Each one checks the parser's promises, not only that it
//! returns: a fuzzer then finds broken promises too.

use std::sync::OnceLock;

use crate::{baggage, config, config::Config, gray, grpc_web, headers::Headers, request, route, tenant};

/// Baggage: whatever comes in, what goes out is within the W3C limits, made of whole members that parse again.
pub fn baggage(data: &[u8]) {
    let mut parts = data.splitn(2, |&b| b == b'\n');
    let (first, second) = (parts.next().unwrap_or_default(), parts.next());
    let keys = baggage::Keys {
        gray: "gray.version",
        other: Some("tenant.id"),
    };
    let parsed = baggage::parse(std::iter::once(first).chain(second), keys);
    assert!(
        parsed.members.len() <= baggage::MAX_MEMBERS + 4,
        "{} members kept",
        parsed.members.len()
    );
    let rendered = baggage::render(&parsed, "gray.version", Some("v2"));
    let Some(out) = rendered.header else { return };
    assert!(out.len() <= baggage::MAX_BYTES, "{} bytes", out.len());
    let again = baggage::parse([out.as_bytes()], keys);
    assert!(again.malformed == 0, "re-parse of {out:?} found malformed members");
    assert!(again.members.len() <= baggage::MAX_MEMBERS);
    assert_eq!(again.members.iter().filter(|m| m.key == "gray.version").count(), 1);
}

/// The gray header: a value is accepted only as a token of the allowed alphabet and length, and the whole
/// request decision never forwards anything else.
pub fn gray_header(data: &[u8]) {
    if let Ok(v) = gray::validate(data) {
        assert!(!v.is_empty() && v.len() <= gray::MAX_LEN && gray::is_valid(v));
    }
    let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/"), (b"x-gray-version", data), (b"baggage", data)];
    let d = request::decide(&Config::default(), &Headers::from_pairs(pairs));
    if let Some(v) = &d.version {
        assert!(gray::is_valid(v), "decided on invalid version {v:?}");
    }
    if let request::Rewrite::Set(v) = &d.gray_header {
        assert!(gray::is_valid(v));
    }
    // The host's serialized map reader must not trust its input either.
    let _ = Headers::parse(data);
    tenant_label(data);
}

/// The tenant dimension, fed the same bytes as id, tier and baggage: the label is always one of the bounded forms.
fn tenant_label(data: &[u8]) {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        let json = br#"{"tenant":{"header":"x-tenant-id","baggage_key":"tenant.id","tier_header":"x-tenant-tier",
                        "tenants":{"acme":"gold"}}}"#;
        config::parse(json).ok()
    });
    let Some(cfg) = cfg else { return };
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b":path", b"/"),
        (b"x-tenant-id", data),
        (b"x-tenant-tier", data),
        (b"baggage", data),
    ];
    let Some(resolved) = request::decide(cfg, &Headers::from_pairs(pairs)).tenant else {
        return;
    };
    let mut buf = [0; tenant::HASHED_LABEL_LEN];
    let label = resolved.tenant.label(&mut buf);
    match &resolved.tenant {
        tenant::Tenant::None | tenant::Tenant::Invalid => assert!(tenant::RESERVED.contains(&label)),
        tenant::Tenant::Allowed(l) => assert_eq!(&**l, "gold"),
        tenant::Tenant::Tier(t) => assert_eq!(tenant::validate_label(t.as_bytes()), Ok(t.as_str())),
        tenant::Tenant::Hashed(_) => {
            assert!(label.len() == tenant::HASHED_LABEL_LEN && label.starts_with(tenant::HASH_PREFIX));
            assert!(label[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
}

/// The path normaliser: bounded output, only the placeholder for what was not plain path text.
pub fn path(data: &[u8]) {
    let out = route::normalise(data);
    assert!(out.starts_with('/'));
    assert!(out.split('/').filter(|s| !s.is_empty()).count() <= route::MAX_SEGMENTS + 1);
    assert!(out.len() <= (route::MAX_SEGMENTS + 1) * 33, "{} bytes", out.len());
    assert!(out.bytes().all(|b| b.is_ascii_graphic()), "{out:?}");
}

/// A gRPC-Web response body (after a first byte that says where to cut it): the status does not depend on how the
/// body was cut into chunks, and one found in a binary body was spelled out in it.
pub fn grpc_web(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else { return };
    let whole = {
        let mut s = grpc_web::TrailerScan::default();
        s.feed(body);
        s.status()
    };
    let at = usize::from(cut) % (body.len() + 1);
    let mut halves = grpc_web::TrailerScan::default();
    halves.feed(&body[..at]);
    halves.feed(&body[at..]);
    let mut bytes = grpc_web::TrailerScan::default();
    body.chunks(1).for_each(|b| bytes.feed(b));
    assert_eq!(halves.status(), whole, "cut at {at}");
    assert_eq!(bytes.status(), whole, "byte by byte");
    if whole.is_some() && matches!(body.first(), Some(0x00 | 0x01 | 0x80 | 0x81)) {
        assert!(
            body.windows(11).any(|w| w.eq_ignore_ascii_case(b"grpc-status")),
            "a status from a body that does not name one"
        );
    }
}
