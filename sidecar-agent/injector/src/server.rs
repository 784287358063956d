//! HTTPS: `POST /mutate` answers AdmissionReviews, `GET /healthz` answers probes. One task per connection; the
//! TLS certificate comes from [`ReloadingCert`] at every handshake.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{inject::Settings, review, tls::ReloadingCert};

/// Kubernetes caps request objects at a few MiB; a larger body is refused before it is read.
const MAX_BODY: usize = 8 << 20;
/// A client that does not finish its TLS handshake, or its request head, in this time is dropped, so idle or
/// slow connections cannot pile up (the API server's own timeout is `timeoutSeconds`, 5 s here).
const SLOW_CLIENT: Duration = Duration::from_secs(10);

/// The TLS acceptor serving `certs` (TLS 1.2 and 1.3, HTTP/1.1).
pub fn acceptor(
    certs: Arc<ReloadingCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<TlsAcceptor> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, settings: Arc<Settings>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let tls = tls.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(SLOW_CLIENT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| route(req, settings.clone()));
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(SLOW_CLIENT);
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn route(
    req: Request<hyper::body::Incoming>,
    settings: Arc<Settings>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>, json: bool| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if json {
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
        }
        Ok(resp)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, b"ok\n".to_vec(), false),
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n").into_bytes(), false),
            };
            let answer = review::handle(&body, &settings);
            match serde_json::to_vec(&answer) {
                Ok(json) => reply(StatusCode::OK, json, true),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n").into_bytes(), false),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, b"not found\n".to_vec(), false),
    }
}
