//! The upstream every configuration routes to: HTTP/1.1 keep-alive, a 2-byte `200` to every request, one thread
//! per connection. It parses only what it must (the end of the head), so that it stays off the proxy's figures.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use anyhow::Result;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// Starts the upstream on a free loopback port; it lives as long as the harness.
pub fn start() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || serve(conn));
        }
    });
    Ok(addr)
}

/// Answers each request once its head has ended; the benchmark sends no bodies.
fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
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
