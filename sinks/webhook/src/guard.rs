//! The SSRF guard: subscribers choose their URLs, so without it any subscriber could make
//! the pipeline call its own network — the cloud metadata service, an admin port on
//! localhost, a database in the VPC.
//!
//! Addresses are checked where the connection is made, not where the URL is read: an IP
//! literal host is checked before the request (the HTTP connector does not resolve
//! literals), and names go through [`GuardedResolver`], which resolves them and hands the
//! connector only the addresses that pass. A name that resolved to a public address when it
//! was checked and to `10.0.0.5` when connected (DNS rebinding) cannot slip through, since
//! the connector never sees an address the guard did not check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused, or `None` when it may be sent to.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "metadata",
        // 0.0.0.0/8 is "this network": connecting to it reaches the local host.
        _ if a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        // 100.64.0.0/10, shared address space: carrier NAT, and some clouds' internal
        // services (Alibaba's metadata service is 100.100.100.200).
        _ if a == 100 && (b & 0xc0) == 64 => "carrier-grade NAT",
        // 240.0.0.0/4: reserved, never a public host.
        _ if a >= 240 => "reserved",
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 in IPv6 clothing reaches the IPv4 address: judge that one.
    if let Some(v4) = embedded_v4(ip) {
        return refusal_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match () {
        // AWS's metadata service over IPv6 (inside the unique-local range).
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "metadata",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if (first & 0xfe00) == 0xfc00 => "private",
        // fec0::/10, the deprecated site-local range, is private in practice.
        _ if (first & 0xffc0) == 0xfec0 => "private",
        _ if (first & 0xffc0) == 0xfe80 => "link-local",
        _ if ip.is_multicast() => "multicast",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some stacks) and NAT64
/// (`64:ff9b::a.b.c.d`). `::` and `::1` are IPv6's own unspecified and loopback addresses.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// A target that the guard refused: every address it has is internal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The host as written in the URL.
    pub host: String,
    /// Each refused address with the reason.
    pub addrs: Vec<(IpAddr, &'static str)>,
    /// Whether the host is the address itself (no name was resolved).
    pub literal: bool,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self
            .addrs
            .iter()
            .map(|(ip, why)| format!("{ip} ({why})"))
            .collect::<Vec<_>>()
            .join(", ");
        if self.literal {
            write!(f, "target {} is a refused address: {list}", self.host)?;
        } else {
            write!(f, "target {} resolves only to refused addresses: {list}", self.host)?;
        }
        f.write_str("; set allow_private_targets to allow")
    }
}

impl std::error::Error for Refused {}

/// Checks a URL's host (as `Url::host_str` gives it) when it is an IP literal; names are
/// checked by [`GuardedResolver`] when connecting.
///
/// The URL parser has already normalised the odd IPv4 spellings (`0x7f.1`, `2130706433`) to
/// dotted form, so parsing the text catches them too.
pub fn check_literal(host: &str) -> Result<(), Refused> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let Ok(ip) = bare.parse::<IpAddr>() else {
        return Ok(());
    };
    match refusal(ip) {
        None => Ok(()),
        Some(why) => Err(Refused {
            host: host.to_owned(),
            addrs: vec![(ip, why)],
            literal: true,
        }),
    }
}

/// Resolves names with the system resolver and keeps only the addresses the guard accepts,
/// so the connection can only go to a checked address.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port on every address.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| refusal(a.ip()).is_none());
            if allowed.is_empty() && !refused.is_empty() {
                let addrs = refused
                    .iter()
                    .filter_map(|a| Some((a.ip(), refusal(a.ip())?)))
                    .collect();
                return Err(Box::new(Refused {
                    host,
                    addrs,
                    literal: false,
                }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(ip: &str) -> Option<&'static str> {
        refusal(ip.parse().expect("an address"))
    }

    #[test]
    fn internal_ipv4_addresses_are_refused_with_their_reason() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.0.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("240.0.0.1", "reserved"),
        ];
        for (ip, reason) in cases {
            assert_eq!(why(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn internal_ipv6_addresses_and_ipv4_in_ipv6_are_refused() {
        let cases = [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "private"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:10.1.2.3", "private"),
            ("::10.1.2.3", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::192.168.0.1", "private"),
        ];
        for (ip, reason) in cases {
            assert_eq!(why(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(why(ip), None, "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_names_left_to_the_resolver() {
        assert!(check_literal("example.com").is_ok());
        assert!(check_literal("93.184.215.14").is_ok());
        let refused = check_literal("[::ffff:7f00:1]").err().map(|r| r.to_string());
        assert_eq!(
            refused.as_deref(),
            Some(
                "target [::ffff:7f00:1] is a refused address: ::ffff:127.0.0.1 (loopback); set allow_private_targets to allow"
            )
        );
        let named = Refused {
            host: "internal.example".into(),
            addrs: vec![("10.0.0.5".parse().expect("ip"), "private")],
            literal: false,
        };
        assert_eq!(
            named.to_string(),
            "target internal.example resolves only to refused addresses: 10.0.0.5 (private); set allow_private_targets to allow"
        );
    }
}
