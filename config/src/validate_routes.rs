//! Validation of where requests go: a service's listeners (`listen`), the default service of a
//! listener (`default`), redirect services (`redirect`), and the routes all services make
//! together (no two services on the same listener, host and path prefix).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::address::parse_socket_addr;
use crate::model::*;
use crate::schema::*;
use crate::template::{Template, REDIRECT_VARS};
use crate::validate::Validator;

/// The codes a redirect may answer with.
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

impl Validator<'_> {
    /// `services.NAME.listen`: addresses as `[listen]` writes them. Whether they are listeners
    /// is checked with the routes, once `[listen]` is known.
    pub(crate) fn service_listen(
        &mut self,
        raw: Option<&S<Vec<S<String>>>>,
        key: &str,
    ) -> Vec<SocketAddr> {
        let mut listen = Vec::new();
        let Some(raw) = raw else { return listen };
        for item in raw.get_ref() {
            match parse_socket_addr(item.get_ref()) {
                Ok(addr) if listen.contains(&addr) => {
                    self.problem(item.span(), key, format!("{addr} is listed twice"))
                }
                Ok(addr) => listen.push(addr),
                Err(e) => self.problem(item.span(), key, e),
            }
        }
        if listen.is_empty() {
            self.problem(
                raw.span(),
                key,
                "is empty: name the listeners the service is on, or leave listen out for every listener",
            );
        }
        listen
    }

    pub(crate) fn redirect(&mut self, raw: &S<RawRedirect>, key: &str) -> Option<Redirect> {
        let r = raw.get_ref();
        let to = r.to.get_ref();
        let mut ok = true;
        match Template::parse(to, REDIRECT_VARS) {
            Err(e) => {
                self.problem(r.to.span(), format!("{key}.to"), e);
                ok = false;
            }
            Ok(_) => {
                let absolute = ["http://", "https://", "$scheme://", "${scheme}://"]
                    .iter()
                    .any(|s| to.starts_with(s));
                let printable = to.bytes().all(|b| (0x21..0x7f).contains(&b));
                if !(absolute || to.starts_with('/')) || !printable {
                    self.problem(
                        r.to.span(),
                        format!("{key}.to"),
                        format!("{to:?} is not where a redirect can point: write a URL like \"https://example.com$request_uri\" or a path like \"/new$request_uri\", without spaces"),
                    );
                    ok = false;
                }
            }
        }
        let code = match &r.code {
            None => 302,
            Some(c) => match u16::try_from(*c.get_ref()) {
                Ok(code) if REDIRECT_CODES.contains(&code) => code,
                _ => {
                    self.problem(
                        c.span(),
                        format!("{key}.code"),
                        format!(
                            "{} is not a redirect: use 301 or 308 (permanent), 302, 303 or 307",
                            c.get_ref()
                        ),
                    );
                    ok = false;
                    302
                }
            },
        };
        ok.then(|| Redirect {
            to: to.clone(),
            code,
        })
    }

    /// On each listener, two services may not claim the same host and path prefix, only one
    /// may take every host for a given prefix, and only one may be the default. A service's
    /// `listen` names listeners of `[listen]`.
    pub(crate) fn routes(
        &mut self,
        raw: &BTreeMap<S<String>, S<RawService>>,
        listen: &ListenConfig,
        services: &[ServiceConfig],
    ) {
        let listeners: Vec<SocketAddr> = listen.http.iter().chain(&listen.https).copied().collect();
        let mut seen: BTreeMap<(SocketAddr, String, String), &str> = BTreeMap::new();
        let mut defaults: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for service in services {
            let Some((raw_name, raw_service)) = raw
                .iter()
                .find(|(k, _)| k.get_ref() == &service.name)
                .map(|(k, v)| (k, v.get_ref()))
            else {
                continue;
            };
            let name = &service.name;
            if let Some(raw_listen) = &raw_service.listen {
                for (addr, item) in service.listen.iter().zip(raw_listen.get_ref()) {
                    if !listeners.contains(addr) {
                        let known: Vec<String> = listeners.iter().map(|l| l.to_string()).collect();
                        self.problem(
                            item.span(),
                            format!("services.{name}.listen"),
                            format!(
                                "{addr} is not a listener: use addresses of listen.http or listen.https ({})",
                                known.join(", ")
                            ),
                        );
                    }
                }
            }
            let on: Vec<SocketAddr> = listeners
                .iter()
                .filter(|l| service.on_listener(l))
                .copied()
                .collect();
            if service.default {
                let span = raw_service
                    .default
                    .as_ref()
                    .map_or(raw_name.span(), S::span);
                for listener in &on {
                    if let Some(other) = defaults.insert(*listener, name) {
                        self.problem(
                            span.clone(),
                            format!("services.{name}.default"),
                            format!(
                                "service {other:?} is the default on {listener} already: a listener has one default"
                            ),
                        );
                        break;
                    }
                }
            }
            let mut clash = |v: &mut Self, host: &str, span: std::ops::Range<usize>| {
                for listener in &on {
                    let route = (*listener, host.to_string(), service.path_prefix.clone());
                    let Some(other) = seen.insert(route, name) else {
                        continue;
                    };
                    let message = if host.is_empty() {
                        format!(
                            "both {other:?} and {name:?} take every host (hosts = []) for path prefix {:?} on {listener}: give one of them hosts, a different path_prefix or other listeners",
                            service.path_prefix
                        )
                    } else {
                        format!(
                            "host {host:?} with path prefix {:?} on {listener} is already routed to service {other:?}",
                            service.path_prefix
                        )
                    };
                    v.problem(span, format!("services.{name}.hosts"), message);
                    return;
                }
            };
            if service.hosts.is_empty() {
                clash(self, "", raw_name.span());
            }
            for (host, raw_host) in service.hosts.iter().zip(&raw_service.hosts) {
                clash(self, host, raw_host.span());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::parse;
    use std::path::Path;

    const HEAD: &str = "[listen]\nhttp = [\"127.0.0.1:8080\", \"127.0.0.1:9090\"]\n[control]\nsocket = \"/tmp/sb.sock\"\n[state]\ndir = \"/tmp/sb\"\n";

    fn problems(services: &str) -> Vec<String> {
        match parse(Path::new("switchback.toml"), &format!("{HEAD}{services}")) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn services_on_different_listeners_may_share_host_and_prefix() {
        let two = "[services.grafana]\nlisten = [\"127.0.0.1:8080\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n[services.prometheus]\nlisten = [\"127.0.0.1:9090\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9091\"]\n";
        assert_eq!(problems(two), Vec::<String>::new());
        let clash = "[services.grafana]\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n[services.prometheus]\nlisten = [\"127.0.0.1:9090\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9091\"]\n";
        let p = problems(clash);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("services.prometheus.hosts") && p[0].contains("on 127.0.0.1:9090"),
            "{p:?}"
        );
    }

    #[test]
    fn listen_names_listeners_and_a_listener_has_one_default() {
        let p = problems("[services.app]\nlisten = [\"127.0.0.1:7000\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n");
        assert!(
            p[0].starts_with("switchback.toml:7: services.app.listen = ")
                || p[0].contains("services.app.listen"),
            "{p:?}"
        );
        assert!(p[0].contains("127.0.0.1:7000 is not a listener"), "{p:?}");
        let p = problems("[services.a]\nhosts = [\"a.test\"]\ndefault = true\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n[services.b]\nhosts = [\"b.test\"]\ndefault = true\nactive = \"a\"\npools.a = [\"127.0.0.1:3001\"]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("services.b.default")
                && p[0].contains("\"a\" is the default on 127.0.0.1:8080"),
            "{p:?}"
        );
        // Defaults on different listeners are fine.
        assert_eq!(problems("[services.a]\nhosts = [\"a.test\"]\nlisten = [\"127.0.0.1:8080\"]\ndefault = true\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n[services.b]\nhosts = [\"b.test\"]\nlisten = [\"127.0.0.1:9090\"]\ndefault = true\nactive = \"a\"\npools.a = [\"127.0.0.1:3001\"]\n"), Vec::<String>::new());
    }

    #[test]
    fn a_redirect_service_has_no_pools_and_a_real_target() {
        let ok = "[services.www]\nhosts = [\"www.example.com\"]\nredirect = { to = \"https://example.com$request_uri\", code = 301 }\n";
        assert_eq!(problems(ok), Vec::<String>::new());
        let c = parse(Path::new("s.toml"), &format!("{HEAD}{ok}")).unwrap();
        let www = c.service("www").unwrap();
        assert!(www.pools.is_empty());
        assert_eq!(www.redirect.as_ref().unwrap().code, 301);
        let both = "[services.www]\nredirect = { to = \"/x\" }\nactive = \"a\"\npools.a = [\"127.0.0.1:3000\"]\n";
        let p = problems(both);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p
            .iter()
            .all(|l| l.contains("a service with a redirect has no pools")));
        for (bad, says) in [
            (
                "redirect = { to = \"example.com\" }",
                "is not where a redirect can point",
            ),
            (
                "redirect = { to = \"https://x$remote_addr\" }",
                "$remote_addr is not a variable here",
            ),
            (
                "redirect = { to = \"/x\", code = 200 }",
                "200 is not a redirect",
            ),
        ] {
            let p = problems(&format!("[services.www]\n{bad}\n"));
            assert!(p.len() == 1 && p[0].contains(says), "{bad}: {p:?}");
        }
        let p = problems("[services.app]\npools.a = [\"127.0.0.1:3000\"]\n");
        assert!(
            p[0].contains("services.app.active") && p[0].contains("active = \"a\""),
            "{p:?}"
        );
    }
}
