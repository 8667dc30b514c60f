//! Validation of `[services.NAME.canary]`: how clients are split between the stable and the
//! canary pool, and how testers force a pool.

use crate::model::*;
use crate::schema::*;
use crate::validate::Validator;

/// An HTTP token (RFC 9110): what a header or cookie name may be made of.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Validator<'_> {
    pub(crate) fn canary(&mut self, service: &str, raw: Option<&S<RawCanary>>) -> CanaryConfig {
        let mut config = CanaryConfig::default();
        let Some(raw) = raw else { return config };
        let raw = raw.get_ref();
        let key = |k: &str| format!("services.{service}.canary.{k}");
        // A name that may be "" (turned off); None means the value was refused.
        let mut name = |value: &S<String>, k: &str, lower: bool| -> Option<Option<String>> {
            let v = value.get_ref().trim();
            if v.is_empty() {
                return Some(None);
            }
            if !is_token(v) {
                self.problem(
                    value.span(),
                    key(k),
                    format!("{v:?} is not a valid name: use letters, digits, '-' and '_'"),
                );
                return None;
            }
            Some(Some(if lower {
                v.to_ascii_lowercase()
            } else {
                v.to_string()
            }))
        };
        let sticky_cookie = match &raw.sticky_cookie {
            None => Some(defaults::STICKY_COOKIE.to_string()),
            Some(v) => name(v, "sticky_cookie", false).flatten(),
        };
        let sticky_header = raw
            .sticky_header
            .as_ref()
            .and_then(|v| name(v, "sticky_header", true).flatten());
        // Overrides are off unless a secret is set; the secret turns on the default header
        // and cookie names, which may be renamed or turned off ("").
        let secret_given = raw.override_secret.is_some();
        let defaults_on = |name: &str| secret_given.then(|| name.to_string());
        config.override_header = match &raw.override_header {
            None => defaults_on(defaults::OVERRIDE_HEADER),
            Some(v) => name(v, "override_header", true).flatten(),
        };
        config.override_cookie = match &raw.override_cookie {
            None => defaults_on(defaults::OVERRIDE_COOKIE),
            Some(v) => name(v, "override_cookie", false).flatten(),
        };
        if !secret_given {
            for (k, value) in [
                ("override_header", &raw.override_header),
                ("override_cookie", &raw.override_cookie),
            ] {
                if let Some(v) = value.as_ref().filter(|v| !v.get_ref().trim().is_empty()) {
                    self.problem(
                        v.span(),
                        key(k),
                        "an override lets a client choose its pool, so it needs override_secret (16 characters or more; the override then says \"POOL:SECRET\"), or \"\" to leave it off",
                    );
                }
            }
        }
        if let Some(v) = &raw.override_secret {
            let secret = v.get_ref();
            if secret.len() < 16 || secret.bytes().any(|b| !b.is_ascii_graphic() || b == b';') {
                self.problem(
                    v.span(),
                    key("override_secret"),
                    "use at least 16 printable characters, no spaces or ';'",
                );
            } else {
                config.override_secret = Some(secret.clone());
            }
        }
        let sticky_kind = raw
            .sticky
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()));
        config.sticky = match sticky_kind {
            None | Some(("cookie", _)) => match sticky_cookie {
                Some(c) => Sticky::Cookie(c),
                None => {
                    if let Some(v) = &raw.sticky_cookie {
                        if v.get_ref().trim().is_empty() {
                            self.problem(
                                v.span(),
                                key("sticky_cookie"),
                                "is empty: name the cookie, or use sticky = \"ip\" or \"header\"",
                            );
                        }
                    }
                    Sticky::Cookie(defaults::STICKY_COOKIE.to_string())
                }
            },
            Some(("ip", _)) => Sticky::Ip,
            Some(("header", span)) => match sticky_header {
                Some(h) => Sticky::Header(h),
                None => {
                    if raw.sticky_header.is_none() {
                        self.problem(
                            span,
                            key("sticky"),
                            "sticky = \"header\" needs sticky_header, the request header to hash (like \"X-User-Id\")",
                        );
                    }
                    Sticky::Ip
                }
            },
            Some((other, span)) => {
                self.problem(
                    span,
                    key("sticky"),
                    format!("{other:?} is not a way to keep clients on a pool: use \"cookie\", \"header\" or \"ip\""),
                );
                Sticky::Ip
            }
        };
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check(canary: &str) -> Result<CanaryConfig, Vec<String>> {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\npools.green = [\"127.0.0.1:9002\"]\n{canary}"
        );
        crate::parse(Path::new("t.toml"), &text)
            .map(|c| c.services[0].canary.clone())
            .map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    #[test]
    fn by_default_a_cookie_keeps_the_bucket_and_no_client_can_choose_its_pool() {
        let c = check("").unwrap();
        assert_eq!(c.sticky, Sticky::Cookie("switchback_bucket".into()));
        assert_eq!(c.override_header, None);
        assert_eq!(c.override_cookie, None);
        assert_eq!(c.override_secret, None);
    }

    #[test]
    fn a_secret_turns_the_default_override_names_on() {
        let c = check("[services.app.canary]\noverride_secret = \"0123456789abcdef\"\n").unwrap();
        assert_eq!(c.override_header.as_deref(), Some("x-switchback-pool"));
        assert_eq!(c.override_cookie.as_deref(), Some("switchback_pool"));
        assert_eq!(c.override_secret.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn an_override_without_a_secret_is_refused() {
        let problems =
            check("[services.app.canary]\noverride_header = \"X-Switchback-Pool\"\noverride_cookie = \"qa\"\n")
                .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("t.toml:12: services.app.canary.override_header:")
                && problems[0].contains("needs override_secret"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("t.toml:13: services.app.canary.override_cookie:"),
            "{problems:?}"
        );
        let off = check("[services.app.canary]\noverride_header = \"\"\noverride_cookie = \"\"\n")
            .unwrap();
        assert_eq!((off.override_header, off.override_cookie), (None, None));
    }

    #[test]
    fn overrides_can_be_renamed_or_turned_off() {
        let c = check("[services.app.canary]\nsticky = \"header\"\nsticky_header = \"X-User-Id\"\noverride_header = \"\"\noverride_cookie = \"qa_pool\"\noverride_secret = \"0123456789abcdef\"\n").unwrap();
        assert_eq!(c.sticky, Sticky::Header("x-user-id".into()));
        assert_eq!(c.override_header, None);
        assert_eq!(c.override_cookie.as_deref(), Some("qa_pool"));
        assert_eq!(c.override_secret.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn bad_canary_keys_name_their_line() {
        let problems = check("[services.app.canary]\nsticky = \"random\"\noverride_header = \"X Pool\"\noverride_secret = \"short\"\n").unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[1].contains("t.toml:13: services.app.canary.override_header"),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("canary.sticky") && p.contains("\"random\"")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("override_secret")),
            "{problems:?}"
        );
        let problems = check("[services.app.canary]\nsticky = \"header\"\n").unwrap_err();
        assert!(problems[0].contains("needs sticky_header"), "{problems:?}");
    }
}
