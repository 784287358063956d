//! A socket address as the table stores it: 20 bytes, where std's `SocketAddr` takes 32 (room for an IPv6 flow
//! label and scope id, which neither kernel events nor call records carry). Two per connection were two fifths of
//! a table entry, and memory per connection is what bounds the table on a busy node.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// An IPv4 or IPv6 address and port. IPv4 and IPv4-mapped IPv6 stay distinct, as in `SocketAddr`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv4 in the first 4 bytes (the rest zero), or IPv6.
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

impl Endpoint {
    pub fn port(self) -> u16 {
        self.port
    }

    pub fn ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.ip))
        } else {
            IpAddr::V4(Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]))
        }
    }
}

/// Drops an IPv6 flow label and scope id (always 0 for the table's addresses).
impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        let (ip, v6) = match a.ip() {
            IpAddr::V4(v4) => {
                let mut ip = [0; 16];
                ip[..4].copy_from_slice(&v4.octets());
                (ip, false)
            }
            IpAddr::V6(v6) => (v6.octets(), true),
        };
        Self { ip, port: a.port(), v6 }
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(e: Endpoint) -> Self {
        SocketAddr::new(e.ip(), e.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_families_apart() {
        for a in [
            "127.0.0.1:80",
            "10.1.2.3:65535",
            "[::1]:443",
            "[fe80::1:2]:0",
            "[::ffff:127.0.0.1]:80",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(SocketAddr::from(Endpoint::from(a)), a);
            assert_eq!(Endpoint::from(a).to_string(), a.to_string());
        }
        let v4 = Endpoint::from("127.0.0.1:80".parse::<SocketAddr>().unwrap());
        let mapped = Endpoint::from("[::ffff:127.0.0.1]:80".parse::<SocketAddr>().unwrap());
        assert_ne!(v4, mapped);
        assert_eq!(std::mem::size_of::<Endpoint>(), 20);
    }
}
