//! The status of a gRPC-Web call. gRPC-Web carries a call's trailers at the end of the response body, in a frame of
//! their own, since HTTP/1.1 clients cannot read trailers; only a response with no message (a trailers-only error)
//! has its `grpc-status` in the headers. Envoy sees a gRPC-Web response when the application serves gRPC-Web itself,
//! or when Envoy's gRPC-Web filter sits after this one, as Istio puts it after every WasmPlugin.
//!
//! [`TrailerScan`] reads that status from the body as it streams by, a chunk at a time, without buffering it:
//! message frames are skipped by their length, and only the one trailer line that matters is matched. It takes both
//! encodings, binary (`application/grpc-web`) and base64 text (`application/grpc-web-text`, in which every chunk
//! may be padded on its own, as Envoy's gRPC-Web filter writes it), telling them apart by the first byte.
//! <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md>

/// `application/grpc-web`, `application/grpc-web+proto`, `application/grpc-web-text`, ...: anything starting so.
pub fn is_grpc_web(content_type: &[u8]) -> bool {
    const WEB: &[u8] = b"application/grpc-web";
    content_type.len() >= WEB.len() && content_type[..WEB.len()].eq_ignore_ascii_case(WEB)
}

/// The trailer frame's flag bit; a message frame has it clear (its low bit says whether it is compressed).
const TRAILERS: u8 = 0x80;

/// Where the scan is in the stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Reading a frame's 5-byte header: the flags, then the payload length (big-endian), `have` bytes so far.
    Header { have: u8, flags: u8, len: u32 },
    /// Skipping `left` bytes of a message.
    Message { left: u32 },
    /// Reading `left` more bytes of the trailers.
    Trailers { left: u32 },
}

/// Where the scan is in one line of the trailers (`key: value\r\n`), matching only `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// `matched` bytes of `grpc-status` so far, from the start of the line.
    Key { matched: u8 },
    /// After the key: blanks, then the colon.
    Colon,
    /// After the colon: blanks, then the first digit.
    Value,
    /// The status's digits so far; then blanks only.
    Digits { code: u64, done: bool },
    /// A line that is not `grpc-status` (or not a valid one), up to its end.
    Other,
}

const KEY: &[u8] = b"grpc-status";

/// The body's encoding, known from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Unknown,
    Binary,
    /// Base64: the low `bits` of `acc` are decoded and not yet a whole byte.
    Text {
        acc: u32,
        bits: u8,
    },
    /// Neither: the scan gives up (no frame starts with a byte base64 uses, nor does base64 use a frame's first).
    NotGrpcWeb,
}

/// Reads a gRPC-Web response body for the `grpc-status` of its trailer frame. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerScan {
    encoding: Encoding,
    frame: Frame,
    line: Line,
    status: Option<u64>,
}

impl Default for TrailerScan {
    fn default() -> Self {
        Self {
            encoding: Encoding::Unknown,
            frame: Frame::Header {
                have: 0,
                flags: 0,
                len: 0,
            },
            line: Line::Key { matched: 0 },
            status: None,
        }
    }
}

impl TrailerScan {
    /// The `grpc-status` of the trailer frame, once it has been read; the first, if it came twice.
    pub fn status(&self) -> Option<u64> {
        self.status
    }

    /// Whether more of the body can tell nothing: the status was found, or the body is no gRPC-Web.
    pub fn done(&self) -> bool {
        self.status.is_some() || self.encoding == Encoding::NotGrpcWeb
    }

    /// The next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            if self.done() {
                return;
            }
            if self.encoding == Encoding::Unknown {
                self.encoding = match byte {
                    0x00 | 0x01 | 0x80 | 0x81 => Encoding::Binary,
                    _ if sextet(byte).is_some() => Encoding::Text { acc: 0, bits: 0 },
                    _ => Encoding::NotGrpcWeb,
                };
            }
            self.byte(byte);
        }
    }

    /// One byte of the body, in its encoding.
    fn byte(&mut self, byte: u8) {
        match self.encoding {
            Encoding::Binary => self.frame_byte(byte),
            Encoding::Text { acc, bits } => match (byte, sextet(byte)) {
                // Padding ends a group early: its whole bytes are out already, and the next group starts afresh.
                (b'=', _) => self.encoding = Encoding::Text { acc: 0, bits: 0 },
                (_, Some(six)) => {
                    let (acc, bits) = (acc << 6 | u32::from(six), bits + 6);
                    self.encoding = if bits >= 8 {
                        let bits = bits - 8;
                        self.frame_byte((acc >> bits) as u8);
                        Encoding::Text {
                            acc: acc & ((1 << bits) - 1),
                            bits,
                        }
                    } else {
                        Encoding::Text { acc, bits }
                    };
                }
                // Line breaks and other bytes outside the alphabet carry nothing.
                (_, None) => {}
            },
            Encoding::Unknown | Encoding::NotGrpcWeb => {}
        }
    }

    /// One byte of the binary frames.
    fn frame_byte(&mut self, byte: u8) {
        self.frame = match self.frame {
            Frame::Header { have: 0, .. } => Frame::Header {
                have: 1,
                flags: byte,
                len: 0,
            },
            Frame::Header { have, flags, len } => {
                let len = len << 8 | u32::from(byte);
                match (have, flags & TRAILERS != 0) {
                    (1..=3, _) => Frame::Header {
                        have: have + 1,
                        flags,
                        len,
                    },
                    (_, false) if len > 0 => Frame::Message { left: len },
                    (_, true) if len > 0 => {
                        self.line = Line::Key { matched: 0 };
                        Frame::Trailers { left: len }
                    }
                    _ => Frame::Header {
                        have: 0,
                        flags: 0,
                        len: 0,
                    },
                }
            }
            Frame::Message { left } if left > 1 => Frame::Message { left: left - 1 },
            Frame::Trailers { left } => {
                self.line_byte(byte);
                if left > 1 {
                    Frame::Trailers { left: left - 1 }
                } else {
                    // The frame may end without a line break.
                    self.line_byte(b'\n');
                    Frame::Header {
                        have: 0,
                        flags: 0,
                        len: 0,
                    }
                }
            }
            Frame::Message { .. } => Frame::Header {
                have: 0,
                flags: 0,
                len: 0,
            },
        };
    }

    /// One byte of the trailers.
    fn line_byte(&mut self, byte: u8) {
        let blank = byte == b' ' || byte == b'\t';
        self.line = match (self.line, byte) {
            (Line::Digits { code, .. }, b'\r' | b'\n') => {
                self.status = Some(code);
                Line::Key { matched: 0 }
            }
            (_, b'\r' | b'\n') => Line::Key { matched: 0 },
            (Line::Key { matched }, _) if usize::from(matched) < KEY.len() => {
                if byte.to_ascii_lowercase() == KEY[usize::from(matched)] {
                    Line::Key { matched: matched + 1 }
                } else {
                    Line::Other
                }
            }
            (Line::Key { .. } | Line::Colon, b':') => Line::Value,
            (Line::Key { .. } | Line::Colon, _) if blank => Line::Colon,
            (Line::Value, _) if blank => Line::Value,
            (Line::Value, b'0'..=b'9') => Line::Digits {
                code: u64::from(byte - b'0'),
                done: false,
            },
            (Line::Digits { code, done: false }, b'0'..=b'9') => Line::Digits {
                code: code.saturating_mul(10).saturating_add(u64::from(byte - b'0')),
                done: false,
            },
            (Line::Digits { code, .. }, _) if blank => Line::Digits { code, done: true },
            _ => Line::Other,
        };
    }
}

/// The value of one base64 character.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flags];
        f.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Base64 of each piece padded on its own, as Envoy's gRPC-Web filter encodes each chunk of a text response.
    fn text(pieces: &[&[u8]]) -> Vec<u8> {
        use base64::{engine::general_purpose::STANDARD, Engine as _};
        pieces.iter().flat_map(|p| STANDARD.encode(p).into_bytes()).collect()
    }

    fn scan(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = TrailerScan::default();
        for c in chunks {
            s.feed(c);
        }
        s.status()
    }

    /// Every way of cutting `body` in two, and byte by byte: a chunk boundary may fall anywhere.
    fn every_split(body: &[u8]) -> Vec<Option<u64>> {
        let mut seen: Vec<Option<u64>> = (0..=body.len()).map(|at| scan(&[&body[..at], &body[at..]])).collect();
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        seen.push(scan(&bytes));
        seen.dedup();
        seen
    }

    #[test]
    fn the_trailer_frame_after_the_messages_gives_the_status_wherever_the_chunks_split() {
        let mut body = frame(0, b"{\"grpc-status:7\":1}");
        body.extend(frame(1, &[0x80; 300]));
        body.extend(frame(TRAILERS, b"grpc-status:0\r\ngrpc-message:\r\n"));
        assert_eq!(every_split(&body), [Some(0)]);

        let body = frame(TRAILERS, b"grpc-message: not found\r\nGrpc-Status : 5 \r\nx-other: 1");
        assert_eq!(every_split(&body), [Some(5)]);
        // The last line needs no line break; and a status past 16 is kept (the caller names it UNKNOWN).
        assert_eq!(every_split(&frame(TRAILERS, b"grpc-status:42")), [Some(42)]);
    }

    #[test]
    fn text_bodies_padded_chunk_by_chunk_give_the_same_status() {
        let message = frame(0, b"hello, world");
        let trailers = frame(TRAILERS, b"grpc-status:14\r\ngrpc-message:down\r\n");
        let body = text(&[&message, &trailers]);
        assert_eq!(every_split(&body), [Some(14)]);
        let mut with_breaks = body.clone();
        with_breaks.splice(8..8, b"\r\n".iter().copied());
        assert_eq!(scan(&[&with_breaks]), Some(14));
    }

    #[test]
    fn no_status_is_made_up() {
        // Messages only (the stream was cut), a message that spells a status, a trailer frame without one, a
        // malformed value, a key that only starts like it, and a body that is no gRPC-Web at all.
        let cases: [Vec<u8>; 7] = [
            frame(0, b"abc"),
            frame(0, b"\x80\x00\x00\x00\x0egrpc-status:0\r\n"),
            frame(TRAILERS, b"grpc-message:ok\r\n"),
            frame(TRAILERS, b"grpc-status: 1 2\r\n"),
            frame(TRAILERS, b"grpc-status-details-bin:3\r\n"),
            frame(TRAILERS, b"grpc-status:\r\n"),
            b"<html>grpc-status:0</html>".to_vec(),
        ];
        for body in &cases {
            assert_eq!(every_split(body), [None], "{body:?}");
        }
        assert_eq!(scan(&[]), None);
    }

    #[test]
    fn the_first_status_stands() {
        let mut body = frame(TRAILERS, b"grpc-status:3\r\n");
        body.extend(frame(TRAILERS, b"grpc-status:0\r\n"));
        assert_eq!(every_split(&body), [Some(3)]);
    }

    #[test]
    fn grpc_web_content_types() {
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "Application/GRPC-Web-Text",
        ] {
            assert!(is_grpc_web(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-we",
            "text/plain",
        ] {
            assert!(!is_grpc_web(ct.as_bytes()), "{ct}");
        }
    }
}
