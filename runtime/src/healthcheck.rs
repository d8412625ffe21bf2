//! The `healthcheck` subcommand: one `GET <url>/ready` over a raw
//! `std::net::TcpStream`, exit 0 iff the answer is `200`.
//!
//! Docker's `HEALTHCHECK` runs this inside the image, which has no `curl`.
//! A single HTTP/1.1 request to a server we control does not justify an HTTP
//! client stack (hyper client, connection pools, TLS) in a minimal image,
//! nor a tokio runtime per probe: a blocking socket and a status-line parser
//! are enough, and start in a millisecond.

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use crate::cli::{CliError, HealthcheckArgs};

/// Applied separately to connecting, writing and each read, so a wedged
/// server makes the probe fail rather than hang Docker's healthcheck slot.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Responses larger than this are cut off; `/ready` answers ~50 bytes.
const MAX_RESPONSE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error(transparent)]
    Config(#[from] CliError),
    #[error(
        "https is not supported: the probe speaks plain http to the server inside the container (got {url})"
    )]
    Https { url: String },
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {url}")]
    Io {
        what: &'static str,
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {url} returned a malformed status line: {line:?}")]
    Malformed { url: String, line: String },
    #[error("GET {url} answered {status_line}{detail}")]
    NotReady {
        url: String,
        status_line: String,
        detail: String,
    },
}

/// A parsed `http://host[:port][/base]` URL, pointing at `<base>/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    /// Request path: the URL's path with `/ready` appended.
    pub path: String,
}

impl ProbeTarget {
    pub fn parse(url: &str) -> Result<Self, HealthcheckError> {
        let invalid = |reason| HealthcheckError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(HealthcheckError::Https {
                url: url.to_owned(),
            });
        }
        if !lower.starts_with("http://") {
            return Err(invalid("expected http://host:port"));
        }
        let rest = &url["http://".len()..];
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }

        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| invalid("unclosed '[' in host"))?;
            let after = &v6[end + 1..];
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("junk after ']'"))?,
                ),
            };
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| invalid("port must be 0-65535"))?,
        };

        let base = tail.split(['?', '#']).next().unwrap_or("");
        let path = format!("{}/ready", base.trim_end_matches('/'));
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host:port` as it goes into the `Host` header (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority(), self.path)
    }
}

/// The whole subcommand: resolve the URL, probe it, and return the status
/// line on success. `main` turns the result into the exit code.
pub fn run(args: &HealthcheckArgs) -> Result<String, HealthcheckError> {
    let target = ProbeTarget::parse(&args.resolved_url()?)?;
    probe(&target)
}

/// Sends one `GET` and returns the status line on `200`.
pub fn probe(target: &ProbeTarget) -> Result<String, HealthcheckError> {
    let url = target.url();
    let mut stream = connect(target)?;
    let io = |what| {
        let url = url.clone();
        move |source| HealthcheckError::Io { what, url, source }
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(io("configuring"))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(io("configuring"))?;

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: appliance-server-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io("sending request to"))?;

    let response = read_response(&mut stream).map_err(io("reading response from"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("").trim().to_owned();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HealthcheckError::Malformed {
            url: url.clone(),
            line: status_line.clone(),
        })?;
    if status == 200 {
        return Ok(status_line);
    }
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let detail = if body.is_empty() {
        String::new()
    } else {
        format!(": {}", truncate(&body, 200))
    };
    Err(HealthcheckError::NotReady {
        url,
        status_line,
        detail,
    })
}

fn connect(target: &ProbeTarget) -> Result<TcpStream, HealthcheckError> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|source| HealthcheckError::Resolve {
            host: target.host.clone(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(source) => last = Some((addr.to_string(), source)),
        }
    }
    Err(match last {
        Some((addr, source)) => HealthcheckError::Connect { addr, source },
        None => HealthcheckError::Resolve {
            host: target.host.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        },
    })
}

/// Reads until the server closes, the declared body is complete, or
/// [`MAX_RESPONSE`] bytes arrived: whichever comes first.
fn read_response(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= MAX_RESPONSE || is_complete(&buf) {
            break;
        }
    }
    Ok(buf)
}

fn is_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let content_length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match content_length {
        Some(len) => buf.len() >= head_end + 4 + len,
        None => false,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, path: &str) -> ProbeTarget {
        ProbeTarget {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    #[test]
    fn parses_http_urls() {
        let p = ProbeTarget::parse;
        assert_eq!(
            p("http://127.0.0.1:8000").ok(),
            Some(target("127.0.0.1", 8000, "/ready"))
        );
        assert_eq!(
            p("http://127.0.0.1:8000/").ok(),
            Some(target("127.0.0.1", 8000, "/ready"))
        );
        assert_eq!(
            p("HTTP://localhost").ok(),
            Some(target("localhost", 80, "/ready"))
        );
        assert_eq!(
            p("http://h:1/api/").ok(),
            Some(target("h", 1, "/api/ready"))
        );
        assert_eq!(p("http://h:1?x=1").ok(), Some(target("h", 1, "/ready")));
        assert_eq!(p("http://[::1]:9").ok(), Some(target("::1", 9, "/ready")));
        assert_eq!(
            p("http://[::1]:9").map(|t| t.url()).ok().as_deref(),
            Some("http://[::1]:9/ready")
        );
    }

    #[test]
    fn rejects_other_urls() {
        for url in ["https://h:1", "HTTPS://h"] {
            assert!(matches!(
                ProbeTarget::parse(url),
                Err(HealthcheckError::Https { .. })
            ));
        }
        for url in [
            "h:1",
            "ftp://h",
            "http://",
            "http://:80",
            "http://h:x",
            "http://h:99999",
            "http://u@h",
            "http://[::1",
        ] {
            assert!(
                matches!(
                    ProbeTarget::parse(url),
                    Err(HealthcheckError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn response_completion() {
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
    }
}
