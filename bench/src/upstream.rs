//! The upstream every configuration routes to, on one port: HTTP/1.1 keep-alive, a 2-byte `200` to every request,
//! one thread per connection; and gRPC over h2c (a connection that opens with the HTTP/2 preface) answering every
//! call with an empty message and `grpc-status: 0`. It parses only what it must, so that it stays off the proxy's
//! figures.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use tokio::runtime::Handle;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// An empty protobuf message in gRPC's length-prefixed framing: not compressed, 0 bytes.
pub const EMPTY_GRPC_MESSAGE: [u8; 5] = [0; 5];

/// Starts the upstream on a free loopback port; it lives as long as the harness.
pub fn start() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    // One single-threaded runtime serves every h2c connection (the HTTP/1.1 side keeps its thread per connection).
    thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let _ = tx.send(rt.handle().clone());
        rt.block_on(std::future::pending::<()>());
    });
    let h2 = rx
        .recv()
        .map_err(|_| anyhow!("the gRPC upstream's runtime did not start"))?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let h2 = h2.clone();
            thread::spawn(move || serve(conn, &h2));
        }
    });
    Ok(addr)
}

/// HTTP/2 with prior knowledge goes to the h2c server; anything else is HTTP/1.1.
fn serve(conn: TcpStream, h2: &Handle) {
    let _ = conn.set_nodelay(true);
    let mut head = [0u8; 3];
    if conn.peek(&mut head).is_ok_and(|n| n == 3) && &head == b"PRI" {
        if conn.set_nonblocking(true).is_ok() {
            let _guard = h2.enter();
            if let Ok(conn) = tokio::net::TcpStream::from_std(conn) {
                h2.spawn(serve_grpc(conn));
            }
        }
        return;
    }
    serve_http1(conn);
}

/// Answers each request once its head has ended; the benchmark sends no bodies.
fn serve_http1(conn: TcpStream) {
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == b"\r\n" || line == b"\n" => {
                if writer.write_all(ANSWER).is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

async fn serve_grpc(conn: tokio::net::TcpStream) {
    let Ok(mut h2) = h2::server::handshake(conn).await else {
        return;
    };
    while let Some(Ok((request, respond))) = h2.accept().await {
        tokio::spawn(answer(request, respond));
    }
}

/// Reads the call's message(s), then answers with one empty message and `grpc-status: 0`.
async fn answer(request: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = request.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
    let Ok(head) = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
    else {
        return;
    };
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    if send.send_data(Bytes::from_static(&EMPTY_GRPC_MESSAGE), false).is_err() {
        return;
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
