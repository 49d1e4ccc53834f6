//! Where the device connects: the server's base URL as provisioned (`https://host[:port]`,
//! `http://…`, or directly `ws(s)://…/api/v1/ws`) and the absolute download URLs of OTA offers.
//!
//! Hand-written rather than the `url` crate: the device needs scheme, host, port and path of
//! ASCII URLs it was given by its operator or its server, and `url` would bring IDNA tables
//! into a 4 MiB flash for nothing.

use alloc::string::{String, ToString as _};

/// A parsed `http(s)://` or `ws(s)://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `wss`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Starts with `/`; includes the query, if any.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointError {
    /// Not `http://`, `https://`, `ws://` or `wss://`.
    Scheme,
    Host,
    Port,
}

impl core::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Scheme => "the URL must start with https://, http://, wss:// or ws://",
            Self::Host => "the URL has no valid host",
            Self::Port => "the URL's port is not a number from 1 to 65535",
        })
    }
}

/// The realtime endpoint's path on every server.
pub const WEBSOCKET_PATH: &str = "/api/v1/ws";
/// Where a claim code is exchanged for a device token.
pub const CLAIM_PATH: &str = "/api/v1/devices/claim";

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let url = url.trim();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(EndpointError::Scheme);
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(EndpointError::Host);
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal without a port: `[::1]`.
            Some((_, tail)) if tail.ends_with(']') => (authority, None),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let port = match port {
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(EndpointError::Port),
                Ok(port) => port,
            },
            None if tls => 443,
            None => 80,
        };
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
            });
        if !host_ok {
            return Err(EndpointError::Host);
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The realtime endpoint of a server given by its base URL (or already by its WebSocket
    /// URL).
    pub fn websocket(base: &str) -> Result<Self, EndpointError> {
        let mut endpoint = Self::parse(base)?;
        if !endpoint.path.starts_with(WEBSOCKET_PATH) {
            endpoint.path = WEBSOCKET_PATH.to_string();
        }
        Ok(endpoint)
    }

    /// Another path on the same server (e.g. [`CLAIM_PATH`]).
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self.clone()
        }
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            alloc::format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_the_websocket_endpoint() {
        let e = Endpoint::websocket("https://conclave.example.com").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "conclave.example.com", 443, "/api/v1/ws")
        );
        let e = Endpoint::websocket("http://192.168.1.20:8080/").unwrap();
        assert_eq!(
            (e.tls, e.port, e.path.as_str()),
            (false, 8080, "/api/v1/ws")
        );
        assert_eq!(e.host_header(), "192.168.1.20:8080");
        let e = Endpoint::websocket("wss://h.example/api/v1/ws").unwrap();
        assert_eq!((e.port, e.host_header().as_str()), (443, "h.example"));
        let e = Endpoint::parse("http://[::1]/x?y=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("[::1]", 80, "/x?y=1")
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        assert_eq!(Endpoint::parse("ftp://x"), Err(EndpointError::Scheme));
        assert_eq!(Endpoint::parse("https://"), Err(EndpointError::Host));
        assert_eq!(Endpoint::parse("https://a:0"), Err(EndpointError::Port));
        assert_eq!(Endpoint::parse("https://a:99999"), Err(EndpointError::Port));
        assert_eq!(Endpoint::parse("https://u:p@a"), Err(EndpointError::Host));
        assert_eq!(Endpoint::parse("https://a b"), Err(EndpointError::Host));
    }
}
