//! W3C baggage conformance cases (the spec's examples and its limits), plus the drop policy.

use super::*;

fn keys<'a>(p: &'a Parsed<'a>) -> Vec<&'a str> {
    p.members.iter().map(|m| m.key).collect()
}

/// The filter's default keys, and a tenant key.
const KEYS: Keys<'static> = Keys {
    gray: "gray.version",
    other: Some("tenant.id"),
};

fn one(h: &str) -> Parsed<'_> {
    parse([h.as_bytes()], KEYS)
}

#[test]
fn parses_the_spec_examples() {
    let p = one("key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue");
    assert_eq!(keys(&p), ["key1", "key2", "key3"]);
    assert_eq!(p.members[0].properties, "property1;property2");
    assert_eq!(p.members[1].value, "value2");
    assert_eq!(p.members[2].properties, "propertyKey=propertyValue");
    assert_eq!(p.malformed, 0);
    let r = render(&p, "gray.version", None);
    assert_eq!(
        r.header.as_deref(),
        Some("key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue")
    );
}

#[test]
fn a_value_may_contain_equals() {
    let p = one("k=v=w");
    assert_eq!(p.members[0].decoded_value().unwrap(), "v=w");
    assert_eq!(render(&p, "x", None).header.as_deref(), Some("k=v=w"));
}

#[test]
fn percent_encoding_is_decoded_and_kept_encoded_on_the_wire() {
    let p = one("userId=alice%20smith%2C%20jr,serverNode=DF%2028,isProduction=false,emoji=%F0%9F%98%80");
    assert_eq!(p.members[0].decoded_value().unwrap(), "alice smith, jr");
    assert_eq!(p.members[3].decoded_value().unwrap(), "😀");
    assert_eq!(
        render(&p, "gray.version", None).header.as_deref(),
        Some("userId=alice%20smith%2C%20jr,serverNode=DF%2028,isProduction=false,emoji=%F0%9F%98%80")
    );
}

#[test]
fn malformed_members_are_dropped_one_by_one() {
    let p = one("a=1,garbage,=x,b=%ZZ,c=2");
    assert_eq!(keys(&p), ["a", "c"]);
    assert_eq!(p.malformed, 3);
    assert!(!p.malformed_gray && !p.malformed_other);
    assert_eq!(render(&p, "gray.version", None).header.as_deref(), Some("a=1,c=2"));
}

#[test]
fn invalid_utf8_after_decoding_drops_the_member() {
    let p = one("k=%C3%28,ok=%C3%A9");
    assert_eq!(keys(&p), ["ok"]);
    assert_eq!(p.malformed, 1);
}

#[test]
fn bytes_outside_baggage_octet_drop_the_member() {
    for bad in [
        "k=a b",
        "k=\"q\"",
        "k=a\\b",
        "k=caf\u{e9}",
        "k=\x01",
        "k e=v",
        "k=v;=p",
        "k=v;p q",
    ] {
        let p = one(bad);
        assert!(p.members.is_empty(), "{bad:?} was kept");
        assert_eq!(p.malformed, 1, "{bad:?}");
    }
    let raw = parse([&b"k=\xff\xfe,ok=1"[..]], KEYS);
    assert_eq!(keys(&raw), ["ok"]);
}

#[test]
fn empty_members_and_whitespace_are_tolerated() {
    let p = one(" a = 1 ,, \t b=2 ,");
    assert_eq!(keys(&p), ["a", "b"]);
    assert_eq!(p.malformed, 0);
    let empty_value = one("k=");
    assert_eq!(empty_value.members[0].value, "");
}

#[test]
fn several_headers_form_one_list() {
    let p = parse([&b"a=1,b=2"[..], b"c=3"], KEYS);
    assert_eq!(p.headers, 2);
    assert_eq!(render(&p, "g", Some("v2")).header.as_deref(), Some("a=1,b=2,c=3,g=v2"));
}

#[test]
fn gray_member_is_replaced_in_place_and_deduplicated() {
    let p = one("a=1,gray.version=v1,b=2,gray.version=v9");
    let r = render(&p, "gray.version", Some("v2"));
    assert_eq!(r.header.as_deref(), Some("a=1,gray.version=v2,b=2"));
    let removed = render(&p, "gray.version", None);
    assert_eq!(removed.header.as_deref(), Some("a=1,b=2"));
    assert_eq!(render(&Parsed::default(), "gray.version", None).header, None);
}

#[test]
fn gray_member_keeps_its_properties_when_its_value_stands() {
    let p = one("gray.version=v2;ttl=5,a=1");
    assert_eq!(
        render(&p, "gray.version", Some("v2")).header.as_deref(),
        Some("gray.version=v2;ttl=5,a=1")
    );
    assert_eq!(
        render(&p, "gray.version", Some("v3")).header.as_deref(),
        Some("gray.version=v3,a=1")
    );
}

#[test]
fn the_gray_members_properties_are_charged_and_leave_it_when_they_do_not_fit() {
    // 9,018 bytes with its properties: they go, the member and the others stay.
    let huge = format!("gray.version=v2;p={},other=1", "x".repeat(9000));
    let r = render(&one(&huge), "gray.version", Some("v2"));
    assert_eq!(r.header.as_deref(), Some("gray.version=v2,other=1"));
    assert_eq!(r.dropped_over_limit, 0);
    // Exactly 8192 bytes with its properties: kept whole, and nothing else fits.
    let props = "y".repeat(MAX_BYTES - "gray.version=v2;p=".len());
    let exact = format!("a=1,gray.version=v2;p={props}");
    let r = render(&one(&exact), "gray.version", Some("v2"));
    let out = r.header.unwrap();
    assert_eq!(out.len(), MAX_BYTES);
    assert_eq!(out, format!("gray.version=v2;p={props}"));
    assert_eq!(r.dropped_over_limit, 1);
    // One byte more: the properties go.
    let over = format!("a=1,gray.version=v2;p={props}y");
    let r = render(&one(&over), "gray.version", Some("v2"));
    assert_eq!(r.header.as_deref(), Some("a=1,gray.version=v2"));
}

fn members_of_len(n: usize, value_len: usize) -> String {
    (0..n)
        .map(|i| format!("k{i:02}={}", "x".repeat(value_len)))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn sixty_four_members_at_exactly_8192_bytes_pass_untouched() {
    // 64 members of 127 bytes plus 63 commas = 8191; make the last member one byte longer to reach 8192.
    let mut h = members_of_len(64, 123);
    h.push('y');
    assert_eq!(h.len(), MAX_BYTES);
    let p = one(&h);
    assert_eq!(p.members.len(), 64);
    let r = render(&p, "gray.version", None);
    assert_eq!(r.header.as_deref(), Some(h.as_str()));
    assert_eq!(r.dropped_over_limit, 0);
}

#[test]
fn the_sixty_fifth_member_is_dropped_whole() {
    let h = members_of_len(65, 3);
    let p = one(&h);
    let r = render(&p, "gray.version", None);
    let out = r.header.unwrap();
    assert_eq!(out.split(',').count(), MAX_MEMBERS);
    assert_eq!(out, members_of_len(64, 3));
    assert_eq!(r.dropped_over_limit, 1);
}

#[test]
fn over_8192_bytes_across_two_headers_drops_whole_members_in_order() {
    let a = members_of_len(40, 123);
    let b: String = (40..64)
        .map(|i| format!("k{i:02}={}", "x".repeat(123)))
        .collect::<Vec<_>>()
        .join(",")
        + ",z=1";
    let p = parse([a.as_bytes(), b.as_bytes()], KEYS);
    assert_eq!((p.members.len(), p.not_kept), (64, 1));
    let r = render(&p, "gray.version", None);
    let out = r.header.unwrap();
    assert!(out.len() <= MAX_BYTES);
    assert_eq!(out, members_of_len(64, 123));
    assert_eq!(r.dropped_over_limit, 1);
    // Every member that left is whole: it is one of the inputs.
    assert!(out.split(',').all(|m| m.len() == 127));
}

#[test]
fn the_gray_member_is_budgeted_first() {
    let full = members_of_len(64, 3);
    let p = one(&full);
    let r = render(&p, "gray.version", Some("v2"));
    let out = r.header.unwrap();
    assert_eq!(out.split(',').count(), MAX_MEMBERS);
    assert!(out.ends_with(",gray.version=v2"));
    assert_eq!(r.dropped_over_limit, 1);

    let mut bytes = members_of_len(64, 123);
    bytes.push('y');
    let r = render(&one(&bytes), "gray.version", Some("v2"));
    let out = r.header.unwrap();
    assert!(out.len() <= MAX_BYTES, "{}", out.len());
    assert!(out.ends_with(",gray.version=v2"));
}

#[test]
fn a_hostile_list_keeps_only_what_can_leave_and_counts_the_rest() {
    // 10,000 members, then the gray key's and three of the tenant key's: what is kept is bounded, what leaves and
    // what is counted are as if every member had been kept.
    let list = "a=1,".repeat(10_000) + "gray.version=v1,tenant.id=t1,tenant.id=t2,tenant.id=t3";
    let p = one(&list);
    assert_eq!(p.members.len(), MAX_MEMBERS + 1 + 2);
    assert_eq!(p.not_kept, 10_000 - MAX_MEMBERS + 1);
    assert_eq!(keys(&p)[MAX_MEMBERS..], ["gray.version", "tenant.id", "tenant.id"]);
    let r = render(&p, "gray.version", Some("v2"));
    assert_eq!(
        r.header,
        Some(vec!["a=1"; MAX_MEMBERS - 1].join(",") + ",gray.version=v2")
    );
    assert_eq!(r.dropped_over_limit, 10_000 - (MAX_MEMBERS - 1) + 3);
    // The gray key's members past the first two are neither kept nor counted: `render` replaces them all.
    let many = "gray.version=v1,".repeat(1_000);
    let grays = one(&many);
    assert_eq!((grays.members.len(), grays.not_kept), (2, 0));
    assert_eq!(render(&grays, "gray.version", None).dropped_over_limit, 0);
}

#[test]
fn malformed_members_of_the_read_keys_are_told_apart() {
    let p = one("b=%ZZ,a=1");
    assert_eq!((p.malformed, p.malformed_gray, p.malformed_other), (1, false, false));
    let p = one("gray.version=%ZZ,a=1");
    assert_eq!((p.malformed, p.malformed_gray, p.malformed_other), (1, true, false));
    let p = one("tenant.id=a b");
    assert_eq!((p.malformed, p.malformed_gray, p.malformed_other), (1, false, true));
    let no_tenant = parse([&b"tenant.id=a b"[..]], Keys { other: None, ..KEYS });
    assert!(!no_tenant.malformed_other);
}
