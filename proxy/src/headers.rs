//! A service's header rules (`request_headers`, `response_headers`), parsed once per table
//! build so that a request only copies ready names and values.
//!
//! A rule sets a header, replacing every value the message had, or removes it. Rules run after
//! the proxy's own headers (forwarding headers, HSTS), so the service has the last word.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use switchback_config::template::{Piece, Template, Var, HEADER_VARS};
use switchback_config::HeaderRule;

use crate::request_id::RequestId;
use crate::routing::normalize_request_host;

/// The rules of one direction, ready to apply.
#[derive(Debug, Default)]
pub struct HeaderRules {
    rules: Vec<(HeaderName, Option<Value>)>,
    /// Some rule's value has `$request_id`.
    request_id: bool,
}

/// A value to set: the same for every request, or with variables (request rules only).
#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Vars(Template),
}

/// What a request's variables stand for.
pub struct Vars<'a> {
    /// The client, after `trusted_proxies` and the PROXY protocol.
    pub client: Option<IpAddr>,
    /// The Host header (or authority) as the client sent it.
    pub host: &'a str,
    pub tls: bool,
    pub request_id: Option<&'a RequestId>,
    /// The peer's port.
    pub remote_port: Option<u16>,
}

impl Vars<'_> {
    fn push(&self, var: Var, out: &mut Vec<u8>) {
        use std::io::Write;
        match var {
            Var::ClientIp => {
                if let Some(ip) = self.client {
                    let _ = write!(out, "{ip}");
                }
            }
            Var::Host => out.extend_from_slice(normalize_request_host(self.host).as_bytes()),
            Var::Scheme => out.extend_from_slice(if self.tls { b"https" } else { b"http" }),
            Var::RequestId => {
                if let Some(id) = self.request_id {
                    id.push_to(out);
                }
            }
            Var::RemotePort => {
                if let Some(port) = self.remote_port {
                    let _ = write!(out, "{port}");
                }
            }
            // Not request header variables: validation refuses them there.
            Var::RequestUri | Var::ServerPort => {}
        }
    }

    fn expand(&self, template: &Template, out: &mut Vec<u8>) {
        for piece in &template.0 {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Var(var) => self.push(*var, out),
            }
        }
    }
}

impl HeaderRules {
    /// Validation let only valid names and values through; a rule that still does not parse is
    /// left out rather than failing every request. Request rules may have variables; answer
    /// rules are taken as written.
    pub fn compile(rules: &[HeaderRule], request: bool) -> HeaderRules {
        let rules: Vec<(HeaderName, Option<Value>)> = rules
            .iter()
            .filter_map(|rule| {
                let name = HeaderName::from_bytes(rule.name.as_bytes()).ok()?;
                let value = match &rule.value {
                    None => None,
                    Some(v) if !request => Some(Value::Fixed(HeaderValue::from_str(v).ok()?)),
                    Some(v) => {
                        let template = Template::parse(v, HEADER_VARS).ok()?;
                        Some(match template.fixed() {
                            Some(text) => Value::Fixed(HeaderValue::from_str(text).ok()?),
                            None => Value::Vars(template),
                        })
                    }
                };
                Some((name, value))
            })
            .collect();
        let request_id = rules
            .iter()
            .any(|(_, v)| matches!(v, Some(Value::Vars(t)) if t.uses(Var::RequestId)));
        HeaderRules { rules, request_id }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule sends `$request_id`: the request needs an id.
    pub fn uses_request_id(&self) -> bool {
        self.request_id
    }

    pub fn apply_to_request(&self, req: &mut RequestHeader, vars: &Vars<'_>) -> Result<()> {
        self.apply(req, Some(vars))
    }

    pub fn apply_to_response(&self, resp: &mut ResponseHeader) -> Result<()> {
        self.apply(resp, None)
    }

    /// Whether a rule names the header `name`: a head written as bytes leaves its lines out,
    /// then adds [`HeaderRules::write_sets`].
    pub fn touches(&self, name: &[u8]) -> bool {
        self.rules
            .iter()
            .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// Writes the header lines the rules set, for a head written as bytes (whose lines that
    /// [`HeaderRules::touches`] were left out): the same result as [`HeaderRules::apply_to_request`].
    /// Answer rules have no variables: `vars` is None for them.
    pub fn write_sets(&self, out: &mut Vec<u8>, vars: Option<&Vars<'_>>) {
        for (name, value) in &self.rules {
            let Some(value) = value else { continue };
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            match value {
                Value::Fixed(v) => out.extend_from_slice(v.as_bytes()),
                Value::Vars(template) => {
                    if let Some(vars) = vars {
                        vars.expand(template, out)
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    fn apply(&self, message: &mut impl Message, vars: Option<&Vars<'_>>) -> Result<()> {
        for (name, value) in &self.rules {
            match value {
                Some(Value::Fixed(v)) => message.set(name.clone(), v.clone())?,
                Some(Value::Vars(template)) => {
                    let Some(vars) = vars else { continue };
                    let mut bytes = Vec::new();
                    vars.expand(template, &mut bytes);
                    // Every variable expands to visible ASCII (a Host header is one already).
                    if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                        message.set(name.clone(), v)?;
                    }
                }
                // pingora's removal rebuilds its case map: only when there is something to remove.
                None if message.has(name) => message.unset(name),
                None => {}
            }
        }
        Ok(())
    }
}

/// A request or an answer head: what a rule does to either.
trait Message {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn has(&self, name: &HeaderName) -> bool;
    fn unset(&mut self, name: &HeaderName);
}

/// pingora's request and answer heads have the same methods but no trait in common.
macro_rules! message {
    ($head:ty) => {
        impl Message for $head {
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn has(&self, name: &HeaderName) -> bool {
                self.headers.contains_key(name)
            }
            fn unset(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}

message!(RequestHeader);
message!(ResponseHeader);

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &str)]) -> HeaderRules {
        let list: Vec<HeaderRule> = list
            .iter()
            .map(|(n, v)| HeaderRule {
                name: n.to_string(),
                value: (!v.is_empty()).then(|| v.to_string()),
            })
            .collect();
        HeaderRules::compile(&list, true)
    }

    #[test]
    fn rules_set_replace_and_remove() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("x-frame-options", "DENY").unwrap();
        resp.append_header("x-frame-options", "ALLOW-FROM x")
            .unwrap();
        resp.insert_header("server", "uvicorn").unwrap();
        rules(&[
            ("x-frame-options", "SAMEORIGIN"),
            ("server", ""),
            ("x-absent", ""),
        ])
        .apply_to_response(&mut resp)
        .unwrap();
        let values: Vec<_> = resp.headers.get_all("x-frame-options").iter().collect();
        assert_eq!(values, ["SAMEORIGIN"]);
        assert!(!resp.headers.contains_key("server"));

        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        rules(&[("host", "app.internal")])
            .apply_to_request(&mut req, &vars(None))
            .unwrap();
        assert_eq!(req.headers["host"], "app.internal");
    }

    fn vars(id: Option<&RequestId>) -> Vars<'_> {
        Vars {
            client: Some("203.0.113.7".parse().unwrap()),
            host: "Example.COM:8443",
            tls: true,
            request_id: id,
            remote_port: Some(50123),
        }
    }

    #[test]
    fn variables_expand_alike_on_both_paths() {
        let rules = rules(&[
            ("x-real-ip", "$client_ip"),
            ("x-origin", "$scheme://$host from port $remote_port"),
            ("x-request-id", "$request_id"),
            ("x-price", "$$5"),
        ]);
        assert!(rules.uses_request_id());
        let id = RequestId::Given("abc".into());
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        rules.apply_to_request(&mut req, &vars(Some(&id))).unwrap();
        assert_eq!(req.headers["x-real-ip"], "203.0.113.7");
        assert_eq!(
            req.headers["x-origin"],
            "https://example.com from port 50123"
        );
        assert_eq!(req.headers["x-request-id"], "abc");
        assert_eq!(req.headers["x-price"], "$5");
        let mut out = Vec::new();
        rules.write_sets(&mut out, Some(&vars(Some(&id))));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-real-ip: 203.0.113.7\r\nx-origin: https://example.com from port 50123\r\nx-request-id: abc\r\nx-price: $5\r\n"
        );
    }
}
