//! An HTTP/1.1 client over one keep-alive connection that sends the exact header bytes a test gives it, so tests
//! can send what no well-behaved client library would: repeated headers, control characters, non-UTF-8.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// `GET path` with the given headers (name, raw value bytes); returns the response.
    pub fn get(&mut self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n").into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        self.send(&req)
    }

    /// Sends raw request bytes and reads one response. A closed connection is reopened once.
    pub fn send(&mut self, request: &[u8]) -> Response {
        for attempt in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr).expect("connect to envoy");
                s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                self.conn = Some(BufReader::new(s));
            }
            let conn = self.conn.as_mut().expect("connection");
            if conn.get_mut().write_all(request).is_ok() {
                if let Some(resp) = read_response(conn) {
                    if resp
                        .headers
                        .iter()
                        .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
                    {
                        self.conn = None;
                    }
                    return resp;
                }
            }
            self.conn = None;
            assert!(attempt == 0, "no response from {}", self.addr);
        }
        unreachable!()
    }
}

pub(crate) fn read_response(r: &mut BufReader<TcpStream>) -> Option<Response> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some(Response { status, headers, body })
}
