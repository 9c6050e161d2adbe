//! Which push endpoints the notifier may contact (the SSRF guard).
//!
//! A push endpoint is a URL a user hands us, and the notifier POSTs to it
//! from inside the network: unchecked, it is a way to reach internal
//! services (security review H-1). An endpoint is accepted, at registration
//! and again before every request, only when
//!
//! - its scheme is `https` and it carries no user name or password;
//! - its host matches the allow-list of push-service host suffixes
//!   ([`DEFAULT_ALLOWED_HOSTS`] unless the operator sets
//!   `NOTIFIER_PUSH_ALLOWED_HOSTS`): `example.com` matches `example.com`
//!   and `a.example.com`; an entry allows port 443 only, unless it names a
//!   port (`push.example:8443`) or any port (`push.example:*`);
//! - every address its host resolves to is public: loopback, private
//!   (RFC 1918), link-local (cloud metadata), unique-local, CGNAT,
//!   unspecified, multicast, documentation, benchmarking and reserved
//!   ranges are refused, IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is
//!   checked as IPv4, unless an operator allows a network explicitly
//!   (`NOTIFIER_PUSH_ALLOWED_NETWORKS`: the tests' push service on
//!   loopback).
//!
//! At connect time the HTTP client resolves names through
//! [`FilteringResolver`], which drops refused addresses, so a name that
//! resolved to a public address at registration and to an internal one
//! later (DNS rebinding) still cannot be reached. IP-literal hosts skip the
//! resolver; they are checked by [`EndpointPolicy::check`] before each
//! request. The client follows no redirects and speaks HTTPS only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

/// The public push services browsers use: Google (Chrome, Edge on
/// Android, most Chromium browsers), Mozilla (Firefox), Microsoft (Edge on
/// Windows), Apple (Safari).
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &[
    "fcm.googleapis.com",
    "android.googleapis.com",
    "push.services.mozilla.com",
    "notify.windows.com",
    "push.apple.com",
];

/// Why an endpoint is refused (the text goes to the user as the reason of
/// a `validation_failed` on `endpoint`, and into dead-letter records).
pub type Refusal = &'static str;

/// Which ports an allow-list entry admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    Https,
    One(u16),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    suffix: String,
    ports: Ports,
}

impl HostRule {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().trim_start_matches('.').to_ascii_lowercase();
        let (host, ports) = match entry.rsplit_once(':') {
            // An IPv6 literal without a port has colons but no brackets.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let ports = match p {
                    "*" => Ports::Any,
                    p => Ports::One(
                        p.parse()
                            .map_err(|_| format!("{entry:?}: the port is not a number or *"))?,
                    ),
                };
                (h.to_owned(), ports)
            }
            _ => (entry.clone(), Ports::Https),
        };
        if host.is_empty() {
            return Err(format!("{entry:?}: no host"));
        }
        Ok(Self {
            suffix: host,
            ports,
        })
    }

    fn admits(&self, host: &str, port: u16) -> bool {
        let name_ok = host == self.suffix
            || (host.len() > self.suffix.len()
                && host.ends_with(&self.suffix)
                && host.as_bytes()[host.len() - self.suffix.len() - 1] == b'.');
        let port_ok = match self.ports {
            Ports::Https => port == 443,
            Ports::One(p) => port == p,
            Ports::Any => true,
        };
        name_ok && port_ok
    }
}

/// The allow-list and the address filter.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    hosts: Vec<HostRule>,
    networks: Vec<IpNet>,
}

impl EndpointPolicy {
    /// From the operator's settings: host entries (empty: the
    /// [`DEFAULT_ALLOWED_HOSTS`]) and networks allowed although not public.
    pub fn new(hosts: &[String], networks: &[String]) -> Result<Self, String> {
        let hosts = if hosts.is_empty() {
            DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| HostRule::parse(h))
                .collect::<Result<_, _>>()?
        } else {
            hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| HostRule::parse(h))
                .collect::<Result<_, _>>()?
        };
        let networks = networks
            .iter()
            .filter(|n| !n.trim().is_empty())
            .map(|n| {
                let n = n.trim();
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{n:?} is not a network (CIDR) or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { hosts, networks })
    }

    /// Checks an endpoint's text (scheme, credentials, allow-list, and the
    /// address when the host is an IP literal); returns the parsed URL.
    /// Names are checked against their addresses by [`Self::resolve`].
    pub fn check(&self, endpoint: &str) -> Result<Url, Refusal> {
        let url = Url::parse(endpoint).map_err(|_| "must be an absolute https URL")?;
        if url.scheme() != "https" {
            return Err("must be an absolute https URL");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials");
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let host = url
            .host_str()
            .ok_or("must be an absolute https URL")?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err("must be an absolute https URL");
        }
        // The URL parser normalises IPv4 spellings (`0x7f.1`) to dotted
        // quads and puts IPv6 literals in brackets.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if !self.hosts.iter().any(|r| r.admits(&host, port)) {
            return Err("is not a known push service");
        }
        if let Some(ip) = literal {
            if !self.address_allowed(ip) {
                return Err("points to a private or reserved address");
            }
        }
        Ok(url)
    }

    /// Whether the notifier may connect to `ip`.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// Resolves `host` and keeps the allowed addresses; an error when none
    /// is left (or the name does not resolve).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| "has a host that does not resolve")?
            .collect();
        if found.is_empty() {
            return Err("has a host that does not resolve");
        }
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| self.address_allowed(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err("points to a private or reserved address");
        }
        Ok(allowed)
    }

    /// The full check at registration: [`Self::check`], then every address
    /// of a named host must be allowed (a name with one internal address
    /// among public ones is refused too: the client might pick it).
    pub async fn check_registration(&self, endpoint: &str) -> Result<(), Refusal> {
        let url = self.check(endpoint)?;
        let Some(name) = url.host_str() else {
            return Err("must be an absolute https URL");
        };
        if !name.starts_with('[') && name.parse::<IpAddr>().is_err() {
            let port = url.port_or_known_default().unwrap_or(443);
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| "has a host that does not resolve")?
                .collect();
            if found.is_empty() {
                return Err("has a host that does not resolve");
            }
            if !found.iter().all(|a| self.address_allowed(a.ip())) {
                return Err("points to a private or reserved address");
            }
        }
        Ok(())
    }
}

/// The HTTP client's resolver: only allowed addresses come out.
#[derive(Debug, Clone)]
pub struct FilteringResolver(pub Arc<EndpointPolicy>);

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            match policy.resolve(&host, 0).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(why) => Err(format!("push endpoint host {why}").into()),
            }
        })
    }
}

/// Whether an address is on the public internet (not special-purpose).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o0 == 0 // "this network"
        || (o0 == 100 && (o1 & 0xc0) == 64) // CGNAT 100.64/10
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || (o0 == 198 && (o1 & 0xfe) == 18) // benchmarking 198.18/15
        || o0 >= 240) // reserved
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // Teredo, ORCHID, benchmarking…
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard 100::/64
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], networks: &[&str]) -> EndpointPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        EndpointPolicy::new(&s(hosts), &s(networks)).unwrap()
    }

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a01:203",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "8.8.8.8",
            "142.250.1.1",
            "100.128.0.1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn only_https_on_allowed_hosts_and_ports() {
        let p = policy(&[], &[]);
        assert!(p.check("https://fcm.googleapis.com/fcm/send/abc").is_ok());
        assert!(p
            .check("https://updates.push.services.mozilla.com/wpush/v2/x")
            .is_ok());
        assert!(p.check("https://FCM.googleapis.com./x").is_ok());
        for bad in [
            "http://fcm.googleapis.com/x",
            "https://fcm.googleapis.com:8443/x",
            "https://user:pw@fcm.googleapis.com/x",
            "https://evilfcm.googleapis.com.evil.test/x",
            "https://xfcm.googleapis.com/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://localhost/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "ftp://fcm.googleapis.com/x",
            "not a url",
            "https:///x",
        ] {
            assert!(p.check(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn operator_entries_name_ports_and_networks() {
        let p = policy(&["localhost:*", "push.example:8443", "127.0.0.1:*"], &[]);
        assert!(p.check("https://localhost:1234/p").is_ok());
        assert!(p.check("https://push.example:8443/p").is_ok());
        assert!(p.check("https://a.push.example:8443/p").is_ok());
        assert!(p.check("https://push.example/p").is_err());
        // An allowed host that is a loopback literal is still refused…
        assert!(p.check("https://127.0.0.1:9/p").is_err());
        // …unless its network is allowed too.
        let p = policy(&["127.0.0.1:*"], &["127.0.0.0/8"]);
        assert!(p.check("https://127.0.0.1:9/p").is_ok());
        assert!(p.address_allowed("127.0.0.2".parse().unwrap()));
        assert!(!p.address_allowed("10.0.0.1".parse().unwrap()));
        let p = policy(&["[::1]:*"], &["::1"]);
        assert!(p.check("https://[::1]:9/p").is_ok());
        assert!(EndpointPolicy::new(&["x:y".into()], &[]).is_err());
        assert!(EndpointPolicy::new(&[], &["10.0.0.0/99".into()]).is_err());
    }

    #[tokio::test]
    async fn names_are_checked_by_their_addresses() {
        let closed = policy(&["localhost:*"], &[]);
        assert_eq!(
            closed.check_registration("https://localhost:9/p").await,
            Err("points to a private or reserved address")
        );
        assert!(closed.resolve("localhost", 9).await.is_err());
        let open = policy(&["localhost:*"], &["127.0.0.0/8", "::1/128"]);
        assert!(open
            .check_registration("https://localhost:9/p")
            .await
            .is_ok());
        assert!(!open.resolve("localhost", 9).await.unwrap().is_empty());
    }
}
