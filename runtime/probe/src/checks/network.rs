//! Network view: interfaces, default routes and whether outside addresses are routable.
//!
//! Nothing is sent anywhere: reachability is a route lookup (`connect` on a UDP socket, which
//! only picks a route and a source address), and the addresses are documentation ranges
//! (TEST-NET-3, 2001:db8::/32) that no one answers on.

use std::net::{SocketAddr, UdpSocket};

use super::read_trimmed;
use crate::errno::io_error_name;
use crate::observations::{Network, RouteCheck};

/// IPv4 documentation address (TEST-NET-3, RFC 5737) whose route is looked up.
pub const EXTERNAL_IPV4: &str = "203.0.113.1:9";
/// IPv6 documentation address (RFC 3849) whose route is looked up.
pub const EXTERNAL_IPV6: &str = "[2001:db8::1]:9";

/// `RTF_REJECT`: an unreachable route (the kernel lists one for IPv6 on `lo`).
const RTF_REJECT: u32 = 0x0200;

/// Interface names from a `/proc/net/dev` text.
pub fn parse_interfaces(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

/// Whether a `/proc/net/route` text has a default route.
pub fn has_ipv4_default(text: &str) -> bool {
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000"
    })
}

/// Whether a `/proc/net/ipv6_route` text has a usable default route.
pub fn has_ipv6_default(text: &str) -> bool {
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 10
            && fields[0].chars().all(|c| c == '0')
            && fields[1] == "00"
            && u32::from_str_radix(fields[8], 16).is_ok_and(|flags| flags & RTF_REJECT == 0)
            && fields[9] != "lo"
    })
}

/// Looks up the route to `address` without sending anything.
pub fn route_check(address: &str) -> RouteCheck {
    let target: SocketAddr = address.parse().expect("a valid built-in socket address");
    let local = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let result = UdpSocket::bind(local).and_then(|socket| socket.connect(target));
    RouteCheck {
        address: target.ip().to_string(),
        routable: result.is_ok(),
        errno: result.err().map(|e| io_error_name(&e)),
    }
}

/// The probe's network view.
pub fn network() -> Result<Network, String> {
    Ok(Network {
        interfaces: parse_interfaces(&read_trimmed("/proc/net/dev")?),
        ipv4_default_route: read_trimmed("/proc/net/route").is_ok_and(|t| has_ipv4_default(&t)),
        ipv6_default_route: read_trimmed("/proc/net/ipv6_route")
            .is_ok_and(|t| has_ipv6_default(&t)),
        external_ipv4: route_check(EXTERNAL_IPV4),
        external_ipv6: route_check(EXTERNAL_IPV6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interfaces_and_routes() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n  eth0: 4 5 6\n";
        assert_eq!(parse_interfaces(dev), ["lo", "eth0"]);
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert!(has_ipv4_default(route));
        assert!(!has_ipv4_default(route.lines().next().unwrap()));
        let lo_reject = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                         00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo";
        assert!(!has_ipv6_default(lo_reject));
        let real = lo_reject.replace("00200200 lo", "00000003 eth0");
        assert!(has_ipv6_default(&real));
    }

    #[test]
    fn route_lookup_matches_the_routing_table() {
        // Compares two views of this host's own routing table; sends nothing.
        let view = network().unwrap();
        assert!(view.interfaces.iter().any(|name| name == "lo"));
        assert_eq!(view.external_ipv4.routable, view.ipv4_default_route);
        assert_eq!(view.external_ipv4.address, "203.0.113.1");
    }
}
