#![allow(clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Splits what h2 would read back into frames: (kind, flags, stream, payload).
fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        out.push((
            b[3],
            b[4],
            u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
            b[9..9 + len].to_vec(),
        ));
        b = &b[9 + len..];
    }
    out
}

#[tokio::test]
async fn a_socket_path_authority_becomes_localhost_and_other_frames_pass_untouched() {
    // The client's encoder indexes what it sends, as grpc-core's does: the second request refers to the first
    // one's entries, which only this layer's decoder holds.
    let mut client_hpack = fluke_hpack::Encoder::new();
    let request = |enc: &mut fluke_hpack::Encoder<'_>, authority: &[u8]| {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/grayscope.v1.Collector/ListMethods"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"grpc-timeout", b"5S"),
        ])
    };
    let first = request(&mut client_hpack, b"%2Ftmp%2Fx%2Fagent.sock");
    let second = request(&mut client_hpack, b"%2Ftmp%2Fx%2Fagent.sock");
    let third = request(&mut client_hpack, b"grayscope_agent");
    let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
    let mut wire = PREFACE.to_vec();
    wire.extend(&settings);
    // The first block split over HEADERS (padded, with priority) and a CONTINUATION.
    let (a, b) = first.split_at(7);
    let mut headers = vec![2u8];
    headers.extend_from_slice(&[0, 0, 0, 0, 16]);
    headers.extend_from_slice(a);
    headers.extend_from_slice(&[0, 0]);
    wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &headers));
    wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    wire.extend(&data);
    wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));

    let (mut peer, ours) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        // In small pieces, so frames straddle reads.
        for piece in wire.chunks(5) {
            peer.write_all(piece).await.unwrap();
        }
    });
    let mut fixed = FixAuthority::new(ours);
    let mut out = Vec::new();
    fixed.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();

    assert_eq!(&out[..24], PREFACE);
    let got = frames(&out[24..]);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(frame(got[0].0, got[0].1, got[0].2, &got[0].3), settings);
    assert_eq!(frame(got[2].0, got[2].1, got[2].2, &got[2].3), data);
    // h2's side: a fresh decoder, as h2's would be; nothing was indexed, so each block decodes on its own.
    let mut h2_hpack = fluke_hpack::Decoder::new();
    let mut authority = |(kind, flags, stream, payload): &(u8, u8, u32, Vec<u8>), priority: bool| {
        assert_eq!(*kind, HEADERS);
        assert_ne!(flags & END_HEADERS, 0);
        let block = if priority {
            assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
            &payload[5..]
        } else {
            &payload[..]
        };
        let fields = h2_hpack.decode(block).unwrap();
        assert_eq!(fields.len(), 6, "{fields:?}");
        let value = fields.iter().find(|(n, _)| n == b":authority").unwrap().1.clone();
        (*stream, flags & END_STREAM != 0, String::from_utf8(value).unwrap())
    };
    assert_eq!(authority(&got[1], true), (1, false, "localhost".into()));
    assert_eq!(authority(&got[3], false), (3, true, "localhost".into()));
    assert_eq!(authority(&got[4], false), (5, true, "grayscope_agent".into()));
}

#[tokio::test]
async fn a_frame_inside_a_header_block_ends_the_connection() {
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(HEADERS, 0, 1, &[0x82]));
    wire.extend(frame(0x0, 0, 1, b"x"));
    let (mut peer, ours) = tokio::io::duplex(1024);
    peer.write_all(&wire).await.unwrap();
    drop(peer);
    let mut out = Vec::new();
    let err = FixAuthority::new(ours).read_to_end(&mut out).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_connection_whose_first_authority_is_valid_passes_every_block_as_the_client_encoded_it() {
    // The client indexes what it sends: the second block refers to the first one's entries, so h2 can only decode
    // it if it saw the first block as it was encoded.
    let mut client_hpack = fluke_hpack::Encoder::new();
    let request = |enc: &mut fluke_hpack::Encoder<'_>, authority: &[u8]| {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/grayscope.v1.Collector/Report"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ])
    };
    let first = request(&mut client_hpack, b"localhost");
    let second = request(&mut client_hpack, b"localhost");
    let mut wire = PREFACE.to_vec();
    let sent = [
        frame(HEADERS, END_HEADERS, 1, &first),
        frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &second),
        // Not even looked at any more: an HPACK block this layer could not decode.
        frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0xff, 0xff, 0xff]),
    ];
    for f in &sent {
        wire.extend(f);
    }
    let (mut peer, ours) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(5) {
            peer.write_all(piece).await.unwrap();
        }
    });
    let mut out = Vec::new();
    FixAuthority::new(ours).read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    assert_eq!(out[24..], sent.concat());
    let mut h2_hpack = fluke_hpack::Decoder::new();
    h2_hpack.decode(&first).unwrap();
    let fields = h2_hpack.decode(&second).unwrap();
    assert!(
        fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())),
        "{fields:?}"
    );
}

/// A decompression bomb: one block of 16 KiB that adds a 4,000-byte field to the dynamic table and then refers to it
/// 16,000 times decodes to 64 MB (and the re-encoding doubles it). The decoded list is capped like the block: the
/// connection ends before the list grows past it, whoever the peer is (this layer runs before the uid check).
#[tokio::test]
async fn a_header_block_that_decodes_past_the_cap_ends_the_connection() {
    let mut block = vec![0x40, 3];
    block.extend_from_slice(b"x-a");
    fluke_hpack::encoder::encode_integer_into(4000, 7, 0, &mut block).unwrap();
    block.extend(std::iter::repeat_n(b'a', 4000));
    // Index 62: the newest dynamic-table entry, the one just added.
    block.extend(std::iter::repeat_n(0xBE, 16_000 - block.len()));
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let (mut peer, ours) = tokio::io::duplex(1 << 16);
    let writer = tokio::spawn(async move {
        peer.write_all(&wire).await.unwrap();
    });
    let mut out = Vec::new();
    let result = FixAuthority::new(ours).read_to_end(&mut out).await;
    writer.await.unwrap();
    let err = result.expect_err("the block was decoded and passed on whole");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("header list too large"), "{err}");
    assert!(out.len() <= 24, "{} bytes passed on", out.len());
}
