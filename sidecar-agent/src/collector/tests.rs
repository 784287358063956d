use super::*;

fn with_tenant(t: &str) -> CallRecord {
    CallRecord {
        direction: Direction::Inbound as i32,
        tenant: t.into(),
        ..CallRecord::default()
    }
}

#[test]
fn every_label_the_filter_makes_is_a_tenant() {
    for t in [
        "",
        "enterprise",
        "free",
        "t_0123456789abcdef",
        "none",
        "invalid",
        "other",
        "tier-1.b",
    ] {
        assert_eq!(validate(&with_tenant(t)), Ok(()), "{t:?}");
    }
    assert_eq!(validate(&with_tenant(&"a".repeat(MAX_TENANT_BYTES))), Ok(()));
}

#[test]
fn raw_ids_and_free_text_are_refused_as_bad_tenant() {
    for t in [
        "acme corp",
        "user@example.com",
        "a/b",
        "tenant=1",
        "é",
        "a\nb",
        &"a".repeat(MAX_TENANT_BYTES + 1),
    ] {
        let e = validate(&with_tenant(t)).expect_err(t);
        assert_eq!(e, Invalid::Tenant { len: t.len() });
        assert_eq!(e.reason(), "bad_tenant");
        // The message never repeats the value (it may be a raw id).
        assert!(!e.to_string().contains(t), "{e}");
    }
}

#[test]
fn a_method_filter_is_bounded_by_the_record_fields_it_can_match() {
    let field = "m".repeat(MAX_FIELD_BYTES);
    // One field: `rpc.method`, or its `Method`.
    assert!(method_filter_can_match(&field));
    assert!(!method_filter_can_match(&format!("{field}m")));
    // `VERB route`: a verb and a route of a field each.
    assert!(method_filter_can_match(&format!("GET {field}")));
    assert!(method_filter_can_match(&format!("{field} {field}")));
    assert!(!method_filter_can_match(&format!("GET /{field}")));
    assert!(!method_filter_can_match(&format!("{field}G /")));
}
