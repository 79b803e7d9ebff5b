//! Where a callee's replicas are: a comma-separated list of `http://host:port` URLs, or one
//! `dns:///host:port` name whose addresses are re-resolved periodically (a Kubernetes headless
//! Service, a Compose service with several replicas).

use std::fmt;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed list of endpoint URLs (`http://host:port`), each one endpoint.
    Static(Vec<String>),
    /// A name resolved periodically; every address it resolves to is one endpoint.
    Dns {
        /// Host name to resolve.
        host: String,
        /// Port of every endpoint.
        port: u16,
    },
}

/// Why a target string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing to call.
    #[error("the target is empty; expected `http://host:port[,…]` or `dns:///host:port`")]
    Empty,
    /// A list entry is not an `http://host:port` URL.
    #[error(
        "`{0}` is not an `http://host:port` URL (only cleartext HTTP/2 is supported; `https` is not)"
    )]
    BadUrl(String),
    /// A `dns:///` target without a usable `host:port`.
    #[error(
        "`{0}` is not `dns:///host:port` (the authority form `dns://resolver/…` is not supported)"
    )]
    BadDns(String),
}

impl Target {
    /// Parses `http://a:1,http://b:2` or `dns:///name:port`.
    pub fn parse(target: &str) -> Result<Target, TargetError> {
        let target = target.trim();
        if target.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(rest) = target.strip_prefix("dns:") {
            let bad = || TargetError::BadDns(target.to_owned());
            let authority = rest.strip_prefix("///").ok_or_else(bad)?;
            let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || port == 0 || host.contains('/') {
                return Err(bad());
            }
            return Ok(Target::Dns {
                host: host.to_owned(),
                port,
            });
        }
        let mut urls = Vec::new();
        for url in target
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
        {
            let bad = || TargetError::BadUrl(url.to_owned());
            let uri: http::Uri = url.parse().map_err(|_| bad())?;
            let plain_authority = uri.path_and_query().is_none_or(|path| path.as_str() == "/");
            if uri.scheme_str() != Some("http") || uri.port_u16().is_none() || !plain_authority {
                return Err(bad());
            }
            let url = format!("http://{}", uri.authority().ok_or_else(bad)?);
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return Err(TargetError::Empty);
        }
        Ok(Target::Static(urls))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Static(urls) => f.write_str(&urls.join(",")),
            Target::Dns { host, port } if host.contains(':') => write!(f, "dns:///[{host}]:{port}"),
            Target::Dns { host, port } => write!(f, "dns:///{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_is_a_static_target_without_duplicates() {
        assert_eq!(
            Target::parse(" http://10.0.0.1:8080, http://loyalty-1:8080/ ,http://10.0.0.1:8080"),
            Ok(Target::Static(vec![
                "http://10.0.0.1:8080".to_owned(),
                "http://loyalty-1:8080".to_owned()
            ]))
        );
    }

    #[test]
    fn a_dns_target_names_a_host_and_port() {
        assert_eq!(
            Target::parse("dns:///loyalty:8080"),
            Ok(Target::Dns {
                host: "loyalty".to_owned(),
                port: 8080
            })
        );
        assert_eq!(
            Target::parse("dns:///[::1]:9000").map(|target| target.to_string()),
            Ok("dns:///[::1]:9000".to_owned())
        );
    }

    #[test]
    fn unusable_targets_are_refused_with_the_reason() {
        assert_eq!(Target::parse(" "), Err(TargetError::Empty));
        assert_eq!(Target::parse(","), Err(TargetError::Empty));
        for bad in [
            "https://loyalty:8080",
            "loyalty:8080",
            "http://loyalty",
            "http://loyalty:8080/prefix",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TargetError::BadUrl(_))),
                "{bad}"
            );
        }
        for bad in [
            "dns://8.8.8.8/loyalty:8080",
            "dns:///loyalty",
            "dns:///:8080",
            "dns:///loyalty:0",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TargetError::BadDns(_))),
                "{bad}"
            );
        }
    }
}
