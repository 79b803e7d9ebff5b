//! Who an anonymous call comes from, for its rate limit: the peer address of the connection
//! ([`ClientAddress`]), or — only when that peer is a proxy the operator named as trusted — the
//! address the proxies recorded in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read right to left: each trusted proxy appended the address it saw, so
//! the rightmost address that is *not* a trusted proxy is the client as the outermost trusted
//! proxy saw it; everything left of it was written by the client and is ignored. The `Forwarded`
//! header (RFC 7239) is not read: honouring two headers lets a client spoof through whichever one
//! the proxy does not rewrite, and the proxies commonly deployed (Envoy, NGINX, cloud load
//! balancers) write `X-Forwarded-For`.
//!
//! An IPv6 client is keyed by its /64: a host usually holds a whole /64 and can pick any address
//! in it, so keying by address would hand it 2^64 budgets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use ipnet::{IpNet, Ipv6Net};

use super::context::ClientAddress;

/// The header trusted proxies append the client's address to.
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

/// At most this many `X-Forwarded-For` hops are walked (a chain of proxies is short; a header
/// stuffed with trusted addresses should not cost a long walk).
const MAX_HOPS: usize = 16;

/// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed. Empty by default:
/// without an explicit list the header is ignored, since any client can send it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A trusted-proxy entry that is neither an IP address nor a CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)")]
pub struct InvalidTrustedProxy(String);

impl FromStr for TrustedProxies {
    type Err = InvalidTrustedProxy;

    /// A comma-separated list of addresses and CIDR ranges; empty for none.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| InvalidTrustedProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none (X-Forwarded-For ignored)");
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl TrustedProxies {
    /// Whether `address` is one of the trusted proxies.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The address an anonymous call is attributed to, `None` when the server recorded no peer.
    pub fn client_of(&self, peer: Option<&ClientAddress>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.0.ip().to_canonical();
        if !self.contains(peer) {
            return Some(peer);
        }
        let hops = headers
            .get_all(FORWARDED_FOR_HEADER)
            .iter()
            .rev()
            .flat_map(|line| {
                // A line that is not text cannot be read: it ends the walk like a bad hop.
                line.to_str().unwrap_or("\u{0}").rsplit(',')
            })
            .take(MAX_HOPS);
        let mut client = peer;
        for hop in hops {
            // A hop a trusted proxy wrote but nobody can read: stop at the last proxy we could
            // verify, so the caller shares that proxy's budget rather than picking one.
            let Some(address) = parse_hop(hop.trim()) else {
                return Some(client);
            };
            client = address.to_canonical();
            if !self.contains(client) {
                return Some(client);
            }
        }
        Some(client)
    }
}

/// `192.0.2.7`, `2001:db8::1`, and the forms with a port some proxies write (`192.0.2.7:4711`,
/// `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|at| at.ip()))
}

/// The rate-limit key of a client address: the IPv4 address, or the IPv6 /64 it belongs to.
pub fn client_key(address: Option<IpAddr>) -> String {
    match address.map(|address| address.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => Ipv6Net::new(v6, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
        // Only requests that did not come through the server's listener (tests calling the
        // stack directly) lack a peer; they share one budget.
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::HeaderValue;

    use super::*;

    fn peer(address: &str) -> ClientAddress {
        ClientAddress(SocketAddr::new(address.parse().unwrap(), 50_000))
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(FORWARDED_FOR_HEADER, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    fn ip(address: &str) -> Option<IpAddr> {
        Some(address.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        let headers = forwarded(&["198.51.100.9"]);
        assert_eq!(
            none.client_of(Some(&peer("203.0.113.5")), &headers),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn a_trusted_proxy_chain_is_walked_right_to_left_to_the_first_untrusted_address() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.0.2.1".parse().unwrap();
        // The client forged the leftmost entry; the edge proxy appended the real client; an
        // inner proxy appended the edge proxy.
        let headers = forwarded(&["1.2.3.4, 198.51.100.9", "10.1.1.1"]);
        assert_eq!(
            trusted.client_of(Some(&peer("192.0.2.1")), &headers),
            ip("198.51.100.9")
        );
        // A call straight from an untrusted peer: its header means nothing.
        assert_eq!(
            trusted.client_of(Some(&peer("198.51.100.20")), &headers),
            ip("198.51.100.20")
        );
        // A trusted peer without the header is the client.
        assert_eq!(
            trusted.client_of(Some(&peer("10.9.9.9")), &HeaderMap::new()),
            ip("10.9.9.9")
        );
        // Ports and brackets as some proxies write them; IPv4-mapped IPv6 peers.
        let headers = forwarded(&["[2001:db8::7]:4711, 198.51.100.3:80"]);
        assert_eq!(
            trusted.client_of(Some(&peer("::ffff:10.0.0.1")), &headers),
            ip("198.51.100.3")
        );
        // Garbage where a proxy's entry should be: stop at the last verified proxy.
        let headers = forwarded(&["198.51.100.9, not-an-address"]);
        assert_eq!(
            trusted.client_of(Some(&peer("10.0.0.1")), &headers),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff::9")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.4")), "192.0.2.4");
        assert_eq!(client_key(None), "unknown");
    }

    #[test]
    fn trusted_proxy_lists_parse_addresses_and_ranges_and_refuse_the_rest() {
        let list: TrustedProxies = "10.0.0.0/8,192.0.2.7, fd00::/8,".parse().unwrap();
        assert!(list.contains("10.200.0.1".parse().unwrap()));
        assert!(list.contains("192.0.2.7".parse().unwrap()));
        assert!(!list.contains("192.0.2.8".parse().unwrap()));
        assert!(list.contains("fd00::1".parse().unwrap()));
        assert_eq!(format!("{list:?}"), "10.0.0.0/8,192.0.2.7/32,fd00::/8");
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.internal".parse::<TrustedProxies>().is_err());
    }
}
