//! HTTP/1.x request and response heads as a forward proxy needs them:
//! `CONNECT host:port` and absolute-URI requests (`GET http://host/path`),
//! rewritten for the origin server; nothing else of HTTP is interpreted.
//!
//! Reads nothing, needs nothing: the caller hands in the bytes. Strict on
//! purpose: a head that is not plainly valid is refused (400) rather than
//! guessed at, since a proxy that guesses can be talked into reaching a host
//! its policy check did not see.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a head was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the head was complete")]
    Closed,
    #[error("reading the head: {0}")]
    Io(#[from] std::io::Error),
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Lower case, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub kind: Kind<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `CONNECT`: a tunnel; the proxy answers 200 and relays bytes.
    Connect,
    /// A plain HTTP request to forward with its origin-form target.
    Forward {
        method: &'a str,
        /// Path and query, `/` when the URI had none.
        target: &'a str,
        /// The header lines, each ending in CRLF, without the final empty line.
        headers: &'a str,
        /// Whether the client sent a `Host` header.
        has_host: bool,
    },
}

/// Reads from `stream` into `buf` until a complete head (`CRLF CRLF`) is in
/// it; returns the head's length. Bytes after it (a request body, a TLS
/// hello) stay in `buf`. `buf` grows as needed, up to `limit`: idle clients
/// cost little memory.
pub async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, HeadError> {
    let mut searched = 0;
    loop {
        if let Some(end) = find_end(buf, searched) {
            return Ok(end);
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= limit {
            return Err(HeadError::TooLarge { limit });
        }
        if buf.capacity() == buf.len() {
            buf.reserve((buf.len().max(1024)).min(limit - buf.len()));
        }
        let room = (limit - buf.len()).min(buf.capacity() - buf.len());
        let filled = buf.len();
        buf.resize(filled + room, 0);
        let read = stream.read(&mut buf[filled..]).await;
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                buf.truncate(filled);
                return Err(error.into());
            }
        };
        buf.truncate(filled + read);
        if read == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// The end of the head (after its `CRLF CRLF`), searching from `from`.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// Parses a request head (including its final `CRLF CRLF`).
pub fn parse_request(head: &[u8]) -> Result<Request<'_>, HeadError> {
    let head = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    let (line, headers) = head.split_once("\r\n").ok_or(HeadError::Malformed("no request line"))?;
    let headers = headers.strip_suffix("\r\n").unwrap_or(headers);
    // A bare CR or LF inside a line would end it for some origin servers but
    // not for this parser: another smuggling vector.
    if line.contains(['\r', '\n']) || headers.split("\r\n").any(|l| l.contains(['\r', '\n'])) {
        return Err(HeadError::Malformed("bare CR or LF"));
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(HeadError::Malformed("not HTTP/1.0 or HTTP/1.1"));
    }
    let mut has_host = false;
    for header in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let Some((name, _)) = header.split_once(':') else {
            return Err(HeadError::Malformed("header line without a colon"));
        };
        // No obsolete line folding and no space before the colon: both are
        // classic request-smuggling vectors.
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(HeadError::Malformed("bad header name"));
        }
        has_host |= name.eq_ignore_ascii_case("host");
    }
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Request {
            host,
            port,
            kind: Kind::Connect,
        });
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| {
            target
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
                .map(|_| &target[7..])
        })
        .ok_or(HeadError::Malformed(
            "not an absolute http:// URI (use CONNECT for HTTPS)",
        ))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority_text, path) = rest.split_at(split);
    let (host, port) = authority(authority_text, Some(80))?;
    let target = if path.is_empty() { "/" } else { path };
    if target.starts_with('?') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("bad path"));
    }
    Ok(Request {
        host,
        port,
        kind: Kind::Forward {
            method,
            target,
            headers,
            has_host,
        },
    })
}

fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `host:port` (or `[v6]:port`); the port may be left out when `default` is given.
fn authority(text: &str, default: Option<u16>) -> Result<(String, u16), HeadError> {
    if text.contains('@') {
        return Err(HeadError::Malformed("credentials in the URI"));
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or(HeadError::Malformed("unclosed IPv6 bracket"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HeadError::Malformed("bad IPv6 address"));
        }
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match (port, default) {
        (Some(port), _) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(HeadError::Malformed("bad port"))?,
        (None, Some(default)) => default,
        (None, None) => return Err(HeadError::Malformed("CONNECT target without a port")),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !valid {
        return Err(HeadError::Malformed("bad host"));
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    Ok((host, port))
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The head to send to the origin for a [`Kind::Forward`] request: origin-form
/// target, hop-by-hop headers dropped, `Connection: close` (one request per
/// upstream connection: the next may be for another host and policy).
pub fn forward_head(request: &Request<'_>, out: &mut Vec<u8>) {
    let Kind::Forward {
        method,
        target,
        headers,
        has_host,
    } = request.kind
    else {
        return;
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has_host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(request.host.as_bytes());
        if request.port != 80 {
            out.extend_from_slice(format!(":{}", request.port).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    copy_end_to_end(headers, out);
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// The header lines of `headers` that are not hop-by-hop, nor named by the
/// `Connection` header.
fn copy_end_to_end(headers: &str, out: &mut Vec<u8>) {
    let named: Vec<&str> = headers
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(',').map(str::trim))
        .collect();
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line.split_once(':').map_or(line, |(name, _)| name);
        if hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A response head from the origin, rewritten for the client: the final
/// response says `Connection: close` (the upstream closes after it);
/// interim (1xx) heads pass as they are. Returns whether it was final.
pub fn rewrite_response(head: &[u8], out: &mut Vec<u8>) -> Result<bool, HeadError> {
    let head = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("response not UTF-8"))?;
    let (line, headers) = head.split_once("\r\n").ok_or(HeadError::Malformed("no status line"))?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(HeadError::Malformed("bad status line"))?;
    // 101 would switch protocols; the proxy never forwards Upgrade, so an
    // origin that answers 101 anyway is treated as final.
    if (100..200).contains(&status) && status != 101 {
        out.extend_from_slice(head.as_bytes());
        return Ok(false);
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_end_to_end(headers.strip_suffix("\r\n").unwrap_or(headers), out);
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Request<'_>, String> {
        parse_request(text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn connect() {
        let parsed = request("CONNECT Bucket.S3.amazonaws.com:443 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            parsed,
            Ok(Request {
                host: "bucket.s3.amazonaws.com".into(),
                port: 443,
                kind: Kind::Connect
            })
        );
        let v6 = request("CONNECT [::1]:443 HTTP/1.1\r\n\r\n");
        assert!(v6.is_ok_and(|r| r.host == "::1"));
    }

    #[test]
    fn forward_rewrites_to_origin_form() {
        let text = "PUT http://10.0.0.2/bucket/key?partNumber=1 HTTP/1.1\r\nHost: 10.0.0.2\r\n\
                    Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                    Content-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        let parsed = parse_request(text.as_bytes()).unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("10.0.0.2", 80));
        let mut out = Vec::new();
        forward_head(&parsed, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /bucket/key?partNumber=1 HTTP/1.1\r\nHost: 10.0.0.2\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\nConnection: close\r\n\r\n"
        );
        let bare = parse_request(b"GET http://example.com:8080 HTTP/1.0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        forward_head(&bare, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "CONNECT host HTTP/1.1\r\n\r\n",
            "CONNECT host:0 HTTP/1.1\r\n\r\n",
            "CONNECT host:99999 HTTP/1.1\r\n\r\n",
            "CONNECT host:+443 HTTP/1.1\r\n\r\n",
            "CONNECT  host:443 HTTP/1.1\r\n\r\n",
            "CONNECT host:443 HTTP/2\r\n\r\n",
            "CONNECT host:443\r\n\r\n",
            "CONNECT user@host:443 HTTP/1.1\r\n\r\n",
            "CONNECT [nothost]:443 HTTP/1.1\r\n\r\n",
            "CONNECT ho/st:443 HTTP/1.1\r\n\r\n",
            "connect host:443 HTTP/1.1\r\n\r\n",
            "GET /relative HTTP/1.1\r\n\r\n",
            "GET https://host/ HTTP/1.1\r\n\r\n",
            "GET http:///path HTTP/1.1\r\n\r\n",
            "GET http://host/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET http://host/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET http://host/ HTTP/1.1\r\nno colon\r\n\r\n",
            "GET http://host/ HTTP/1.1\r\nX: a\nHost: evil\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert!(request(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_request(b"GET http://h/ HTTP/1.1\r\nX: \xff\r\n\r\n").is_err());
    }

    #[test]
    fn responses_close_after_the_final_head() {
        let mut out = Vec::new();
        let interim = rewrite_response(b"HTTP/1.1 100 Continue\r\n\r\n", &mut out);
        assert!(matches!(interim, Ok(false)));
        let last = rewrite_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
            &mut out,
        );
        assert!(matches!(last, Ok(true)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        assert!(rewrite_response(b"SSH-2.0\r\n\r\n", &mut Vec::new()).is_err());
    }

    #[tokio::test]
    async fn heads_are_read_up_to_the_limit() {
        let mut buf = Vec::new();
        let mut input: &[u8] = b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03hello";
        let end = read_head(&mut input, &mut buf, 1024).await.unwrap();
        assert_eq!(&buf[end..], b"\x16\x03hello");
        let long = vec![b'a'; 5000];
        let mut buf = Vec::new();
        assert!(matches!(
            read_head(&mut &long[..], &mut buf, 4096).await,
            Err(HeadError::TooLarge { limit: 4096 })
        ));
        assert!(matches!(
            read_head(&mut &b"CONNECT h:443"[..], &mut Vec::new(), 4096).await,
            Err(HeadError::Closed)
        ));
    }
}
