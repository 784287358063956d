//! The running webhook, as the API server reaches it: the real `grayscope-injector` binary, a real TLS client
//! posting an AdmissionReview over HTTPS, and a certificate rotated on disk that is served without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{pki_types::CertificateDer, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

/// The webhook process, killed when dropped.
struct Injector {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    fn start(cert: &Path, key: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_grayscope-injector"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--agent-image",
                "registry.example/grayscope/agent:0.1.0",
            ])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn grayscope-injector");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        // The first log line names the bound address; the process is killed on drop if it never comes.
        let mut guard = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        for line in lines.by_ref() {
            let line = line.expect("stderr line");
            if let Some(addr) = line.split("addr=").nth(1) {
                guard.addr = addr.trim().parse().expect("address");
                break;
            }
        }
        assert_ne!(guard.addr.port(), 0, "grayscope-injector did not say where it listens");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        guard
    }
}

fn self_signed(names: &[&str]) -> (String, String, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names).expect("certificate");
    (cert.pem(), signing_key.serialize_pem(), cert.der().clone())
}

/// Replaces a file the way cert-manager's Secret volume does: a new file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, contents).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// POSTs `body` to `/mutate` trusting only `root`; returns the answer and the certificate the server showed.
fn post(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    body: &[u8],
) -> Result<(Value, CertificateDer<'static>), String> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = "grayscope-injector.grayscope-system.svc"
        .try_into()
        .map_err(|e| format!("{e}"))?;
    let conn = ClientConnection::new(Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let head = format!(
        "POST /mutate?timeout=5s HTTP/1.1\r\nHost: grayscope-injector.grayscope-system.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    tls.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A peer closing without close_notify after a complete answer is fine for HTTP with Connection: close.
    if let Err(e) = tls.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e.to_string());
        }
    }
    let shown = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no peer certificate")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") || !head.to_ascii_lowercase().contains("content-type: application/json") {
        return Err(format!("unexpected answer: {head}"));
    }
    let answer = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok((answer, shown.into_owned()))
}

#[test]
fn the_running_webhook_answers_over_https_and_serves_a_rotated_certificate_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let names = ["grayscope-injector.grayscope-system.svc"];
    let (cert_a, key_a, der_a) = self_signed(&names);
    fs::write(&cert_path, &cert_a).expect("cert");
    fs::write(&key_path, &key_a).expect("key");
    let injector = Injector::start(&cert_path, &key_path);

    let pod: Value = serde_norway::from_str(
        &fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject/basic.yaml")).expect("pod"),
    )
    .expect("pod yaml");
    let golden: Value = serde_norway::from_str(
        &fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject/basic.yaml.injected"))
            .expect("golden"),
    )
    .expect("golden yaml");
    let body = serde_json::to_vec(&common::create_review(&pod, false)).expect("review");

    let (answer, shown) = post(injector.addr, &der_a, &body).expect("HTTPS POST /mutate");
    assert_eq!(shown, der_a);
    assert_eq!(common::response(&answer)["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let (patched, injected) = common::apply(&pod, &answer);
    assert!(injected);
    assert_eq!(patched, golden, "over HTTPS the patch gives the golden pod");

    // Malformed input over the wire: still HTTP 200 with a well-formed refusal.
    let (refusal, _) = post(injector.addr, &der_a, b"{\"kind\":").expect("HTTPS POST of garbage");
    assert_eq!(common::response(&refusal)["allowed"], false);

    // Rotation: a new key and certificate replace the old ones on disk; the same process serves the new pair.
    let (cert_b, key_b, der_b) = self_signed(&names);
    replace(&key_path, &key_b);
    replace(&cert_path, &cert_b);
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        match post(injector.addr, &der_b, &body) {
            Ok((answer, shown)) => {
                assert_eq!(common::apply(&pod, &answer).0, golden);
                break shown;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the rotated certificate is never served: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(shown, der_b);
    // And a client that only trusts the old certificate is now refused by its own verification.
    assert!(
        post(injector.addr, &der_a, &body).is_err(),
        "the old certificate is still served"
    );
}
