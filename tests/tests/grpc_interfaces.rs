//! gRPC over h2c through the real Envoy, with a real gRPC client and server (grpcio): `Service/Method` labels,
//! gRPC status names, and the version propagated as metadata.

use integration_tests::{grpc, prom, stack::Stack};

fn series(method: &str, version: &str, status: &str, n: u32) -> String {
    format!("grayscope_interface_calls_total{{direction=\"inbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"{method}\",gray_version=\"{version}\",status=\"{status}\"}} {n}")
}

#[test]
fn grpc_calls_are_counted_by_service_method_version_and_status() {
    let s = Stack::start("{}");
    let ingress = s.envoy.listener("ingress");

    let ok = grpc::call(ingress, "/shop.v1.Orders/Get", &[("x-gray-version", "v2")], 3);
    assert!(ok.iter().all(|o| o.code == "OK"), "{ok:?}");
    let md = &ok[0].metadata;
    assert!(md.contains(&("x-gray-version".into(), "v2".into())), "{md:?}");
    assert!(md.contains(&("baggage".into(), "gray.version=v2".into())), "{md:?}");

    let nf = grpc::call(
        ingress,
        "/shop.v1.Orders/Get",
        &[("x-gray-version", "v2"), ("x-want-status", "NOT_FOUND")],
        2,
    );
    assert!(nf.iter().all(|o| o.code == "NOT_FOUND"), "{nf:?}");

    let from_baggage = grpc::call(
        ingress,
        "/shop.v1.Orders/List",
        &[("baggage", "user=alice,gray.version=v3")],
        1,
    );
    assert_eq!(from_baggage[0].code, "OK");
    let md = &from_baggage[0].metadata;
    assert!(md.contains(&("x-gray-version".into(), "v3".into())), "{md:?}");
    assert!(
        md.contains(&("baggage".into(), "user=alice,gray.version=v3".into())),
        "{md:?}"
    );

    let unlabelled = grpc::call(ingress, "/shop.v1.Orders/List", &[("x-want-status", "UNAVAILABLE")], 1);
    assert_eq!(unlabelled[0].code, "UNAVAILABLE");

    let text = s.envoy.prometheus();
    prom::assert_line(&text, &series("Get", "v2", "OK", 3));
    prom::assert_line(&text, &series("Get", "v2", "NOT_FOUND", 2));
    prom::assert_line(&text, &series("List", "v3", "OK", 1));
    prom::assert_line(&text, &series("List", "none", "UNAVAILABLE", 1));
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 7.0);
    prom::assert_line(&text, "grayscope_interface_call_duration_milliseconds_count{direction=\"inbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Get\",gray_version=\"v2\"} 5");

    let log = s.access_log(7);
    assert!(
        log.iter()
            .any(|l| l.contains("gray=v2 route=- rpc=shop.v1.Orders/Get header=v2")),
        "{log:#?}"
    );
    prom::parse(&text);
}

#[test]
fn outbound_listener_labels_the_direction() {
    let s = Stack::start("{}");
    let out = grpc::call(
        s.envoy.listener("egress"),
        "/shop.v1.Orders/Get",
        &[("x-gray-version", "v1")],
        2,
    );
    assert!(out.iter().all(|o| o.code == "OK"));
    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"outbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Get\",gray_version=\"v1\",status=\"OK\"} 2");
}

#[test]
fn paths_whose_names_are_not_protobuf_identifiers_count_as_unknown() {
    // What a protobuf name can be: a package of dot-separated identifiers, each a letter or `_` then letters,
    // digits and `_`. A path that no `.proto` can declare says nothing a label should keep.
    let s = Stack::start("{}");
    let ingress = s.envoy.listener("ingress");
    let not_names = [
        "/1.2/3",
        "/shop..v1.Orders/Get",
        "/.shop.v1.Orders/Get",
        "/shop.v1.9Orders/Get",
        "/shop.v1.Orders/9Get",
    ];
    for path in not_names {
        let out = grpc::call(ingress, path, &[], 1);
        assert_eq!(out[0].code, "OK", "{path}: {out:?}");
    }
    let named = grpc::call(ingress, "/_shop.v1_2.Orders/_Get_2", &[], 1);
    assert_eq!(named[0].code, "OK", "{named:?}");

    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"grpc\",service=\"unknown\",method=\"unknown\",gray_version=\"none\",status=\"OK\"} 5");
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"grpc\",service=\"_shop.v1_2.Orders\",method=\"_Get_2\",gray_version=\"none\",status=\"OK\"} 1");
    assert_eq!(
        prom::samples(&text, "grayscope_interface_calls_total").len(),
        2,
        "{text}"
    );
}
