//! The compiled kernel programs, embedded at build time by `build.rs`.

use crate::error::Error;

/// `ebpf/conn_track.bpf.c` as compiled by `build.rs` (empty when built with `GRAYSCOPE_SKIP_EBPF_BUILD=1`).
static CONN_TRACK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conn_track.bpf.o"));

/// The connection-tracking object, or an error when the build skipped it.
pub fn conn_track() -> Result<&'static [u8], Error> {
    if CONN_TRACK.is_empty() {
        return Err(Error::EmptyObject {
            name: "conn_track.bpf.o",
        });
    }
    Ok(CONN_TRACK)
}
