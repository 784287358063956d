use super::*;
use crate::config::{self, Config};

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn cfg(json: &str) -> Config {
    config::parse(json.as_bytes()).unwrap()
}

fn tenant_cfg(json: &str) -> TenantConfig {
    cfg(json).tenant.unwrap()
}

fn full() -> TenantConfig {
    tenant_cfg(
        r#"{"tenant":{"header":"x-tenant-id","baggage_key":"tenant.id","tenants":{"acme":"enterprise"},
            "tier_header":"x-tenant-tier","max_tenants":4}}"#,
    )
}

fn resolve_with(cfg: &TenantConfig, pairs: &[(&str, &[u8])]) -> Resolved {
    let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
    let headers = Headers::from_pairs(pairs);
    let keys = baggage::Keys {
        gray: "gray.version",
        other: cfg.baggage_key.as_deref(),
    };
    let parsed = baggage::parse(headers.all("baggage"), keys);
    resolve(cfg, &headers, &parsed)
}

fn label(t: &Tenant) -> String {
    let mut buf = [0; HASHED_LABEL_LEN];
    t.label(&mut buf).to_owned()
}

#[test]
fn hashes_are_fixed_vectors_keyed_and_unkeyed() {
    // Computed independently: python3 hashlib.sha256 / hmac.new(KEY, id, sha256), first 8 bytes.
    assert_eq!(hashed_label(None, "globex"), "t_5bc1a08d28e40fe7");
    assert_eq!(hashed_label(None, "tenant-42"), "t_f71d3741b2bc6cc8");
    let key = HashKey::new(KEY.as_bytes()).unwrap();
    assert_eq!(hashed_label(Some(&key), "globex"), "t_5a64e3706090b221");
    assert_eq!(hashed_label(Some(&key), "initech"), "t_4729437a4e2c55e5");
    // The precomputed keyed state is reused, never consumed: the same id hashes the same every time.
    assert_eq!(hashed_label(Some(&key), "globex"), "t_5a64e3706090b221");
    assert_eq!(hashed_label(None, "globex").len(), HASHED_LABEL_LEN);
}

#[test]
fn the_header_wins_over_baggage_and_the_allowlist_names() {
    let c = full();
    let r = resolve_with(&c, &[("x-tenant-id", b"acme"), ("baggage", b"tenant.id=globex")]);
    assert_eq!(r.tenant, Tenant::Allowed("enterprise".into()));
    assert!(r.invalid.is_empty());
    let r = resolve_with(&c, &[("baggage", b"a=1, tenant.id=globex")]);
    assert_eq!(label(&r.tenant), hashed_label(None, "globex"));
    // Percent-encoded in baggage, decoded before hashing: the same tenant whichever carrier.
    let r = resolve_with(&c, &[("baggage", b"tenant.id=glo%62ex")]);
    assert_eq!(label(&r.tenant), hashed_label(None, "globex"));
    let r = resolve_with(&c, &[("x-tenant-id", b" globex\t")]);
    assert_eq!(label(&r.tenant), hashed_label(None, "globex"));
}

#[test]
fn tier_header_labels_ids_outside_the_allowlist_only() {
    let c = full();
    let r = resolve_with(&c, &[("x-tenant-id", b"initech"), ("x-tenant-tier", b"free")]);
    assert_eq!(r.tenant, Tenant::Tier("free".into()));
    // The allowlist wins over the tier header.
    let r = resolve_with(&c, &[("x-tenant-id", b"acme"), ("x-tenant-tier", b"free")]);
    assert_eq!(r.tenant, Tenant::Allowed("enterprise".into()));
    // No id, no tenant: a tier alone names nobody.
    let r = resolve_with(&c, &[("x-tenant-tier", b"free")]);
    assert_eq!(r.tenant, Tenant::None);
    // A refused tier is counted and the id is hashed instead.
    for (tier, reason) in [
        (&b"other"[..], Invalid::Reserved),
        (b"t_5bc1a08d28e40fe7", Invalid::Reserved),
        (b"free tier", Invalid::BadChar),
        (b"", Invalid::Empty),
    ] {
        let r = resolve_with(&c, &[("x-tenant-id", b"globex"), ("x-tenant-tier", tier)]);
        assert_eq!(label(&r.tenant), hashed_label(None, "globex"), "{tier:?}");
        assert_eq!(r.invalid, vec![(Source::TierHeader, reason)], "{tier:?}");
    }
    let r = resolve_with(
        &c,
        &[
            ("x-tenant-id", b"globex"),
            ("x-tenant-tier", b"a"),
            ("x-tenant-tier", b"b"),
        ],
    );
    assert_eq!(r.invalid, vec![(Source::TierHeader, Invalid::Duplicated)]);
}

#[test]
fn none_and_invalid_with_the_reason() {
    let c = full();
    assert_eq!(resolve_with(&c, &[]).tenant, Tenant::None);
    assert_eq!(resolve_with(&c, &[("baggage", b"other=1")]).tenant, Tenant::None);
    let long = "a".repeat(MAX_ID_LEN + 1);
    let cases: Vec<(&str, Vec<u8>, (Source, Invalid))> = vec![
        ("x-tenant-id", b"".to_vec(), (Source::Header, Invalid::Empty)),
        ("x-tenant-id", long.into_bytes(), (Source::Header, Invalid::TooLong)),
        (
            "x-tenant-id",
            b"acme,globex".to_vec(),
            (Source::Header, Invalid::BadChar),
        ),
        ("x-tenant-id", b"a\x00b".to_vec(), (Source::Header, Invalid::BadChar)),
        ("x-tenant-id", "ac\u{fc}me".into(), (Source::Header, Invalid::BadChar)),
        (
            "x-tenant-id",
            b"<script>\"".to_vec(),
            (Source::Header, Invalid::BadChar),
        ),
        (
            "baggage",
            b"tenant.id=%ZZ".to_vec(),
            (Source::Baggage, Invalid::BadEncoding),
        ),
        (
            "baggage",
            b"tenant.id=a%2Cb".to_vec(),
            (Source::Baggage, Invalid::BadChar),
        ),
        (
            "baggage",
            b"tenant.id=a,tenant.id=b".to_vec(),
            (Source::Baggage, Invalid::Duplicated),
        ),
    ];
    for (name, value, refused) in cases {
        let r = resolve_with(&c, &[(name, &value)]);
        assert_eq!(r.tenant, Tenant::Invalid, "{name}: {value:?}");
        assert_eq!(r.invalid, vec![refused], "{name}: {value:?}");
    }
    let r = resolve_with(&c, &[("x-tenant-id", b"acme"), ("x-tenant-id", b"acme")]);
    assert_eq!(
        (r.tenant, r.invalid),
        (Tenant::Invalid, vec![(Source::Header, Invalid::Duplicated)])
    );
    // An invalid header is not rescued by baggage: the request said two different things.
    let r = resolve_with(&c, &[("x-tenant-id", b"a b"), ("baggage", b"tenant.id=acme")]);
    assert_eq!(r.tenant, Tenant::Invalid);
}

#[test]
fn ids_accept_what_tenant_ids_look_like() {
    for id in [
        "acme",
        "6f1c2a5e-1d2b-4c3a-9e8f-0a1b2c3d4e5f",
        "urn:tenant:acme",
        "ops@acme.example",
        "QUJD+/ZA==",
    ] {
        assert_eq!(validate_id(id.as_bytes()), Ok(id.as_bytes()), "{id}");
    }
    assert_eq!(validate_id(&[b'a'; MAX_ID_LEN]).map(<[u8]>::len), Ok(MAX_ID_LEN));
}

#[test]
fn only_the_configured_carriers_are_read() {
    let c = tenant_cfg(r#"{"tenant":{"baggage_key":"tenant.id"}}"#);
    assert_eq!(resolve_with(&c, &[("x-tenant-id", b"acme")]).tenant, Tenant::None);
    let c = tenant_cfg(r#"{"tenant":{"header":"X-Tenant-Id"}}"#);
    assert_eq!(c.header.as_deref(), Some("x-tenant-id"));
    assert_eq!(resolve_with(&c, &[("baggage", b"tenant.id=acme")]).tenant, Tenant::None);
    assert_eq!(c.max_tenants, DEFAULT_MAX_TENANTS);
    assert_eq!(c.hash_key, None);
}

#[test]
fn absent_section_is_off() {
    assert_eq!(cfg("{}").tenant, None);
    let d = crate::request::decide(&cfg("{}"), &Headers::from_pairs(vec![(b"x-tenant-id", b"acme")]));
    assert_eq!(d.tenant, None);
}

#[test]
fn the_key_is_never_printed() {
    let c = tenant_cfg(&format!(
        r#"{{"tenant":{{"header":"x-t","hash_key":"{KEY}","tenants":{{"acme-7731":"gold"}}}}}}"#
    ));
    let text = format!("{c:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("HashKey(<32 bytes>)"), "{text}");
    // Nor is an id in the configuration line the shells log.
    assert_eq!(
        c.summary(),
        "tenant dimension on: header \"x-t\", baggage key \"-\", 1 allowlisted ids, tier header \"-\", \
         max_tenants 32, hash HMAC-SHA-256 (keyed)"
    );
}

fn problems(json: &str) -> Vec<(String, String)> {
    config::parse(json.as_bytes())
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect()
}

fn fields(json: &str) -> Vec<String> {
    problems(json).into_iter().map(|(f, _)| f).collect()
}

#[test]
fn bad_sections_name_every_field() {
    assert_eq!(fields(r#"{"tenant":{}}"#), ["tenant"]);
    assert_eq!(fields(r#"{"tenant":{"header":"x-t","colour":1}}"#), ["tenant.colour"]);
    assert!(problems(r#"{"tenant":{"header":"x-t","colour":1}}"#)[0]
        .1
        .contains("colour"));
    assert_eq!(
        fields(r#"{"tenant":{"header":"x-t","max_tenants":"8"}}"#),
        ["tenant.max_tenants"]
    );
    assert_eq!(
        fields(
            r#"{"tenant":{"header":"x tenant","baggage_key":"gray.version","tier_header":"x-gray-version",
                "max_tenants":0,"hash_key":"short",
                "tenants":{"acme":"none","bad id":"gold","globex":"t_x","initech":"gold tier"}}}"#
        ),
        [
            "tenant.header",
            "tenant.tier_header",
            "tenant.baggage_key",
            "tenant.tenants[\"acme\"]",
            "tenant.tenants[\"bad id\"]",
            "tenant.tenants[\"globex\"]",
            "tenant.tenants[\"initech\"]",
            "tenant.max_tenants",
            "tenant.hash_key",
        ]
    );
    assert_eq!(
        fields(r#"{"tenant":{"header":"x-t","tier_header":"X-T"}}"#),
        ["tenant.tier_header"]
    );
    assert_eq!(fields(r#"{"tenant":{"header":"baggage"}}"#), ["tenant.header"]);
    assert_eq!(
        fields(r#"{"tenant":{"header":"x-t","max_tenants":1001}}"#),
        ["tenant.max_tenants"]
    );
    // The key's length is named, never the key.
    let p = problems(r#"{"tenant":{"header":"x-t","hash_key":"sekrit"}}"#);
    assert_eq!(p.len(), 1);
    assert!(p[0].1.contains("got 6 bytes") && !p[0].1.contains("sekrit"), "{p:?}");
}

#[test]
fn the_decision_carries_the_tenant_and_leaves_its_baggage_member_as_it_was() {
    let c = cfg(r#"{"tenant":{"header":"x-tenant-id","baggage_key":"tenant.id"}}"#);
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":path", b"/x"),
        (b"x-gray-version", b"v2"),
        (b"baggage", b"tenant.id=glo%62ex;p=1"),
    ];
    let d = crate::request::decide(&c, &Headers::from_pairs(pairs));
    assert_eq!(d.tenant.map(|t| label(&t.tenant)), Some(hashed_label(None, "globex")));
    // The gray version is propagated into baggage; the tenant member goes on byte for byte.
    assert_eq!(
        d.baggage_header,
        crate::request::Rewrite::Set("tenant.id=glo%62ex;p=1,gray.version=v2".into())
    );
}
