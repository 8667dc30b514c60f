//! nginx directives → switchback's config.
//!
//! Each `location` that proxies (`proxy_pass`) becomes a service: its `server_name`s are the
//! hosts, its path the prefix, and the upstream (or the one address) behind it the service's
//! only pool, `blue`, which is active. The headers, body limit, compression, timeouts and TLS of
//! the location, its server and `http` come along with nginx's inheritance (a level that sets
//! `add_header` or `proxy_set_header` replaces its parent's list), and `proxy_set_header` values
//! keep the variables switchback knows (`$remote_addr` is `$client_ip`, see [`super::vars`]).
//!
//! Where requests go is the server blocks' business, in [`super::servers`]: a service is routed
//! on the listeners of its server block, a `return` redirect becomes a redirect service,
//! `default_server` (or the first server on a port) the listener's default service, and a
//! plain-HTTP server that only sends its names to `https://` turns `https_redirect` on for them.
//!
//! Everything that has no equivalent is listed, with file and line, in [`Import::untranslated`].

use std::collections::BTreeMap;

use super::parse::Directive;
use super::vars;
use crate::duration::parse_duration;
use crate::validate::valid_name;

/// What the import made: the switchback config, and what it left behind.
#[derive(Debug, Clone)]
pub struct Import {
    pub toml: String,
    pub untranslated: Vec<Untranslated>,
}

/// A directive with no switchback equivalent, where it is and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Untranslated {
    pub file: std::path::PathBuf,
    pub line: usize,
    pub directive: String,
    pub why: String,
}

impl std::fmt::Display for Untranslated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.directive,
            self.why
        )
    }
}

/// What a level (`http`, `server`, `location`) sets; unset fields inherit.
#[derive(Debug, Clone, Default)]
pub(super) struct Settings {
    response_headers: Option<Vec<(String, String)>>,
    request_headers: Option<Vec<(String, String)>>,
    max_body: Option<String>,
    gzip: Option<bool>,
    gzip_min_length: Option<String>,
    read_timeout: Option<String>,
    connect_timeout: Option<String>,
    /// `allow` and `deny` in their order (true: allow), with where each is.
    access: Option<Vec<(bool, String, At)>>,
    /// `auth_basic`: the realm, or `off`.
    auth_basic: Option<(String, At)>,
    auth_basic_user_file: Option<String>,
    /// `limit_req zone=NAME [burst=N] [nodelay]`: the zone, the burst, and where.
    limit_req: Option<Vec<(String, u32, At)>>,
}

/// Where a directive is, for a note written after the walk.
#[derive(Debug, Clone)]
pub(super) struct At {
    file: std::path::PathBuf,
    line: usize,
    directive: String,
}

impl At {
    pub(super) fn of(d: &Directive) -> At {
        At {
            file: d.file.clone(),
            line: d.line,
            directive: d.name.clone(),
        }
    }
}

/// A `limit_req_zone`: its rate (`5r/s`) and what it counts by.
#[derive(Debug, Clone)]
struct Zone {
    rate: String,
    /// `"ip"` or `"header:NAME"`; None: a key switchback cannot count by.
    by: Option<String>,
}

impl Settings {
    pub(super) fn under(&self, parent: &Settings) -> Settings {
        Settings {
            response_headers: self
                .response_headers
                .clone()
                .or(parent.response_headers.clone()),
            request_headers: self
                .request_headers
                .clone()
                .or(parent.request_headers.clone()),
            max_body: self.max_body.clone().or(parent.max_body.clone()),
            gzip: self.gzip.or(parent.gzip),
            gzip_min_length: self
                .gzip_min_length
                .clone()
                .or(parent.gzip_min_length.clone()),
            read_timeout: self.read_timeout.clone().or(parent.read_timeout.clone()),
            connect_timeout: self
                .connect_timeout
                .clone()
                .or(parent.connect_timeout.clone()),
            access: self.access.clone().or(parent.access.clone()),
            auth_basic: self.auth_basic.clone().or(parent.auth_basic.clone()),
            auth_basic_user_file: self
                .auth_basic_user_file
                .clone()
                .or(parent.auth_basic_user_file.clone()),
            limit_req: self.limit_req.clone().or(parent.limit_req.clone()),
        }
    }

    /// Whether two levels do the same to a request, wherever their directives are written:
    /// the test for serving two server blocks' locations with one service.
    pub(super) fn same(&self, other: &Settings) -> bool {
        self.effect() == other.effect()
    }

    fn effect(&self) -> Effect<'_> {
        Effect {
            headers: [
                self.response_headers.clone().unwrap_or_default(),
                self.request_headers.clone().unwrap_or_default(),
            ],
            limits: [&self.max_body, &self.read_timeout, &self.connect_timeout],
            gzip: (self.gzip == Some(true)).then_some(self.gzip_min_length.as_ref()),
            access: (self.access.iter().flatten())
                .map(|(allow, addr, _)| (*allow, addr))
                .collect(),
            auth: (self.auth_basic.as_ref())
                .filter(|(realm, _)| realm != "off")
                .map(|(realm, _)| (realm, &self.auth_basic_user_file)),
            rates: (self.limit_req.iter().flatten())
                .map(|(zone, burst, _)| (zone, *burst))
                .collect(),
        }
    }
}

/// What [`Settings::same`] compares: the effective settings, without where they are written.
#[derive(PartialEq)]
struct Effect<'a> {
    headers: [Vec<(String, String)>; 2],
    limits: [&'a Option<String>; 3],
    /// Compression on, and its minimum length.
    gzip: Option<Option<&'a String>>,
    access: Vec<(bool, &'a String)>,
    auth: Option<(&'a String, &'a Option<String>)>,
    rates: Vec<(&'a String, u32)>,
}

/// One service to write.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) name: String,
    pub(super) hosts: Vec<String>,
    pub(super) prefix: String,
    pub(super) action: Action,
    pub(super) settings: Settings,
    /// The value of its `tls` key.
    pub(super) tls: Option<String>,
    /// The listeners of the server blocks it came from; empty: every listener.
    pub(super) listen: Vec<String>,
    /// Its listeners' default service: its block was nginx's default server on one of them
    /// (`listen … default_server`, or the first `server` on a port).
    pub(super) default: bool,
    pub(super) https_redirect: bool,
    /// The body of its `[[access]]` rule, once [`Translator::finish`] worked it out.
    pub(super) access: Option<String>,
}

/// What a service does with a request.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Proxies it to these backends (the pool `blue`).
    Proxy(Vec<String>),
    /// Answers with a redirect: the `Location` in switchback's spelling, and the code.
    Redirect(String, u16),
}

#[derive(Default)]
pub(super) struct Translator {
    pub(super) notes: Vec<Untranslated>,
    pub(super) http: Vec<String>,
    pub(super) https: Vec<String>,
    pub(super) upstreams: BTreeMap<String, Vec<String>>,
    pub(super) services: Vec<Service>,
    /// Every `server` block, in the order of the files.
    pub(super) blocks: Vec<super::servers::Block>,
    /// `location /.well-known/acme-challenge/` blocks that serve files.
    pub(super) challenges: Vec<At>,
    /// `[server]` keys from `http`'s client timeouts.
    server: Vec<(&'static str, String)>,
    /// `limit_req_zone`s by name.
    zones: BTreeMap<String, Zone>,
    /// The smallest `limit_conn` on a zone keyed by the client address.
    limit_conn: Option<u32>,
    /// `limit_conn_zone`s keyed by the client address.
    conn_zones: Vec<String>,
    /// `set_real_ip_from` blocks, and `real_ip_header`.
    real_ip_from: Vec<String>,
    real_ip_header: Option<(String, At)>,
    /// Some `listen` has `proxy_protocol`.
    pub(super) proxy_protocol: Option<At>,
    /// What [`Translator::finish`] makes of the above: `listen.proxy_protocol` and
    /// `server.trusted_proxies`.
    proxy_protocol_from: Vec<String>,
    trusted_proxies: Vec<String>,
}

/// `proxy_set_header` values switchback already sends, or that WebSockets need and
/// switchback handles by itself.
const IMPLIED_REQUEST_HEADERS: &[(&str, &str)] = &[
    ("host", "$host"),
    ("host", "$http_host"),
    ("x-forwarded-for", "$proxy_add_x_forwarded_for"),
    ("x-forwarded-proto", "$scheme"),
    ("upgrade", "$http_upgrade"),
    ("connection", "upgrade"),
    ("connection", "$connection_upgrade"),
    ("connection", ""),
];

impl Translator {
    pub(super) fn note(&mut self, d: &Directive, why: impl Into<String>) {
        self.notes.push(Untranslated {
            file: d.file.clone(),
            line: d.line,
            directive: d.name.clone(),
            why: why.into(),
        });
    }

    /// A backend switchback cannot take (a Unix socket, say) is written as it is, with a note,
    /// so that `check` points at it. Host names (`api:8000`, as in a Compose network) are
    /// fine: they are resolved while the proxy runs.
    pub(super) fn note_backend(&mut self, d: &Directive, addr: &str) {
        if let Err(e) = crate::parse_target(&with_port(addr)) {
            self.note(d, format!("{addr}: {e}"));
        }
    }

    /// A setting every level may carry; false when `d` is not one.
    pub(super) fn setting(&mut self, d: &Directive, s: &mut Settings) -> bool {
        let arg = |i: usize| d.args.get(i).cloned().unwrap_or_default();
        match d.name.as_str() {
            "add_header" if d.args.len() >= 2 => {
                if d.args[1].contains('$') {
                    self.note(
                        d,
                        "a value with nginx variables has no switchback equivalent",
                    );
                } else {
                    s.response_headers
                        .get_or_insert_with(Vec::new)
                        .push((arg(0), arg(1)));
                }
            }
            "proxy_set_header" if d.args.len() >= 2 => {
                let (name, value) = (arg(0).to_ascii_lowercase(), arg(1));
                let implied = IMPLIED_REQUEST_HEADERS
                    .iter()
                    .any(|(n, v)| *n == name && v.eq_ignore_ascii_case(&value));
                if implied {
                    // switchback does this itself; the level still sets its own list.
                    s.request_headers.get_or_insert_with(Vec::new);
                } else {
                    match vars::translate(&value, vars::header_var) {
                        Ok(value) => s
                            .request_headers
                            .get_or_insert_with(Vec::new)
                            .push((arg(0), value)),
                        Err(var) => self.note(
                            d,
                            format!(
                                "{var} has no switchback equivalent: request headers may use {}",
                                vars::HEADER_VARS
                            ),
                        ),
                    }
                }
            }
            "client_max_body_size" => s.max_body = Some(arg(0)),
            "gzip" => s.gzip = Some(arg(0) == "on"),
            "gzip_min_length" => s.gzip_min_length = Some(arg(0)),
            "gzip_vary" => {} // switchback always sends Vary: Accept-Encoding
            "gzip_types" => self.note(
                d,
                "switchback compresses a fixed set of types: text/*, JSON, JavaScript, XML and SVG",
            ),
            "gzip_comp_level" => self.note(d, "switchback compresses at gzip level 6"),
            "proxy_read_timeout" | "proxy_send_timeout" | "proxy_connect_timeout" => {
                match duration(&arg(0)) {
                    Some(t) if d.name == "proxy_connect_timeout" => s.connect_timeout = Some(t),
                    Some(t) if d.name == "proxy_read_timeout" => s.read_timeout = Some(t),
                    Some(_) => {
                        self.note(d, "switchback has one backend read timeout, read_timeout")
                    }
                    None => self.note(
                        d,
                        format!("{:?} is not a duration switchback reads", arg(0)),
                    ),
                }
            }
            "allow" | "deny" => {
                let addr = arg(0);
                if addr.starts_with("unix:") {
                    self.note(d, "switchback's access rules are on client addresses");
                } else {
                    s.access.get_or_insert_with(Vec::new).push((
                        d.name == "allow",
                        addr,
                        At::of(d),
                    ));
                }
            }
            "auth_basic" => s.auth_basic = Some((arg(0), At::of(d))),
            "auth_basic_user_file" => s.auth_basic_user_file = Some(arg(0)),
            "limit_req" => {
                let mut zone = None;
                let mut burst = 0;
                for a in &d.args {
                    if let Some(z) = a.strip_prefix("zone=") {
                        zone = Some(z.to_string());
                    } else if let Some(b) = a.strip_prefix("burst=") {
                        burst = b.parse().unwrap_or(0);
                    } else if a.starts_with("delay=") {
                        self.note(d, format!("{a}: switchback lets the whole burst through at once, as nodelay does"));
                    }
                }
                if !d.args.iter().any(|a| a == "nodelay") && burst > 0 {
                    self.note(d, "without nodelay nginx delays the burst; switchback lets it through at once, then answers 429");
                }
                match zone {
                    Some(zone) => s
                        .limit_req
                        .get_or_insert_with(Vec::new)
                        .push((zone, burst, At::of(d))),
                    None => self.note(d, "no zone= given"),
                }
            }
            "limit_req_status" | "limit_conn_status" => {
                if arg(0) != "429" {
                    self.note(d, "switchback answers 429 to a client over its rate");
                }
            }
            "limit_req_log_level" | "limit_conn_log_level" | "real_ip_recursive" => {}
            "limit_req_zone" => {
                let by = match arg(0).as_str() {
                    "$binary_remote_addr" | "$remote_addr" => Some("ip".to_string()),
                    key => key
                        .strip_prefix("$http_")
                        .map(|h| format!("header:{}", h.replace('_', "-"))),
                };
                let mut name = None;
                let mut rate = None;
                for a in &d.args[1.min(d.args.len())..] {
                    if let Some(z) = a.strip_prefix("zone=") {
                        name = Some(z.split(':').next().unwrap_or(z).to_string());
                    } else if let Some(r) = a.strip_prefix("rate=") {
                        rate = Some(r.to_string());
                    }
                }
                match (name, rate) {
                    (Some(name), Some(rate)) if crate::validate_access::parse_rate(&rate).is_ok() => {
                        if by.is_none() {
                            self.note(d, format!("{}: switchback counts by the client address or a request header", arg(0)));
                        }
                        self.zones.insert(name, Zone { rate, by });
                    }
                    _ => self.note(d, "a zone needs zone=NAME:SIZE and rate=Nr/s or Nr/m"),
                }
            }
            "limit_conn_zone" => {
                let name = d
                    .args
                    .iter()
                    .find_map(|a| a.strip_prefix("zone="))
                    .map(|z| z.split(':').next().unwrap_or(z).to_string());
                match (arg(0).as_str(), name) {
                    ("$binary_remote_addr" | "$remote_addr", Some(name)) => {
                        self.conn_zones.push(name)
                    }
                    _ => self.note(
                        d,
                        "switchback caps connections per client address only (server.max_connections_per_ip)",
                    ),
                }
            }
            "set_real_ip_from" => push_new(&mut self.real_ip_from, arg(0)),
            // The parser read every include whose files are there.
            "include" => self.note(d, format!("file not found: {}", arg(0))),
            "real_ip_header" => self.real_ip_header = Some((arg(0), At::of(d))),
            "limit_conn" => match (arg(1).parse::<u32>(), self.conn_zones.contains(&arg(0))) {
                (Ok(n), true) => {
                    if self.limit_conn.is_some_and(|m| m != n) {
                        self.note(d, "switchback has one per-address connection cap for the whole proxy (server.max_connections_per_ip): the smallest limit_conn is kept");
                    }
                    self.limit_conn = Some(self.limit_conn.map_or(n, |m| m.min(n)));
                }
                _ => self.note(
                    d,
                    "switchback caps connections per client address only (server.max_connections_per_ip)",
                ),
            },
            "proxy_http_version" | "proxy_buffering" | "proxy_redirect" => {}
            _ => return false,
        }
        true
    }

    /// The `[[access]]` rule of a service with these settings, if they protect it; the
    /// protections that could not be carried over are noted.
    fn access_rule(&mut self, set: &Settings) -> Option<String> {
        const EVERYONE: &str = "deny = [\"0.0.0.0/0\", \"::/0\"]";
        let mut lines = Vec::new();
        if let Some(entries) = &set.access {
            let (mut allow, mut deny) = (Vec::new(), Vec::new());
            let mut last_all = None;
            for (i, (allowed, addr, at)) in entries.iter().enumerate() {
                if addr == "all" {
                    last_all = Some(*allowed);
                    if i + 1 < entries.len() {
                        self.note_at(at, "nothing after `all` is ever reached: left out");
                    }
                    break;
                }
                if !*allowed && !allow.is_empty() {
                    self.note_at(at, "switchback checks deny before allow, so this address is denied even where an allow above it matched in nginx");
                }
                if *allowed { &mut allow } else { &mut deny }.push(addr.clone());
            }
            match last_all {
                // `deny all` last: only the allowed pass.
                Some(false) if allow.is_empty() => return Some(EVERYONE.to_string()),
                Some(false) => {
                    lines.push(format!("allow = [{}]", list(&allow)));
                    if !deny.is_empty() {
                        lines.push(format!("deny = [{}]", list(&deny)));
                    }
                }
                // Everyone else passes: an allow says nothing then.
                _ => {
                    if !deny.is_empty() {
                        lines.push(format!("deny = [{}]", list(&deny)));
                    }
                }
            }
        }
        if let Some((realm, at)) = &set.auth_basic {
            if realm != "off" {
                match &set.auth_basic_user_file {
                    Some(file) => lines.push(format!(
                        "basic_auth = {{ realm = {}, htpasswd = {} }}",
                        quote(realm),
                        quote(file)
                    )),
                    None => {
                        self.note_at(
                            at,
                            "no auth_basic_user_file: nobody could log in, so everyone is denied",
                        );
                        return Some(EVERYONE.to_string());
                    }
                }
            }
        }
        if let Some(limits) = &set.limit_req {
            for (i, (zone, burst, at)) in limits.iter().enumerate() {
                if i > 0 {
                    self.note_at(
                        at,
                        "switchback takes one rate per route: the first limit_req is kept",
                    );
                    continue;
                }
                match self.zones.get(zone).cloned() {
                    Some(Zone { rate, by: Some(by) }) => lines.push(format!(
                        "rate = {{ limit = {}, burst = {burst}, by = {} }}",
                        quote(&rate.replacen("r/", "/", 1)),
                        quote(&by)
                    )),
                    Some(Zone { by: None, .. }) => {
                        self.note_at(at, format!("zone {zone} counts by a key switchback cannot count by: use the client address or a request header"))
                    }
                    None => self.note_at(at, format!("no limit_req_zone named {zone}")),
                }
            }
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    pub(super) fn note_at(&mut self, at: &At, why: impl Into<String>) {
        self.notes.push(Untranslated {
            file: at.file.clone(),
            line: at.line,
            directive: at.directive.clone(),
            why: why.into(),
        });
    }

    fn top(&mut self, directives: &[Directive]) {
        let mut http = Settings::default();
        // Top-level servers and upstreams (a conf.d file given alone) count as in `http`.
        self.http_block(directives, &mut http);
    }

    fn http_block(&mut self, directives: &[Directive], settings: &mut Settings) {
        for d in directives {
            if self.setting(d, settings) {
                continue;
            }
            if let ("upstream", Some(body)) = (d.name.as_str(), &d.block) {
                self.upstream(d, body);
            }
        }
        for d in directives {
            match (d.name.as_str(), &d.block) {
                ("http", Some(body)) => {
                    let mut inner = Settings::default().under(settings);
                    self.http_block(body, &mut inner);
                }
                ("server", Some(body)) => self.server(d, body, settings),
                ("upstream", Some(_)) => {}
                ("events", _) | ("worker_processes" | "worker_connections" | "user" | "pid", _) => {
                    self.note(d, "a process setting: switchback sizes itself ([server] threads, max_connections)")
                }
                (
                    "keepalive_timeout" | "client_header_timeout" | "client_body_timeout"
                    | "send_timeout",
                    None,
                ) => {
                    let key = match d.name.as_str() {
                        "keepalive_timeout" => "keepalive_timeout",
                        "client_header_timeout" => "client_header_timeout",
                        "client_body_timeout" => "client_body_timeout",
                        _ => "send_timeout",
                    };
                    match d.args.first().and_then(|a| duration(a)) {
                        Some(t) => self.server.push((key, t)),
                        None => self.note(d, "not a duration switchback reads"),
                    }
                }
                _ if is_setting_name(&d.name) => {}
                _ => self.note(d, "no switchback equivalent"),
            }
        }
    }

    fn upstream(&mut self, d: &Directive, body: &[Directive]) {
        let mut backends = Vec::new();
        for s in body {
            match s.name.as_str() {
                "server" => {
                    let addr = s.args.first().cloned().unwrap_or_default();
                    if addr.starts_with("unix:") {
                        self.note(s, "switchback reaches backends over TCP only");
                        continue;
                    }
                    self.note_backend(s, &addr);
                    backends.push(with_port(&addr));
                    for param in &s.args[1..] {
                        if param == "backup" || param.starts_with("weight=") {
                            self.note(s, format!("{param}: switchback balances a pool round robin over its healthy backends"));
                        } else if param.starts_with("max_fails=")
                            || param.starts_with("fail_timeout=")
                        {
                            self.note(
                                s,
                                format!("{param}: use services.NAME.health for health checks"),
                            );
                        }
                    }
                }
                "keepalive" => {} // switchback keeps backend connections alive by itself
                _ => self.note(s, "no switchback equivalent in a pool"),
            }
        }
        self.upstreams
            .insert(d.args.first().cloned().unwrap_or_default(), backends);
    }

    /// What needs the whole config read: the routes (see [`Translator::routes`]), each
    /// service's access rule, the PROXY protocol's sources and the trusted proxies.
    fn finish(&mut self) {
        self.routes();
        for i in 0..self.services.len() {
            // nginx answers a `return` before it checks access.
            if let Action::Proxy(_) = self.services[i].action {
                let settings = self.services[i].settings.clone();
                self.services[i].access = self.access_rule(&settings);
            }
        }
        let (header, header_at) = self
            .real_ip_header
            .clone()
            .map_or((String::new(), None), |(h, at)| (h, Some(at)));
        if let Some(at) = self.proxy_protocol.clone() {
            if header == "proxy_protocol" && !self.real_ip_from.is_empty() {
                self.proxy_protocol_from = self.real_ip_from.clone();
            } else {
                self.note_at(&at, "nginx takes a PROXY header from everyone here; list your load balancers in listen.proxy_protocol instead of everyone, so that no client can forge one");
                self.proxy_protocol_from = vec!["0.0.0.0/0".into(), "::/0".into()];
            }
        }
        if !self.real_ip_from.is_empty() && header.eq_ignore_ascii_case("x-forwarded-for") {
            self.trusted_proxies = self.real_ip_from.clone();
        } else if !self.real_ip_from.is_empty() && header.eq_ignore_ascii_case("x-real-ip") {
            self.trusted_proxies = self.real_ip_from.clone();
            if let Some(at) = header_at {
                self.note_at(&at, "switchback reads the client from X-Forwarded-For of its trusted proxies, not X-Real-IP");
            }
        }
    }

    fn write(&self, source: &str) -> String {
        let mut out = format!(
            "# Imported from {source} by `switchback import nginx`; check it with `switchback check`.\n\
             [listen]\nhttp = [{}]\nhttps = [{}]\n",
            list(&self.http),
            list(&self.https)
        );
        if !self.proxy_protocol_from.is_empty() {
            out.push_str(&format!(
                "proxy_protocol = [{}]\n",
                list(&self.proxy_protocol_from)
            ));
        }
        out.push_str(
            "\n[control]\nsocket = \"/run/switchback/control.sock\"\n\n\
             [state]\ndir = \"/var/lib/switchback\"\n",
        );
        if !self.server.is_empty() || self.limit_conn.is_some() || !self.trusted_proxies.is_empty()
        {
            out.push_str("\n[server]\n");
            for (k, v) in &self.server {
                out.push_str(&format!("{k} = {}\n", quote(v)));
            }
            if let Some(n) = self.limit_conn {
                out.push_str(&format!("max_connections_per_ip = {n}\n"));
            }
            if !self.trusted_proxies.is_empty() {
                out.push_str(&format!(
                    "trusted_proxies = [{}]\n",
                    list(&self.trusted_proxies)
                ));
            }
        }
        if self
            .services
            .iter()
            .any(|s| s.tls.as_deref() == Some("\"acme\""))
        {
            out.push_str("\n[acme]\n# email = \"you@example.com\"\n");
        }
        for s in &self.services {
            Translator::write_service(&mut out, s);
        }
        out
    }

    /// `[services.NAME]` and its tables. A redirect service has no pools, nor anything about
    /// what a backend gets.
    fn write_service(out: &mut String, s: &Service) {
        let set = &s.settings;
        out.push_str(&format!(
            "\n[services.{}]\nhosts = [{}]\npath_prefix = {}\n",
            s.name,
            list(&s.hosts),
            quote(&s.prefix),
        ));
        if !s.listen.is_empty() {
            out.push_str(&format!("listen = [{}]\n", list(&s.listen)));
        }
        if s.default {
            out.push_str("default = true\n");
        }
        let key = |out: &mut String, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {}\n", quote(v)));
            }
        };
        match &s.action {
            Action::Redirect(to, code) => out.push_str(&format!(
                "redirect = {{ to = {}, code = {code} }}\n",
                quote(to)
            )),
            Action::Proxy(backends) => {
                out.push_str(&format!(
                    "active = \"blue\"\npools.blue = [{}]\n",
                    list(backends)
                ));
                key(out, "read_timeout", &set.read_timeout);
                key(out, "connect_timeout", &set.connect_timeout);
                match &set.max_body {
                    Some(limit) => key(out, "max_request_body", &Some(limit.clone())),
                    None => out.push_str(
                        "max_request_body = \"1m\"  # nginx's default client_max_body_size; switchback's own is 100m\n",
                    ),
                }
                if set.gzip == Some(true) {
                    out.push_str("compress = [\"gzip\"]\n");
                    key(out, "compress_min_length", &set.gzip_min_length);
                }
            }
        }
        let mut response = set.response_headers.clone().unwrap_or_default();
        if let Some(tls) = &s.tls {
            out.push_str(&format!("tls = {tls}\n"));
            out.push_str(&format!("https_redirect = {}\n", s.https_redirect));
            let hsts = response
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case("strict-transport-security"));
            match hsts {
                Some(i) => {
                    let (_, value) = response.remove(i);
                    out.push_str(&format!("hsts = {}\n", quote(&value)));
                }
                None => out.push_str("hsts = false\n"),
            }
        }
        // nginx adds its `add_header`s to redirects too; a redirect has no backend to send
        // request headers to, and nginx answers it before it checks access.
        let request = match s.action {
            Action::Proxy(_) => set.request_headers.clone().unwrap_or_default(),
            Action::Redirect(..) => Vec::new(),
        };
        for (table, rules) in [("response_headers", response), ("request_headers", request)] {
            if rules.is_empty() {
                continue;
            }
            out.push_str(&format!("\n[services.{}.{table}]\n", s.name));
            for (n, v) in rules {
                out.push_str(&format!("{} = {}\n", quote(&n), quote(&v)));
            }
        }
        if let Some(rule) = &s.access {
            out.push_str(&format!("\n[[services.{}.access]]\n{rule}\n", s.name));
        }
    }
}

/// Directive names [`Translator::setting`] takes at any level.
fn is_setting_name(name: &str) -> bool {
    matches!(
        name,
        "add_header"
            | "include"
            | "allow"
            | "deny"
            | "auth_basic"
            | "auth_basic_user_file"
            | "limit_req"
            | "limit_req_zone"
            | "limit_req_status"
            | "limit_req_log_level"
            | "limit_conn"
            | "limit_conn_zone"
            | "limit_conn_status"
            | "limit_conn_log_level"
            | "set_real_ip_from"
            | "real_ip_header"
            | "real_ip_recursive"
            | "proxy_set_header"
            | "client_max_body_size"
            | "gzip"
            | "gzip_min_length"
            | "gzip_vary"
            | "gzip_types"
            | "gzip_comp_level"
            | "proxy_read_timeout"
            | "proxy_send_timeout"
            | "proxy_connect_timeout"
            | "proxy_http_version"
            | "proxy_buffering"
            | "proxy_redirect"
    )
}

/// Translates a parsed nginx config; `tree` comes from [`super::parse_file`].
pub fn translate(tree: &[Directive]) -> Import {
    let mut t = Translator::default();
    t.top(tree);
    t.finish();
    let source = tree
        .first()
        .map(|d| d.file.display().to_string())
        .unwrap_or_default();
    let toml = t.write(&source);
    // A setting two services inherit can be noted for each.
    let mut untranslated: Vec<Untranslated> = Vec::new();
    for note in t.notes {
        if !untranslated.contains(&note) {
            untranslated.push(note);
        }
    }
    untranslated.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Import { toml, untranslated }
}

/// `"a", "b"`: the inside of a TOML array of strings.
pub(super) fn list(v: &[String]) -> String {
    v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn push_new(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// nginx's default port is 80 when an upstream server gives none.
pub(super) fn with_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((host, port)) => !host.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    };
    if has_port || addr.ends_with(']') && addr.contains("]:") {
        addr.to_string()
    } else {
        format!("{addr}:80")
    }
}

/// nginx times (`60`, `60s`, `5m`, `1h`, `1d`, `500ms`) as switchback writes them.
fn duration(text: &str) -> Option<String> {
    let t = if text.bytes().all(|b| b.is_ascii_digit()) {
        format!("{text}s")
    } else if let Some(days) = text.strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        format!("{}h", days * 24)
    } else {
        text.to_string()
    };
    parse_duration(&t).ok().map(|_| t)
}

/// The upstream's name; when taken, with the location's first path segment (`api-ws`), then a
/// number.
pub(super) fn unique_name(services: &[Service], base: &str, prefix: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let mut clean_base = clean(base);
    if clean_base.is_empty() || !valid_name(&clean_base) {
        clean_base = "app".into();
    }
    let taken = |name: &str| services.iter().any(|s| s.name == name);
    if !taken(&clean_base) {
        return clean_base;
    }
    let segment = clean(prefix.trim_matches('/').split('/').next().unwrap_or(""));
    let clean = if segment.is_empty() {
        clean_base
    } else {
        format!("{clean_base}-{segment}")
    };
    let mut name = clean.clone();
    let mut n = 2;
    while services.iter().any(|s| s.name == name) {
        name = format!("{clean}-{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
pub(super) mod tests {

    /// The TOML and the notes (`line: directive: why`) an nginx config imports to.
    pub(in crate::nginx) fn run(text: &str) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, text).unwrap();
        let import = super::super::import(&path).unwrap();
        let notes = import
            .untranslated
            .iter()
            .map(|n| format!("{}: {}: {}", n.line, n.directive, n.why))
            .collect();
        (import.toml, notes)
    }

    /// [`run`], with the TOML read back as switchback reads it.
    pub(in crate::nginx) fn import(text: &str) -> (crate::Config, Vec<String>, String) {
        let (toml, notes) = run(text);
        let config = crate::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        (config, notes, toml)
    }

    #[test]
    fn twins_merge_names_and_regexes_are_reported_and_client_timeouts_go_to_server() {
        let (toml, notes) = run(
            "http {\n keepalive_timeout 75;\n upstream app { server api:8000; }\n\
             server {\n  listen 80;\n  server_name a.test;\n  location / { proxy_pass http://app; }\n\
               location ~ \\.php$ { proxy_pass http://app; }\n  location = /exact { proxy_pass http://127.0.0.1:9000; }\n }\n\
             server {\n  listen 127.0.0.1:443 ssl;\n  server_name a.test;\n  ssl_certificate /srv/c.pem;\n  ssl_certificate_key /srv/k.pem;\n\
               location / { proxy_pass http://app; }\n }\n}\n",
        );
        let config = crate::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(config.server.keepalive_timeout.as_secs(), 75);
        // A backend by host name is taken as it is.
        assert!(!notes.iter().any(|n| n.contains("api:8000")), "{notes:#?}");
        assert_eq!(
            config.service("app").unwrap().pools[0].backends[0].to_string(),
            "api:8000"
        );
        assert_eq!(config.listen.https, ["127.0.0.1:443".parse().unwrap()]);
        // One service for the route both server blocks have, with the TLS of the second.
        let app = config.service("app").unwrap();
        assert_eq!(
            app.tls,
            crate::TlsMode::Files {
                cert: "/srv/c.pem".into(),
                key: "/srv/k.pem".into()
            }
        );
        assert!(!app.https_redirect);
        assert_eq!(app.hsts, None);
        // On both blocks' listeners, which is every listener, and the first server's fallback.
        assert!(app.listen.is_empty() && app.default);
        let exact = config.service("exact").unwrap();
        assert_eq!(exact.listen, ["0.0.0.0:80".parse().unwrap()]);
        assert!(!exact.default);
        assert_eq!(config.service("exact").unwrap().path_prefix, "/exact");
        for expected in [
            "8: location: a regular-expression location",
            "9: location: = /exact: an exact match, imported as a prefix",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:#?}"
            );
        }
    }

    #[test]
    fn proxy_set_header_keeps_the_variables_switchback_knows() {
        let (config, notes, toml) = import(
            "http {\n server {\n  listen 80;\n  server_name a.test;\n  location / {\n\
               proxy_pass http://app:8000;\n\
               proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Real-IP $remote_addr;\n\
               proxy_set_header X-Request-ID $request_id;\n\
               proxy_set_header X-Client \"$remote_addr:$remote_port\";\n\
               proxy_set_header X-Price 5$;\n\
               proxy_set_header X-User $http_x_user;\n  }\n }\n}\n",
        );
        let mut rules: Vec<(&str, Option<&str>)> = config
            .service("app")
            .unwrap()
            .request_headers
            .iter()
            .map(|r| (r.name.as_str(), r.value.as_deref()))
            .collect();
        rules.sort();
        // Host and X-Forwarded-For are what switchback sends anyway: no rule for them.
        assert_eq!(
            rules,
            [
                ("x-client", Some("$client_ip:$remote_port")),
                ("x-price", Some("5$$")),
                ("x-real-ip", Some("$client_ip")),
                ("x-request-id", Some("$request_id")),
            ],
            "{toml}"
        );
        assert_eq!(
            notes,
            ["13: proxy_set_header: $http_x_user has no switchback equivalent: request headers may use $remote_addr (as $client_ip), $host, $scheme, $request_id and $remote_port"]
        );
    }

    #[test]
    fn access_rules_limits_and_the_proxy_protocol_are_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let users = crate::htpasswd::tests::write_bob(dir.path());
        let (toml, notes) = run(&format!(
            "http {{\n\
             limit_req_zone $binary_remote_addr zone=login:10m rate=5r/s;\n\
             limit_req_zone $http_x_api_key zone=api:10m rate=600r/m;\n\
             limit_req_zone $request_uri zone=odd:10m rate=1r/s;\n\
             limit_conn_zone $binary_remote_addr zone=perip:10m;\n\
             set_real_ip_from 10.0.0.0/16;\n\
             real_ip_header proxy_protocol;\n\
             upstream app {{ server 127.0.0.1:9000; }}\n\
             server {{\n\
              listen 80 proxy_protocol;\n\
              server_name a.test;\n\
              limit_conn perip 20;\n\
              location / {{ proxy_pass http://app; }}\n\
              location /admin/ {{ allow 10.0.0.0/8; allow 192.0.2.7; deny all; auth_basic \"Admin\"; auth_basic_user_file {}; proxy_pass http://app; }}\n\
              location /login {{ limit_req zone=login burst=10 nodelay; proxy_pass http://app; }}\n\
              location /api/ {{ limit_req zone=api burst=50; deny 198.51.100.0/24; proxy_pass http://app; }}\n\
              location /odd/ {{ limit_req zone=odd; proxy_pass http://app; }}\n\
              location /mixed/ {{ allow 10.0.0.0/8; deny 10.9.0.0/16; deny all; proxy_pass http://app; }}\n\
              location /closed/ {{ deny all; proxy_pass http://app; }}\n\
             }}\n}}\n",
            users.display()
        ));
        let config = crate::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(
            config.listen.proxy_protocol,
            ["10.0.0.0/16".parse().unwrap()]
        );
        assert_eq!(config.server.max_connections_per_ip, Some(20));
        let rule = |name: &str| {
            let s = config
                .services
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} in {toml}"));
            s.access.clone()
        };
        assert!(rule("app").is_empty());
        let admin = &rule("app-admin")[0];
        assert_eq!(admin.path_prefix, None);
        assert_eq!(admin.allow.len(), 2);
        assert!(admin.deny.is_empty());
        let auth = admin.basic_auth.as_ref().unwrap();
        assert_eq!(auth.realm, "Admin");
        assert_eq!(auth.users.len(), 1);
        let login = rule("app-login")[0].rate.clone().unwrap();
        assert_eq!((login.per_second, login.burst), (5.0, 10));
        assert_eq!(login.by, crate::RateKey::Ip);
        let api = &rule("app-api")[0];
        let rate = api.rate.clone().unwrap();
        assert_eq!((rate.per_second, rate.burst), (10.0, 50));
        assert_eq!(rate.by, crate::RateKey::Header("x-api-key".into()));
        assert_eq!(api.deny.len(), 1);
        assert!(rule("app-odd").is_empty());
        let mixed = &rule("app-mixed")[0];
        assert_eq!((mixed.allow.len(), mixed.deny.len()), (1, 1));
        let closed = &rule("app-closed")[0];
        assert_eq!(closed.deny.len(), 2);
        for expected in [
            "16: limit_req: without nodelay nginx delays the burst",
            "17: limit_req: zone odd counts by a key switchback cannot count by",
            "4: limit_req_zone: $request_uri: switchback counts by",
            "18: deny: switchback checks deny before allow",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:#?}"
            );
        }
        // Nothing of it is listed as left behind.
        for name in [
            "allow",
            "auth_basic",
            "limit_conn",
            "set_real_ip_from",
            "listen",
        ] {
            assert!(
                !notes
                    .iter()
                    .any(|n| n.contains(&format!(": {name}: no switchback"))),
                "{notes:#?}"
            );
        }
    }

    #[test]
    fn nginx_defaults_and_paths_come_along_without_false_notes() {
        let (toml, notes) = run("http {\n upstream api { server 127.0.0.1:9000; }\n\
             server {\n  listen 80;\n  include /nonexistent/snippets/ssl.conf;\n\
               location /api/ { proxy_pass http://api/api/; }\n\
               location /ws { proxy_pass http://api; }\n\
               location /v2/ { client_max_body_size 5m; proxy_pass http://api/v1/; }\n }\n}\n");
        let config = crate::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        // nginx's 1 MB body limit where the config set none, not switchback's 100 MB.
        let limit = |name: &str| config.service(name).unwrap().max_request_body;
        assert_eq!(limit("api"), Some(1 << 20));
        assert_eq!(limit("api-v2"), Some(5 << 20));
        for expected in [
            "5: include: file not found: /nonexistent/snippets/ssl.conf",
            "7: location: /ws: switchback matches whole path segments",
            "8: proxy_pass: a URI part in proxy_pass rewrites the path",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:#?}"
            );
        }
        // The same path in proxy_pass as in the location rewrites nothing.
        assert!(!notes.iter().any(|n| n.starts_with("6:")), "{notes:#?}");
    }
}
