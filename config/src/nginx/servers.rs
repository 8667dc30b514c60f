//! `server` blocks → where each service is routed: its listeners, the default service of a
//! listener, redirect services, and the plain-HTTP server that only sends its names to HTTPS.
//!
//! nginx picks a server block by the listener a connection came in on, then by Host, then a
//! location by path. switchback routes by listener, Host and path prefix too, but its unit is a
//! service (one route), not a block. So:
//!
//! - a block's locations become services that carry the block's listeners (`listen`), left out
//!   when that is every listener;
//! - the same route in two blocks (the port-80 and port-443 servers of one site) is one service
//!   on the listeners of both only when it does the same in both; otherwise each block keeps its
//!   own service on its own listeners, as nginx keeps its own block;
//! - the block nginx falls back to on a listener (`listen … default_server`, else the first
//!   block on it) gives one service `default = true`, which takes the whole block's place for
//!   hosts no service names;
//! - `return 301 URL` (server-wide or in a location) becomes a redirect service, except that a
//!   plain-HTTP block sending its own names to `https://$host$request_uri` turns
//!   `https_redirect` on for the HTTPS services of those names, which then also serve its
//!   listeners.
//!
//! A block that yields no service says so in a note: nothing is dropped silently.

use super::parse::Directive;
use super::translate::{
    push_new, quote, unique_name, with_port, Action, At, Service, Settings, Translator,
};
use super::vars;

/// A `server` block, as far as routing goes.
#[derive(Debug)]
pub(super) struct Block {
    /// The `server` directive.
    at: At,
    hosts: Vec<String>,
    /// Its listeners as `[listen]` has them; empty: every listener (none of its own could be
    /// read).
    listen: Vec<String>,
    /// The listeners it is `default_server` on, each with its `listen`.
    default_on: Vec<(String, At)>,
    /// The services made for it, in its order: its locations', its redirect's, and (once every
    /// block is read) the HTTPS services it redirects to.
    services: Vec<usize>,
    /// It answers all of its names with a redirect to `https://` the same name: the code, and
    /// the `return`. What becomes of it waits until every HTTPS service is known.
    to_https: Option<(u16, At)>,
    /// On plain and TLS listeners, it sends plain-HTTP requests to HTTPS: its TLS services
    /// get `https_redirect`.
    https_only: bool,
}

/// What a server block's `if`s that redirect to HTTPS amount to.
enum HttpsIf {
    /// Every request of the block's names, which is plain HTTP: the code, the `return`, and
    /// whether the `if`s asked for the names (so that other hosts get past them).
    All(u16, At, bool),
    /// The plain-HTTP requests of a block that also takes TLS.
    Plain,
}

/// What a `return` is to switchback.
#[derive(Debug, PartialEq)]
enum Return {
    /// The `Location` in switchback's spelling, and the code.
    Redirect(String, u16),
    /// No redirect switchback can give: why, for the note.
    Other(String),
}

/// `return [CODE] URL` as a redirect. nginx's `return URL` is a 302; `$server_name` is the
/// block's first name, written out.
fn parse_return(args: &[String], server_name: Option<&str>) -> Return {
    let (code, url) = match args {
        [url]
            if ["http://", "https://", "$scheme"]
                .iter()
                .any(|p| url.starts_with(p)) =>
        {
            (302, url)
        }
        [code, url] => match code.parse::<u16>() {
            Ok(code @ (301 | 302 | 303 | 307 | 308)) => (code, url),
            _ => return Return::Other(not_a_redirect(args)),
        },
        _ => return Return::Other(not_a_redirect(args)),
    };
    let to = match vars::translate(url, |v| vars::redirect_var(v, server_name)) {
        Ok(to) => to,
        Err(var) if var == "$server_name" => {
            return Return::Other(
                "$server_name: the server block has no name to write in its place".into(),
            )
        }
        Err(var) => {
            return Return::Other(format!(
                "{var} has no switchback equivalent: a redirect may use {}",
                vars::REDIRECT_VARS
            ))
        }
    };
    let absolute = ["http://", "https://", "$scheme://", "${scheme}://"]
        .iter()
        .any(|p| to.starts_with(p));
    let printable = to.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !(absolute || to.starts_with('/')) || !printable {
        return Return::Other(format!(
            "{url:?} is not a URL or path switchback can redirect to"
        ));
    }
    Return::Redirect(to, code)
}

fn not_a_redirect(args: &[String]) -> String {
    format!(
        "return {}: only redirects (301, 302, 303, 307, 308 with a URL) are carried over; these requests go to whichever service routes them, or get a 503",
        args.first().map_or("", String::as_str)
    )
}

/// Whether a redirect sends each of `hosts` to itself over HTTPS, path and query kept: what
/// `https_redirect` does.
fn to_own_https(to: &str, hosts: &[String]) -> bool {
    to == "https://$host$request_uri"
        || matches!(hosts, [only] if to == format!("https://{only}$request_uri"))
}

/// `listen 80`, `listen 127.0.0.1:8080`, `listen [::]:443 ssl`: the address and whether it
/// serves TLS.
fn listen(args: &[String]) -> Option<(String, bool)> {
    let first = args.first()?;
    let ssl = args[1..].iter().any(|a| a == "ssl");
    let addr = if first.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.0.0.0:{first}")
    } else if let Some(port) = first.strip_prefix("*:") {
        format!("0.0.0.0:{port}")
    } else if first.starts_with('[') && !first.contains("]:") {
        format!("{first}:80")
    } else if first.starts_with("unix:") {
        return None;
    } else if first.contains(':') {
        first.clone()
    } else {
        format!("{first}:80")
    };
    addr.parse::<std::net::SocketAddr>().ok()?;
    Some((addr, ssl))
}

/// Whether a service with `hosts` serves `host`: by name, by `*.suffix`, or as the service of
/// every host.
fn serves(hosts: &[String], host: &str) -> bool {
    hosts.is_empty()
        || hosts.iter().any(|h| {
            h == host
                || h.strip_prefix('*').is_some_and(|dot_suffix| {
                    dot_suffix.starts_with('.') && host.ends_with(dot_suffix)
                })
        })
}

/// Whether two listener lists share a listener (empty: every listener).
fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|l| b.contains(l))
}

/// `listen` with `more` added (empty: every listener).
fn join(listen: &mut Vec<String>, more: &[String]) {
    if more.is_empty() {
        listen.clear();
    } else if !listen.is_empty() {
        for l in more {
            push_new(listen, l.clone());
        }
    }
}

/// A redirect service is named after its first host: `www-example-com`.
fn redirect_base(hosts: &[String]) -> String {
    hosts.first().map_or("redirect".into(), |h| {
        h.trim_start_matches("*.").replace('.', "-")
    })
}

impl Translator {
    pub(super) fn server(&mut self, d: &Directive, body: &[Directive], http: &Settings) {
        let mut settings = Settings::default();
        let mut block = Block {
            at: At::of(d),
            hosts: Vec::new(),
            listen: Vec::new(),
            default_on: Vec::new(),
            services: Vec::new(),
            to_https: None,
            https_only: false,
        };
        let (mut tls_cert, mut tls_key) = (None, None);
        let mut listens = false;
        let (mut plain, mut secure) = (false, false);
        let mut returned = None;
        let mut ifs = Vec::new();
        for d in body {
            if self.setting(d, &mut settings) {
                continue;
            }
            match d.name.as_str() {
                "listen" => {
                    listens = true;
                    match self.listen(d, &mut block) {
                        Some(true) => secure = true,
                        Some(false) => plain = true,
                        None => {}
                    }
                }
                "server_name" => {
                    for name in &d.args {
                        if name.starts_with('~') {
                            self.note(
                                d,
                                format!("{name}: switchback matches exact names and *.suffix"),
                            );
                        } else if name != "_" && !name.is_empty() {
                            push_new(&mut block.hosts, name.to_ascii_lowercase());
                        }
                    }
                }
                "ssl_certificate" => tls_cert = d.args.first().cloned(),
                "ssl_certificate_key" => tls_key = d.args.first().cloned(),
                "ssl_protocols" | "ssl_ciphers" | "ssl_prefer_server_ciphers" | "http2" => self
                    .note(
                    d,
                    "switchback serves TLS 1.2 and 1.3 with rustls' ciphers, and HTTP/2 by ALPN",
                ),
                "return" if returned.is_none() => returned = Some(d),
                "return" => self.note(
                    d,
                    "never reached, in nginx either: the return above answers first",
                ),
                // Read once the names are known: certbot writes its `if`s before them.
                "if" => ifs.push(d),
                "location" => {}
                _ => self.note(d, "no switchback equivalent"),
            }
        }
        if !listens {
            // nginx's own default.
            let addr = "0.0.0.0:80".to_string();
            push_new(&mut self.http, addr.clone());
            block.listen.push(addr);
            plain = true;
        }
        // Only a server that is plain HTTP alone can send every request to HTTPS.
        let plain = plain && !secure;
        let to_https = self.https_ifs(&ifs, &block.hosts, plain);
        let settings = settings.under(http);
        let tls = match (tls_cert, tls_key) {
            (Some(c), _) if c.starts_with("/etc/letsencrypt/") => Some("\"acme\"".to_string()),
            (Some(c), Some(k)) => Some(format!("{{ cert = {}, key = {} }}", quote(&c), quote(&k))),
            _ => None,
        };
        let locations = body.iter().filter(|d| d.name == "location");
        match to_https {
            // Every name of a plain server goes to HTTPS before anything else is looked at.
            Some(HttpsIf::All(code, at, by_host)) => {
                for l in locations {
                    self.note(l, "never reached for the server block's names, in nginx either: the if above sends them to HTTPS first");
                }
                match returned {
                    Some(r) if by_host => self.note(r, "reached only by hosts the server block does not name (as nginx's default server): switchback answers those from whichever service routes them, or with a 503"),
                    Some(r) => self.note(r, "never reached, in nginx either: the if above sends every request to HTTPS first"),
                    None => {}
                }
                block.to_https = Some((code, at));
                self.blocks.push(block);
                return;
            }
            Some(HttpsIf::Plain) => block.https_only = true,
            None => {}
        }
        match returned {
            // nginx answers a server-wide `return` before it looks for a location.
            Some(r) => {
                for l in locations {
                    self.note(
                        l,
                        "never reached, in nginx either: the server block's return answers every request first",
                    );
                }
                match parse_return(&r.args, block.hosts.first().map(String::as_str)) {
                    Return::Redirect(to, code) if plain && to_own_https(&to, &block.hosts) => {
                        block.to_https = Some((code, At::of(r)))
                    }
                    Return::Redirect(to, code) => {
                        let service =
                            route(&block, "/", Action::Redirect(to, code), settings, &tls);
                        self.add_service(&redirect_base(&block.hosts), service, r, &mut block);
                    }
                    Return::Other(why) => self.note(r, why),
                }
            }
            None => {
                for l in locations {
                    self.location(l, &mut block, &settings, &tls, plain);
                }
            }
        }
        if block.https_only {
            for &i in &block.services {
                let service = &mut self.services[i];
                service.https_redirect |= service.tls.is_some();
            }
        }
        if block.services.is_empty() && block.to_https.is_none() {
            let hosts = if block.hosts.is_empty() {
                "every host".to_string()
            } else {
                block.hosts.join(", ")
            };
            let on = if block.listen.is_empty() {
                "every listener".to_string()
            } else {
                block.listen.join(", ")
            };
            self.note(
                d,
                format!("no service comes of this server block ({hosts} on {on}): nothing in it is proxied (proxy_pass) or redirected (return)"),
            );
        }
        self.blocks.push(block);
    }

    /// A server block's `if`s that send plain-HTTP requests to HTTPS:
    /// `if ($scheme = http) { return 301 https://$host$request_uri; }` in a server on both
    /// kinds of listener, and certbot's `if ($host = NAME) { … }` for each name of a plain one.
    /// Any other `if` is noted.
    fn https_ifs(&mut self, ifs: &[&Directive], hosts: &[String], plain: bool) -> Option<HttpsIf> {
        let mut found = None;
        let mut names = Vec::new();
        for d in ifs {
            let condition: String = d
                .args
                .concat()
                .chars()
                .filter(|c| !matches!(c, '(' | ')' | '"' | '\'' | ' '))
                .collect();
            let redirect = match d.block.as_deref() {
                Some([r]) if r.name == "return" => {
                    match parse_return(&r.args, hosts.first().map(String::as_str)) {
                        Return::Redirect(to, code) => Some((to, code, At::of(r))),
                        Return::Other(_) => None,
                    }
                }
                _ => None,
            };
            let scheme = matches!(condition.as_str(), "$scheme=http" | "$scheme!=https");
            let host = condition
                .strip_prefix("$host=")
                .map(str::to_ascii_lowercase);
            match (redirect, host) {
                (Some((to, code, at)), _) if scheme && to_own_https(&to, hosts) => {
                    found = Some(match plain {
                        true => HttpsIf::All(code, at, false),
                        false => HttpsIf::Plain,
                    })
                }
                (Some((to, code, at)), Some(name))
                    if plain
                        && hosts.contains(&name)
                        && to_own_https(&to, std::slice::from_ref(&name)) =>
                {
                    names.push((name, code, at))
                }
                _ => self.note(d, "no switchback equivalent"),
            }
        }
        if !hosts.is_empty() && hosts.iter().all(|h| names.iter().any(|(n, ..)| n == h)) {
            let (_, code, at) = names.swap_remove(0);
            return Some(HttpsIf::All(code, at, true));
        }
        for (_, _, at) in names {
            self.note_at(&at, "switchback sends either every name of a server block to HTTPS or none: the other names' ifs are missing");
        }
        found
    }

    /// One `listen`: its address joins `[listen]` and the block's listeners. Whether it serves
    /// TLS; None when it is none switchback takes.
    fn listen(&mut self, d: &Directive, block: &mut Block) -> Option<bool> {
        if d.args.iter().any(|a| a == "proxy_protocol") && self.proxy_protocol.is_none() {
            self.proxy_protocol = Some(At::of(d));
        }
        if d.args.iter().any(|a| a == "quic") {
            self.note(d, "switchback does not serve HTTP/3 (QUIC): its HTTPS listeners serve HTTP/1.1 and HTTP/2");
            return None;
        }
        let Some((addr, ssl)) = listen(&d.args) else {
            self.note(d, "switchback listens on IP:port addresses");
            return None;
        };
        push_new(
            if ssl { &mut self.https } else { &mut self.http },
            addr.clone(),
        );
        push_new(&mut block.listen, addr.clone());
        if d.args[1..]
            .iter()
            .any(|a| a == "default_server" || a == "default")
        {
            block.default_on.push((addr, At::of(d)));
        }
        Some(ssl)
    }

    fn location(
        &mut self,
        d: &Directive,
        block: &mut Block,
        parent: &Settings,
        tls: &Option<String>,
        plain: bool,
    ) {
        let Some(body) = &d.block else { return };
        let serves_files = !body
            .iter()
            .any(|i| i.name == "proxy_pass" || i.name == "return");
        if serves_files
            && d.args
                .iter()
                .any(|a| a.contains("/.well-known/acme-challenge"))
        {
            // certbot's webroot: switchback answers the challenge itself (see `routes`).
            self.challenges.push(At::of(d));
            return;
        }
        let (prefix, exact) = match d.args.as_slice() {
            [path] => (path.clone(), false),
            [m, path] if m == "^~" => (path.clone(), false),
            [m, path] if m == "=" => (path.clone(), true),
            _ => {
                self.note(
                    d,
                    "a regular-expression location: switchback routes by path prefix",
                );
                return;
            }
        };
        let mut settings = Settings::default();
        let mut target = None;
        let mut returned = None;
        for inner in body {
            if self.setting(inner, &mut settings) {
                continue;
            }
            match inner.name.as_str() {
                "proxy_pass" => target = Some(inner),
                "return" if returned.is_none() => returned = Some(inner),
                "return" => self.note(
                    inner,
                    "never reached, in nginx either: the return above answers first",
                ),
                "location" => self.note(
                    inner,
                    "a nested location: switchback routes by one prefix per service",
                ),
                _ => self.note(inner, "no switchback equivalent"),
            }
        }
        let (at, base, action) = match (returned, target) {
            // nginx answers a `return` before it would proxy.
            (Some(r), target) => {
                if let Some(p) = target {
                    self.note(
                        p,
                        "never reached, in nginx either: the location's return answers first",
                    );
                }
                match parse_return(&r.args, block.hosts.first().map(String::as_str)) {
                    Return::Redirect(to, code)
                        if prefix == "/" && !exact && plain && to_own_https(&to, &block.hosts) =>
                    {
                        block.to_https = Some((code, At::of(r)));
                        return;
                    }
                    Return::Redirect(to, code) => {
                        (r, redirect_base(&block.hosts), Action::Redirect(to, code))
                    }
                    Return::Other(why) => {
                        self.note(r, why);
                        return;
                    }
                }
            }
            (None, Some(p)) => {
                self.prefix_notes(d, &prefix, exact);
                let Some((base, backends)) = self.proxy_pass(p, &prefix) else {
                    return;
                };
                (p, base, Action::Proxy(backends))
            }
            (None, None) => return,
        };
        if let Action::Redirect(..) = action {
            self.prefix_notes(d, &prefix, exact);
        }
        let service = route(block, &prefix, action, settings.under(parent), tls);
        self.add_service(&base, service, at, block);
    }

    /// Where switchback's prefix match differs from the location's.
    fn prefix_notes(&mut self, d: &Directive, prefix: &str, exact: bool) {
        if exact {
            self.note(
                d,
                format!("= {prefix}: an exact match, imported as a prefix"),
            );
        } else if prefix != "/" && !prefix.ends_with('/') {
            self.note(
                d,
                format!("{prefix}: switchback matches whole path segments: {prefix} and {prefix}/… are served, {prefix}x is not as nginx's prefix would"),
            );
        }
    }

    /// The pool behind a `proxy_pass`, and the name its service is given; None (with a note)
    /// when switchback cannot proxy there.
    fn proxy_pass(&mut self, at: &Directive, prefix: &str) -> Option<(String, Vec<String>)> {
        let url = at.args.first().cloned().unwrap_or_default();
        let Some(rest) = url.strip_prefix("http://") else {
            self.note(at, "switchback proxies to backends over plain HTTP");
            return None;
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        // `location /api/ { proxy_pass http://x/api/; }` hands the path on as it came.
        let same_path = format!("/{path}") == prefix;
        if !same_path && (!path.is_empty() || rest.ends_with('/') && prefix != "/") {
            self.note(
                at,
                "a URI part in proxy_pass rewrites the path; switchback passes the path as it came",
            );
        }
        if authority.contains('$') {
            self.note(
                at,
                "a proxy_pass with variables has no switchback equivalent",
            );
            return None;
        }
        if let Some(servers) = self.upstreams.get(authority) {
            return Some((authority.to_string(), servers.clone()));
        }
        self.note_backend(at, authority);
        // A service is named after the host it proxies to, or, for an address, after its
        // location's first path segment.
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let segment = prefix.trim_matches('/').split('/').next().unwrap_or("");
        let base = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(_) if !segment.is_empty() => segment,
            Ok(_) => "app",
            Err(_) => host,
        };
        Some((base.to_string(), vec![with_port(authority)]))
    }

    /// Adds `new` to the services, and to `block`'s. The same route doing the same in an
    /// earlier block (the port-80 twin of a TLS server) is that block's service, on the
    /// listeners of both. Names an earlier block routes the same path for on the same listener
    /// stay with it: nginx warns of a conflicting server name and keeps the first.
    fn add_service(&mut self, base: &str, mut new: Service, at: &Directive, block: &mut Block) {
        let twin = self.services.iter().position(|s| {
            s.hosts == new.hosts
                && s.prefix == new.prefix
                && s.action == new.action
                && (s.tls.is_none() || new.tls.is_none() || s.tls == new.tls)
                && (matches!(s.action, Action::Redirect(..)) || s.settings.same(&new.settings))
        });
        if let Some(i) = twin {
            let s = &mut self.services[i];
            if s.tls.is_none() && new.tls.is_some() {
                // A redirect's twins may differ in headers: the TLS one's HSTS is the one kept.
                s.tls = new.tls;
                s.settings = new.settings;
            }
            join(&mut s.listen, &new.listen);
            push_new_index(&mut block.services, i);
            return;
        }
        let taken: Vec<(String, String)> = self
            .services
            .iter()
            .filter(|s| s.prefix == new.prefix && overlap(&s.listen, &new.listen))
            .flat_map(|s| {
                let hosts = if s.hosts.is_empty() {
                    vec![String::new()]
                } else {
                    s.hosts.clone()
                };
                hosts.into_iter().map(|h| (h, s.name.clone()))
            })
            .collect();
        let owner = |host: &str| {
            taken
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, n)| n.clone())
        };
        if new.hosts.is_empty() {
            if let Some(other) = owner("") {
                self.note(
                    at,
                    format!("{}: service {other} takes every host for this path on these listeners already (nginx keeps the first server block too)", new.prefix),
                );
                return;
            }
        } else {
            let mut kept = Vec::new();
            for host in std::mem::take(&mut new.hosts) {
                match owner(&host) {
                    Some(other) => self.note(
                        at,
                        format!("{host}{}: routed to service {other} on these listeners already (nginx warns of a conflicting server name and keeps the first server block)", new.prefix),
                    ),
                    None => kept.push(host),
                }
            }
            if kept.is_empty() {
                return;
            }
            new.hosts = kept;
        }
        new.name = unique_name(&self.services, base, &new.prefix);
        self.services.push(new);
        block.services.push(self.services.len() - 1);
    }

    /// Once every block is read: the plain-HTTP blocks that redirect to HTTPS, each listener's
    /// default service, challenge locations, and `listen` left out where it is every listener.
    pub(super) fn routes(&mut self) {
        self.https_redirects();
        self.defaults();
        let acme = self
            .services
            .iter()
            .any(|s| s.tls.as_deref() == Some("\"acme\""));
        if !acme {
            for at in std::mem::take(&mut self.challenges) {
                self.note_at(&at, "switchback answers ACME HTTP-01 challenges itself, for services with tls = \"acme\"; the files under this location are not served");
            }
        }
        let all = self.listeners();
        for s in &mut self.services {
            if all.iter().all(|l| s.listen.contains(l)) {
                s.listen.clear();
            }
            s.listen.sort_by_key(|l| all.iter().position(|a| a == l));
        }
    }

    /// Every listener, in `[listen]`'s order.
    fn listeners(&self) -> Vec<String> {
        self.http.iter().chain(&self.https).cloned().collect()
    }

    /// A plain-HTTP block that sends its own names to `https://`: the HTTPS services of those
    /// names get `https_redirect` and its listeners; names with none get a redirect service,
    /// so that they keep going where nginx sent them.
    fn https_redirects(&mut self) {
        for b in 0..self.blocks.len() {
            let Some((code, at)) = self.blocks[b].to_https.clone() else {
                continue;
            };
            let (hosts, listen) = (self.blocks[b].hosts.clone(), self.blocks[b].listen.clone());
            let mut made = Vec::new();
            for (i, s) in self.services.iter_mut().enumerate() {
                // A service already on these listeners is served there as it is, by nginx too;
                // one for every host is not what a block's own names are sent to.
                let named = hosts.is_empty()
                    || !s.hosts.is_empty() && hosts.iter().any(|h| serves(&s.hosts, h));
                if s.tls.is_none() || !named || overlap(&s.listen, &listen) {
                    continue;
                }
                s.https_redirect = true;
                join(&mut s.listen, &listen);
                made.push(i);
            }
            // The names whose every path is now served on these listeners (a name by a service
            // that names it: nginx prefers this block to one for every host).
            let root: Vec<&Service> = self
                .services
                .iter()
                .filter(|s| s.prefix == "/" && overlap(&s.listen, &listen))
                .collect();
            let every = root.iter().any(|s| s.hosts.is_empty());
            let rest: Vec<String> = hosts
                .iter()
                .filter(|h| {
                    !root
                        .iter()
                        .any(|s| !s.hosts.is_empty() && serves(&s.hosts, h))
                })
                .cloned()
                .collect();
            if !every && (hosts.is_empty() || !rest.is_empty()) {
                let service = Service {
                    name: unique_name(&self.services, &redirect_base(&rest), "/"),
                    hosts: rest,
                    prefix: "/".into(),
                    action: Action::Redirect("https://$host$request_uri".into(), code),
                    settings: Settings::default(),
                    tls: None,
                    listen,
                    default: false,
                    https_redirect: false,
                    access: None,
                };
                self.services.push(service);
                made.push(self.services.len() - 1);
            }
            if made.is_empty() {
                self.note_at(&at, "every name of this server block is served on its listeners by another: nothing to redirect");
            }
            for i in made {
                push_new_index(&mut self.blocks[b].services, i);
            }
        }
    }

    /// On each listener, the service of the block nginx falls back to there: the one with
    /// `listen … default_server`, else the first on it. A block without names is left alone:
    /// its services take every host already. A listener has one default, so where a service's
    /// listeners would give one two, the first keeps it.
    fn defaults(&mut self) {
        let all = self.listeners();
        let mut marked: Vec<(usize, At)> = Vec::new();
        // Listeners whose nginx default has no service to stand for it, and where it is.
        let mut unkept: Vec<(String, At)> = Vec::new();
        for l in &all {
            let explicit = self.blocks.iter().find_map(|b| {
                b.default_on
                    .iter()
                    .find(|(a, _)| a == l)
                    .map(|(_, at)| (b, at.clone()))
            });
            let first = || {
                self.blocks
                    .iter()
                    .find(|b| b.listen.is_empty() || b.listen.contains(l))
                    .map(|b| (b, b.at.clone()))
            };
            let Some((block, at)) = explicit.or_else(first) else {
                continue;
            };
            let chosen = (block.services.iter().copied())
                .find(|&i| self.services[i].prefix == "/")
                .or(block.services.first().copied())
                .filter(|&i| !self.services[i].hosts.is_empty() && !block.hosts.is_empty());
            match chosen {
                Some(i) if !marked.iter().any(|(j, _)| *j == i) => marked.push((i, at)),
                Some(_) => {}
                None => {
                    let every_host = block.services.iter().any(|&i| {
                        self.services[i].hosts.is_empty() && self.services[i].prefix == "/"
                    });
                    if !every_host {
                        unkept.push((l.clone(), at));
                    }
                }
            }
        }
        marked.sort_by_key(|(i, _)| *i);
        let mut taken: Vec<(String, usize)> = Vec::new();
        for (i, at) in marked {
            let on: Vec<String> = if self.services[i].listen.is_empty() {
                all.clone()
            } else {
                self.services[i].listen.clone()
            };
            let clash = on
                .iter()
                .find_map(|l| taken.iter().find(|(t, _)| t == l).map(|(t, j)| (t, *j)));
            match clash {
                Some((l, j)) => {
                    let why = format!(
                        "service {} is not made a default: {} is the default on {l} already, and switchback has one per listener",
                        self.services[i].name, self.services[j].name
                    );
                    self.note_at(&at, why);
                }
                None => {
                    taken.extend(on.into_iter().map(|l| (l, i)));
                    self.services[i].default = true;
                }
            }
        }
        for (l, at) in unkept {
            if let Some((_, i)) = taken.iter().find(|(t, _)| *t == l) {
                let why = format!(
                    "nginx's default server on {l}, which switchback cannot keep: service {} is the default there, as on each of its listeners",
                    self.services[*i].name
                );
                self.note_at(&at, why);
            }
        }
    }
}

/// A service of `block` for `prefix`, not yet named.
fn route(
    block: &Block,
    prefix: &str,
    action: Action,
    settings: Settings,
    tls: &Option<String>,
) -> Service {
    Service {
        name: String::new(),
        hosts: block.hosts.clone(),
        prefix: prefix.to_string(),
        action,
        settings,
        tls: tls.clone(),
        listen: block.listen.clone(),
        default: false,
        https_redirect: false,
        access: None,
    }
}

fn push_new_index(list: &mut Vec<usize>, i: usize) {
    if !list.contains(&i) {
        list.push(i);
    }
}

#[cfg(test)]
mod tests {
    use crate::nginx::translate::tests::import;
    use crate::{Config, ServiceConfig, TlsMode};

    fn listen(service: &ServiceConfig) -> Vec<String> {
        service.listen.iter().map(|l| l.to_string()).collect()
    }

    /// The service routed for `host` (empty: every host) and `prefix` on `listener`.
    fn routed<'c>(
        config: &'c Config,
        host: &str,
        prefix: &str,
        listener: &str,
    ) -> &'c ServiceConfig {
        let listener = listener.parse().unwrap();
        config
            .services
            .iter()
            .find(|s| {
                s.path_prefix == prefix
                    && s.on_listener(&listener)
                    && (host.is_empty() && s.hosts.is_empty() || s.hosts.iter().any(|h| h == host))
            })
            .unwrap_or_else(|| panic!("no service for {host}{prefix} on {listener} in {config:#?}"))
    }

    #[test]
    fn the_certbot_port_80_server_turns_https_redirect_on_and_keeps_names_without_https_going() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  listen 80;\n  server_name example.com www.example.com;\n\
               location /.well-known/acme-challenge/ { root /var/www/certbot; }\n\
               location / { return 301 https://$host$request_uri; }\n }\n\
             server {\n  listen 443 ssl;\n  server_name example.com www.example.com;\n\
               ssl_certificate /etc/letsencrypt/live/example.com/fullchain.pem;\n\
               ssl_certificate_key /etc/letsencrypt/live/example.com/privkey.pem;\n\
               location / { proxy_pass http://app:8000; }\n }\n\
             server {\n  listen 80;\n  server_name old.example.com;\n  return 301 https://$server_name$request_uri;\n }\n}\n",
        );
        // Nothing is left behind: switchback answers the challenge itself.
        assert!(notes.is_empty(), "{notes:#?}\n{toml}");
        let app = config.service("app").unwrap();
        assert_eq!(app.tls, TlsMode::Acme);
        assert!(app.https_redirect, "{toml}");
        // Routed on port 80 too, where it redirects: every listener.
        assert!(app.listen.is_empty(), "{toml}");
        assert!(
            app.default,
            "the first server block's names are the fallback: {toml}"
        );
        // A name with no HTTPS service is still sent to HTTPS, as nginx did.
        let old = routed(&config, "old.example.com", "/", "0.0.0.0:80");
        let redirect = old.redirect.as_ref().unwrap();
        assert_eq!(
            (redirect.to.as_str(), redirect.code),
            ("https://$host$request_uri", 301)
        );
        assert_eq!(listen(old), ["0.0.0.0:80"]);
        assert!(!old.default && old.pools.is_empty());
    }

    #[test]
    fn the_ifs_certbots_nginx_plugin_writes_are_https_redirects() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  if ($host = www.example.com) { return 301 https://$host$request_uri; }\n\
               if ($host = example.com) { return 301 https://$host$request_uri; }\n\
               listen 80;\n  server_name example.com www.example.com;\n  return 404;\n }\n\
             server {\n  listen 443 ssl;\n  server_name example.com www.example.com;\n\
               ssl_certificate /etc/letsencrypt/live/example.com/fullchain.pem;\n\
               ssl_certificate_key /etc/letsencrypt/live/example.com/privkey.pem;\n\
               location / { proxy_pass http://app:8000; }\n }\n\
             server {\n  listen 8080;\n  listen 8443 ssl;\n  server_name other.test;\n\
               ssl_certificate /srv/c.pem;\n  ssl_certificate_key /srv/k.pem;\n\
               if ($scheme = http) { return 301 https://$host$request_uri; }\n\
               location / { proxy_pass http://other:8000; }\n }\n}\n",
        );
        let app = config.service("app").unwrap();
        assert!(app.https_redirect, "{toml}");
        assert_eq!(listen(app), ["0.0.0.0:80", "0.0.0.0:443"], "{toml}");
        let other = config.service("other").unwrap();
        assert!(other.https_redirect, "{toml}");
        assert_eq!(listen(other), ["0.0.0.0:8080", "0.0.0.0:8443"], "{toml}");
        // What `return 404` answered (hosts the block does not name) is all that is left.
        assert_eq!(notes.len(), 1, "{notes:#?}");
        assert!(
            notes[0].starts_with("7: return: reached only by hosts the server block does not name"),
            "{notes:#?}"
        );
    }

    #[test]
    fn nameless_servers_on_two_ports_are_two_services_on_their_own_listeners() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  listen 80;\n  server_name _;\n  location / { proxy_pass http://grafana:3000; }\n }\n\
             server {\n  listen 9090;\n  server_name _;\n  location / { proxy_pass http://prometheus:9090; }\n }\n}\n",
        );
        assert!(notes.is_empty(), "{notes:#?}");
        assert_eq!(config.services.len(), 2, "{toml}");
        for (name, on) in [("grafana", "0.0.0.0:80"), ("prometheus", "0.0.0.0:9090")] {
            let s = config
                .service(name)
                .unwrap_or_else(|| panic!("{name} in {toml}"));
            assert!(s.hosts.is_empty(), "{toml}");
            assert_eq!(listen(s), [on], "{toml}");
            // hosts = [] takes every host already.
            assert!(!s.default, "{toml}");
        }
    }

    #[test]
    fn return_redirects_become_redirect_services() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  listen 80;\n  listen 443 ssl;\n  server_name www.example.com;\n\
               ssl_certificate /srv/c.pem;\n  ssl_certificate_key /srv/k.pem;\n\
               return 301 https://example.com$request_uri;\n }\n\
             server {\n  listen 80;\n  listen 443 ssl;\n  server_name example.com;\n\
               ssl_certificate /srv/c.pem;\n  ssl_certificate_key /srv/k.pem;\n\
               location / { proxy_pass http://app:8000; }\n\
               location /old/ { return https://example.com/new/; }\n\
               location /odd/ { return 301 https://$http_host/; }\n\
               location /health { return 200 ok; }\n }\n}\n",
        );
        let www = config
            .service("www-example-com")
            .unwrap_or_else(|| panic!("{toml}"));
        assert_eq!(www.hosts, ["www.example.com"]);
        let to = www.redirect.as_ref().unwrap();
        assert_eq!(
            (to.to.as_str(), to.code),
            ("https://example.com$request_uri", 301)
        );
        assert!(www.pools.is_empty() && www.active.is_empty());
        assert!(
            www.listen.is_empty(),
            "on both listeners, which is every one: {toml}"
        );
        assert!(matches!(www.tls, TlsMode::Files { .. }), "{toml}");
        // `return URL` is nginx's 302.
        let old = routed(&config, "example.com", "/old/", "0.0.0.0:443");
        let to = old.redirect.as_ref().unwrap();
        assert_eq!((to.to.as_str(), to.code), ("https://example.com/new/", 302));
        assert!(config.service("app").unwrap().redirect.is_none());
        for expected in [
            "18: return: $http_host has no switchback equivalent: a redirect may use $host",
            "19: return: return 200: only redirects",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:#?}"
            );
        }
    }

    #[test]
    fn the_default_server_of_a_listener_is_its_default_service() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  listen 80;\n  server_name a.test;\n  location / { proxy_pass http://a:8000; }\n }\n\
             server {\n  listen 80 default_server;\n  server_name b.test;\n\
               location /api/ { proxy_pass http://b:8000; }\n  location / { proxy_pass http://b:8001; }\n }\n\
             server {\n  listen 8080;\n  server_name c.test;\n\
               location /x/ { proxy_pass http://c:8000; }\n  location /y/ { proxy_pass http://c:8001; }\n }\n\
             server {\n  listen 8080;\n  server_name d.test;\n  location / { proxy_pass http://d:8000; }\n }\n\
             server {\n  listen 9000;\n  server_name _;\n  location / { proxy_pass http://e:8000; }\n }\n\
             server {\n  listen 9000;\n  server_name f.test;\n  location / { proxy_pass http://f:8000; }\n }\n}\n",
        );
        assert!(notes.is_empty(), "{notes:#?}");
        let defaults: Vec<(&str, &str)> = config
            .services
            .iter()
            .filter(|s| s.default)
            .map(|s| (s.hosts[0].as_str(), s.path_prefix.as_str()))
            .collect();
        // default_server over the first; the first server otherwise, by its `location /` or
        // else its first location; none where the first server has no name.
        assert_eq!(defaults, [("b.test", "/"), ("c.test", "/x/")], "{toml}");
    }

    #[test]
    fn a_listener_keeps_its_first_default() {
        let (config, notes, toml) = import(
            "http {\n\
             server {\n  listen 9000;\n  listen 9001;\n  server_name e.test;\n  location / { proxy_pass http://e:8000; }\n }\n\
             server {\n  listen 9001 default_server;\n  server_name f.test;\n  location / { proxy_pass http://f:8000; }\n }\n}\n",
        );
        assert!(config.service("e").unwrap().default, "{toml}");
        assert!(!config.service("f").unwrap().default, "{toml}");
        let expected =
            "9: listen: service f is not made a default: e is the default on 0.0.0.0:9001 already";
        assert!(
            notes.iter().any(|n| n.starts_with(expected)),
            "{expected} not in {notes:#?}"
        );
    }

    #[test]
    fn a_route_in_two_server_blocks_keeps_each_blocks_headers() {
        let (config, notes, toml) = import(
            "http {\n upstream app { server app:8000; }\n\
             server {\n  listen 8080;\n  server_name example.com;\n  location /health { proxy_pass http://app; }\n }\n\
             server {\n  listen 443 ssl;\n  server_name example.com;\n\
               ssl_certificate /srv/c.pem;\n  ssl_certificate_key /srv/k.pem;\n\
               add_header Strict-Transport-Security \"max-age=63072000\" always;\n\
               add_header X-Frame-Options DENY always;\n\
               location / { proxy_pass http://app; }\n  location /health { proxy_pass http://app; }\n }\n\
             server {\n  listen 80;\n  server_name _;\n  root /var/www;\n }\n}\n",
        );
        let internal = routed(&config, "example.com", "/health", "0.0.0.0:8080");
        assert_eq!(listen(internal), ["0.0.0.0:8080"], "{toml}");
        assert_eq!(internal.tls, TlsMode::Off);
        assert_eq!(internal.hsts, None);
        assert!(internal.response_headers.is_empty(), "{toml}");
        let public = routed(&config, "example.com", "/health", "0.0.0.0:443");
        assert_ne!(public.name, internal.name);
        assert_eq!(listen(public), ["0.0.0.0:443"], "{toml}");
        assert_eq!(public.hsts.as_deref(), Some("max-age=63072000"));
        assert_eq!(public.response_headers[0].name, "x-frame-options");
        // A block nothing comes of says so.
        let expected =
            "18: server: no service comes of this server block (every host on 0.0.0.0:80)";
        assert!(
            notes.iter().any(|n| n.starts_with(expected)),
            "{expected} not in {notes:#?}"
        );
    }
}
