//! Every manifest under `istio/` (except `istio/canary/`) is checked the way an API server with strict field
//! validation would check it, as far as that can be done without one:
//! - Istio resources against the official CRDs of `shared/schemas/istio` (the `openAPIV3Schema` of the served
//!   version, with `additionalProperties: false` added wherever Kubernetes would prune or, with
//!   `kubectl apply --validate=strict`, refuse unknown fields). Not checked: the CRDs' CEL rules
//!   (`x-kubernetes-validations`), and the Envoy configuration inside EnvoyFilter patches, which the schema leaves
//!   open; `istio_envoy.rs` loads that into the real Envoy instead.
//! - Kubernetes objects by deserialising into their `k8s-openapi` types, any field the type does not know refused.
//! - cert-manager objects (no schema shipped here) against a typed subset of their fields.
//!
//! Then the parts that must agree with each other and with the code: plugin configurations the filter accepts,
//! the cluster name it reports to, the socket path the injector mounts, the stats tags for every label the filter
//! emits, the webhook pointing at its Service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod crd_support;
mod istio_support;

use std::{collections::BTreeSet, fs};

use crd_support::{schemas_dir, CrdSchemas};
use istio_support::{doc, docs, mesh_values, Doc};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        core::v1::{Namespace, Service, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Map, Value};
use sidecar_agent_injector::{inject, native};

/// Deserialises `value` as `T`, refusing any field `T` does not know (and naming it).
fn strict<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let typed =
        serde_ignored::deserialize(value.clone(), |path| unknown.push(path.to_string())).map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// The Istio CRDs of `shared/schemas/istio`.
fn crd_schemas() -> CrdSchemas {
    let files = fs::read_dir(schemas_dir("istio"))
        .expect("schemas dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".crd.yaml"));
    let schemas = CrdSchemas::load(files);
    assert!(schemas.len() >= 5, "Istio CRDs found: {}", schemas.len());
    schemas
}

/// Validates an Istio resource against its CRD; every problem, with its JSON path.
fn validate_istio(schemas: &CrdSchemas, value: &Value) -> Result<(), Vec<String>> {
    let mut problems = schemas.validate(value).err().unwrap_or_default();
    if let Err(e) = strict::<ObjectMeta>(&value["metadata"]) {
        problems.push(format!("/metadata: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// cert-manager's Issuer/Certificate: no schema ships with the project, so the fields the manifests use are typed.
/// The fields are only deserialised (that is the check), never read.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertManagerObject {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Value,
    spec: CertManagerSpec,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", untagged)]
enum CertManagerSpec {
    Issuer {
        #[serde(rename = "selfSigned")]
        _self_signed: Map<String, Value>,
    },
    CaIssuer {
        ca: CaIssuerSpec,
    },
    Certificate(CertificateSpec),
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuerSpec {
    secret_name: String,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    duration: String,
    renew_before: String,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default, rename = "isCA")]
    is_ca: Option<bool>,
    issuer_ref: Value,
    private_key: Value,
}

/// Validates one document, whatever its kind.
fn validate(schemas: &CrdSchemas, d: &Doc) -> Result<(), Vec<String>> {
    let one = |r: Result<(), String>| r.map_err(|e| vec![e]);
    match (d.api_version(), d.kind()) {
        (api, _) if api.contains(".istio.io/") => validate_istio(schemas, &d.value),
        ("v1", "Namespace") => one(strict::<Namespace>(&d.value).map(drop)),
        ("v1", "ServiceAccount") => one(strict::<ServiceAccount>(&d.value).map(drop)),
        ("v1", "Service") => one(strict::<Service>(&d.value).map(drop)),
        ("apps/v1", "Deployment") => one(strict::<Deployment>(&d.value).map(drop)),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            one(strict::<MutatingWebhookConfiguration>(&d.value).map(drop))
        }
        ("cert-manager.io/v1", "Issuer" | "Certificate") => {
            one(serde_json::from_value::<CertManagerObject>(d.value.clone())
                .map_err(|e| e.to_string())
                .and_then(|o| strict::<ObjectMeta>(&o.metadata).map(drop)))
        }
        ("", "") => Err(vec!["no apiVersion/kind: not a Kubernetes object".to_owned()]),
        (api, kind) => Err(vec![format!("{api} {kind}: no validation for this kind; add one")]),
    }
}

#[test]
fn every_manifest_validates_against_its_schema_or_type() {
    let schemas = crd_schemas();
    let docs = docs();
    let mut problems = Vec::new();
    let mut kinds = BTreeSet::new();
    for d in docs.iter().filter(|d| d.file != "01-stats-meshconfig.yaml") {
        kinds.insert(d.kind().to_owned());
        if let Err(p) = validate(&schemas, d) {
            problems.push(format!(
                "{} {} {}:\n    {}",
                d.file,
                d.kind(),
                d.name(),
                p.join("\n    ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let want = [
        "Certificate",
        "Deployment",
        "EnvoyFilter",
        "Issuer",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Service",
        "ServiceAccount",
        "Telemetry",
        "WasmPlugin",
    ];
    assert_eq!(
        kinds,
        want.iter().map(|k| (*k).to_owned()).collect(),
        "the kinds shipped"
    );
}

#[test]
fn the_checks_refuse_misspelt_fields_and_bad_values() {
    let schemas = crd_schemas();
    let mutate = |file: &str, change: &dyn Fn(&mut Value)| {
        let mut value = doc(file);
        change(&mut value);
        Doc {
            file: file.to_owned(),
            value,
        }
    };
    let cases: Vec<(Doc, &str)> = vec![
        (
            mutate("03-wasmplugin.yaml", &|v| {
                v["spec"]["failStratgy"] = json!("FAIL_OPEN");
            }),
            "failStratgy",
        ),
        (
            mutate("03-wasmplugin.yaml", &|v| {
                v["spec"]["phase"] = json!("STAT");
            }),
            "/spec/phase",
        ),
        (
            mutate("03-wasmplugin.yaml", &|v| {
                v["spec"]["sha256"] = json!("abc");
            }),
            "/spec/sha256",
        ),
        (
            mutate("03-wasmplugin.yaml", &|v| {
                v["metadata"]["lables"] = json!({});
            }),
            "lables",
        ),
        (
            mutate("02-agent-cluster.yaml", &|v| {
                v["spec"]["configPatches"][0]["applyTo"] = json!("CLUSTERS");
            }),
            "applyTo",
        ),
        (
            mutate("02-agent-cluster.yaml", &|v| {
                v["spec"]["configPatches"][0]["match"]["contxt"] = json!("ANY");
            }),
            "contxt",
        ),
        (
            mutate("04-telemetry.yaml", &|v| {
                v["spec"]["tracing"][0]["customTags"]["x"] = json!({"headr": {"name": "h"}});
            }),
            "headr",
        ),
    ];
    for (d, says) in &cases {
        let problems = validate(&schemas, d)
            .expect_err(&format!("{} with {says} must be refused", d.file))
            .join("\n");
        assert!(problems.contains(says), "{says}: {problems}");
    }
    let mut deployment = docs()
        .into_iter()
        .find(|d| d.kind() == "Deployment")
        .expect("deployment");
    deployment.value["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    let problems = validate(&schemas, &deployment)
        .expect_err("misspelt container field")
        .join("\n");
    assert!(problems.contains("imagePullPolcy"), "{problems}");
    let mut webhook = docs()
        .into_iter()
        .find(|d| d.kind() == "MutatingWebhookConfiguration")
        .expect("webhook");
    webhook.value["webhooks"][0]["failurePolicy"] = json!(["Ignore"]);
    assert!(validate(&schemas, &webhook).is_err(), "a list where a string belongs");
}

/// The filter's configuration inside each plugin manifest, as the filter itself parses it.
fn plugin_configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for d in docs() {
        match d.kind() {
            "WasmPlugin" => out.push((d.file.clone(), d.value["spec"]["pluginConfig"].clone())),
            "EnvoyFilter" => {
                for p in d.value["spec"]["configPatches"].as_array().expect("patches") {
                    if p["applyTo"] == "HTTP_FILTER" {
                        // The wasm filter's configuration string, or the native build's (istio/native/).
                        let typed = &p["patch"]["value"]["typed_config"];
                        let text = typed["config"]["configuration"]["value"]
                            .as_str()
                            .or_else(|| typed["filter_config"]["value"].as_str())
                            .expect("configuration string");
                        out.push((
                            d.file.clone(),
                            serde_json::from_str(text).expect("configuration is JSON"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn plugin_configurations_are_accepted_by_the_filter_and_report_to_the_agent_cluster() {
    let configs = plugin_configs();
    assert_eq!(
        configs.len(),
        6,
        "two WasmPlugins, two EnvoyFilter patches, two native EnvoyFilter patches"
    );
    let first = &configs[0].1;
    for (file, config) in &configs {
        let bytes = serde_json::to_vec(config).expect("json");
        let parsed = wasm_filter_core::config::parse(&bytes)
            .unwrap_or_else(|e| panic!("{file}: the filter refuses {config}: {e}"));
        assert_eq!(parsed.report.cluster, "grayscope_agent", "{file}");
        assert_eq!(
            config, first,
            "{file}: every way of installing the filter configures it the same"
        );
    }
    let cluster = doc("02-agent-cluster.yaml");
    let value = &cluster["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(value["name"], "grayscope_agent");
    let pipe = value["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]
        .as_str()
        .expect("pipe path");
    assert_eq!(
        pipe,
        format!("{}/agent.sock", inject::SOCKET_DIR),
        "the socket the injector mounts"
    );
    // The file:// plugin and the EnvoyFilter load the same path.
    let file_plugin = doc("03-wasmplugin-file.yaml");
    let filter = doc("03-envoyfilter-http-filter.yaml");
    // A module Envoy cannot find fails the listener (the failure policy covers a failing VM, not a missing file): both
    // manifests that load it from a file select only the pods labelled as having it.
    assert_eq!(
        file_plugin["spec"]["selector"]["matchLabels"]["grayscope.io/filter"],
        "file"
    );
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"]["grayscope.io/filter"], "file",
        "03-envoyfilter-http-filter.yaml would load a missing file into every sidecar of the mesh"
    );
    let local = filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]
        ["local"]["filename"]
        .as_str()
        .expect("local filename");
    assert_eq!(file_plugin["spec"]["url"], format!("file://{local}"));
    let oci = doc("03-wasmplugin.yaml");
    assert!(oci["spec"]["url"].as_str().is_some_and(|u| u.starts_with("oci://")));
    assert_eq!(oci["spec"]["phase"], "STATS");
    assert_eq!(oci["spec"]["failStrategy"], "FAIL_OPEN");
}

#[test]
fn the_native_envoyfilter_loads_the_module_where_the_readme_puts_it_with_the_runtime_flag() {
    let native = doc("native/03-envoyfilter-native.yaml");
    let readme = fs::read_to_string(istio_support::istio_dir().join("native/README.md")).expect("native README");
    let spec = &native["spec"];
    assert_eq!(spec["workloadSelector"]["labels"]["grayscope.io/filter"], "native");
    assert!(
        readme.contains("grayscope.io/filter: native"),
        "the README names the selector label"
    );
    let patches = spec["configPatches"].as_array().expect("patches");
    let filters: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "HTTP_FILTER").collect();
    let contexts: BTreeSet<&str> = filters.iter().filter_map(|p| p["match"]["context"].as_str()).collect();
    assert_eq!(contexts, ["SIDECAR_INBOUND", "SIDECAR_OUTBOUND"].into_iter().collect());
    for p in &filters {
        assert_eq!(p["patch"]["operation"], "INSERT_BEFORE");
        assert_eq!(
            p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
            "envoy.filters.http.router"
        );
        let typed = &p["patch"]["value"]["typed_config"];
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
        );
        let file = typed["dynamic_module_config"]["module"]["local"]["filename"]
            .as_str()
            .expect("module filename");
        assert!(file.ends_with("/libgrayscope_filter.so"), "{file}");
        assert!(
            readme.contains(file),
            "the README says how {file} gets into istio-proxy"
        );
    }
    let bootstrap: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "BOOTSTRAP").collect();
    assert_eq!(bootstrap.len(), 1, "one BOOTSTRAP patch: the runtime flag");
    assert_eq!(bootstrap[0]["patch"]["operation"], "MERGE");
    let layers = bootstrap[0]["patch"]["value"]["layered_runtime"]["layers"]
        .as_array()
        .expect("layers");
    assert_eq!(
        layers[0]["static_layer"]["envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix"],
        true
    );
}

#[test]
fn stats_settings_name_every_label_the_filter_emits_and_match_what_the_injector_sets() {
    let stats = mesh_values().mesh_config.default_config;
    let mut labels: BTreeSet<&str> = wasm_filter_core::metrics::LABELS.into_iter().collect();
    labels.insert("outcome"); // grayscope_report_records_total
    let tags: BTreeSet<&str> = stats.extra_stat_tags.iter().map(String::as_str).collect();
    assert_eq!(tags, labels, "extraStatTags must be exactly the filter's labels");
    assert_eq!(
        tags,
        inject::STAT_TAGS.into_iter().collect(),
        "the injector's annotation says the same"
    );
    // The wasm build's series, and the native build's (which the injector adds to the pods it gives the module).
    assert_eq!(
        stats.proxy_stats_matcher.inclusion_regexps,
        [inject::STATS_INCLUSION_REGEX, native::NATIVE_STATS_INCLUSION_REGEX]
    );
}

#[test]
fn the_webhook_points_at_its_service_and_is_safe_for_the_cluster() {
    let all = docs();
    let find = |kind: &str| {
        all.iter()
            .find(|d| d.kind() == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let service: Service = strict(&find("Service").value).expect("service");
    let deployment: Deployment = strict(&find("Deployment").value).expect("deployment");
    let webhook: MutatingWebhookConfiguration = strict(&find("MutatingWebhookConfiguration").value).expect("webhook");
    let service_ns = service.metadata.namespace.clone().expect("namespace");
    let service_name = service.metadata.name.clone().expect("name");
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    let pod = deployment.spec.as_ref().expect("spec").template.clone();
    let labels = pod.metadata.as_ref().and_then(|m| m.labels.clone()).expect("labels");
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selects the Deployment's pods"
    );
    let pod_spec = pod.spec.expect("pod spec");
    let container = &pod_spec.containers[0];
    let args = container.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--tls-cert=/etc/grayscope-injector/tls/tls.crt"),
        "{args}"
    );
    assert!(args.contains("--tls-key=/etc/grayscope-injector/tls/tls.key"), "{args}");
    let secret = pod_spec.volumes.unwrap_or_default()[0]
        .secret
        .clone()
        .expect("tls secret volume");
    let of_kind = |kind: &'static str| all.iter().filter(move |d| d.kind() == kind).map(|d| &d.value);
    let certificate = of_kind("Certificate")
        .find(|c| c["spec"]["secretName"].as_str() == secret.secret_name.as_deref())
        .expect("the Certificate of the secret the injector serves");
    // The API server must trust a CA that stays when the serving certificate is renewed: trusting the serving
    // certificate itself (a self-signed one) breaks TLS at each renewal with a new key, from cainjector's new
    // caBundle until the kubelet refreshes the injector's Secret volume, and pods created meanwhile are not
    // injected (failurePolicy Ignore).
    let issuer_name = certificate["spec"]["issuerRef"]["name"]
        .as_str()
        .expect("issuerRef.name");
    let issuer = of_kind("Issuer")
        .find(|i| i["metadata"]["name"] == issuer_name)
        .unwrap_or_else(|| panic!("no Issuer {issuer_name}"));
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("the serving certificate's issuer {issuer_name} must be a CA issuer: {issuer}"));
    let ca = of_kind("Certificate")
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .unwrap_or_else(|| panic!("no Certificate for the CA secret {ca_secret}"));
    assert_eq!(ca["spec"]["isCA"], true, "{ca}");
    // Renewing the CA itself with the same key keeps the serving certificates it signed valid under the new one.
    assert_eq!(ca["spec"]["privateKey"]["rotationPolicy"], "Never", "{ca}");
    let sc = container.security_context.clone().expect("security context");
    assert_eq!(
        (
            sc.privileged,
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation
        ),
        (Some(false), Some(true), Some(false))
    );

    let hooks = webhook.webhooks.expect("webhooks");
    assert_eq!(hooks.len(), 2);
    for hook in &hooks {
        let svc = hook.client_config.service.clone().expect("service reference");
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str(), svc.path.as_deref(), svc.port),
            (service_ns.as_str(), service_name.as_str(), Some("/mutate"), Some(443))
        );
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"), "{}", hook.name);
        assert_eq!(hook.side_effects, "None");
        assert!(
            hook.timeout_seconds.is_some_and(|t| (1..=10).contains(&t)),
            "{}",
            hook.name
        );
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(hook.admission_review_versions, ["v1"]);
        let rules = hook.rules.clone().expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_owned()][..]));
        assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_owned()][..]));
        let ns = serde_json::to_string(&hook.namespace_selector).expect("json");
        for skipped in inject::SYSTEM_NAMESPACES.iter().chain([&service_ns.as_str()]) {
            assert!(
                ns.contains(&format!("\"{skipped}\"")),
                "{} must leave out {skipped}: {ns}",
                hook.name
            );
        }
    }
    let by_ns = serde_json::to_value(&hooks[0]).expect("json");
    assert_eq!(
        by_ns["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "grayscope-injection", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(
        by_ns["objectSelector"]["matchExpressions"][0],
        json!({"key": inject::INJECT_LABEL, "operator": "NotIn", "values": ["false"]})
    );
    let by_pod = serde_json::to_value(&hooks[1]).expect("json");
    assert_eq!(
        by_pod["objectSelector"],
        json!({"matchLabels": {inject::INJECT_LABEL: "true"}})
    );
    let cert_ns = certificate["metadata"]["namespace"].as_str().expect("ns");
    let cert_name = certificate["metadata"]["name"].as_str().expect("name");
    let inject_from = webhook.metadata.annotations.expect("annotations")["cert-manager.io/inject-ca-from"].clone();
    assert_eq!(inject_from, format!("{cert_ns}/{cert_name}"));
    let dns: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .expect("dns")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns.contains(&format!("{service_name}.{service_ns}.svc").as_str()),
        "{dns:?}"
    );
}

#[test]
fn injected_golden_pods_are_valid_pods_whose_proxy_config_istio_can_read() {
    let dir = integration_tests::paths::root().join("sidecar-agent/injector/testdata/inject");
    let mut injected = 0;
    let mut native_pods = 0;
    for entry in fs::read_dir(&dir).expect("testdata/inject") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().ends_with(".yaml.injected") {
            continue;
        }
        let value: Value = serde_norway::from_str(&fs::read_to_string(&path).expect("golden")).expect("yaml");
        let pod: k8s_openapi::api::core::v1::Pod =
            strict(&value).unwrap_or_else(|e| panic!("{}: not a valid Pod: {e}", path.display()));
        let has_agent = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .any(|c| c.name == inject::AGENT_CONTAINER);
        if !has_agent {
            continue;
        }
        injected += 1;
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let proxy: istio_support::ProxyStats = serde_norway::from_str(&annotations["proxy.istio.io/config"])
            .unwrap_or_else(|e| panic!("{}: proxy.istio.io/config: {e}", path.display()));
        let tags: BTreeSet<&str> = proxy.extra_stat_tags.iter().map(String::as_str).collect();
        assert!(inject::STAT_TAGS.iter().all(|t| tags.contains(t)), "{}", path.display());
        assert!(proxy
            .proxy_stats_matcher
            .inclusion_regexps
            .contains(&inject::STATS_INCLUSION_REGEX.to_owned()));
        for key in ["sidecar.istio.io/userVolume", "sidecar.istio.io/userVolumeMount"] {
            let map: Map<String, Value> = serde_json::from_str(&annotations[key]).expect("JSON mapping");
            assert!(map.contains_key(inject::SOCKET_VOLUME), "{key}");
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if labels.get(native::FILTER_LABEL).is_some_and(|v| v == "native") {
            native_pods += 1;
            native_pod_has_the_module_where_the_envoyfilter_loads_it(&pod, &proxy, &path.display().to_string());
        }
    }
    assert!(injected >= 2, "injected golden pods: {injected}");
    assert!(
        native_pods >= 1,
        "injected golden pods with the native build: {native_pods}"
    );
}

/// A pod the EnvoyFilter of the native build selects (by the label it carries) gets the module where that
/// EnvoyFilter loads it: the init container copies it into a volume, that volume is mounted read-only into
/// istio-proxy at the directory of the EnvoyFilter's `local.filename` (also the search path), Istio runs
/// istio-proxy after the init containers, and the stats matcher admits the module's series.
fn native_pod_has_the_module_where_the_envoyfilter_loads_it(
    pod: &k8s_openapi::api::core::v1::Pod,
    proxy: &istio_support::ProxyStats,
    name: &str,
) {
    let envoyfilter = doc("native/03-envoyfilter-native.yaml");
    assert_eq!(
        envoyfilter["spec"]["workloadSelector"]["labels"][native::FILTER_LABEL],
        "native",
        "the EnvoyFilter selects the label the injector sets"
    );
    let patches = envoyfilter["spec"]["configPatches"].as_array().expect("patches");
    for p in patches.iter().filter(|p| p["applyTo"] == "HTTP_FILTER") {
        let file = p["patch"]["value"]["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"]
            .as_str()
            .expect("filename");
        assert_eq!(
            std::path::Path::new(file).parent(),
            Some(std::path::Path::new(native::PROXY_MODULE_DIR)),
            "{name}: the EnvoyFilter loads {file}"
        );
        assert!(
            native::IMAGE_MODULE.ends_with(&format!("/{}", file.rsplit('/').next().unwrap_or_default())),
            "{name}: the image carries the file the EnvoyFilter loads"
        );
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations["sidecar.istio.io/nativeSidecar"], "false", "{name}");
    assert!(proxy
        .proxy_stats_matcher
        .inclusion_regexps
        .contains(&native::NATIVE_STATS_INCLUSION_REGEX.to_owned()));
    assert_eq!(
        proxy.proxy_metadata.get(native::SEARCH_PATH_ENV).map(String::as_str),
        Some(native::PROXY_MODULE_DIR),
        "{name}: proxyMetadata sets the search path on istio-proxy"
    );
    let mounts: Map<String, Value> =
        serde_json::from_str(&annotations["sidecar.istio.io/userVolumeMount"]).expect("JSON mapping");
    assert_eq!(
        mounts[native::MODULE_VOLUME],
        json!({"mountPath": native::PROXY_MODULE_DIR, "readOnly": true}),
        "{name}"
    );
    let spec = pod.spec.clone().unwrap_or_default();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == native::MODULE_VOLUME)
        .unwrap_or_else(|| panic!("{name}: no {} volume", native::MODULE_VOLUME));
    assert!(volume.empty_dir.is_some(), "{name}: an emptyDir");
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == native::MODULE_INIT_CONTAINER)
        .unwrap_or_else(|| panic!("{name}: no init container"));
    let mount = init
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == native::MODULE_VOLUME)
        .expect("the init container mounts the volume");
    assert_ne!(
        mount.read_only,
        Some(true),
        "{name}: the init container writes the volume"
    );
    let args = init.args.clone().unwrap_or_default();
    assert_eq!(args, ["install-module", "--to", mount.mount_path.as_str()], "{name}");
}
