//! Pure validators for configuration values: domain names (RFC 1035 LDH labels), hosts,
//! `host:port` routes, socket addresses, HTTPS URLs, RFC 6125 name matching, dates.

use std::net::{IpAddr, SocketAddr};

use crate::core::address::{AddressError, check_domain};

/// Validates a DNS domain name as written in configuration, with the rules of
/// [`crate::core::address::check_domain`] (LDH labels, ≤ 63 bytes a label, ≤ 253 bytes, ASCII,
/// not an IP literal). Returns the name in lowercase.
pub(crate) fn domain(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.parse::<IpAddr>().is_ok() || (s.starts_with('[') && s.ends_with(']')) {
        return Err(format!(
            "{s:?} is an IP address; a domain name is needed here"
        ));
    }
    let lower = s.to_ascii_lowercase();
    match check_domain("domain", &lower) {
        Ok(()) => Ok(lower),
        Err(AddressError::InvalidDomain { reason, .. }) => {
            Err(format!("{s:?} is not a valid domain name: {reason}"))
        }
        Err(other) => Err(other.to_string()),
    }
}

/// A host: an IP address literal or a domain name. Returns it normalized (lowercase name, or
/// the address's canonical text).
pub(crate) fn host(s: &str) -> Result<String, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') && !s.is_empty() {
        return Err(format!("{s:?} is not a valid IP address or host name"));
    }
    domain(s).map_err(|e| {
        if e.starts_with('"') {
            format!("{s:?} is not a valid host name or IP address")
        } else {
            e
        }
    })
}

/// A TCP port number 1–65535.
pub(crate) fn port(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port must be 1–65535, not {n}")),
    }
}

/// A socket address `IP:port` (IPv6 in brackets) with a non-zero port.
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    match s.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("port must be 1–65535, not 0 in {s:?}")),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "{s:?} is not a socket address (IP:port, e.g. \"0.0.0.0:5061\" or \"[::]:5061\")"
        )),
    }
}

/// A DNS server `IP:port` (IPv6 in brackets) with a non-zero port; a bare IP address gets a
/// hint with port 53.
pub(crate) fn dns_server(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    match t.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("port must be 1–65535, not 0 in {s:?}")),
        Ok(a) => Ok(a),
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => Err(format!(
                "{s:?} has no port (did you mean \"{}\"?)",
                SocketAddr::new(ip, 53)
            )),
            Err(_) => Err(format!(
                "{s:?} is not a DNS server address (IP:port, e.g. \"192.0.2.53:53\" or \"[2001:db8::53]:53\")"
            )),
        },
    }
}

/// A static route `host:port` (`[v6]:port` for IPv6); host is a domain or IP literal.
pub(crate) fn edge(s: &str) -> Result<(String, u16), String> {
    let shape = || {
        format!("{s:?} is not host:port (e.g. \"sip.contoso.com:5061\" or \"[2001:db8::1]:5061\")")
    };
    let (host_part, port_part) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(shape)?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{h:?} in {s:?} is not an IPv6 address"));
        }
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(shape)?;
        if h.contains(':') {
            return Err(format!(
                "{s:?}: write an IPv6 address in brackets, as [addr]:port"
            ));
        }
        (h, p)
    };
    if port_part.is_empty() || !port_part.chars().all(|c| c.is_ascii_digit()) {
        return Err(shape());
    }
    let n: i64 = port_part.parse().map_err(|_| shape())?;
    let p = port(n)?;
    let h = host(host_part)?;
    Ok((h, p))
}

/// An `https://` URL with a host and no whitespace or control characters.
pub(crate) fn https_url(s: &str) -> Result<String, String> {
    let scheme_ok = s
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
    if !scheme_ok {
        return Err(format!("must be an https:// URL, not {s:?}"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} contains whitespace or control characters"));
    }
    let rest = s.get(8..).unwrap_or("");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_only = if host_port.starts_with('[') {
        host_port
            .split_once(']')
            .map_or(host_port, |(h, _)| h.trim_start_matches('['))
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host_only.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    host(host_only).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(s.to_owned())
}

/// RFC 6125 §6.4: does the reference identifier `name` match the presented DNS-ID `pattern`?
/// A wildcard is accepted only as the whole left-most label (`*.example.org`), matches exactly
/// one label, and needs at least two labels after it.
pub(crate) fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = pattern.strip_prefix("*.") {
        if !rest.contains('.') || rest.contains('*') {
            return false;
        }
        match name.split_once('.') {
            Some((first, name_rest)) => !first.is_empty() && name_rest == rest,
            None => false,
        }
    } else {
        !pattern.contains('*') && pattern == name
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
pub(crate) fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let ok = [
            ("example.org", "example.org"),
            ("Sip.Example.ORG", "sip.example.org"),
            ("localhost", "localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("a-b.c1.com", "a-b.c1.com"),
        ];
        for (input, want) in ok {
            assert_eq!(domain(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            ("", "must not be empty"),
            (
                "127.0.0.1",
                "\"127.0.0.1\" is an IP address; a domain name is needed here",
            ),
            (
                "::1",
                "\"::1\" is an IP address; a domain name is needed here",
            ),
            (
                "example.org.",
                "\"example.org.\" is not a valid domain name: it must not end with a dot",
            ),
            (
                "a..b",
                "\"a..b\" is not a valid domain name: it has an empty label (leading or doubled dot)",
            ),
            (
                "under_score.org",
                "\"under_score.org\" is not a valid domain name: it contains '_' (only letters, digits, '-' and '.' are allowed)",
            ),
            (
                "-a.org",
                "\"-a.org\" is not a valid domain name: label \"-a\" begins or ends with '-'",
            ),
            (
                "bücher.de",
                "\"bücher.de\" is not a valid domain name: it is not ASCII (write internationalised domains in their A-label xn-- form)",
            ),
            (
                "a.123",
                "\"a.123\" is not a valid domain name: it is an IP address literal, not a domain name",
            ),
            (
                "sip.example.org:5061",
                "\"sip.example.org:5061\" is not a valid domain name: it contains ':' (only letters, digits, '-' and '.' are allowed)",
            ),
        ];
        for (input, want) in bad {
            assert_eq!(domain(input), Err(want.to_owned()), "{input}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(domain(&long_label).is_err());
        let long_name = format!("{}org", "abcdefghi.".repeat(26));
        assert!(domain(&long_name).is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host("127.0.0.1").as_deref(), Ok("127.0.0.1"));
        assert_eq!(host("::1").as_deref(), Ok("::1"));
        assert_eq!(host("XMPP.example.org").as_deref(), Ok("xmpp.example.org"));
        assert_eq!(
            host("300.1.1.1"),
            Err("\"300.1.1.1\" is not a valid IP address or host name".to_owned())
        );
        assert_eq!(
            host("a b"),
            Err("\"a b\" is not a valid host name or IP address".to_owned())
        );
    }

    #[test]
    fn ports() {
        assert_eq!(port(5061), Ok(5061));
        assert_eq!(port(65535), Ok(65535));
        assert_eq!(port(0), Err("port must be 1–65535, not 0".to_owned()));
        assert_eq!(
            port(70000),
            Err("port must be 1–65535, not 70000".to_owned())
        );
        assert_eq!(port(-1), Err("port must be 1–65535, not -1".to_owned()));
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(socket_addr("0.0.0.0:5061").map(|a| a.port()), Ok(5061));
        assert!(socket_addr("[::]:5061").is_ok());
        assert_eq!(
            socket_addr("0.0.0.0:0"),
            Err("port must be 1–65535, not 0 in \"0.0.0.0:0\"".to_owned())
        );
        assert_eq!(
            socket_addr("localhost:5061"),
            Err("\"localhost:5061\" is not a socket address (IP:port, e.g. \"0.0.0.0:5061\" or \"[::]:5061\")".to_owned())
        );
    }

    #[test]
    fn dns_servers() {
        assert_eq!(
            dns_server(" 192.0.2.53:53 ").map(|a| a.to_string()),
            Ok("192.0.2.53:53".to_owned())
        );
        assert_eq!(
            dns_server("[2001:db8::53]:5353").map(|a| a.to_string()),
            Ok("[2001:db8::53]:5353".to_owned())
        );
        assert_eq!(
            dns_server("192.0.2.53:0"),
            Err("port must be 1–65535, not 0 in \"192.0.2.53:0\"".to_owned())
        );
        assert_eq!(
            dns_server("192.0.2.53"),
            Err("\"192.0.2.53\" has no port (did you mean \"192.0.2.53:53\"?)".to_owned())
        );
        assert_eq!(
            dns_server("::1"),
            Err("\"::1\" has no port (did you mean \"[::1]:53\"?)".to_owned())
        );
        assert_eq!(
            dns_server("ns1.example.org:53"),
            Err("\"ns1.example.org:53\" is not a DNS server address (IP:port, e.g. \"192.0.2.53:53\" or \"[2001:db8::53]:53\")".to_owned())
        );
        assert!(dns_server("::1:53").is_err());
        assert!(dns_server("192.0.2.53:65536").is_err());
    }

    #[test]
    fn edges() {
        assert_eq!(
            edge("SIP.contoso.com:5061"),
            Ok(("sip.contoso.com".to_owned(), 5061))
        );
        assert_eq!(edge("192.0.2.1:5061"), Ok(("192.0.2.1".to_owned(), 5061)));
        assert_eq!(
            edge("[2001:db8::1]:5061"),
            Ok(("2001:db8::1".to_owned(), 5061))
        );
        assert_eq!(
            edge("sip.contoso.com"),
            Err("\"sip.contoso.com\" is not host:port (e.g. \"sip.contoso.com:5061\" or \"[2001:db8::1]:5061\")".to_owned())
        );
        assert_eq!(
            edge("sip.contoso.com:99999"),
            Err("port must be 1–65535, not 99999".to_owned())
        );
        assert_eq!(
            edge("2001:db8::1:5061"),
            Err(
                "\"2001:db8::1:5061\": write an IPv6 address in brackets, as [addr]:port"
                    .to_owned()
            )
        );
        assert!(edge("bad_host:5061").is_err());
        assert!(edge("host:").is_err());
        assert!(edge("host:+5").is_err());
    }

    #[test]
    fn urls() {
        assert!(https_url("https://example.org/brand16.png").is_ok());
        assert!(https_url("HTTPS://example.org:8443/i.png?x=1").is_ok());
        assert_eq!(
            https_url("http://example.org/i.png"),
            Err("must be an https:// URL, not \"http://example.org/i.png\"".to_owned())
        );
        assert_eq!(
            https_url("https:///i.png"),
            Err("\"https:///i.png\" has no host".to_owned())
        );
        assert!(https_url("https://exa mple.org/").is_err());
    }

    #[test]
    fn rfc6125_matching() {
        let cases = [
            ("sip.example.org", "sip.example.org", true),
            ("SIP.Example.org", "sip.example.org", true),
            ("*.example.org", "sip.example.org", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", "a.sip.example.org", false),
            ("*.org", "example.org", false),
            ("s*.example.org", "sip.example.org", false),
            ("sip.*.org", "sip.example.org", false),
            ("example.org", "sip.example.org", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(dns_name_matches(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }
}
