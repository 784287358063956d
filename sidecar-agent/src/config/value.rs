//! Parsers for single setting values. Each returns a [`ParseError`] that says what is expected.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{AllowedUids, NetnsFilter};

/// Why a value is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("expected an integer between {min} and {max}")]
    Count { min: u64, max: u64 },
    #[error("expected a duration such as 500ms, 30s, 5m or 1h, at most {max_secs}s")]
    Duration { max_secs: u64 },
    #[error("expected an address such as 127.0.0.1:9464 or [::]:9464")]
    Addr,
    #[error("expected `self`, `all`, a namespace inode number or an absolute path such as /run/netns/NAME")]
    Netns,
    #[error("expected a non-empty path of at most 107 bytes (the Unix socket path limit)")]
    SocketPath,
    #[error("expected a power of two between 4096 and 1073741824 (bytes; a KiB or MiB suffix is allowed)")]
    RingSize,
    #[error("expected an octal file mode such as 0660, at most 0777")]
    Mode,
    #[error("expected `any`, or a comma-separated list of uids and `self` (the agent's own uid), such as `self,0`")]
    Uids,
    #[error("expected a size between {min} and {max} bytes (a KiB or MiB suffix is allowed)")]
    Bytes { min: u64, max: u64 },
    #[error("not a valid log filter: {0}")]
    Log(String),
    #[error("expected a duration of more than 0, such as 500ms, 30s or 5m, at most {max_secs}s")]
    PositiveDuration { max_secs: u64 },
    #[error("expected true or false")]
    Bool,
    #[error("{0}")]
    Source(String),
}

pub(super) fn count(s: &str, min: u64, max: u64) -> Result<u64, ParseError> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or(ParseError::Count { min, max })
}

pub(super) fn boolean(s: &str) -> Result<bool, ParseError> {
    match s.trim() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(ParseError::Bool),
    }
}

pub(super) fn positive_duration(s: &str, max: Duration) -> Result<Duration, ParseError> {
    duration(s, max)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(ParseError::PositiveDuration {
            max_secs: max.as_secs(),
        })
}

pub(super) fn duration(s: &str, max: Duration) -> Result<Duration, ParseError> {
    let err = ParseError::Duration {
        max_secs: max.as_secs(),
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err.clone())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(err),
    };
    if d > max {
        return Err(err);
    }
    Ok(d)
}

pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, ParseError> {
    s.trim().parse().map_err(|_| ParseError::Addr)
}

pub(super) fn netns(s: &str) -> Result<NetnsFilter, ParseError> {
    match s.trim() {
        "self" => Ok(NetnsFilter::Own),
        "all" => Ok(NetnsFilter::All),
        p if p.starts_with('/') => Ok(NetnsFilter::Path(PathBuf::from(p))),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|&n| n != 0)
            .map(NetnsFilter::Inode)
            .ok_or(ParseError::Netns),
    }
}

pub(super) fn socket_path(s: &str) -> Result<PathBuf, ParseError> {
    if s.is_empty() || s.len() > 107 || s.contains('\0') {
        return Err(ParseError::SocketPath);
    }
    Ok(PathBuf::from(s))
}

/// `4096`, `256KiB`, `4MiB`.
fn size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    num.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

pub(super) fn ring_size(s: &str) -> Result<u64, ParseError> {
    size(s)
        .filter(|n| n.is_power_of_two() && (4096..=1 << 30).contains(n))
        .ok_or(ParseError::RingSize)
}

pub(super) fn bytes(s: &str, min: u64, max: u64) -> Result<u64, ParseError> {
    size(s)
        .filter(|n| (min..=max).contains(n))
        .ok_or(ParseError::Bytes { min, max })
}

pub(super) fn mode(s: &str) -> Result<u32, ParseError> {
    let s = s.trim();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ParseError::Mode);
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|&m| m <= 0o777)
        .ok_or(ParseError::Mode)
}

pub(super) fn uids(s: &str) -> Result<AllowedUids, ParseError> {
    let s = s.trim();
    if s == "any" {
        return Ok(AllowedUids::Any);
    }
    let (mut own, mut uids) = (false, Vec::new());
    for part in s.split(',').map(str::trim) {
        match part {
            "self" => own = true,
            n => uids.push(n.parse::<u32>().map_err(|_| ParseError::Uids)?),
        }
    }
    Ok(AllowedUids::Only { own, uids })
}

pub(super) fn log_filter(s: &str) -> Result<(), ParseError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(drop)
        .map_err(|e| ParseError::Log(e.to_string()))
}
