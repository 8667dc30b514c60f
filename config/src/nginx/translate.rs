//! nginx directives → switchback's config.
//!
//! Each `location` that proxies (`proxy_pass`) becomes a service: its `server_name`s are the
//! hosts, its path the prefix, and the upstream (or the one address) behind it the service's
//! only pool, `blue`, which is active. The headers, body limit, compression, timeouts and TLS of
//! the location, its server and `http` come along with nginx's inheritance (a level that sets
//! `add_header` or `proxy_set_header` replaces its parent's list). A plain-HTTP server that only
//! redirects to `https://` turns `https_redirect` on for the services of its names.

use std::collections::BTreeMap;

use super::parse::Directive;
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
struct Settings {
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
struct At {
    file: std::path::PathBuf,
    line: usize,
    directive: String,
}

impl At {
    fn of(d: &Directive) -> At {
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
    fn under(&self, parent: &Settings) -> Settings {
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
}

/// One service to write.
#[derive(Debug)]
struct Service {
    name: String,
    hosts: Vec<String>,
    prefix: String,
    backends: Vec<String>,
    settings: Settings,
    tls: Option<String>,
    /// The body of its `[[access]]` rule, once [`Translator::finish`] worked it out.
    access: Option<String>,
}

#[derive(Default)]
struct Translator {
    notes: Vec<Untranslated>,
    http: Vec<String>,
    https: Vec<String>,
    upstreams: BTreeMap<String, Vec<String>>,
    services: Vec<Service>,
    /// Host lists of plain-HTTP servers that redirect everything to HTTPS.
    redirected: Vec<Vec<String>>,
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
    proxy_protocol: Option<At>,
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
    fn note(&mut self, d: &Directive, why: impl Into<String>) {
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
    fn note_backend(&mut self, d: &Directive, addr: &str) {
        if let Err(e) = crate::parse_target(&with_port(addr)) {
            self.note(d, format!("{addr}: {e}"));
        }
    }

    /// A setting every level may carry; false when `d` is not one.
    fn setting(&mut self, d: &Directive, s: &mut Settings) -> bool {
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
                } else if name == "x-real-ip" {
                    self.note(d, "switchback does not send X-Real-IP; backends read the client from X-Forwarded-For");
                } else if value.contains('$') {
                    self.note(
                        d,
                        "a value with nginx variables has no switchback equivalent",
                    );
                } else {
                    s.request_headers
                        .get_or_insert_with(Vec::new)
                        .push((arg(0), value));
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

    fn note_at(&mut self, at: &At, why: impl Into<String>) {
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
                ("server", Some(body)) => self.server(body, settings),
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

    fn server(&mut self, body: &[Directive], http: &Settings) {
        let mut settings = Settings::default();
        let mut hosts = Vec::new();
        let mut tls_cert = None;
        let mut tls_key = None;
        let mut plain = false;
        let mut redirects = false;
        for d in body {
            if self.setting(d, &mut settings) {
                continue;
            }
            match d.name.as_str() {
                "listen" if d.args.iter().any(|a| a == "proxy_protocol") => {
                    if self.proxy_protocol.is_none() {
                        self.proxy_protocol = Some(At::of(d));
                    }
                    match listen(&d.args) {
                        Some((addr, true)) => push_new(&mut self.https, addr),
                        Some((addr, false)) => {
                            plain = true;
                            push_new(&mut self.http, addr)
                        }
                        None => self.note(d, "switchback listens on IP:port addresses"),
                    }
                }
                "listen" => match listen(&d.args) {
                    Some((addr, true)) => push_new(&mut self.https, addr),
                    Some((addr, false)) => {
                        plain = true;
                        push_new(&mut self.http, addr)
                    }
                    None => self.note(d, "switchback listens on IP:port addresses"),
                },
                "server_name" => {
                    for name in &d.args {
                        if name.starts_with('~') {
                            self.note(
                                d,
                                format!("{name}: switchback matches exact names and *.suffix"),
                            );
                        } else if name != "_" && !name.is_empty() {
                            push_new(&mut hosts, name.to_ascii_lowercase());
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
                "return" if is_https_redirect(&d.args) => redirects = true,
                "location" => {}
                _ => self.note(d, "no switchback equivalent"),
            }
        }
        if plain && redirects {
            self.redirected.push(hosts.clone());
        }
        let settings = settings.under(http);
        let tls = match (tls_cert, tls_key) {
            (Some(c), _) if c.starts_with("/etc/letsencrypt/") => Some("\"acme\"".to_string()),
            (Some(c), Some(k)) => Some(format!("{{ cert = {}, key = {} }}", quote(&c), quote(&k))),
            _ => None,
        };
        for d in body.iter().filter(|d| d.name == "location") {
            self.location(d, &hosts, &settings, &tls);
        }
    }

    fn location(
        &mut self,
        d: &Directive,
        hosts: &[String],
        parent: &Settings,
        tls: &Option<String>,
    ) {
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
        let Some(body) = &d.block else { return };
        let mut settings = Settings::default();
        let mut target = None;
        for inner in body {
            if self.setting(inner, &mut settings) {
                continue;
            }
            match inner.name.as_str() {
                "proxy_pass" => {
                    target = Some((inner, inner.args.first().cloned().unwrap_or_default()))
                }
                "return" if is_https_redirect(&inner.args) && prefix == "/" => {}
                "location" => self.note(
                    inner,
                    "a nested location: switchback routes by one prefix per service",
                ),
                _ => self.note(inner, "no switchback equivalent"),
            }
        }
        let Some((at, url)) = target else { return };
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
        let Some(rest) = url.strip_prefix("http://") else {
            self.note(at, "switchback proxies to backends over plain HTTP");
            return;
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
            return;
        }
        let (base, backends) = match self.upstreams.get(authority) {
            Some(servers) => (authority.to_string(), servers.clone()),
            None => {
                self.note_backend(at, authority);
                // A service is named after the host it proxies to, or, for an address, after
                // its location's first path segment.
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                let segment = prefix.trim_matches('/').split('/').next().unwrap_or("");
                let base = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                    Ok(_) if !segment.is_empty() => segment,
                    Ok(_) => "app",
                    Err(_) => host,
                };
                (base.to_string(), vec![with_port(authority)])
            }
        };
        let settings = settings.under(parent);
        // The same route under another server block (the port-80 twin of a TLS server): one
        // service serves both listeners.
        if let Some(existing) = self
            .services
            .iter_mut()
            .find(|s| s.hosts == hosts && s.prefix == prefix)
        {
            if existing.tls.is_none() {
                existing.tls = tls.clone();
            }
            return;
        }
        let name = unique_name(&self.services, &base, &prefix);
        self.services.push(Service {
            name,
            hosts: hosts.to_vec(),
            prefix,
            backends,
            settings,
            tls: tls.clone(),
            access: None,
        });
    }

    /// What needs the whole config read: each service's access rule, the PROXY protocol's
    /// sources and the trusted proxies.
    fn finish(&mut self) {
        for i in 0..self.services.len() {
            let settings = self.services[i].settings.clone();
            self.services[i].access = self.access_rule(&settings);
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
            let set = &s.settings;
            out.push_str(&format!(
                "\n[services.{}]\nhosts = [{}]\npath_prefix = {}\nactive = \"blue\"\npools.blue = [{}]\n",
                s.name,
                list(&s.hosts),
                quote(&s.prefix),
                list(&s.backends)
            ));
            let key = |out: &mut String, k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    out.push_str(&format!("{k} = {}\n", quote(v)));
                }
            };
            key(&mut out, "read_timeout", &set.read_timeout);
            key(&mut out, "connect_timeout", &set.connect_timeout);
            match &set.max_body {
                Some(limit) => key(&mut out, "max_request_body", &Some(limit.clone())),
                None => out.push_str(
                    "max_request_body = \"1m\"  # nginx's default client_max_body_size; switchback's own is 100m\n",
                ),
            }
            if set.gzip == Some(true) {
                out.push_str("compress = [\"gzip\"]\n");
                key(&mut out, "compress_min_length", &set.gzip_min_length);
            }
            let mut response = set.response_headers.clone().unwrap_or_default();
            if let Some(tls) = &s.tls {
                out.push_str(&format!("tls = {tls}\n"));
                let redirect = self
                    .redirected
                    .iter()
                    .any(|hosts| hosts.is_empty() || s.hosts.iter().any(|h| hosts.contains(h)));
                out.push_str(&format!("https_redirect = {redirect}\n"));
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
            for (table, rules) in [
                ("response_headers", response),
                (
                    "request_headers",
                    set.request_headers.clone().unwrap_or_default(),
                ),
            ] {
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
        out
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
    let mut untranslated = t.notes;
    untranslated.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Import { toml, untranslated }
}

/// `"a", "b"`: the inside of a TOML array of strings.
fn list(v: &[String]) -> String {
    v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn push_new(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// nginx's default port is 80 when an upstream server gives none.
fn with_port(addr: &str) -> String {
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

fn is_https_redirect(args: &[String]) -> bool {
    matches!(args, [code, url] if matches!(code.as_str(), "301" | "302" | "307" | "308") && url.starts_with("https://"))
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
fn unique_name(services: &[Service], base: &str, prefix: &str) -> String {
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
mod tests {

    fn run(text: &str) -> (String, Vec<String>) {
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
