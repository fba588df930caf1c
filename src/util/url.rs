//! Checks of the URLs zlh is configured with: control plane by IP (DESIGN invariant 7),
//! no user-info, no address a credential must never be sent to.

/// The host of an http(s) URL exactly as written (IPv6 without brackets). A URL with
/// user-info (`http://10.0.0.1:x@evil.com/`) is refused: what it names is not what
/// a quick read of it says.
pub fn url_host_literal(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{url}' must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "'{url}' carries user-info (a '@' before the host); credentials do not belong in the URL"
        ));
    }
    if authority.contains('\\')
        || authority
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "'{url}' has characters that do not belong in a host"
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    if host.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    Ok(host)
}

/// An address a control-plane endpoint that receives credentials may have: never
/// unspecified, link-local, multicast or broadcast; loopback only when allowed.
pub fn check_endpoint_ip(ip: std::net::IpAddr, allow_loopback: bool) -> Result<(), String> {
    use std::net::IpAddr;
    // An IPv4-mapped IPv6 address is judged as the IPv4 address it maps.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let what = match ip {
        _ if ip.is_unspecified() => Some("is the unspecified address"),
        _ if ip.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("is link-local (169.254.0.0/16)"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("is link-local (fe80::/10)"),
        _ if ip.is_loopback() && !allow_loopback => Some(
            "is a loopback address (set allow_loopback = true when zlh runs on that host itself)",
        ),
        _ => None,
    };
    match what {
        Some(w) => Err(w.to_string()),
        None => Ok(()),
    }
}

/// Control plane by IP (invariant 7): `url` must be http(s) with an IP host, unless
/// hostnames are explicitly allowed.
pub fn check_ip_url(url: &str, allow_hostnames: bool) -> Result<(), String> {
    let host = url_host_literal(url)?;
    if host.parse::<std::net::IpAddr>().is_ok() || allow_hostnames {
        Ok(())
    } else {
        Err(format!(
            "'{url}' names host '{host}': internal endpoints must be IP URLs (set allow_hostnames to opt out)"
        ))
    }
}
