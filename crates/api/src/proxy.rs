//! Who the client is behind a load balancer: the `--trusted-proxy` CIDRs,
//! and the address an anonymous caller is rate limited by.
//!
//! Without trusted proxies (the default) the client is the TCP peer and
//! forwarded headers are ignored. When the peer is a trusted proxy, the
//! client is the right-most address of `X-Forwarded-For` that is not itself
//! a trusted proxy: each proxy appends the address it received the request
//! from, so every entry left of the first untrusted one (reading from the
//! right) was written by someone we do not trust and may be forged.
//!
//! Only `X-Forwarded-For` is read. `Forwarded` (RFC 7239) is ignored: the
//! usual ingress controllers and cloud load balancers append to
//! `X-Forwarded-For` and pass a client's `Forwarded` through untouched, so
//! honouring both would let a client choose its own key through the header
//! its proxy does not rewrite.
//!
//! Depends on nothing but `std` and `http`'s header map.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`; a bare address
/// is its own /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address. Host bits must be zero, so a
    /// typo such as `10.1.2.3/8` (which would trust far more than it seems
    /// to) is refused rather than silently widened.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR such as 10.0.0.0/8 or fd00::/8"))?;
        let max = max_prefix(network);
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Self { network, prefix };
        if masked(network, prefix) != network {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{prefix}?",
                masked(network, prefix)
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside this network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                masked(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed (empty: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts these networks.
    pub fn new(networks: Vec<Cidr>) -> Self {
        Self(networks)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address for a request from `peer` with `headers`: the
    /// peer itself unless it is a trusted proxy; then the right-most
    /// `X-Forwarded-For` entry that is not a trusted proxy. An entry that is
    /// not an address (`unknown`, garbage) ends the walk at the last trusted
    /// hop, which is then the client: a request with a mangled header
    /// shares its proxy's bucket rather than choosing one. When every entry
    /// is trusted, the left-most is the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Several header lines are one list, in order (RFC 9110 5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:5123`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn trusting(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            cidrs
                .iter()
                .map(|c| Cidr::parse(c).expect("a CIDR"))
                .collect(),
        )
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn cidrs_parse_and_contain_what_they_say() {
        let ten = Cidr::parse("10.0.0.0/8").expect("parses");
        assert!(ten.contains(ip("10.200.3.4")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped counts");
        assert!(!ten.contains(ip("fd00::1")));
        let host = Cidr::parse("192.0.2.7").expect("a bare address");
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("fd00::/8").expect("parses");
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains(ip("8.8.8.8")));
    }

    #[test]
    fn malformed_cidrs_are_refused_with_what_was_meant() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("fd00::/129").is_err());
        assert!(Cidr::parse("ten/8").is_err());
        let err = Cidr::parse("10.1.2.3/8").expect_err("host bits");
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let none = TrustedProxies::default();
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(none.client_ip(ip("10.0.0.5"), &headers), ip("10.0.0.5"));
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address_by_header() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9"), &headers),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let proxies = trusting(&["10.0.0.0/8", "fd00::/8"]);
        // The client forged the first entry; the edge proxy appended the
        // real address; an inner proxy appended the edge's.
        let headers = forwarded(&["1.1.1.1, 203.0.113.7", "10.1.0.1"]);
        assert_eq!(
            proxies.client_ip(ip("10.2.0.1"), &headers),
            ip("203.0.113.7")
        );
        // Ports and brackets are tolerated.
        let headers = forwarded(&["[2001:db8::5]:443, 10.1.0.1:80"]);
        assert_eq!(
            proxies.client_ip(ip("fd00::9"), &headers),
            ip("2001:db8::5")
        );
    }

    #[test]
    fn a_mangled_entry_leaves_the_request_on_its_proxys_address() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let headers = forwarded(&["203.0.113.7, unknown"]);
        assert_eq!(proxies.client_ip(ip("10.2.0.1"), &headers), ip("10.2.0.1"));
        let headers = forwarded(&["203.0.113.7, garbage, 10.1.0.1"]);
        assert_eq!(proxies.client_ip(ip("10.2.0.1"), &headers), ip("10.1.0.1"));
        // No header at all: the proxy itself.
        assert_eq!(
            proxies.client_ip(ip("10.2.0.1"), &HeaderMap::new()),
            ip("10.2.0.1")
        );
    }

    #[test]
    fn when_every_hop_is_trusted_the_left_most_is_the_client() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let headers = forwarded(&["10.9.9.9, 10.1.0.1"]);
        assert_eq!(proxies.client_ip(ip("10.2.0.1"), &headers), ip("10.9.9.9"));
    }
}
