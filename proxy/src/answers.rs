//! The proxy's own answers: what switchback says itself to a request it does not forward (an
//! ACME challenge, a redirect to HTTPS, a redirect service's, no service, a body over the
//! limit, an access rule's refusal), and the texts of its error answers.
//!
//! Both HTTP/1 paths write the same [`OwnAnswer`]: switchback's own path as bytes
//! ([`OwnAnswer::write_http1`]), pingora's as an answer head ([`OwnAnswer::response_header`]),
//! so the two cannot drift apart.

use std::borrow::Cow;
use std::net::SocketAddr;

use pingora::http::ResponseHeader;
use switchback_certs::challenge::CHALLENGE_PREFIX;

use crate::access::Denial;
use crate::policy::{Admission, Policy};
use crate::routing::normalize_request_host;

pub(crate) const NO_SERVICE: &[u8] = b"switchback: no service for this host and path\n";
pub(crate) const NO_BACKEND: &[u8] = b"switchback: no healthy backend in the pool\n";
pub(crate) const BAD_GATEWAY: &[u8] = b"switchback: the backend failed to answer\n";
pub(crate) const GATEWAY_TIMEOUT: &[u8] = b"switchback: the backend did not answer in time\n";
pub(crate) const BODY_TOO_LARGE: &[u8] =
    b"switchback: the request body is larger than this service takes (max_request_body)\n";

/// An answer of the proxy's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAnswer {
    pub status: u16,
    /// `Location`, for a redirect.
    pub location: Option<String>,
    /// One more header: an access rule's `WWW-Authenticate` or `Retry-After`.
    pub header: Option<(&'static str, String)>,
    /// A `text/plain` body.
    pub body: Cow<'static, [u8]>,
    /// The connection closes after it (no service, a body over the limit), and caches must
    /// not keep it.
    pub close: bool,
    /// Answered for the proxy's own sake (a challenge, a redirect): no pool's traffic, and
    /// not counted as unrouted either.
    pub answered_here: bool,
}

impl OwnAnswer {
    fn new(status: u16, body: &'static [u8]) -> OwnAnswer {
        OwnAnswer {
            status,
            location: None,
            header: None,
            body: Cow::Borrowed(body),
            close: false,
            answered_here: false,
        }
    }

    fn redirect(status: u16, location: String) -> OwnAnswer {
        OwnAnswer {
            location: Some(location),
            answered_here: true,
            ..OwnAnswer::new(status, b"")
        }
    }

    /// The answer to a request `admission` does not forward (None for one it does), sent to
    /// `host` (as the client wrote it) for `uri` (path and query), over TLS or not, on the
    /// local address `local` (asked only by a redirect service's, whose `to` may name the
    /// port: it costs a system call). Counts a body over the limit.
    pub fn of(
        policy: &Policy,
        admission: &Admission,
        host: &str,
        uri: &str,
        tls: bool,
        local: impl FnOnce() -> Option<SocketAddr>,
    ) -> Option<OwnAnswer> {
        Some(match admission {
            Admission::Forward(_) => return None,
            Admission::Challenge => {
                let path = uri.split('?').next().unwrap_or(uri);
                let token = path.strip_prefix(CHALLENGE_PREFIX).unwrap_or("");
                let answer = policy.challenges.as_ref().and_then(|c| c.answer(token));
                OwnAnswer {
                    answered_here: true,
                    ..match answer {
                        Some(text) => OwnAnswer {
                            body: Cow::Owned(text.into_bytes()),
                            ..OwnAnswer::new(200, b"")
                        },
                        None => OwnAnswer::new(404, b""),
                    }
                }
            }
            Admission::Redirect => {
                let host = normalize_request_host(host);
                let mut location = String::with_capacity(16 + host.len() + uri.len());
                location.push_str("https://");
                location.push_str(&host);
                if let Some(port) = policy.https_port {
                    location.push(':');
                    crate::text::push_u64(&mut location, port as u64);
                }
                location.push_str(if uri.is_empty() { "/" } else { uri });
                OwnAnswer::redirect(308, location)
            }
            Admission::Moved { table, service } => {
                let redirect = table.services[*service].redirect.as_ref()?;
                OwnAnswer::redirect(redirect.code, redirect.location(host, uri, tls, local()))
            }
            Admission::NoService => OwnAnswer {
                close: true,
                ..OwnAnswer::new(503, NO_SERVICE)
            },
            Admission::TooLarge => {
                policy.client_counters.body_too_large.inc();
                OwnAnswer {
                    close: true,
                    ..OwnAnswer::new(413, BODY_TOO_LARGE)
                }
            }
        })
    }

    /// The answer to a request the service's access rules refused: 403, 401 or 429.
    pub fn denied(denial: &Denial) -> OwnAnswer {
        OwnAnswer {
            header: denial.header(),
            ..OwnAnswer::new(denial.status(), denial.body())
        }
    }

    /// Writes it as an HTTP/1.1 answer into `out`: its body unless the request was a HEAD, and
    /// `connection: close` unless `keep` (`connection: keep-alive` for an HTTP/1.0 client).
    pub fn write_http1(&self, out: &mut Vec<u8>, head_request: bool, keep: bool, http10: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        let status = http::StatusCode::from_u16(self.status).ok();
        out.extend_from_slice(status.as_ref().map_or("500", |s| s.as_str()).as_bytes());
        out.push(b' ');
        let reason = status.and_then(|s| s.canonical_reason()).unwrap_or("");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(location) = &self.location {
            line(out, "location", location.as_bytes());
        }
        if let Some((name, value)) = &self.header {
            line(out, name, value.as_bytes());
        }
        if !self.body.is_empty() {
            line(out, "content-type", b"text/plain");
        }
        if self.close {
            line(out, "cache-control", b"private, no-store");
        }
        let mut length = String::new();
        crate::text::push_u64(&mut length, self.body.len() as u64);
        line(out, "content-length", length.as_bytes());
        if !keep {
            line(out, "connection", b"close");
        } else if http10 {
            line(out, "connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(&self.body);
        }
    }

    /// The same answer as pingora's answer head (its body goes after it).
    pub fn response_header(&self) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        if let Some(location) = &self.location {
            resp.insert_header("location", location.as_str())?;
        }
        if let Some((name, value)) = &self.header {
            resp.insert_header(*name, value.as_str())?;
        }
        if !self.body.is_empty() {
            resp.insert_header("content-type", "text/plain")?;
        }
        if self.close {
            resp.insert_header("cache-control", "private, no-store")?;
        }
        resp.insert_header("content-length", self.body.len().to_string())?;
        Ok(resp)
    }
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(answer: &OwnAnswer, head_request: bool, keep: bool, http10: bool) -> String {
        let mut out = Vec::new();
        answer.write_http1(&mut out, head_request, keep, http10);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_own_answer_says_its_length_and_the_connection_fate() {
        let answer = OwnAnswer {
            close: true,
            ..OwnAnswer::new(503, NO_SERVICE)
        };
        let written = text(&answer, false, false, false);
        assert!(written.starts_with("HTTP/1.1 503 Service Unavailable\r\ndate: "));
        assert!(written.contains("\r\ncontent-type: text/plain\r\n"));
        assert!(written.contains("\r\ncache-control: private, no-store\r\n"));
        assert!(written.contains(&format!("\r\ncontent-length: {}\r\n", NO_SERVICE.len())));
        assert!(written.ends_with(&format!(
            "connection: close\r\n\r\n{}",
            String::from_utf8_lossy(NO_SERVICE)
        )));
        // A HEAD gets the same head and no body.
        let head = text(&answer, true, false, false);
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    }

    #[test]
    fn redirects_carry_their_location_and_no_body() {
        let answer = OwnAnswer::redirect(308, "https://app.test/a?b".into());
        let written = text(&answer, false, true, true);
        assert!(written.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"));
        assert!(written.contains("\r\nlocation: https://app.test/a?b\r\n"));
        assert!(written.contains("\r\ncontent-length: 0\r\n"));
        assert!(!written.contains("content-type"));
        assert!(written.ends_with("\r\nconnection: keep-alive\r\n\r\n"));
        let resp = answer.response_header().unwrap();
        assert_eq!(resp.status.as_u16(), 308);
        assert_eq!(resp.headers["location"], "https://app.test/a?b");
        assert_eq!(resp.headers["content-length"], "0");
    }

    #[test]
    fn a_denial_keeps_its_header() {
        let answer = OwnAnswer::denied(&Denial::Rate { retry_after: 3 });
        let written = text(&answer, false, true, false);
        assert!(written.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(written.contains("\r\nretry-after: 3\r\n"));
        assert!(!written.contains("connection:"));
        assert!(written.ends_with("\r\n\r\ntoo many requests: slow down\n"));
    }
}
