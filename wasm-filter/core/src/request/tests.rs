use super::*;
use crate::config;

fn decide_with(cfg: &Config, extra: &[(&str, &[u8])]) -> Decision {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![(b":method", b"GET"), (b":path", b"/api/v1/orders/42")];
    pairs.extend(extra.iter().map(|(k, v)| (k.as_bytes(), *v)));
    decide(cfg, &Headers::from_pairs(pairs))
}

fn d(extra: &[(&str, &[u8])]) -> Decision {
    decide_with(&Config::default(), extra)
}

#[test]
fn no_version_anywhere_touches_nothing() {
    let r = d(&[]);
    assert_eq!(r.version, None);
    assert_eq!((r.gray_header, r.baggage_header), (Rewrite::Keep, Rewrite::Keep));
    assert!(r.invalid.is_empty());
    assert_eq!(r.interface.method_label(), "GET /api/v1/orders/{id}");
}

#[test]
fn header_is_propagated_into_baggage() {
    let r = d(&[("x-gray-version", b"v2")]);
    assert_eq!(r.version.as_deref(), Some("v2"));
    assert_eq!(r.gray_header, Rewrite::Keep);
    assert_eq!(r.baggage_header, Rewrite::Set("gray.version=v2".into()));
}

#[test]
fn header_is_normalised() {
    let r = d(&[("x-gray-version", b"  v2\t")]);
    assert_eq!(r.gray_header, Rewrite::Set("v2".into()));
}

#[test]
fn baggage_alone_sets_the_header_and_keeps_baggage_untouched() {
    let r = d(&[("baggage", b"a=1,gray.version=v3")]);
    assert_eq!(r.version.as_deref(), Some("v3"));
    assert_eq!(r.gray_header, Rewrite::Set("v3".into()));
    assert_eq!(r.baggage_header, Rewrite::Keep);
}

#[test]
fn header_wins_over_baggage_which_is_rewritten_in_place() {
    let r = d(&[("x-gray-version", b"v2"), ("baggage", b"a=1,gray.version=v1,b=2")]);
    assert_eq!(r.version.as_deref(), Some("v2"));
    assert_eq!(r.baggage_header, Rewrite::Set("a=1,gray.version=v2,b=2".into()));
}

#[test]
fn invalid_header_falls_back_to_baggage_and_is_reported() {
    let r = d(&[("x-gray-version", b"v2;drop table"), ("baggage", b"gray.version=v1")]);
    assert_eq!(r.version.as_deref(), Some("v1"));
    assert_eq!(r.invalid, vec![(Source::Header, Invalid::BadChar)]);
    assert_eq!(r.gray_header, Rewrite::Set("v1".into()));
}

#[test]
fn hostile_headers_are_refused_and_removed() {
    let kib = vec![b'a'; 1024];
    let cases: Vec<(&[u8], Invalid)> = vec![
        (b"", Invalid::Empty),
        (&kib, Invalid::TooLong),
        (b"v2\x01", Invalid::BadChar),
        (b"\xc3\x28", Invalid::BadChar),
    ];
    for (value, reason) in cases {
        let r = d(&[("x-gray-version", value)]);
        assert_eq!(r.version, None);
        assert_eq!(r.invalid, vec![(Source::Header, reason)]);
        assert_eq!(r.gray_header, Rewrite::Remove);
        assert_eq!(r.baggage_header, Rewrite::Keep);
    }
    let dup = d(&[("x-gray-version", b"v1"), ("x-gray-version", b"v1")]);
    assert_eq!(dup.invalid, vec![(Source::Header, Invalid::Duplicated)]);
    assert_eq!(dup.gray_header, Rewrite::Remove);
}

#[test]
fn reserved_labels_are_refused_from_either_source() {
    let r = d(&[("x-gray-version", b"other"), ("baggage", b"a=1,gray.version=v2")]);
    assert_eq!(r.version.as_deref(), Some("v2"));
    assert_eq!(r.invalid, vec![(Source::Header, Invalid::Reserved)]);
    assert_eq!(r.gray_header, Rewrite::Set("v2".into()));

    // Percent-decoded first: `%6Eone` is `none`.
    let r = d(&[("x-gray-version", b"unknown"), ("baggage", b"a=1,gray.version=%6Eone")]);
    assert_eq!(r.version, None);
    assert_eq!(
        r.invalid,
        vec![
            (Source::Header, Invalid::Reserved),
            (Source::Baggage, Invalid::Reserved)
        ]
    );
    assert_eq!(r.gray_header, Rewrite::Remove);
    assert_eq!(r.baggage_header, Rewrite::Set("a=1".into()));

    let cfg = config::parse(br#"{"gray":{"default_version":"v1"}}"#).unwrap();
    let r = decide_with(&cfg, &[("x-gray-version", b"none")]);
    assert_eq!(r.version.as_deref(), Some("v1"));
    assert_eq!(r.gray_header, Rewrite::Set("v1".into()));
}

#[test]
fn bad_baggage_members_are_reported_and_dropped() {
    let r = d(&[("baggage", b"a=1,gray.version=%ZZ,c=2")]);
    assert_eq!(r.invalid, vec![(Source::Baggage, Invalid::BadEncoding)]);
    assert_eq!(r.baggage_dropped_malformed, 1);
    assert_eq!(r.baggage_header, Rewrite::Set("a=1,c=2".into()));

    let two = d(&[("baggage", b"gray.version=v1"), ("baggage", b"gray.version=v2")]);
    assert_eq!(two.invalid, vec![(Source::Baggage, Invalid::Duplicated)]);
    assert_eq!(two.baggage_header, Rewrite::Remove);

    let bad_value = d(&[("baggage", b"gray.version=v%202")]);
    assert_eq!(bad_value.invalid, vec![(Source::Baggage, Invalid::BadChar)]);

    // A malformed member beside a well-formed one: two opinions, neither taken, wherever each stands.
    for lists in [
        &[&b"gray.version=v%ZZ,a=1,gray.version=v2"[..]][..],
        &[b"a=1,gray.version=v2", b"gray.version=v3;;"],
    ] {
        let pairs: Vec<(&str, &[u8])> = lists.iter().map(|l| ("baggage", *l)).collect();
        let r = d(&pairs);
        assert_eq!(r.version, None, "{lists:?}");
        assert_eq!(r.invalid, vec![(Source::Baggage, Invalid::BadEncoding)], "{lists:?}");
        assert_eq!(r.baggage_header, Rewrite::Set("a=1".into()), "{lists:?}");
    }
    // The header still wins over refused baggage, and replaces every gray member.
    let r = d(&[
        ("x-gray-version", b"v4"),
        ("baggage", b"gray.version=%ZZ,gray.version=v2"),
    ]);
    assert_eq!(r.version.as_deref(), Some("v4"));
    assert_eq!(r.baggage_header, Rewrite::Set("gray.version=v4".into()));
}

#[test]
fn default_version_applies_to_unlabelled_requests() {
    let cfg = config::parse(br#"{"gray":{"default_version":"v1"}}"#).unwrap();
    let r = decide_with(&cfg, &[]);
    assert_eq!(r.version.as_deref(), Some("v1"));
    assert_eq!(r.gray_header, Rewrite::Set("v1".into()));
    assert_eq!(r.baggage_header, Rewrite::Set("gray.version=v1".into()));
}

#[test]
fn configured_header_and_key_are_used() {
    let cfg = config::parse(br#"{"gray":{"header":"x-canary","baggage_key":"canary"}}"#).unwrap();
    let r = decide_with(&cfg, &[("x-gray-version", b"v9"), ("baggage", b"canary=v4")]);
    assert_eq!(r.version.as_deref(), Some("v4"));
    assert_eq!(r.gray_header, Rewrite::Set("v4".into()));
}

#[test]
fn several_baggage_headers_are_merged() {
    let r = d(&[("baggage", b"a=1"), ("baggage", b"b=2")]);
    assert_eq!(r.baggage_header, Rewrite::Set("a=1,b=2".into()));
}

#[test]
fn elapsed_needs_both_readings_and_a_clock_that_did_not_go_back() {
    assert_eq!(elapsed_ns(Some(1_000), Some(61_000_000)), Some(60_999_000));
    assert_eq!(elapsed_ns(Some(5), Some(5)), Some(0));
    // A step back of the wall clock between the readings: the shell reads the host's duration instead.
    assert_eq!(elapsed_ns(Some(2_000), Some(1_999)), None);
    assert_eq!(elapsed_ns(None, Some(1)), None);
    assert_eq!(elapsed_ns(Some(1), None), None);
}
