//! The TLS part of validation: `[acme]`, and each service's `tls`, `https_redirect` and `hsts`.
//!
//! Kept apart from the rest of [`crate::validate`] because the rules are their own: what an ACME
//! CA can issue for (no wildcard over HTTP-01, no IP address), what a file pair needs, and which
//! listeners a TLS service depends on.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::model::*;
use crate::schema::*;
use crate::validate::Validator;

impl Validator<'_> {
    pub(crate) fn acme(&mut self, raw: Option<&S<RawAcme>>) -> AcmeConfig {
        let mut acme = AcmeConfig {
            directory: defaults::ACME_DIRECTORY.to_string(),
            email: None,
            eab: None,
            ca_root: None,
            retry_after: defaults::ACME_RETRY_AFTER,
            timeout: defaults::ACME_TIMEOUT,
        };
        let Some(raw) = raw.map(|r| r.get_ref()) else {
            return acme;
        };
        let staging = raw.staging.as_ref().is_some_and(|s| *s.get_ref());
        match (&raw.directory, staging) {
            (Some(d), true) => self.problem(
                d.span(),
                "acme.directory",
                "give either directory or staging = true, not both",
            ),
            (Some(d), false) => {
                let url = d.get_ref().trim();
                if url.starts_with("https://") && url.len() > "https://".len() {
                    acme.directory = url.to_string();
                } else {
                    self.problem(
                        d.span(),
                        "acme.directory",
                        format!("{url:?} is not an https:// URL of an ACME directory"),
                    );
                }
            }
            (None, true) => acme.directory = defaults::ACME_STAGING_DIRECTORY.to_string(),
            (None, false) => {}
        }
        if let Some(e) = &raw.email {
            let email = e.get_ref().trim();
            if email.contains('@')
                && !email.contains(char::is_whitespace)
                && !email.starts_with('@')
            {
                acme.email = Some(email.trim_start_matches("mailto:").to_string());
            } else {
                self.problem(
                    e.span(),
                    "acme.email",
                    format!("{email:?} is not an email address"),
                );
            }
        }
        match (&raw.eab_kid, &raw.eab_hmac_key) {
            (Some(kid), Some(key)) => {
                if decode_base64url(key.get_ref().trim()).is_none() {
                    self.problem(
                        key.span(),
                        "acme.eab_hmac_key",
                        "is not base64url: paste the HMAC key exactly as the CA gave it",
                    );
                } else {
                    acme.eab = Some((
                        kid.get_ref().trim().to_string(),
                        key.get_ref().trim().to_string(),
                    ));
                }
            }
            (Some(kid), None) => self.problem(
                kid.span(),
                "acme.eab_kid",
                "needs acme.eab_hmac_key as well",
            ),
            (None, Some(key)) => self.problem(
                key.span(),
                "acme.eab_hmac_key",
                "needs acme.eab_kid as well",
            ),
            (None, None) => {}
        }
        if let Some(root) = &raw.ca_root {
            if root.get_ref().trim().is_empty() {
                self.problem(
                    root.span(),
                    "acme.ca_root",
                    "is empty: give a PEM file or leave the key out",
                );
            } else {
                acme.ca_root = Some(PathBuf::from(root.get_ref()));
            }
        }
        acme.retry_after = self.duration(
            &raw.retry_after,
            "acme.retry_after",
            defaults::ACME_RETRY_AFTER,
        );
        acme.timeout = self.duration(&raw.timeout, "acme.timeout", defaults::ACME_TIMEOUT);
        acme
    }

    pub(crate) fn service_tls(
        &mut self,
        name: &str,
        raw: &RawService,
        hosts: &[String],
    ) -> (TlsMode, bool, Option<String>) {
        let key = |k: &str| format!("services.{name}.{k}");
        let tls = match &raw.tls {
            None => TlsMode::Off,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "off" => TlsMode::Off,
                toml::Value::String(s) if s == "acme" => {
                    if hosts.is_empty() {
                        self.problem(
                            v.span(),
                            key("tls"),
                            "tls = \"acme\" needs hosts to order certificates for: list them in hosts",
                        );
                    }
                    for host in hosts {
                        if host.starts_with("*.") {
                            self.problem(
                                v.span(),
                                key("tls"),
                                format!("{host:?}: a wildcard certificate needs a DNS-01 challenge, which switchback does not answer; use tls = {{ cert, key }} for it"),
                            );
                        } else if host.parse::<IpAddr>().is_ok() {
                            self.problem(
                                v.span(),
                                key("tls"),
                                format!("{host:?}: ACME certificates are for host names, not IP addresses"),
                            );
                        }
                    }
                    TlsMode::Acme
                }
                toml::Value::Table(t) => {
                    let path = |k: &str| {
                        t.get(k)
                            .and_then(|v| v.as_str())
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                    };
                    let unknown: Vec<&String> =
                        t.keys().filter(|k| *k != "cert" && *k != "key").collect();
                    if !unknown.is_empty() {
                        self.problem(
                            v.span(),
                            key("tls"),
                            format!(
                                "unknown key {:?}: a file pair has only cert and key",
                                unknown[0]
                            ),
                        );
                    }
                    match (path("cert"), path("key")) {
                        (Some(cert), Some(k)) => TlsMode::Files {
                            cert: PathBuf::from(cert),
                            key: PathBuf::from(k),
                        },
                        _ => {
                            self.problem(
                                v.span(),
                                key("tls"),
                                "a file pair needs both paths: tls = { cert = \"fullchain.pem\", key = \"key.pem\" }",
                            );
                            TlsMode::Off
                        }
                    }
                }
                other => {
                    self.problem(
                        v.span(),
                        key("tls"),
                        format!("{other} is not a TLS mode: use \"acme\", \"off\" or {{ cert = \"…\", key = \"…\" }}"),
                    );
                    TlsMode::Off
                }
            },
        };
        let secure_default = tls == TlsMode::Acme;
        let https_redirect = raw
            .https_redirect
            .as_ref()
            .map_or(secure_default, |r| *r.get_ref());
        let hsts = match &raw.hsts {
            None => secure_default.then(|| defaults::HSTS.to_string()),
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(true) => Some(defaults::HSTS.to_string()),
                toml::Value::Boolean(false) => None,
                toml::Value::String(s) if s.trim().starts_with("max-age=") => {
                    Some(s.trim().to_string())
                }
                _ => {
                    self.problem(
                        v.span(),
                        key("hsts"),
                        "use true, false, or a header value like \"max-age=31536000; includeSubDomains\"",
                    );
                    None
                }
            },
        };
        if tls == TlsMode::Off {
            if let (Some(f), true) = (&raw.https_redirect, https_redirect) {
                self.problem(
                    f.span(),
                    key("https_redirect"),
                    "the service has no TLS (tls is off)",
                );
            }
            if let (Some(h), Some(_)) = (&raw.hsts, &hsts) {
                self.problem(h.span(), key("hsts"), "the service has no TLS (tls is off)");
            }
        }
        (tls, https_redirect, hsts)
    }

    /// TLS services need an HTTPS listener, and ACME needs a plain one for HTTP-01.
    pub(crate) fn tls_listeners(
        &mut self,
        raw: &RawConfig,
        listen: &ListenConfig,
        services: &[ServiceConfig],
    ) {
        if let Some(first) = raw.listen.get_ref().https.first() {
            if !listen.https.is_empty() && services.iter().all(|s| s.tls == TlsMode::Off) {
                self.problem(
                    first.span(),
                    "listen.https",
                    "no service has TLS, so there is no certificate to serve: set tls = \"acme\" or tls = { cert, key } on a service",
                );
            }
        }
        for service in services {
            let Some(raw_service) = raw
                .services
                .iter()
                .find(|(k, _)| k.get_ref() == &service.name)
                .map(|(_, v)| v.get_ref())
            else {
                continue;
            };
            let Some(tls) = &raw_service.tls else {
                continue;
            };
            if service.tls != TlsMode::Off && listen.https.is_empty() {
                self.problem(
                    tls.span(),
                    format!("services.{}.tls", service.name),
                    "TLS needs an HTTPS listener: add listen.https, like https = [\"0.0.0.0:443\"]",
                );
            }
            if service.tls == TlsMode::Acme && listen.http.is_empty() {
                self.problem(
                    tls.span(),
                    format!("services.{}.tls", service.name),
                    "ACME answers its HTTP-01 challenges on a plain HTTP listener: add listen.http, like http = [\"0.0.0.0:80\"]",
                );
            }
        }
    }
}

/// Decodes base64url (with or without padding); None when it is not.
pub fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!text.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::validate::parse;

    const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\nhttps = [\"127.0.0.1:8443\"]\n[control]\nsocket = \"/tmp/s\"\n[state]\ndir = \"/tmp/d\"\n";

    fn check(extra: &str) -> Result<Config, Vec<String>> {
        parse(Path::new("t.toml"), &format!("{BASE}{extra}"))
            .map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    #[test]
    fn acme_services_get_redirect_and_hsts_by_default() {
        let c = check("[services.app]\nhosts = [\"app.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"acme\"\n").unwrap();
        let app = c.service("app").unwrap();
        assert_eq!(app.tls, TlsMode::Acme);
        assert!(app.https_redirect);
        assert_eq!(app.hsts.as_deref(), Some(defaults::HSTS));
        assert_eq!(c.acme.directory, defaults::ACME_DIRECTORY);
        assert_eq!(c.listen.https, vec!["127.0.0.1:8443".parse().unwrap()]);
    }

    #[test]
    fn file_pairs_default_to_no_redirect_and_can_opt_in() {
        let c = check("[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = { cert = \"c.pem\", key = \"k.pem\" }\nhsts = \"max-age=60\"\n").unwrap();
        let app = c.service("app").unwrap();
        assert_eq!(
            app.tls,
            TlsMode::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            }
        );
        assert!(!app.https_redirect);
        assert_eq!(app.hsts.as_deref(), Some("max-age=60"));
    }

    #[test]
    fn acme_section_is_checked() {
        let svc = "[services.app]\nhosts = [\"a.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"acme\"\n";
        let c = check(&format!("{svc}[acme]\nstaging = true\nemail = \"ops@example.com\"\neab_kid = \"kid-1\"\neab_hmac_key = \"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\"\nca_root = \"/tmp/root.pem\"\nretry_after = \"2s\"\n")).unwrap();
        assert_eq!(c.acme.directory, defaults::ACME_STAGING_DIRECTORY);
        assert_eq!(c.acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(c.acme.eab.as_ref().unwrap().0, "kid-1");
        assert_eq!(c.acme.retry_after, std::time::Duration::from_secs(2));
        let e = check(&format!("{svc}[acme]\ndirectory = \"http://x\"\nstaging = true\neab_kid = \"k\"\nemail = \"nobody\"\n")).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter().any(|l| l.contains("acme.directory: give either")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("acme.eab_kid: needs acme.eab_hmac_key")),
            "{e:?}"
        );
        assert!(e.iter().any(|l| l.contains("acme.email")), "{e:?}");
    }

    #[test]
    fn what_acme_cannot_issue_is_refused() {
        let e = check("[services.app]\nhosts = [\"*.example.com\", \"10.0.0.1\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"acme\"\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("DNS-01") && e[1].contains("IP addresses"),
            "{e:?}"
        );
        let e =
            check("[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"acme\"\n")
                .unwrap_err();
        assert!(e[0].contains("needs hosts"), "{e:?}");
    }

    #[test]
    fn tls_needs_its_listeners_and_a_known_mode() {
        let no_https = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s\"\n[state]\ndir = \"/tmp/d\"\n[services.app]\nhosts = [\"a.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"acme\"\n";
        let e = parse(Path::new("t.toml"), no_https)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs an HTTPS listener"), "{e}");
        let e =
            check("[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = \"yes\"\n")
                .unwrap_err();
        assert!(e.iter().any(|l| l.contains("is not a TLS mode")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("no service has TLS")), "{e:?}");
        let e = check("[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\ntls = { cert = \"c.pem\" }\n").unwrap_err();
        assert!(e.iter().any(|l| l.contains("needs both paths")), "{e:?}");
        let e = check(
            "[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\nhttps_redirect = true\n",
        )
        .unwrap_err();
        assert!(e.iter().any(|l| l.contains("has no TLS")), "{e:?}");
    }

    #[test]
    fn base64url_decodes() {
        assert_eq!(decode_base64url("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64url("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64url("not base64!").is_none());
    }
}
