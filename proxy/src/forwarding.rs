//! The forwarding headers of an HTTP/1.x request from a peer that is not a trusted proxy,
//! written into its head before pingora parses it.
//!
//! Such a request's `X-Forwarded-For` and `X-Forwarded-Proto` say what this proxy saw (the
//! peer's address, and whether the connection is TLS), and any `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Real-IP` or `Forwarded` the client sent is removed, so a backend
//! never believes a client's own claim. Written as bytes into the head, the two lines are parsed
//! with the rest into a header map sized for them. Inserted afterwards (as pingora's filters
//! would) each one grows both of the request's header maps (the values, and the names' case),
//! and that growing costs more than the rest of switchback's header work together.
//!
//! A trusted proxy's forwarding headers are kept and appended to by the proxy's
//! `upstream_request_filter`, as are those of HTTP/2 requests, which never pass through here.

use std::net::IpAddr;

use bytes::BytesMut;

/// The most header lines a head may have once the forwarding lines are in: pingora's parser
/// takes no more.
pub const MAX_HEADER_LINES: usize = 256;

/// The names this proxy writes or removes, lowercase.
const NAMES: [&[u8]; 4] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-real-ip",
    b"forwarded",
];

/// Whether `name` is one of the forwarding headers this proxy writes or removes.
pub fn is_forwarding_header(name: &[u8]) -> bool {
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// One connection's forwarding lines, built once for all its requests.
#[derive(Debug)]
pub struct Forwarding {
    lines: Box<[u8]>,
    /// How many lines `lines` holds.
    count: usize,
}

/// A head that would have more than [`MAX_HEADER_LINES`] header lines.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyHeaders;

impl Forwarding {
    /// The lines for a connection from `peer` (None: not an IP connection, which gets no
    /// `X-Forwarded-For`), over TLS or not.
    pub fn new(peer: Option<IpAddr>, tls: bool) -> Forwarding {
        let mut lines = String::with_capacity(96);
        if let Some(peer) = peer {
            lines.push_str("X-Forwarded-For: ");
            crate::text::push_ip(&mut lines, peer);
            lines.push_str("\r\n");
        }
        lines.push_str(if tls {
            "X-Forwarded-Proto: https\r\n"
        } else {
            "X-Forwarded-Proto: http\r\n"
        });
        Forwarding {
            count: 1 + peer.is_some() as usize,
            lines: lines.into_bytes().into_boxed_slice(),
        }
    }

    /// The lines, each ending in CRLF, as they go into a request head.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// Writes the forwarding lines into `head`, a whole request head (possibly followed by
    /// the start of its body), at its end, and removes the client's own forwarding headers.
    /// `head` is left as it was when it would then have more header lines than pingora
    /// parses.
    pub fn write_into(&self, head: &mut BytesMut) -> Result<(), TooManyHeaders> {
        let Some(scan) = Scan::of(head) else {
            // No end of head: not for here (the connection's reader hands over whole heads).
            return Ok(());
        };
        let added = self.lines.len();
        if scan.lines - scan.forwarding.len() + self.count > MAX_HEADER_LINES {
            return Err(TooManyHeaders);
        }
        if scan.forwarding.is_empty() {
            // The usual case: nothing to remove, the lines go in just before the empty line.
            let at = scan.end_of_headers;
            let len = head.len();
            head.resize(len + added, 0);
            head.copy_within(at..len, at + added);
            head[at..at + added].copy_from_slice(&self.lines);
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(head.len() + added);
        let mut from = 0;
        for &(start, end) in &scan.forwarding {
            out.extend_from_slice(&head[from..start]);
            from = end;
        }
        out.extend_from_slice(&head[from..scan.end_of_headers]);
        out.extend_from_slice(&self.lines);
        out.extend_from_slice(&head[scan.end_of_headers..]);
        *head = out;
        Ok(())
    }
}

/// What a look over a head finds.
struct Scan {
    /// Header lines, the request line aside.
    lines: usize,
    /// Where the empty line that ends the head starts.
    end_of_headers: usize,
    /// The byte ranges of the forwarding header lines, with their continuation lines.
    forwarding: Vec<(usize, usize)>,
}

impl Scan {
    /// Looks over the lines of `head` up to its empty line; None when there is none.
    fn of(head: &[u8]) -> Option<Scan> {
        let mut scan = Scan {
            lines: 0,
            end_of_headers: 0,
            forwarding: Vec::new(),
        };
        // One search for every line end (the first ends the request line).
        let mut ends = memchr::memchr_iter(b'\n', head);
        let mut start = ends.next()? + 1;
        // Whether the line before was a forwarding header (its continuation lines go with it).
        let mut in_forwarding = false;
        for end in ends {
            let end = end + 1;
            match head[start] {
                b'\r' | b'\n' => {
                    scan.end_of_headers = start;
                    return Some(scan);
                }
                // A continuation (obs-fold) of the line before.
                b' ' | b'\t' => {
                    if in_forwarding {
                        if let Some(last) = scan.forwarding.last_mut() {
                            last.1 = end;
                        }
                    }
                }
                first => {
                    scan.lines += 1;
                    in_forwarding =
                        matches!(first | 0x20, b'x' | b'f') && is_forwarding(&head[start..end]);
                    if in_forwarding {
                        scan.forwarding.push((start, end));
                    }
                }
            }
            start = end;
        }
        None
    }
}

/// Whether `line` is one of the forwarding headers ([`NAMES`]), in any case.
fn is_forwarding(line: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    // Whitespace before the colon makes the line invalid; pingora refuses it whole.
    let name = &line[..colon];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(peer: Option<IpAddr>, tls: bool, head: &str) -> Result<String, TooManyHeaders> {
        let mut buf = BytesMut::from(head.as_bytes());
        Forwarding::new(peer, tls).write_into(&mut buf)?;
        Ok(String::from_utf8(buf.to_vec()).unwrap())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_lines_go_just_before_the_empty_line_and_the_body_follows() {
        assert_eq!(
            written(
                ip("10.0.0.7"),
                false,
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            )
            .unwrap(),
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
             X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\nhi"
        );
        assert_eq!(
            written(ip("::1"), true, "GET / HTTP/1.1\r\n\r\n").unwrap(),
            "GET / HTTP/1.1\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: https\r\n\r\n"
        );
        // A head whose lines end in a bare LF, as pingora's parser also takes.
        assert_eq!(
            written(ip("1.2.3.4"), false, "GET / HTTP/1.1\nHost: x\n\n").unwrap(),
            "GET / HTTP/1.1\nHost: x\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\n\n"
        );
        // Not an IP connection: no X-Forwarded-For.
        assert_eq!(
            written(None, false, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_clients_own_forwarding_headers_are_removed_in_any_case_with_their_continuations() {
        let head = "GET / HTTP/1.1\r\nx-FORWARDED-for: 6.6.6.6\r\nHost: x\r\n\
                    X-Real-IP: 7.7.7.7\r\nForwarded: for=8.8.8.8;\r\n proto=https\r\n\
                    X-Forwarded-Proto: https\r\nX-Forwarded-Host: kept\r\nFoo: bar\r\n \
                    folded\r\n\r\nbody";
        assert_eq!(
            written(ip("127.0.0.1"), false, head).unwrap(),
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: kept\r\nFoo: bar\r\n folded\r\n\
             X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\nbody"
        );
        // Names that only start like one of them are not removed.
        let head =
            "GET / HTTP/1.1\r\nX-Forwarded-Fork: 1\r\nForwarded-By: 2\r\nX-Real-IPv6: 3\r\n\r\n";
        let out = written(ip("127.0.0.1"), false, head).unwrap();
        for kept in ["X-Forwarded-Fork: 1", "Forwarded-By: 2", "X-Real-IPv6: 3"] {
            assert!(out.contains(kept), "{out}");
        }
    }

    #[test]
    fn a_head_left_with_more_header_lines_than_pingora_parses_is_refused_untouched() {
        let many = |n: usize| {
            let mut head = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                head.push_str(&format!("h{i}: v\r\n"));
            }
            head + "\r\n"
        };
        // Two lines of its own: 254 others still fit, 255 do not.
        assert!(written(ip("1.2.3.4"), false, &many(254)).is_ok());
        assert_eq!(
            written(ip("1.2.3.4"), false, &many(255)),
            Err(TooManyHeaders)
        );
        // The client's own forwarding lines make room: they are replaced, not added to.
        let head = many(254).replacen("h0: v", "X-Forwarded-For: 6.6.6.6", 1);
        let head = head.replacen("h1: v", "X-Real-IP: 6.6.6.6", 1);
        let with_one_more = head.replacen("\r\n\r\n", "\r\nh254: v\r\n\r\n", 1);
        assert!(written(ip("1.2.3.4"), false, &with_one_more).is_ok());
        let mut buf = BytesMut::from(many(255).as_bytes());
        let before = buf.clone();
        let _ = Forwarding::new(ip("1.2.3.4"), false).write_into(&mut buf);
        assert_eq!(buf, before);
    }

    #[test]
    fn a_head_with_no_end_is_left_alone() {
        assert_eq!(
            written(ip("1.2.3.4"), false, "GET / HTTP/1.1\r\nHost: x\r\n").unwrap(),
            "GET / HTTP/1.1\r\nHost: x\r\n"
        );
    }
}
