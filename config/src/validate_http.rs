//! Validation of what a service does to the HTTP it carries: request body limits, header rules
//! and compression (`max_request_body`, `request_headers`, `response_headers`, `compress`).

use crate::model::Encoding;
use crate::model::HeaderRule;
use crate::schema::*;
use crate::template::{Template, HEADER_VARS};
use crate::validate::Validator;

/// Which way a header rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// Headers that frame the message or the connection: the proxy writes them itself, and a rule
/// that set them would corrupt the stream.
const FRAMING: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The largest body limit: 1 TiB, past which "no limit" (0) says it better.
const MAX_BODY_LIMIT: usize = 1 << 40;

/// A header name as RFC 9110 allows it: a token.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, spaces and tabs: what every HTTP/1 and HTTP/2 peer takes in a field value.
fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        && !value.starts_with([' ', '\t'])
        && !value.ends_with([' ', '\t'])
}

impl Validator<'_> {
    /// `max_request_body`: a size, 0 for no limit.
    pub(crate) fn request_body_limit(
        &mut self,
        value: &Option<S<toml::Value>>,
        key: &str,
    ) -> Option<usize> {
        value.as_ref()?;
        Some(self.size(
            value,
            key,
            0,
            MAX_BODY_LIMIT,
            crate::model::defaults::MAX_REQUEST_BODY,
        ))
    }

    pub(crate) fn header_rules(
        &mut self,
        raw: &Option<S<RawHeaders>>,
        key: &str,
        direction: Direction,
    ) -> Vec<HeaderRule> {
        let Some(raw) = raw else { return Vec::new() };
        let mut rules: Vec<HeaderRule> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in raw.get_ref() {
            let lower = name.get_ref().to_ascii_lowercase();
            let rule_key = format!("{key}.{}", name.get_ref());
            if seen.contains(&lower) {
                self.problem(
                    name.span(),
                    &rule_key,
                    format!("{lower} has a rule already (header names ignore case)"),
                );
                continue;
            }
            seen.push(lower.clone());
            if !valid_header_name(&lower) {
                self.problem(
                    name.span(),
                    &rule_key,
                    "not a header name: use letters, digits and '-', like \"X-Frame-Options\"",
                );
                continue;
            }
            if FRAMING.contains(&lower.as_str()) {
                self.problem(
                    name.span(),
                    &rule_key,
                    format!(
                        "{lower} frames the message, so the proxy sets it itself; a rule cannot"
                    ),
                );
                continue;
            }
            if lower == "host" && direction == Direction::Response {
                self.problem(name.span(), &rule_key, "host is a request header");
                continue;
            }
            let text = value.get_ref();
            if !valid_header_value(text) {
                self.problem(
                    value.span(),
                    &rule_key,
                    "a header value is printable ASCII on one line, with no space at either end",
                );
                continue;
            }
            if direction == Direction::Request {
                if let Err(e) = Template::parse(text, HEADER_VARS) {
                    self.problem(value.span(), &rule_key, e);
                    continue;
                }
            }
            rules.push(HeaderRule {
                name: lower,
                value: (!text.is_empty()).then(|| text.clone()),
            });
        }
        rules
    }

    pub(crate) fn compress(&mut self, raw: &Option<S<Vec<S<String>>>>, key: &str) -> Vec<Encoding> {
        let Some(raw) = raw else { return Vec::new() };
        let mut encodings = Vec::new();
        for item in raw.get_ref() {
            match Encoding::from_name(item.get_ref()) {
                Some(e) if encodings.contains(&e) => {
                    self.problem(item.span(), key, format!("{:?} is listed twice", e.as_str()))
                }
                Some(e) => encodings.push(e),
                None => self.problem(
                    item.span(),
                    key,
                    format!(
                        "{:?} is not an encoding switchback compresses with: use \"gzip\", \"br\" or \"zstd\"",
                        item.get_ref()
                    ),
                ),
            }
        }
        encodings
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{defaults, Encoding, HeaderRule};
    use std::path::Path;

    const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/sb.sock\"\n[state]\ndir = \"/tmp/sb\"\n";

    fn check(extra: &str) -> Result<crate::Config, Vec<String>> {
        crate::parse(Path::new("switchback.toml"), &format!("{BASE}{extra}"))
            .map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    const APP: &str = "[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\n";

    #[test]
    fn upstream_keepalive_and_idle_timeout_are_taken_and_bad_values_named() {
        let app = check(APP).unwrap().service("app").unwrap().upstream;
        assert_eq!(app.keepalive, defaults::UPSTREAM_KEEPALIVE);
        assert_eq!(app.idle_timeout, defaults::UPSTREAM_IDLE_TIMEOUT);
        let c = check(&format!(
            "{APP}[services.app.upstream]\nkeepalive = 0\nidle_timeout = \"5s\"\n"
        ))
        .unwrap();
        let upstream = &c.service("app").unwrap().upstream;
        assert_eq!(upstream.keepalive, 0);
        assert_eq!(upstream.idle_timeout, std::time::Duration::from_secs(5));
        let problems = check(&format!(
            "{APP}[services.app.upstream]\nkeepalive = -1\nidle_timeout = \"soon\"\n"
        ))
        .unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains(":11:")
                && p.contains("services.app.upstream.keepalive")
                && p.contains("out of range")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains(":12:") && p.contains("services.app.upstream.idle_timeout")),
            "{problems:?}"
        );
        let unknown =
            check(&format!("{APP}[services.app.upstream]\nkeep_alive = 8\n")).unwrap_err();
        assert!(
            unknown.iter().any(|p| p.contains("keep_alive")),
            "{unknown:?}"
        );
    }

    #[test]
    fn defaults_limit_bodies_and_leave_answers_alone() {
        let c = check(APP).unwrap();
        assert_eq!(c.server.max_request_body, defaults::MAX_REQUEST_BODY);
        let app = c.service("app").unwrap();
        assert_eq!(app.max_request_body, None);
        assert!(app.request_headers.is_empty() && app.response_headers.is_empty());
        assert!(app.compress.is_empty());
        assert_eq!(app.compress_min_length, defaults::COMPRESS_MIN_LENGTH);
    }

    #[test]
    fn the_nginx_settings_a_compose_stack_uses_are_taken() {
        let c = check(&format!(
            "[server]\nmax_request_body = \"1g\"\n{APP}max_request_body = \"10M\"\ncompress = [\"br\", \"gzip\"]\ncompress_min_length = \"2k\"\n[services.app.response_headers]\nX-Frame-Options = \"SAMEORIGIN\"\nServer = \"\"\n[services.app.request_headers]\nHost = \"app.internal\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.max_request_body, 1 << 30);
        let app = c.service("app").unwrap();
        assert_eq!(app.max_request_body, Some(10 << 20));
        assert_eq!(app.compress, vec![Encoding::Brotli, Encoding::Gzip]);
        assert_eq!(app.compress_min_length, 2048);
        assert_eq!(
            app.response_headers,
            vec![
                HeaderRule {
                    name: "server".into(),
                    value: None
                },
                HeaderRule {
                    name: "x-frame-options".into(),
                    value: Some("SAMEORIGIN".into())
                },
            ]
        );
        assert_eq!(app.request_headers[0].name, "host");
        let unlimited = check(&format!("{APP}max_request_body = 0\n")).unwrap();
        assert_eq!(unlimited.service("app").unwrap().max_request_body, Some(0));
    }

    #[test]
    fn bad_rules_are_each_named_by_line_and_key() {
        let problems = check(&format!(
            "{APP}max_request_body = \"ten megs\"\ncompress = [\"gzip\", \"deflate\", \"gzip\"]\n[services.app.response_headers]\n\"Bad Name\" = \"x\"\nContent-Length = \"5\"\nHost = \"x\"\nX-A = \" padded\"\n\"x-a\" = \"again\"\n"
        ))
        .unwrap_err();
        let expect = [
            "switchback.toml:10: services.app.max_request_body: \"ten megs\" is not a size",
            "switchback.toml:11: services.app.compress: \"deflate\" is not an encoding",
            "switchback.toml:11: services.app.compress: \"gzip\" is listed twice",
            "switchback.toml:13: services.app.response_headers.Bad Name: not a header name",
            "switchback.toml:14: services.app.response_headers.Content-Length: content-length frames the message",
            "switchback.toml:15: services.app.response_headers.Host: host is a request header",
            "switchback.toml:16: services.app.response_headers.X-A: a header value is printable ASCII",
            "switchback.toml:17: services.app.response_headers.x-a: x-a has a rule already",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "{e} not in {problems:#?}"
            );
        }
    }
}
