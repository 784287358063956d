//! gRPC over h2c through the real Envoy, with a real gRPC client and server (grpcio): `Service/Method` labels,
//! gRPC status names, and the version propagated as metadata.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use integration_tests::{
    client::Client,
    grpc::{self, Cancel},
    prom,
    stack::Stack,
};

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

/// Where Envoy's gRPC-Web filter sits beside ours. Istio puts a WasmPlugin (any phase) before it, so the filter sees
/// gRPC-Web both ways; an `EnvoyFilter` inserted before the router puts it after, so the filter sees gRPC, whose
/// trailers the gRPC-Web filter then moves into the body.
#[derive(Debug, Clone, Copy)]
enum GrpcWebFilter {
    Before,
    After,
}

const GRPC_WEB_FILTER: &str = "{name: envoy.filters.http.grpc_web, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb}}";

fn grpc_web_stack(place: GrpcWebFilter) -> Stack {
    Stack::start_edited("{}", move |yaml| {
        let ours = yaml
            .lines()
            .find(|l| l.trim_start().starts_with("- {name: envoy.filters.http."))
            .expect("the filter's line")
            .to_owned();
        let indent = &ours[..ours.len() - ours.trim_start().len()];
        let web = format!("{indent}- {GRPC_WEB_FILTER}");
        let both = match place {
            GrpcWebFilter::Before => format!("{web}\n{ours}"),
            GrpcWebFilter::After => format!("{ours}\n{web}"),
        };
        // Envoy picks the route before the gRPC-Web filter rewrites the content type, so a `grpc: {}` match never
        // takes a gRPC-Web request; Istio routes by host and port, and so does this.
        let grpc = "{prefix: \"/\", grpc: {}}";
        assert!(yaml.contains(grpc), "{yaml}");
        yaml.replacen(&ours, &both, 1).replacen(
            grpc,
            "{prefix: \"/\", headers: [{name: content-type, string_match: {prefix: application/grpc}}]}",
            1,
        )
    })
}

/// One unary gRPC-Web call over HTTP/1.1 (`text`: base64, as browsers without binary fetch send) with extra
/// `headers`; returns the HTTP status and the `grpc-status` the client got, from a header or from the body's trailer
/// frame.
fn grpc_web_call(c: &mut Client, path: &str, text: bool, headers: &[(&str, &str)]) -> (u16, String) {
    let mut frame = vec![0u8, 0, 0, 0, 4];
    frame.extend_from_slice(b"ping");
    let (content_type, body) = if text {
        ("application/grpc-web-text", base64(&frame).into_bytes())
    } else {
        ("application/grpc-web+proto", frame)
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\naccept: {content_type}\r\nx-grpc-web: 1\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    let resp = c.send(&req);
    let header = resp
        .headers
        .iter()
        .find(|(k, _)| k == "grpc-status")
        .map(|(_, v)| v.clone());
    let body = if text { unbase64(&resp.body) } else { resp.body.clone() };
    let trailer = body.windows(12).position(|w| w == b"grpc-status:").map(|at| {
        body[at + 12..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| char::from(b))
            .collect()
    });
    (
        resp.status,
        header.or(trailer).unwrap_or_else(|| format!("none in {resp:?}")),
    )
}

fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64 made of separately padded pieces, as Envoy writes each frame of a gRPC-Web text response: each
/// 4-character group on its own (a decoder of the whole refuses padding inside it).
fn unbase64(text: &[u8]) -> Vec<u8> {
    text.chunks(4)
        .flat_map(|group| STANDARD.decode(group).unwrap_or_else(|e| panic!("{e}: {text:?}")))
        .collect()
}

#[test]
fn grpc_web_calls_are_counted_with_the_status_of_their_body_trailer() {
    for place in [GrpcWebFilter::Before, GrpcWebFilter::After] {
        let s = grpc_web_stack(place);
        let mut c = Client::new(s.envoy.listener("ingress"));
        // A large answer comes in many chunks before the trailers.
        let large = [("x-want-bytes", "200000")];
        for (text, headers) in [(false, &[][..]), (true, &[]), (false, &large), (true, &large)] {
            let ok = grpc_web_call(&mut c, "/shop.v1.Orders/Get", text, headers);
            assert_eq!(ok, (200, "0".into()), "{place:?} text {text}");
        }
        let nf = grpc_web_call(&mut c, "/shop.v1.Orders/Get", false, &[("x-want-status", "NOT_FOUND")]);
        assert_eq!(nf, (200, "5".into()), "{place:?}");

        let text = s.envoy.prometheus();
        let line = |status: &str, n: u32| {
            format!("grayscope_interface_calls_total{{direction=\"inbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Get\",gray_version=\"none\",status=\"{status}\"}} {n}")
        };
        let calls = prom::samples(&text, "grayscope_interface_calls_total").join("\n");
        assert!(text.contains(&format!("{}\n", line("OK", 4))), "{place:?}: {calls}");
        assert!(
            text.contains(&format!("{}\n", line("NOT_FOUND", 1))),
            "{place:?}: {calls}"
        );
        assert_eq!(
            prom::sum(&text, "grayscope_interface_calls_total"),
            5.0,
            "{place:?}: {calls}"
        );
    }
}

#[test]
fn a_streaming_call_counts_how_it_ended() {
    let s = Stack::start("{}");
    let ingress = s.envoy.listener("ingress");
    let watch = |extra: &[(&str, &str)], cancel: Cancel| {
        let mut metadata = vec![("x-gray-version", "v2")];
        metadata.extend_from_slice(extra);
        grpc::stream(ingress, "/shop.v1.Orders/Watch", &metadata, cancel)
    };
    // Three messages, then the server's error in the trailers.
    let failed = watch(
        &[("x-want-messages", "3"), ("x-want-status", "NOT_FOUND")],
        Cancel::Never,
    );
    assert_eq!(failed, ("NOT_FOUND".to_owned(), 3));
    // The client cancels after the first message (RST_STREAM): the call ended by the caller's choice, CANCELLED as
    // a gRPC server reports it, although the response (HTTP 200, no trailers) makes Envoy's `response.grpc_status`
    // guess UNKNOWN.
    let cancelled = watch(
        &[("x-want-messages", "50"), ("x-want-delay-ms", "100")],
        Cancel::AfterMessages(1),
    );
    assert_eq!(cancelled, ("CANCELLED".to_owned(), 1));
    // The client cancels before the server answered at all: nothing was sent.
    let silent = watch(
        &[("x-want-messages", "1"), ("x-want-delay-ms", "2000")],
        Cancel::AfterMs(300),
    );
    assert_eq!(silent, ("CANCELLED".to_owned(), 0));

    s.access_log(3);
    let text = s.envoy.prometheus();
    prom::assert_line(&text, &series("Watch", "v2", "NOT_FOUND", 1));
    prom::assert_line(&text, &series("Watch", "v2", "CANCELLED", 1));
    prom::assert_line(&text, &series("Watch", "v2", "no_response", 1));
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 3.0);
    prom::assert_line(&text, "grayscope_interface_call_duration_milliseconds_count{direction=\"inbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Watch\",gray_version=\"v2\"} 3");
}
