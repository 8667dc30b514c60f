//! The PROXY protocol (HAProxy's, versions 1 and 2), for `listen.proxy_protocol`: a load
//! balancer in front (HAProxy, AWS NLB, DigitalOcean, Hetzner) opens each connection with a
//! header that names the client, and the header's source address becomes the client's
//! address everywhere the peer's is used (logs, `X-Forwarded-For`, `sticky = "ip"`, access
//! rules, `max_connections_per_ip`).
//!
//! Only connections from the listed sources are read for a header: a header from anyone else
//! is not believed, and reaches the HTTP parser as the garbage it is. A listed source that
//! sends no header, or a broken one, or not all of it within `client_header_timeout`, has its
//! connection closed (and counted). On HTTPS listeners the header comes before the TLS
//! handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt};

use switchback_config::Cidr;

/// The longest header read: version 1's is at most 107 bytes; version 2's address block plus
/// the TLVs load balancers add (AWS's endpoint id, HAProxy's TLS facts) stay well under this.
const MAX_HEADER: usize = 16 + 4096;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What was wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// The connection closed, or failed, before the header was whole.
    Closed,
    TimedOut,
    /// Neither version's signature, or a header that breaks its version's rules.
    Malformed(&'static str),
}

/// Parses a header at the start of `buf`: the client it names (None: the header names none, as
/// a health check's `LOCAL` or `UNKNOWN` does, and the peer stays the client) and its length;
/// `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, Broken> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] && !buf.is_empty() && buf[0] == b'\r' {
        return parse_v2(buf);
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] == b"PROXY "[..v1_len] {
        return parse_v1(buf);
    }
    Err(Broken::Malformed("no PROXY protocol signature"))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, Broken> {
    let Some(end) = buf.iter().take(107).position(|&b| b == b'\n') else {
        return if buf.len() >= 107 {
            Err(Broken::Malformed("version 1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let line = line
        .strip_suffix(b"\r")
        .ok_or(Broken::Malformed("version 1 header not ended by CRLF"))?;
    let line =
        std::str::from_utf8(line).map_err(|_| Broken::Malformed("version 1 header not text"))?;
    let mut parts = line.split(' ');
    parts.next(); // "PROXY"
    let family = parts.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(Some((None, end + 1)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Broken::Malformed("version 1 header needs four fields"));
    };
    let ip = |s: &str| -> Result<IpAddr, Broken> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| Broken::Malformed("version 1 address"))?;
        match (family, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            _ => Err(Broken::Malformed("version 1 address of another family")),
        }
    };
    let port = |s: &str| -> Result<u16, Broken> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Broken::Malformed("version 1 port"));
        }
        s.parse().map_err(|_| Broken::Malformed("version 1 port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Some((Some(source), end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, Broken> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(Broken::Malformed(
            "version 2 signature with another version",
        ));
    }
    let length = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + length > MAX_HEADER {
        return Err(Broken::Malformed("version 2 header too long"));
    }
    if buf.len() < 16 + length {
        return Ok(None);
    }
    let block = &buf[16..16 + length];
    let total = 16 + length;
    match command {
        // LOCAL: the balancer's own connection (a health check); the peer is the client.
        0 => return Ok(Some((None, total))),
        1 => {}
        _ => return Err(Broken::Malformed("version 2 command")),
    }
    let family = buf[13] >> 4;
    let source = match family {
        // UNSPEC: nothing said about the client.
        0 => None,
        1 => {
            if block.len() < 12 {
                return Err(Broken::Malformed("version 2 IPv4 block too short"));
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([block[8], block[9]]),
            ))
        }
        2 => {
            if block.len() < 36 {
                return Err(Broken::Malformed("version 2 IPv6 block too short"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([block[32], block[33]]),
            ))
        }
        // A Unix socket's peer has no address to give.
        3 => None,
        _ => return Err(Broken::Malformed("version 2 address family")),
    };
    Ok(Some((source, total)))
}

/// Reads a header from `stream`: the client it names, and what came after it (to be read
/// again as the start of the connection's own bytes).
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Vec<u8>), Broken> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Broken::Closed)?;
        if n == 0 {
            return Err(Broken::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((source, used)) = parse(&buf)? {
            return Ok((source, buf.split_off(used)));
        }
        if buf.len() > MAX_HEADER {
            return Err(Broken::Malformed("header too long"));
        }
    }
}

/// Whose connections start with a header, and how long the header may take.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    pub sources: Vec<Cidr>,
    pub timeout: Duration,
    /// Connections closed for a missing or broken header.
    pub refused: IntCounter,
}

impl ProxyProtocol {
    pub fn expects_header(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.sources.iter().any(|c| c.contains(ip)))
    }

    /// Reads the header of a connection from a listed source, makes its client the stream's
    /// peer, and puts back what followed it. An error closes the connection.
    pub async fn accept(&self, stream: &mut L4Stream) -> Result<(), Broken> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if !self.expects_header(peer) {
            return Ok(());
        }
        let read = tokio::time::timeout(self.timeout, read(stream)).await;
        let (source, rest) = match read {
            Ok(Ok(found)) => found,
            Ok(Err(broken)) => {
                self.refused.inc();
                return Err(broken);
            }
            Err(_) => {
                self.refused.inc();
                return Err(Broken::TimedOut);
            }
        };
        if let Some(source) = source {
            use std::os::fd::AsRawFd;
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest
                .peer_addr
                .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                    source,
                )));
            stream.set_socket_digest(digest);
        }
        stream.rewind(&rest);
        Ok(())
    }
}

/// Reads the header before the TLS handshake, on HTTPS listeners.
pub struct BeforeTls(pub Arc<ProxyProtocol>);

#[async_trait]
impl pingora::listeners::PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.0.accept(stream).await.map_err(|e| {
            pingora::Error::explain(
                pingora::ErrorType::ReadError,
                format!("PROXY protocol header: {e:?}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(h), Ok(Some((addr("203.0.113.9:51234"), 42))));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 443 8443\r\n";
        assert_eq!(parse(h), Ok(Some((addr("[2001:db8::1]:443"), h.len()))));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((None, 15))));
        // Not all there yet.
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 203.0.113.9"), Ok(None));
        for bad in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.9 10.0.0.1 51234\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 512345 80\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 -1 80\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 1 80\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(parse(long.as_bytes()).is_err());
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn version_2() {
        let mut block = vec![203, 0, 113, 9, 10, 0, 0, 1];
        block.extend_from_slice(&51234u16.to_be_bytes());
        block.extend_from_slice(&80u16.to_be_bytes());
        // A TLV after the addresses is skipped.
        block.extend_from_slice(&[0x04, 0, 2, b'h', b'i']);
        let h = v2(1, 0x11, &block);
        let mut with_request = h.clone();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&with_request),
            Ok(Some((addr("203.0.113.9:51234"), h.len())))
        );
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "{cut}");
        }
        let mut block6 = vec![0u8; 36];
        block6[0] = 0x20;
        block6[1] = 0x01;
        block6[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &block6)),
            Ok(Some((addr("[2001::]:443"), 52)))
        );
        // LOCAL (a health check) and UNSPEC name no client.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((None, 16))));
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok(Some((None, 16))));
        // Broken: a short block, an unknown command, another version.
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err());
        assert!(parse(&v2(2, 0x11, &block)).is_err());
        let mut h = v2(1, 0x11, &block);
        h[12] = 0x11;
        assert!(parse(&h).is_err());
        let mut h = v2(1, 0x11, &[]);
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse(&h).is_err());
    }

    #[tokio::test]
    async fn read_keeps_what_follows_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let (source, rest) = read(&mut input).await.unwrap();
        assert_eq!(source, addr("203.0.113.9:51234"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.9";
        assert_eq!(read(&mut input).await, Err(Broken::Closed));
    }
}
