//! An HTTP/1.1 upstream that records exactly what it received: every header, repeated ones and raw bytes kept.
//!
//! It answers 200 unless the request carries `x-respond-status: NNN`, after `x-respond-delay-ms: N` milliseconds
//! when the request asks for it. Requests are told apart by `x-test-id`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lowercased names, values as raw bytes, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    /// Every value of a header, as text (lossy).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// A running upstream; it lives as long as the test process (its threads are detached).
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                thread::spawn(move || serve(conn, &log));
            }
        });
        Self { addr, seen }
    }

    /// The request carrying `x-test-id: id`; panics if it never arrived.
    pub fn request(&self, id: &str) -> Seen {
        let seen = self.seen.lock().expect("upstream log");
        let found = seen
            .iter()
            .find(|s| s.all("x-test-id").first().map(String::as_str) == Some(id));
        found
            .cloned()
            .unwrap_or_else(|| panic!("upstream never saw x-test-id {id}"))
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("upstream log").len()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = String::from_utf8_lossy(&line).trim_end().to_owned();
        let mut parts = request_line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = Vec::new();
            if reader.read_until(b'\n', &mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h
                .strip_suffix(b"\r\n")
                .or_else(|| h.strip_suffix(b"\n"))
                .unwrap_or(&h)
                .to_vec();
            if h.is_empty() {
                break;
            }
            if let Some(colon) = h.iter().position(|&b| b == b':') {
                let name = String::from_utf8_lossy(&h[..colon]).to_ascii_lowercase();
                let value = h[colon + 1..].trim_ascii().to_vec();
                headers.push((name, value));
            }
        }
        let seen = Seen { method, path, headers };
        let length: usize = seen
            .all("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status: u16 = seen
            .all("x-respond-status")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let delay_ms: u64 = seen
            .all("x-respond-delay-ms")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        log.lock().expect("upstream log").push(seen);
        thread::sleep(std::time::Duration::from_millis(delay_ms));
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
