//! Each wasm VM's memory after 100,000 requests with the interface cap reached.
//!
//! What is measured: the linear memory of each V8 wasm instance, read from `/proc/<envoy>/smaps` by the test
//! harness's [`integration_tests::wasm_memory`], which says how.
//!
//! The requests are gRPC calls (`content-type: application/grpc`) over HTTP/1.1 keep-alive, each naming one of
//! [`SERVICES`] services, more than the filter's default `max_interfaces` (256): the interface table fills and
//! the rest count as `other` (the run checks Envoy's `interface_overflow_total` counter).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
};

use anyhow::{anyhow, bail, Context, Result};
use integration_tests::wasm_memory::{vms, VmMemory};

use crate::proxy::Proxy;

/// Distinct gRPC services the requests name: 4 × the default interface cap.
pub const SERVICES: usize = 1024;

/// One configuration's VMs before and after the requests (W1 and W2 in `just bench`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmReport {
    pub label: String,
    pub requests: u64,
    pub interface_overflow: u64,
    pub before: Vec<VmMemory>,
    pub after: Vec<VmMemory>,
    pub envoy_rss_kib_before: u64,
    pub envoy_rss_kib_after: u64,
}

/// Sends `total` gRPC-named requests over `connections` keep-alive connections, cycling over [`SERVICES`].
fn load(addr: SocketAddr, total: u64, connections: u64) -> Result<()> {
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            thread::spawn(move || -> Result<()> {
                let conn = TcpStream::connect(addr)?;
                conn.set_nodelay(true)?;
                let mut writer = conn.try_clone()?;
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                let mut i = c;
                while i < total {
                    let service = i as usize % SERVICES;
                    write!(
                        writer,
                        "POST /bench.S{service}/Call HTTP/1.1\r\nHost: bench\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\n\r\n"
                    )?;
                    let mut length = 0usize;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            bail!("the proxy closed the connection");
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse()?;
                        } else if line == "\r\n" {
                            break;
                        }
                    }
                    reader.read_exact(&mut vec![0; length])?;
                    i += connections;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow!("load worker panicked"))??;
    }
    Ok(())
}

/// Measures one running proxy: its VMs, `requests` requests, its VMs again.
pub fn measure(label: &str, proxy: &Proxy, requests: u64) -> Result<VmReport> {
    let before = vms(proxy.pid())?;
    if before.is_empty() {
        bail!("{label}: no wasm memory found in /proc/{}/smaps", proxy.pid());
    }
    let envoy_rss_kib_before = proxy.rss_kib()?;
    let q0 = proxy.requests()?;
    load(proxy.listener, requests, 8).with_context(|| format!("{label}: the memory run's requests"))?;
    let done = proxy.requests()? - q0;
    // The filter's counter; the empty filter (W0) has none.
    let overflow = proxy
        .counter("wasmcustom.grayscope_interface_overflow_total")
        .unwrap_or(0);
    Ok(VmReport {
        label: label.to_owned(),
        requests: done,
        interface_overflow: overflow,
        before,
        after: vms(proxy.pid())?,
        envoy_rss_kib_before,
        envoy_rss_kib_after: proxy.rss_kib()?,
    })
}

/// The section of RESULTS.md.
pub fn markdown(reports: &[VmReport]) -> String {
    let mut md = String::from(
        "\n## Wasm VM memory\n\nEach V8 wasm VM's linear memory, from `/proc/<envoy>/smaps`: the `rw-p` start of each ≥ 4 GiB \
         reservation V8 makes per wasm memory (`memory.size` as mapped, and resident). Envoy with `--concurrency 1` \
         holds three VMs per plugin: the base VM, and the main thread's and the worker's clones; the worker's \
         handles the requests. Requests: gRPC calls over HTTP/1.1 keep-alive naming 1,024 services, four times the \
         default `max_interfaces` (256).\n\n| config | requests | calls counted as `other` | VMs before: size/resident KiB | VMs after: size/resident KiB | Envoy RSS before → after (MiB) |\n|---|---|---|---|---|---|\n",
    );
    let list = |v: &[VmMemory]| {
        v.iter()
            .map(|m| format!("{}/{}", m.size_kib, m.rss_kib))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in reports {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} → {:.0} |\n",
            r.label,
            r.requests,
            r.interface_overflow,
            list(&r.before),
            list(&r.after),
            r.envoy_rss_kib_before as f64 / 1024.0,
            r.envoy_rss_kib_after as f64 / 1024.0
        ));
    }
    md
}
