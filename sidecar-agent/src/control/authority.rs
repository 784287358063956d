//! `:authority` repair in front of h2, so that every gRPC library can call the agent on its Unix socket.
//!
//! grpc-core (Python `grpcio`, C++, Ruby, PHP), grpc-java and grpcurl send the socket path as `:authority`
//! (grpc-core percent-encodes it: `%2Ftmp%2Fagent.sock`). hyperium/h2 parses `:authority` as a URI authority and
//! resets the stream with `PROTOCOL_ERROR` when it is not one (hyperium/h2#487 would relax that; it has been open
//! for years, and hyperium/hyper#3750 was answered "not a valid authority"). tonic exposes no hook before that
//! check, so the fix has to sit below h2, on the bytes:
//!
//! [`FixAuthority`] wraps the connection's read side. It passes the client preface and every frame through
//! untouched, except header blocks (`HEADERS` + `CONTINUATION`): those it decodes with its own HPACK decoder (the
//! client's compression context lives here now), replaces an `:authority` that is not a URI authority by
//! `localhost` (what grpc-go and tonic send over a Unix socket; the agent serves one virtual host, so nothing
//! depends on the value), and re-encodes every field as a literal *without indexing*. h2's decoder therefore never
//! gains a dynamic-table entry and stays in step whatever the client indexed. Rewriting only the bad blocks is
//! not possible: once one block is re-encoded, the client's and h2's tables differ.
//!
//! Chosen over vendoring a patched h2 (a fork of the HTTP/2 stack to keep up with) and over asking every client to
//! set `grpc.default_authority` (the issue: applications in most languages could not call the agent at all).
//! Cost: one HPACK decode and encode per request header block; DATA frames are copied through as they are.
//!
//! **A connection whose first request has a valid `:authority` is passed through untouched from then on**: its
//! first block goes to h2 as the client encoded it (so h2's HPACK table stays the client's), and no later block is
//! decoded. A gRPC client names one authority per channel (the target's, or `grpc.default_authority`), so the
//! clients that need the repair need it from their first call; the others (tonic, grpc-go, Envoy's gRPC client,
//! the filter's reports) no longer pay an HPACK decode and encode per call, which was most of a `Report`'s fixed
//! cost (fluke-hpack builds its Huffman decoding table for every Huffman-coded string: `:path` is never indexed).

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// What replaces an `:authority` that is not a URI authority.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload written to h2: its default `SETTINGS_MAX_FRAME_SIZE`, which tonic keeps.
const MAX_FRAME: usize = 16_384;
/// h2's default `SETTINGS_HEADER_TABLE_SIZE`: the most the client may use for its dynamic table.
const TABLE_SIZE: usize = 4096;
/// Largest header block gathered, and largest header list decoded from one (its size as HTTP/2 counts it: name,
/// value and 32 bytes per field). HPACK lets a small block refer to one large table entry many times, so the
/// decoded list needs a cap of its own; this layer runs before the peer's uid is checked.
const MAX_BLOCK: usize = 1 << 20;

/// Where the reader is in the client's byte stream.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Bytes of the preface still to pass through.
    Preface(usize),
    /// At a frame header.
    FrameHeader,
    /// Payload bytes of a non-header frame still to pass through.
    Passthrough(usize),
}

/// A header block being gathered across `HEADERS` and `CONTINUATION` frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A connection whose incoming header blocks are re-encoded with a valid `:authority`.
pub struct FixAuthority<S> {
    inner: S,
    state: State,
    /// Read from the peer, not yet processed.
    input: Vec<u8>,
    /// Processed, for h2 to read; `output[out_pos..]` is pending.
    output: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    decoder: fluke_hpack::Decoder<'static>,
    eof: bool,
    /// Frames read since [`FixAuthority::take_frames`]: (type, flags, stream), for the connection's stream count.
    frames: Vec<(u8, u8, u32)>,
    /// Whether the preface and a whole first frame have been read: HTTP/2 has started.
    started: bool,
    /// Whether header blocks pass untouched: the first one had no `:authority` to repair.
    passthrough: bool,
    /// Whether the first header block has been seen.
    decided: bool,
}

impl<S> std::fmt::Debug for FixAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixAuthority")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

// === impl FixAuthority ===

impl<S> FixAuthority<S> {
    /// Wraps the server side of a fresh HTTP/2 connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = fluke_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            state: State::Preface(PREFACE_LEN),
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            block: None,
            decoder,
            eof: false,
            frames: Vec::new(),
            started: false,
            passthrough: false,
            decided: false,
        }
    }

    /// The frames read since the last call: (type, flags, stream id).
    pub fn take_frames(&mut self) -> Vec<(u8, u8, u32)> {
        std::mem::take(&mut self.frames)
    }

    /// Whether the peer has sent the HTTP/2 preface and a first frame.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be processed from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        let mut at = 0;
        loop {
            let rest = &self.input[at..];
            match self.state {
                State::Preface(n) | State::Passthrough(n) => {
                    let k = n.min(rest.len());
                    if k == 0 && n > 0 {
                        break;
                    }
                    self.output.extend_from_slice(&rest[..k]);
                    at += k;
                    self.state = if n == k {
                        State::FrameHeader
                    } else if matches!(self.state, State::Preface(_)) {
                        State::Preface(n - k)
                    } else {
                        State::Passthrough(n - k)
                    };
                }
                State::FrameHeader => {
                    let Some(head) = rest.get(..9) else { break };
                    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let header_frame =
                        !self.passthrough && (kind == HEADERS || (kind == CONTINUATION && self.block.is_some()));
                    if !header_frame {
                        self.started = true;
                        self.frames.push((kind, flags, stream));
                        if self.block.is_some() {
                            return Err(invalid("a frame interrupted a header block"));
                        }
                        self.output.extend_from_slice(head);
                        at += 9;
                        self.state = State::Passthrough(len);
                        continue;
                    }
                    if len > MAX_FRAME {
                        return Err(invalid("header frame larger than the maximum frame size"));
                    }
                    let Some(payload) = rest.get(9..9 + len) else { break };
                    let payload = payload.to_vec();
                    self.started = true;
                    self.frames.push((kind, flags, stream));
                    at += 9 + len;
                    self.header_frame(kind, flags, stream, &payload)?;
                }
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(invalid("HEADERS inside a header block"));
            }
            let mut body = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&p, b) = body.split_first().ok_or_else(|| invalid("bad padding"))?;
                (pad, body) = (usize::from(p), b);
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (p, b) = body.split_at_checked(5).ok_or_else(|| invalid("bad priority"))?;
                priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                body = b;
            }
            let end = body.len().checked_sub(pad).ok_or_else(|| invalid("bad padding"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: body[..end].to_vec(),
            });
        } else {
            let block = self
                .block
                .as_mut()
                .ok_or_else(|| invalid("CONTINUATION outside a block"))?;
            if block.stream != stream {
                return Err(invalid("CONTINUATION of another stream"));
            }
            block.fragment.extend_from_slice(payload);
        }
        if self.block.as_ref().is_some_and(|b| b.fragment.len() > MAX_BLOCK) {
            return Err(invalid("header block too large"));
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.emit(&block)?;
            }
        }
        Ok(())
    }

    /// Decodes a whole block, fixes `:authority`, and writes it out as literals without indexing. The connection's
    /// first block, when it needs no fix, is written as it came and turns the connection to pass-through.
    fn emit(&mut self, block: &Block) -> io::Result<()> {
        let (mut fields, mut size) = (Vec::new(), 0usize);
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                // Past the cap the fields are only counted, so memory stays bounded; the decoder still walks the
                // rest of the block, which keeps its table in step (the connection ends below anyway).
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_BLOCK {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
        if size > MAX_BLOCK {
            return Err(invalid("header list too large"));
        }
        let bad = |name: &[u8], value: &[u8]| name == b":authority" && Authority::try_from(value).is_err();
        let first = !self.decided;
        self.decided = true;
        let encoded = if first && !fields.iter().any(|(n, v)| bad(n, v)) {
            self.passthrough = true;
            block.fragment.clone()
        } else {
            let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
            for (name, value) in &fields {
                let value: &[u8] = if bad(name, value) { REPLACEMENT } else { value };
                // Literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman coding.
                encoded.push(0);
                for s in [name.as_slice(), value] {
                    fluke_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut encoded)?;
                    encoded.extend_from_slice(s);
                }
            }
            encoded
        };
        let mut first = true;
        let mut chunks = encoded.as_slice();
        loop {
            let prefix = if first { block.priority.map_or(0, |_| 5) } else { 0 };
            let (chunk, rest) = chunks.split_at(chunks.len().min(MAX_FRAME - prefix));
            let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
            if first {
                flags |= if block.end_stream { END_STREAM } else { 0 } | block.priority.map_or(0, |_| PRIORITY);
            }
            let len = chunk.len() + prefix;
            self.output.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                if first { HEADERS } else { CONTINUATION },
                flags,
            ]);
            self.output.extend_from_slice(&block.stream.to_be_bytes());
            if let (true, Some(p)) = (first, block.priority) {
                self.output.extend_from_slice(&p);
            }
            self.output.extend_from_slice(chunk);
            first = false;
            chunks = rest;
            if chunks.is_empty() {
                return Ok(());
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 from the peer: {what}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.out_pos);
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // A truncated frame at the end is passed on as it is; h2 sees the connection end either way.
                this.eof = true;
                this.output.append(&mut this.input);
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
