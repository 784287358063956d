//! The Collector's codec: prost's, except that a message whose repeated field holds more than [`MAX_ENTRIES`]
//! entries is refused (`OUT_OF_RANGE`) before it is decoded.
//!
//! Why on the wire, before prost: an entry costs two bytes there (tag and an empty length) and a whole struct once
//! decoded (an empty `CallRecord` is about 400 bytes), so `max_message_bytes` alone bounds what a message weighs
//! in memory only 200 times over. One `Report` of 2,000,000 empty records (4 MB, under the default 4 MiB) took the
//! agent from 32 MB to 1.2 GB. Counting the entries is one walk over the message's top-level keys, skipping
//! every value by its length: nothing is allocated.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::v1;

/// Most entries of a request's repeated field: call records in a `Report`, declarations in a
/// `ReportMethodMetadata`. The filter sends at most `report.max_batch` records in a batch, itself at most 10,000.
pub const MAX_ENTRIES: usize = 10_000;

/// Which repeated field of a message is bounded: its field number, its name for the error, and the bound.
pub trait Entries {
    /// `None`: the message is decoded as prost decodes it.
    const BOUND: Option<(u64, &'static str, usize)> = None;
}

impl Entries for v1::ReportRequest {
    const BOUND: Option<(u64, &'static str, usize)> = Some((2, "calls", MAX_ENTRIES));
}

impl Entries for v1::ReportMethodMetadataRequest {
    const BOUND: Option<(u64, &'static str, usize)> = Some((1, "methods", MAX_ENTRIES));
}

// Answers, and requests of a few singular fields (a field repeated on the wire replaces itself: nothing grows).
impl Entries for v1::ReportResponse {}
impl Entries for v1::ReportMethodMetadataResponse {}
impl Entries for v1::WatchRequest {}
impl Entries for v1::WatchResponse {}
impl Entries for v1::ListMethodsRequest {}
impl Entries for v1::ListMethodsResponse {}

/// [`tonic_prost::ProstCodec`] with the bound of [`Entries`] on what it decodes.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Entries + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstDecoder::default())
    }
}

/// prost's decoder, after a count of the bounded field's entries.
#[derive(Debug, Clone, Default)]
pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Entries> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some((field, name, max)) = U::BOUND {
            // tonic hands over the whole message in one contiguous buffer.
            if entries(prost::bytes::Buf::chunk(src), field, max) > max {
                return Err(Status::out_of_range(format!(
                    "{name}: more than {max} entries in one message; send them in several calls"
                )));
            }
        }
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The length-delimited occurrences of field `field` among the top-level fields of the encoded message `b`,
/// counted up to `max + 1`. A malformed message ends the count where it breaks: prost's decoder then says what is
/// wrong.
fn entries(mut b: &[u8], field: u64, max: usize) -> usize {
    use prost::encoding::decode_varint;
    let mut n = 0;
    while !b.is_empty() && n <= max {
        let Ok(key) = decode_varint(&mut b) else { break };
        let skip = match key & 7 {
            0 => match decode_varint(&mut b) {
                Ok(_) => 0,
                Err(_) => break,
            },
            1 => 8,
            2 => {
                let Ok(len) = decode_varint(&mut b) else { break };
                n += usize::from(key >> 3 == field);
                usize::try_from(len).unwrap_or(usize::MAX)
            }
            5 => 4,
            // Groups (deprecated, never in these messages) and invalid wire types.
            _ => break,
        };
        let Some(rest) = b.get(skip..) else { break };
        b = rest;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_counts_the_bounded_field_only_and_stops_past_the_bound() {
        let record = v1::CallRecord {
            service: "s".into(),
            duration_ns: 7,
            ..v1::CallRecord::default()
        };
        let batch = v1::ReportRequest {
            reporter: "r".into(),
            calls: vec![record; 5],
        }
        .encode_to_vec();
        assert_eq!(entries(&batch, 2, 10), 5);
        assert_eq!(entries(&batch, 1, 10), 1);
        assert_eq!(entries(&batch, 2, 2), 3, "counted up to the bound and one more");
        // Truncated, or garbage: counted as far as it reads (the last record's key and length are there).
        assert_eq!(entries(&batch[..batch.len() - 1], 2, 10), 5);
        // Each record takes 7 bytes: key, length, service (3) and duration (2).
        assert_eq!(entries(&batch[..batch.len() - 7], 2, 10), 4);
        assert_eq!(entries(&[0xff, 0xff, 0xff], 2, 10), 0);
    }
}
