//! A service's header rules (`request_headers`, `response_headers`), parsed once per table
//! build so that a request only copies ready names and values.
//!
//! A rule sets a header, replacing every value the message had, or removes it. Rules run after
//! the proxy's own headers (forwarding headers, HSTS), so the service has the last word.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use switchback_config::HeaderRule;

/// The rules of one direction, ready to apply.
#[derive(Debug, Default)]
pub struct HeaderRules {
    rules: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl HeaderRules {
    /// Validation let only valid names and values through; a rule that still does not parse is
    /// left out rather than failing every request.
    pub fn compile(rules: &[HeaderRule]) -> HeaderRules {
        let rules = rules
            .iter()
            .filter_map(|rule| {
                let name = HeaderName::from_bytes(rule.name.as_bytes()).ok()?;
                let value = match &rule.value {
                    Some(v) => Some(HeaderValue::from_str(v).ok()?),
                    None => None,
                };
                Some((name, value))
            })
            .collect();
        HeaderRules { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn apply_to_request(&self, req: &mut RequestHeader) -> Result<()> {
        self.apply(req)
    }

    pub fn apply_to_response(&self, resp: &mut ResponseHeader) -> Result<()> {
        self.apply(resp)
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
    pub fn write_sets(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.rules {
            if let Some(value) = value {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn apply(&self, message: &mut impl Message) -> Result<()> {
        for (name, value) in &self.rules {
            match value {
                Some(v) => message.set(name.clone(), v.clone())?,
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
        HeaderRules::compile(&list)
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
            .apply_to_request(&mut req)
            .unwrap();
        assert_eq!(req.headers["host"], "app.internal");
    }
}
