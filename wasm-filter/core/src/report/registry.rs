//! What each reporting root holds, in proxy-wasm shared data, so that the records of a VM Envoy destroyed without
//! letting it drain are not counted as buffered for ever.
//!
//! A reload that replaces the VM (a new module, another VM configuration) destroys the old VM at once, with its
//! calls in flight: neither their answers nor `proxy_on_delete` ever come, and the records it held stay in the
//! buffered gauge (one series for the whole process, which each VM moves by deltas). So each reporting root keeps
//! an entry under one shared-data key ([`KEY`]): its share of the gauge and a heartbeat, written together with the
//! gauge (the metrics move only in a callback whose registry write succeeded, see [`super::Reporter::commit`]). A
//! root that finishes normally removes its entry. Any root, at its tick, claims the entries whose heartbeat has not
//! moved for longer than their bound: it replaces each with a claim marker, in the same compare-and-swap write, and
//! counts its share as dropped and takes it out of the gauge. So exactly one root claims each.
//!
//! Nothing depends on clocks: a heartbeat is a counter, and its age is measured in the observer's own ticks (an
//! observer whose ticks are late only claims later). A root that was claimed while alive (stalled past its bound)
//! finds the marker and reconciles: what it held then was counted as dropped, so those records leave its
//! accounting silently (records settled since its last write are taken back out of its unpublished counts). A
//! false claim therefore moves records from `sent` to `dropped`, never breaks the equation. An entry lost without a
//! marker (the key's creation, the only write without compare-and-swap, raced another) counted nothing: its owner
//! writes it again.
//!
//! Shared data is scoped by `vm_id` in Envoy, and deleted when the last VM of that `vm_id` goes: this covers a
//! replacement that keeps the `vm_id`, not one that changes it.

use std::{collections::HashMap, fmt};

/// The shared-data key (one per `vm_id`): a format change takes another key.
pub const KEY: &str = "grayscope.report.roots.v1";

/// How long a claim marker is kept for its owner to find, in the observer's ticks' time: an owner stalled longer
/// than this after its claim would count its records again.
pub const MARKER_LIFE_MS: u64 = 10 * 60 * 1000;

/// Compare-and-swap attempts per write; a write that loses them all is tried again at the next tick.
pub const ATTEMPTS: usize = 4;

/// The host's shared data (`proxy_get_shared_data`, `proxy_set_shared_data`).
pub trait SharedData {
    type Error: fmt::Display;
    /// The value and its CAS token; `None` when the key was never written.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, Self::Error>;
    /// Writes `value` if the key's CAS token is still `cas` (0: unconditionally); `Ok(false)` on a mismatch.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, Self::Error>;
}

/// One root's entry, or a claim marker (`stale_after_ms` 0) left where a claimed entry was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub owner: u64,
    pub beat: u64,
    pub stale_after_ms: u64,
    pub share: u64,
}

const ENTRY_BYTES: usize = 32;

impl Entry {
    fn is_marker(&self) -> bool {
        self.stale_after_ms == 0
    }
}

/// Entries as little-endian `u64` quadruples; `None` for a value this format did not write.
pub fn decode(value: &[u8]) -> Option<Vec<Entry>> {
    if !value.len().is_multiple_of(ENTRY_BYTES) {
        return None;
    }
    let word = |c: &[u8], i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Some(
        value
            .chunks_exact(ENTRY_BYTES)
            .map(|c| Entry {
                owner: word(c, 0),
                beat: word(c, 1),
                stale_after_ms: word(c, 2),
                share: word(c, 3),
            })
            .collect(),
    )
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        for w in [e.owner, e.beat, e.stale_after_ms, e.share] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Why a registry write did not happen; the metrics then wait for the next one.
#[derive(Debug)]
pub enum SyncError<E> {
    /// Every compare-and-swap attempt lost to another root's write.
    Contended,
    /// The key holds a value this format cannot read.
    Unreadable,
    Host(E),
}

impl<E: fmt::Display> fmt::Display for SyncError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Contended => write!(
                f,
                "shared data {KEY:?}: every compare-and-swap lost ({ATTEMPTS} attempts)"
            ),
            Self::Unreadable => write!(f, "shared data {KEY:?} holds a value of another format"),
            Self::Host(e) => write!(f, "shared data {KEY:?}: {e}"),
        }
    }
}

/// What one successful write changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Records of stale roots claimed (counted as dropped, taken out of the gauge).
    pub orphans_claimed: u64,
    pub roots_claimed: usize,
    /// This root's own share another root had claimed (it was stalled past its bound).
    pub own_share_claimed: Option<u64>,
}

/// This root's membership: its entry's identity and the other entries' heartbeats as it last saw them.
#[derive(Debug)]
pub struct Membership {
    pub(super) owner: u64,
    pub(super) stale_after_ms: u64,
    pub(super) beat: u64,
    /// The share of the last successful write (what a claimer would count), `None` before the first.
    pub(super) written: Option<u64>,
    /// Other entries: (beat last seen, time it has not moved, in this root's ticks).
    seen: HashMap<u64, (u64, u64)>,
    /// Tick time not yet applied to `seen`.
    pub(super) elapsed_ms: u64,
    /// The first write found the host without shared data: the metrics are published as before.
    pub(super) unsupported: bool,
}

impl Membership {
    pub fn new(owner: u64, stale_after_ms: u64) -> Self {
        Self {
            owner,
            stale_after_ms: stale_after_ms.max(1),
            beat: 0,
            written: None,
            seen: HashMap::new(),
            elapsed_ms: 0,
            unsupported: false,
        }
    }

    /// One compare-and-swap cycle: reads the registry, finds this root's entry or its claim marker, claims the
    /// stale entries, and writes this root's entry or removes it. `share_after` gives, from this root's own claimed
    /// share (if any), the share to write (its gauge share right after this callback's publish), or `None` to
    /// remove the entry. Nothing of this root changes unless the write succeeds.
    pub(super) fn write<S: SharedData>(
        &mut self,
        shared: &mut S,
        mut share_after: impl FnMut(Option<u64>) -> Option<u64>,
    ) -> Result<Synced, SyncError<S::Error>> {
        for _ in 0..ATTEMPTS {
            let (entries, cas) = match shared.get(KEY).map_err(SyncError::Host)? {
                Some((value, cas)) => (decode(&value).ok_or(SyncError::Unreadable)?, cas),
                None => (Vec::new(), 0),
            };
            let mut synced = Synced::default();
            let mut next = Vec::with_capacity(entries.len() + 1);
            let mut ages = HashMap::with_capacity(entries.len());
            let mut owner = self.owner;
            for e in &entries {
                if e.owner == self.owner {
                    if e.is_marker() {
                        synced.own_share_claimed = Some(e.share);
                    } else if Some(e.share) != self.written || e.beat != self.beat {
                        // Another root with this identity (an entry of ours lost, the id taken since): ours moves.
                        owner = fresh_owner(&entries, self.owner);
                        next.push(*e);
                    }
                    continue;
                }
                // An entry's age counts from when this root first saw its beat: never from before.
                let age = match self.seen.get(&e.owner) {
                    Some(&(beat, age)) if beat == e.beat => age.saturating_add(self.elapsed_ms),
                    _ => 0,
                };
                ages.insert(e.owner, (e.beat, age));
                if e.is_marker() {
                    if age <= MARKER_LIFE_MS {
                        next.push(*e);
                    }
                } else if age > e.stale_after_ms {
                    synced.orphans_claimed += e.share;
                    synced.roots_claimed += 1;
                    next.push(Entry {
                        stale_after_ms: 0,
                        beat: 0,
                        ..*e
                    });
                    // The marker's age starts now.
                    ages.insert(e.owner, (0, 0));
                } else {
                    next.push(*e);
                }
            }
            let share = share_after(synced.own_share_claimed);
            let beat = self.beat.wrapping_add(1);
            if let Some(share) = share {
                next.push(Entry {
                    owner,
                    beat,
                    stale_after_ms: self.stale_after_ms,
                    share,
                });
            }
            if shared.set(KEY, &encode(&next), cas).map_err(SyncError::Host)? {
                self.owner = owner;
                self.beat = beat;
                self.written = share;
                self.seen = ages;
                self.elapsed_ms = 0;
                return Ok(synced);
            }
        }
        Err(SyncError::Contended)
    }
}

/// An owner id no entry uses.
fn fresh_owner(entries: &[Entry], from: u64) -> u64 {
    let mut owner = from;
    while entries.iter().any(|e| e.owner == owner) {
        owner = owner.wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    owner
}
