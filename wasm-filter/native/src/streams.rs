//! Which report call each HTTP/2 stream carries, and its answer so far: the bookkeeping of [`crate::report`],
//! kept apart so it is tested without Envoy.
//!
//! A stream's events can come in either order relative to `start_stream` returning its id: a stream that fails at
//! once may be reset inside `start_stream`, before the caller knows the id's token. So an end that finds no token
//! is remembered, and [`Streams::started`] returns it for the caller to settle.

use std::collections::HashMap;

/// gRPC `UNAVAILABLE`: the stream was reset, or ended without a gRPC status.
pub const UNAVAILABLE: u32 = 14;

#[derive(Debug, Default)]
struct Pending {
    token: Option<u32>,
    grpc_status: Option<u32>,
    /// The stream ended before its token was known: the status to settle it with.
    ended: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Streams {
    by_id: HashMap<u64, Pending>,
}

impl Streams {
    /// `start_stream` returned `id` for the call `token`: `Some(status)` if the stream already ended (settle it now).
    pub fn started(&mut self, id: u64, token: u32) -> Option<u32> {
        let entry = self.by_id.entry(id).or_default();
        entry.token = Some(token);
        let ended = entry.ended;
        if ended.is_some() {
            self.by_id.remove(&id);
        }
        ended
    }

    /// Response headers or trailers of stream `id`: remembers a `grpc-status` among them.
    pub fn headers(&mut self, id: u64, headers: &[(&[u8], &[u8])]) {
        let status = headers
            .iter()
            .find(|(k, _)| *k == b"grpc-status")
            .and_then(|(_, v)| u32::try_from(wasm_filter_core::status::grpc_code(v)?).ok());
        if let Some(s) = status {
            self.by_id.entry(id).or_default().grpc_status = Some(s);
        }
    }

    /// Stream `id` ended (`reset`: without an answer): `Some((token, status))` to settle, or `None` if its token is
    /// not known yet (then [`Self::started`] returns the status).
    pub fn ended(&mut self, id: u64, reset: bool) -> Option<(u32, u32)> {
        let entry = self.by_id.entry(id).or_default();
        let status = if reset {
            UNAVAILABLE
        } else {
            entry.grpc_status.unwrap_or(UNAVAILABLE)
        };
        match entry.token {
            Some(token) => {
                self.by_id.remove(&id);
                Some((token, status))
            }
            None => {
                entry.ended = Some(status);
                None
            }
        }
    }

    /// Streams tracked: started and not ended, or ended before their token was known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_settles_with_the_grpc_status_of_its_trailers() {
        let mut s = Streams::default();
        assert_eq!(s.started(7, 1), None);
        s.headers(7, &[(b":status", b"200"), (b"content-type", b"application/grpc")]);
        s.headers(7, &[(b"grpc-status", b"0")]);
        assert_eq!(s.ended(7, false), Some((1, 0)));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_trailers_only_error_a_missing_status_and_a_reset_drop_the_records() {
        let mut s = Streams::default();
        s.started(1, 10);
        s.headers(1, &[(b":status", b"200"), (b"grpc-status", b" 8 ")]);
        assert_eq!(s.ended(1, false), Some((10, 8)));
        s.started(2, 11);
        s.headers(2, &[(b":status", b"503")]);
        assert_eq!(s.ended(2, false), Some((11, UNAVAILABLE)));
        s.started(3, 12);
        s.headers(3, &[(b"grpc-status", b"0")]);
        assert_eq!(s.ended(3, true), Some((12, UNAVAILABLE)));
        s.started(4, 13);
        s.headers(4, &[(b"grpc-status", b"zero")]);
        assert_eq!(s.ended(4, false), Some((13, UNAVAILABLE)));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_stream_reset_inside_start_stream_is_settled_when_it_returns() {
        let mut s = Streams::default();
        assert_eq!(s.ended(5, true), None);
        assert_eq!(s.started(5, 20), Some(UNAVAILABLE));
        assert_eq!(s.len(), 0);
    }
}
