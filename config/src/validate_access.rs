//! Validation of `[[services.NAME.access]]`: address lists, `basic_auth` (its htpasswd file is
//! read here, so a broken file is refused with the config) and `rate`.

use std::path::Path;

use crate::htpasswd::Htpasswd;
use crate::model::*;
use crate::schema::*;
use crate::validate::Validator;

impl Validator<'_> {
    pub(crate) fn access(
        &mut self,
        raw: &[S<RawAccess>],
        service_prefix: &str,
        key: &str,
    ) -> Vec<AccessRule> {
        let mut rules: Vec<AccessRule> = Vec::new();
        for item in raw {
            let r = item.get_ref();
            let path_prefix = match &r.path_prefix {
                None => None,
                Some(p) => {
                    let text = p.get_ref();
                    if !text.starts_with('/') {
                        self.problem(
                            p.span(),
                            format!("{key}.path_prefix"),
                            format!("{text:?} must start with '/', like \"/admin/\""),
                        );
                        continue;
                    }
                    if !prefix_within(text, service_prefix) {
                        self.problem(
                            p.span(),
                            format!("{key}.path_prefix"),
                            format!("{text:?} is outside the service's path_prefix {service_prefix:?}, so the rule would never apply"),
                        );
                        continue;
                    }
                    Some(text.clone())
                }
            };
            let same = |a: &AccessRule| {
                a.path_prefix.as_deref().map(match_key) == path_prefix.as_deref().map(match_key)
            };
            if rules.iter().any(same) {
                self.problem(
                    item.span(),
                    key,
                    format!(
                        "two rules for {}: put everything for one prefix in one rule",
                        path_prefix.as_deref().unwrap_or("the whole service")
                    ),
                );
                continue;
            }
            let allow = self.cidrs(&r.allow, &format!("{key}.allow"));
            let deny = self.cidrs(&r.deny, &format!("{key}.deny"));
            let basic_auth = r.basic_auth.as_ref().and_then(|a| self.basic_auth(a, key));
            let rate = r.rate.as_ref().and_then(|a| self.rate(a, key));
            let empty =
                r.allow.is_none() && r.deny.is_none() && r.basic_auth.is_none() && r.rate.is_none();
            if empty {
                self.problem(
                    item.span(),
                    key,
                    "the rule sets nothing: give allow, deny, basic_auth or rate",
                );
                continue;
            }
            rules.push(AccessRule {
                path_prefix,
                allow,
                deny,
                basic_auth,
                rate,
            });
        }
        // Longest prefix first; the rule for the whole service last.
        rules.sort_by_key(|r| {
            std::cmp::Reverse(
                r.path_prefix
                    .as_deref()
                    .map_or(0, |p| match_key(p).len() + 1),
            )
        });
        rules
    }

    fn cidrs(&mut self, raw: &Option<S<Vec<S<String>>>>, key: &str) -> Vec<Cidr> {
        let mut out = Vec::new();
        let Some(list) = raw else { return out };
        if list.get_ref().is_empty() {
            self.problem(
                list.span(),
                key,
                "is empty: leave it out, or list addresses like \"10.0.0.0/8\"",
            );
        }
        for item in list.get_ref() {
            match item.get_ref().parse::<Cidr>() {
                Ok(c) => out.push(c),
                Err(e) => self.problem(item.span(), key, e),
            }
        }
        out
    }

    fn basic_auth(&mut self, raw: &S<RawBasicAuth>, key: &str) -> Option<BasicAuth> {
        let a = raw.get_ref();
        let key = format!("{key}.basic_auth");
        let realm = match &a.realm {
            None => defaults::AUTH_REALM.to_string(),
            Some(r)
                if r.get_ref().is_empty()
                    || r.get_ref().contains(['"', '\\'])
                    || r.get_ref().chars().any(char::is_control) =>
            {
                self.problem(
                    r.span(),
                    format!("{key}.realm"),
                    "must be non-empty text without quotes, backslashes or control characters",
                );
                return None;
            }
            Some(r) => r.get_ref().clone(),
        };
        let path = a.htpasswd.get_ref();
        let users = match Htpasswd::load(Path::new(path)) {
            Ok(users) => users,
            Err(e) => {
                self.problem(a.htpasswd.span(), format!("{key}.htpasswd"), e);
                return None;
            }
        };
        Some(BasicAuth {
            realm,
            users,
            pass_authorization: a.pass_authorization.as_ref().is_some_and(|p| *p.get_ref()),
        })
    }

    fn rate(&mut self, raw: &S<RawRate>, key: &str) -> Option<RateLimit> {
        let r = raw.get_ref();
        let key = format!("{key}.rate");
        let per_second = match parse_rate(r.limit.get_ref()) {
            Ok(rate) => rate,
            Err(e) => {
                self.problem(r.limit.span(), format!("{key}.limit"), e);
                return None;
            }
        };
        let burst = self.count(&r.burst, &format!("{key}.burst"), 0, 1_000_000, 0);
        let by = match &r.by {
            None => RateKey::Ip,
            Some(b) => match b.get_ref().as_str() {
                "ip" => RateKey::Ip,
                other => match other.strip_prefix("header:") {
                    Some(name) if valid_header_name(name) => {
                        RateKey::Header(name.to_ascii_lowercase())
                    }
                    _ => {
                        self.problem(
                            b.span(),
                            format!("{key}.by"),
                            format!("{other:?} is not a key: use \"ip\" or \"header:NAME\", like \"header:X-Api-Key\""),
                        );
                        return None;
                    }
                },
            },
        };
        Some(RateLimit {
            limit: r.limit.get_ref().clone(),
            per_second,
            burst,
            by,
        })
    }
}

/// The part of a prefix that matching compares: `/admin/` covers `/admin` too, so that a rule
/// cannot be walked around by leaving off the slash.
pub fn match_key(prefix: &str) -> &str {
    match prefix.strip_suffix('/') {
        Some("") | None => prefix,
        Some(p) => p,
    }
}

/// Whether every path under `rule` can be under `service` (prefixes match on whole segments).
fn prefix_within(rule: &str, service: &str) -> bool {
    let (rule, service) = (match_key(rule), match_key(service));
    service == "/"
        || rule == service
        || rule
            .strip_prefix(service)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"5/s"`, `"300/m"`, `"1000/h"` (nginx's `"5r/s"` too): requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || {
        format!("{text:?} is not a rate: use requests per second, minute or hour, like \"5/s\" or \"300/m\"")
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count = count.trim().strip_suffix('r').unwrap_or(count.trim());
    let count: u32 = count.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(format!(
            "{text:?} lets nothing through: to refuse everyone, use deny = [\"0.0.0.0/0\", \"::/0\"]"
        ));
    }
    Ok(f64::from(count) / seconds)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::validate::parse;
    use crate::Config;

    const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s\"\n[state]\ndir = \"/tmp/d\"\n";

    fn check(extra: &str) -> Result<Config, String> {
        parse(Path::new("t.toml"), &format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    fn service(access: &str) -> String {
        format!("[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\n{access}")
    }

    #[test]
    fn rules_are_read_and_sorted_longest_prefix_first() {
        let dir = tempfile::tempdir().unwrap();
        let users = crate::htpasswd::tests::write_bob(dir.path());
        let c = check(&service(&format!(
            "[[services.app.access]]\nrate = {{ limit = \"300/m\", burst = 5 }}\n\
             [[services.app.access]]\npath_prefix = \"/admin/\"\nallow = [\"10.0.0.0/8\", \"203.0.113.7\"]\ndeny = [\"10.9.0.0/16\"]\n\
             basic_auth = {{ realm = \"admin\", htpasswd = {:?} }}\nrate = {{ limit = \"5r/s\", by = \"header:X-Api-Key\" }}\n",
            users.display()
        )))
        .unwrap();
        let rules = &c.services[0].access;
        assert_eq!(rules.len(), 2);
        let admin = &rules[0];
        assert_eq!(admin.path_prefix.as_deref(), Some("/admin/"));
        assert_eq!(admin.allow.len(), 2);
        assert_eq!(admin.deny.len(), 1);
        let auth = admin.basic_auth.as_ref().unwrap();
        assert_eq!(auth.realm, "admin");
        assert_eq!(auth.users.len(), 1);
        assert!(!auth.pass_authorization);
        let rate = admin.rate.as_ref().unwrap();
        assert_eq!(rate.per_second, 5.0);
        assert_eq!(rate.burst, 0);
        assert_eq!(rate.by, crate::RateKey::Header("x-api-key".into()));
        let all = &rules[1];
        assert_eq!(all.path_prefix, None);
        let rate = all.rate.as_ref().unwrap();
        assert_eq!((rate.per_second, rate.burst), (5.0, 5));
        assert_eq!(rate.by, crate::RateKey::Ip);
    }

    #[test]
    fn bad_rules_are_refused_at_their_line() {
        let e = check(&service(
            "[[services.app.access]]\npath_prefix = \"admin\"\nallow = [\"10.0.0.0/8\"]\n\
             [[services.app.access]]\nallow = [\"10.0.0.0/33\"]\n\
             [[services.app.access]]\npath_prefix = \"/x\"\n\
             [[services.app.access]]\npath_prefix = \"/y\"\nrate = { limit = \"5/d\" }\n\
             [[services.app.access]]\npath_prefix = \"/z\"\nrate = { limit = \"5/s\", by = \"cookie\" }\n\
             [[services.app.access]]\npath_prefix = \"/w\"\nbasic_auth = { htpasswd = \"/nonexistent/users\" }\n",
        ))
        .unwrap_err();
        for expected in [
            "t.toml:11: services.app.access.path_prefix: \"admin\" must start with '/'",
            "t.toml:14: services.app.access.allow: \"10.0.0.0/33\"",
            "t.toml:15: services.app.access: the rule sets nothing",
            "t.toml:19: services.app.access.rate.limit: \"5/d\" is not a rate",
            "t.toml:22: services.app.access.rate.by: \"cookie\" is not a key",
            "t.toml:25: services.app.access.basic_auth.htpasswd: /nonexistent/users: cannot read it",
        ] {
            assert!(e.contains(expected), "{expected} in {e}");
        }
    }

    #[test]
    fn a_rule_outside_the_service_or_twice_for_a_prefix_is_refused() {
        let e = check(
            "[services.app]\nactive = \"a\"\npools.a = [\"127.0.0.1:1\"]\npath_prefix = \"/api\"\n\
             [[services.app.access]]\npath_prefix = \"/admin\"\nallow = [\"10.0.0.0/8\"]\n\
             [[services.app.access]]\npath_prefix = \"/api/v1/\"\nallow = [\"10.0.0.0/8\"]\n\
             [[services.app.access]]\npath_prefix = \"/api/v1\"\ndeny = [\"10.0.0.0/8\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("\"/admin\" is outside the service's path_prefix \"/api\""),
            "{e}"
        );
        assert!(e.contains("two rules for /api/v1"), "{e}");
    }

    #[test]
    fn rates() {
        assert_eq!(super::parse_rate("5/s"), Ok(5.0));
        assert_eq!(super::parse_rate("120/m"), Ok(2.0));
        assert_eq!(super::parse_rate("3600r/h"), Ok(1.0));
        assert!(super::parse_rate("0/s")
            .unwrap_err()
            .contains("lets nothing through"));
        assert!(super::parse_rate("fast").is_err());
    }
}
