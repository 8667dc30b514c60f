//! From the file as written to [`Config`], reporting every problem in one pass.
//!
//! Each problem names the file, the line and the key, says what is wrong and, where it can, what
//! to write instead: `switchback.toml:12: services.app.active: no pool named "gren" (pools:
//! blue, green)`. A file with any problem is refused whole: switchback never starts on a
//! configuration it only half understood.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::parse_socket_addr;
use crate::duration::parse_duration;
use crate::model::*;
use crate::schema::*;
pub use crate::validate_service::normalize_host;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// Dotted key, like `services.app.active`; empty for a syntax error.
    pub key: String,
    pub message: String,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", ProblemList { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

struct ProblemList<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Checks config text; `path` is used in messages and kept as [`Config::source`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: e.message().trim().to_string(),
        }],
    })?;
    let mut v = Validator {
        text,
        problems: Vec::new(),
    };
    let config = v.config(path, raw);
    v.problems.sort_by_key(|p| p.line);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Whether a service or pool name is usable everywhere it appears: CLI, metrics labels, files.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `64k`, `"1m"`, `"2g"`, `4096`: a size in bytes (k, m and g are powers of 1024). None if not a
/// size.
pub fn parse_size(value: &toml::Value) -> Option<usize> {
    match value {
        toml::Value::Integer(n) => usize::try_from(*n).ok(),
        toml::Value::String(text) => {
            let t = text.trim().to_ascii_lowercase();
            let (digits, unit) = match t.strip_suffix(['k', 'm', 'g']) {
                Some(d) if t.ends_with('k') => (d, 1024),
                Some(d) if t.ends_with('m') => (d, 1024 * 1024),
                Some(d) => (d, 1024 * 1024 * 1024),
                None => (t.strip_suffix('b').unwrap_or(&t), 1),
            };
            let digits = digits.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse::<usize>().ok()?.checked_mul(unit)
        }
        _ => None,
    }
}

pub(crate) struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    pub(crate) fn problem(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line: Some(line_of(self.text, span.start)),
            key: key.into(),
            message: message.into(),
        });
    }

    pub(crate) fn duration(
        &mut self,
        value: &Option<S<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.problem(value.span(), key, "must be more than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(value.span(), key, e.to_string());
                default
            }
        }
    }

    pub(crate) fn count(
        &mut self,
        value: &Option<S<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        if n < min || n > max {
            self.problem(
                value.span(),
                key,
                format!("{n} is out of range: use {min} to {max}"),
            );
            return default;
        }
        n as u32
    }

    fn config(&mut self, path: &Path, raw: RawConfig) -> Config {
        let listen = self.listen(&raw.listen);
        let server = self.server(raw.server.as_ref());
        let control = self.control(&raw.control);
        let state_dir = raw.state.get_ref().dir.get_ref().trim().to_string();
        if state_dir.is_empty() {
            self.problem(
                raw.state.get_ref().dir.span(),
                "state.dir",
                "is empty: give a directory where switchback may keep its state",
            );
        }
        let admin = raw.admin.as_ref().and_then(|a| {
            let listen = &a.get_ref().listen;
            match parse_socket_addr(listen.get_ref()) {
                Ok(addr) => Some(AdminConfig { listen: addr }),
                Err(e) => {
                    self.problem(listen.span(), "admin.listen", e);
                    None
                }
            }
        });
        let access_log = self.access_log(raw.access_log.as_ref());
        let acme = self.acme(raw.acme.as_ref());
        let metrics = MetricsConfig {
            enabled: raw
                .metrics
                .as_ref()
                .and_then(|m| m.get_ref().enabled.as_ref())
                .is_none_or(|e| *e.get_ref()),
        };
        let resolver = self.resolver(raw.resolver.as_ref());
        let fleet = self.fleet(raw.fleet.as_ref());
        let mut services = Vec::new();
        for (name, service) in &raw.services {
            if let Some(s) = self.service(name, service) {
                services.push(s);
            }
        }
        self.routes(&raw.services, &listen, &services);
        self.tls_listeners(&raw, &listen, &services);
        Config {
            source: path.to_path_buf(),
            listen,
            server,
            control,
            state: StateConfig {
                dir: PathBuf::from(state_dir),
            },
            admin,
            acme,
            access_log,
            metrics,
            resolver,
            fleet,
            services,
        }
    }

    fn resolver(&mut self, raw: Option<&S<RawResolver>>) -> ResolverConfig {
        let Some(raw) = raw.map(S::get_ref) else {
            return ResolverConfig::default();
        };
        let mut nameservers = Vec::new();
        for server in &raw.nameservers {
            match parse_socket_addr(server.get_ref()) {
                Ok(addr) if nameservers.contains(&addr) => self.problem(
                    server.span(),
                    "resolver.nameservers",
                    format!("{addr} is listed twice"),
                ),
                Ok(addr) => nameservers.push(addr),
                Err(e) => self.problem(
                    server.span(),
                    "resolver.nameservers",
                    format!("{e} (a DNS server's port is usually 53)"),
                ),
            }
        }
        let refresh = self.duration(&raw.refresh, "resolver.refresh", defaults::RESOLVER_REFRESH);
        ResolverConfig {
            nameservers,
            refresh,
        }
    }

    fn access_log(&mut self, raw: Option<&S<RawAccessLog>>) -> AccessLogConfig {
        let mut config = AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Json,
            path: None,
        };
        let Some(raw) = raw.map(|r| r.get_ref()) else {
            return config;
        };
        if let Some(e) = &raw.enabled {
            config.enabled = *e.get_ref();
        }
        if let Some(f) = &raw.format {
            match f.get_ref().as_str() {
                "json" => config.format = AccessLogFormat::Json,
                "combined" => config.format = AccessLogFormat::Combined,
                other => self.problem(
                    f.span(),
                    "access_log.format",
                    format!("{other:?} is not a format: use \"json\" or \"combined\""),
                ),
            }
        }
        if let Some(p) = &raw.path {
            if p.get_ref().trim().is_empty() {
                self.problem(
                    p.span(),
                    "access_log.path",
                    "is empty: give a file, or leave the key out for standard output",
                );
            } else {
                config.path = Some(PathBuf::from(p.get_ref()));
            }
        }
        config
    }

    fn listen(&mut self, raw: &S<RawListen>) -> ListenConfig {
        let mut seen: Vec<SocketAddr> = Vec::new();
        let mut lists = [Vec::new(), Vec::new()];
        for (list, (key, addrs)) in lists.iter_mut().zip([
            ("listen.http", &raw.get_ref().http),
            ("listen.https", &raw.get_ref().https),
        ]) {
            for addr in addrs {
                match parse_socket_addr(addr.get_ref()) {
                    Ok(a) if seen.contains(&a) => {
                        self.problem(addr.span(), key, format!("{a} is listed twice"))
                    }
                    Ok(a) => {
                        seen.push(a);
                        list.push(a);
                    }
                    Err(e) => self.problem(addr.span(), key, e),
                }
            }
        }
        if seen.is_empty() && raw.get_ref().http.is_empty() && raw.get_ref().https.is_empty() {
            self.problem(
                raw.span(),
                "listen.http",
                "no listener: give at least one address, like http = [\"127.0.0.1:8080\"]",
            );
        }
        let [http, https] = lists;
        let mut proxy_protocol = Vec::new();
        for item in &raw.get_ref().proxy_protocol {
            match item.get_ref().parse::<Cidr>() {
                Ok(c) => proxy_protocol.push(c),
                Err(e) => self.problem(item.span(), "listen.proxy_protocol", e),
            }
        }
        ListenConfig {
            http,
            https,
            proxy_protocol,
        }
    }

    fn server(&mut self, raw: Option<&S<RawServer>>) -> ServerConfig {
        let Some(raw) = raw.map(|r| r.get_ref()) else {
            return ServerConfig::default();
        };
        let threads = raw
            .threads
            .as_ref()
            .map(|_| self.count(&raw.threads, "server.threads", 1, 1024, 1) as usize);
        let shutdown_grace = match &raw.shutdown_grace {
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(v.span(), "server.shutdown_grace", e.to_string());
                    defaults::SHUTDOWN_GRACE
                }
            },
            None => defaults::SHUTDOWN_GRACE,
        };
        let max_connections = self.count(
            &raw.max_connections,
            "server.max_connections",
            1,
            10_000_000,
            defaults::MAX_CONNECTIONS as u32,
        ) as usize;
        let max_connections_per_ip = raw.max_connections_per_ip.as_ref().map(|_| {
            self.count(
                &raw.max_connections_per_ip,
                "server.max_connections_per_ip",
                1,
                10_000_000,
                1,
            ) as usize
        });
        let max_request_head = self.size(
            &raw.max_request_head,
            "server.max_request_head",
            1024,
            MAX_REQUEST_HEAD_LIMIT,
            defaults::MAX_REQUEST_HEAD,
        );
        let max_uri_length = self.size(
            &raw.max_uri_length,
            "server.max_uri_length",
            16,
            MAX_REQUEST_HEAD_LIMIT,
            defaults::MAX_URI_LENGTH,
        );
        let max_request_body = self
            .request_body_limit(&raw.max_request_body, "server.max_request_body")
            .unwrap_or(defaults::MAX_REQUEST_BODY);
        let mut trusted_proxies = Vec::new();
        for item in &raw.trusted_proxies {
            match item.get_ref().parse::<Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(e) => self.problem(item.span(), "server.trusted_proxies", e),
            }
        }
        let http1 = match &raw.http1 {
            None => Http1Engine::default(),
            Some(v) => {
                match v.get_ref().as_str() {
                    "switchback" => Http1Engine::Switchback,
                    "pingora" => Http1Engine::Pingora,
                    other => {
                        self.problem(
                        v.span(),
                        "server.http1",
                        format!("{other:?} is not an HTTP/1 path: use \"switchback\" or \"pingora\""),
                    );
                        Http1Engine::default()
                    }
                }
            }
        };
        let rate_limit_keys = self.count(
            &raw.rate_limit_keys,
            "server.rate_limit_keys",
            1,
            100_000_000,
            defaults::RATE_LIMIT_KEYS as u32,
        ) as usize;
        ServerConfig {
            http1,
            rate_limit_keys,
            threads,
            shutdown_grace,
            client_header_timeout: self.duration(
                &raw.client_header_timeout,
                "server.client_header_timeout",
                defaults::CLIENT_HEADER_TIMEOUT,
            ),
            keepalive_timeout: self.duration(
                &raw.keepalive_timeout,
                "server.keepalive_timeout",
                defaults::KEEPALIVE_TIMEOUT,
            ),
            client_body_timeout: self.duration(
                &raw.client_body_timeout,
                "server.client_body_timeout",
                defaults::CLIENT_BODY_TIMEOUT,
            ),
            send_timeout: self.duration(
                &raw.send_timeout,
                "server.send_timeout",
                defaults::SEND_TIMEOUT,
            ),
            max_connections,
            max_connections_per_ip,
            max_request_head,
            max_uri_length,
            max_request_body,
            trusted_proxies,
        }
    }

    /// A size in bytes: a number, or a string like `"64k"` or `"1m"` (powers of 1024).
    pub(crate) fn size(
        &mut self,
        value: &Option<S<toml::Value>>,
        key: &str,
        min: usize,
        max: usize,
        default: usize,
    ) -> usize {
        let Some(value) = value else { return default };
        match parse_size(value.get_ref()) {
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.problem(
                    value.span(),
                    key,
                    format!("{n} bytes is out of range: use {min} to {max}"),
                );
                default
            }
            None => {
                self.problem(
                    value.span(),
                    key,
                    format!(
                        "{} is not a size: write a number of bytes or a string like \"64k\", \"1m\" or \"2g\"",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn control(&mut self, raw: &S<RawControl>) -> ControlConfig {
        let raw = raw.get_ref();
        let socket = raw.socket.get_ref().trim().to_string();
        if socket.is_empty() {
            self.problem(
                raw.socket.span(),
                "control.socket",
                "is empty: give a path for the control socket, like \"/run/switchback/control.sock\"",
            );
        }
        let mode = match &raw.mode {
            None => defaults::CONTROL_MODE,
            Some(m) => match u32::from_str_radix(m.get_ref().trim(), 8) {
                Ok(bits) if bits <= 0o777 && bits & 0o600 == 0o600 => bits,
                Ok(_) => {
                    self.problem(
                        m.span(),
                        "control.mode",
                        format!(
                            "{:?} must give the owner read and write and be at most \"0777\", like \"0600\" or \"0660\"",
                            m.get_ref()
                        ),
                    );
                    defaults::CONTROL_MODE
                }
                Err(_) => {
                    self.problem(
                        m.span(),
                        "control.mode",
                        format!(
                            "{:?} is not an octal mode: write it like \"0600\" or \"0660\"",
                            m.get_ref()
                        ),
                    );
                    defaults::CONTROL_MODE
                }
            },
        };
        let group = raw.group.as_ref().map(|g| g.get_ref().trim().to_string());
        if let (Some(g), Some(raw_g)) = (&group, &raw.group) {
            if g.is_empty() {
                self.problem(
                    raw_g.span(),
                    "control.group",
                    "is empty: name a group or leave the key out",
                );
            }
        }
        ControlConfig {
            socket: PathBuf::from(socket),
            mode,
            group,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"[listen]
http = ["127.0.0.1:8080"]

[control]
socket = "/tmp/switchback-demo/control.sock"

[state]
dir = "/tmp/switchback-demo/state"

[services.app]
hosts = []                    # empty: this service takes every Host
active = "blue"
pools.blue = ["127.0.0.1:9001"]
pools.green = ["127.0.0.1:9002"]
health = { path = "/", interval = "500ms", timeout = "1s" }
"#;

    #[test]
    fn server_http1_names_a_path() {
        let c = parse(
            Path::new("switchback.toml"),
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[server]\nhttp1 = \"pingora\"\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n",
        )
        .unwrap();
        assert_eq!(c.server.http1, Http1Engine::Pingora);
        let c = parse(
            Path::new("switchback.toml"),
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n",
        )
        .unwrap();
        assert_eq!(c.server.http1, Http1Engine::Switchback);
        let problems = problems(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[server]\nhttp1 = \"nginx\"\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(":4")
                && problems[0].contains("server.http1: \"nginx\" is not an HTTP/1 path"),
            "{problems:?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("switchback.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn the_minimal_file_works_as_written() {
        let c = parse(Path::new("switchback.toml"), MINIMAL).unwrap();
        assert_eq!(c.listen.http, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.control.mode, 0o600);
        let app = c.service("app").unwrap();
        assert_eq!(app.active, "blue");
        assert_eq!(app.pool_names(), vec!["blue", "green"]);
        assert!(app.hosts.is_empty());
        let h = app.health.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_millis(500));
        assert_eq!(h.healthy_threshold, defaults::HEALTHY_THRESHOLD);
    }

    #[test]
    fn the_example_file_documents_a_valid_config() {
        let text = include_str!("../../examples/switchback.toml");
        let c =
            parse(Path::new("examples/switchback.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services.len(), 3);
        let app = c.service("app").unwrap();
        assert!(app.default);
        assert_eq!(app.request_headers.len(), 3);
        assert_eq!(
            c.service("old-site")
                .unwrap()
                .redirect
                .as_ref()
                .unwrap()
                .code,
            301
        );
    }

    #[test]
    fn active_pool_typo_names_file_line_key_and_choices() {
        let text = MINIMAL.replace("active = \"blue\"", "active = \"gren\"");
        assert_eq!(
            problems(&text),
            vec![
                "switchback.toml:12: services.app.active: no pool named \"gren\" (pools: blue, green)"
            ]
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = MINIMAL.replace("active = \"blue\"", "active = \"blue\"\nactve = 1");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("switchback.toml:13:"), "{p:?}");
        assert!(p[0].contains("actve"), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let text = MINIMAL
            .replace("127.0.0.1:9002", "127.0.0.1")
            .replace("\"500ms\"", "\"fast\"")
            .replace("http = [\"127.0.0.1:8080\"]", "http = [\"8080\"]");
        let p = problems(&text);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("switchback.toml:2: listen.http:"), "{p:?}");
        assert!(p
            .iter()
            .any(|l| l.starts_with("switchback.toml:14: services.app.pools.green:")));
        assert!(p
            .iter()
            .any(|l| l.starts_with("switchback.toml:15: services.app.health.interval:")));
    }

    #[test]
    fn duplicate_hosts_and_two_catch_alls_are_refused() {
        let two_catch_alls =
            format!("{MINIMAL}\n[services.web]\nactive = \"a\"\npools.a = [\"127.0.0.1:9003\"]\n");
        let p = problems(&two_catch_alls);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("take every host"), "{p:?}");

        let dup_host = format!(
            "{}\n[services.web]\nhosts = [\"Example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9003\"]\n",
            MINIMAL.replace("hosts = []", "hosts = [\"example.com\"]")
        );
        let p = problems(&dup_host);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("already routed to service \"app\""), "{p:?}");
        assert!(
            p[0].starts_with("switchback.toml:18: services.web.hosts"),
            "{p:?}"
        );
    }

    #[test]
    fn same_host_with_different_prefixes_is_fine() {
        let text = format!(
            "{}\n[services.api]\nhosts = [\"example.com\"]\npath_prefix = \"/api\"\nactive = \"a\"\npools.a = [\"127.0.0.1:9003\"]\n",
            MINIMAL.replace("hosts = []", "hosts = [\"example.com\"]")
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn bad_values_are_named() {
        let text = MINIMAL
            .replace("[state]", "[server]\nthreads = 0\n\n[state]")
            .replace(
                "pools.blue = [\"127.0.0.1:9001\"]",
                "pools.blue = [\"127.0.0.1:9001\", \"127.0.0.1:9001\"]",
            )
            .replace("hosts = []", "hosts = [\"http://x\"]");
        let p = problems(&text);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p
            .iter()
            .any(|l| l.contains("server.threads: 0 is out of range")));
        assert!(p.iter().any(|l| l.contains("is listed twice")));
        assert!(p.iter().any(|l| l.contains("is not a host name")));
    }

    #[test]
    fn server_deadlines_caps_and_limits_have_defaults_and_checks() {
        let c = parse(Path::new("switchback.toml"), MINIMAL).unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.server.client_header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_request_head, 64 * 1024);

        let text = MINIMAL.replace(
            "[state]",
            "[server]\nclient_header_timeout = \"2s\"\nkeepalive_timeout = \"5s\"\nmax_connections = 50\nmax_connections_per_ip = 4\nmax_request_head = \"16k\"\nmax_uri_length = 2048\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\n[state]",
        );
        let c = parse(Path::new("switchback.toml"), &text).unwrap();
        assert_eq!(c.server.client_header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(c.server.max_connections, 50);
        assert_eq!(c.server.max_connections_per_ip, Some(4));
        assert_eq!(c.server.max_request_head, 16 * 1024);
        assert_eq!(c.server.max_uri_length, 2048);
        assert_eq!(c.server.trusted_proxies.len(), 2);

        let text = MINIMAL.replace(
            "[state]",
            "[server]\nsend_timeout = \"0s\"\nmax_connections = 0\nmax_request_head = \"2m\"\nmax_uri_length = \"lots\"\ntrusted_proxies = [\"10.0.0.0/40\"]\n\n[state]",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 5, "{p:?}");
        for key in [
            "server.send_timeout: must be more than zero",
            "server.max_connections: 0 is out of range",
            "server.max_request_head: 2097152 bytes is out of range",
            "server.max_uri_length: \"lots\" is not a size",
            "server.trusted_proxies: \"10.0.0.0/40\": the prefix length",
        ] {
            assert!(p.iter().any(|l| l.contains(key)), "{key} in {p:?}");
        }
    }

    #[test]
    fn retry_settings_have_defaults_and_checks() {
        let c = parse(Path::new("switchback.toml"), MINIMAL).unwrap();
        let app = c.service("app").unwrap();
        assert_eq!(app.retries, 2);
        assert_eq!(app.retry_on, RetryOn::default());
        assert!(app.retry_on.error && !app.retry_on.timeout);
        assert!(!app.retry_non_idempotent);
        assert_eq!(app.retry_buffer, 64 * 1024);

        let with = |lines: &str| {
            MINIMAL.replace("active = \"blue\"", &format!("active = \"blue\"\n{lines}"))
        };
        let c = parse(
            Path::new("switchback.toml"),
            &with("retry_on = [\"timeout\"]\nretry_non_idempotent = true\nretry_buffer = \"1k\""),
        )
        .unwrap();
        let app = c.service("app").unwrap();
        assert_eq!(
            app.retry_on,
            RetryOn {
                error: false,
                timeout: true
            }
        );
        assert!(app.retry_non_idempotent);
        assert_eq!(app.retry_buffer, 1024);
        let none = parse(Path::new("switchback.toml"), &with("retry_on = []")).unwrap();
        assert_eq!(
            none.service("app").unwrap().retry_on,
            RetryOn {
                error: false,
                timeout: false
            }
        );

        let p = problems(&with(
            "retry_on = [\"error\", \"http_502\"]\nretry_buffer = \"1m\"",
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("switchback.toml:13: services.app.retry_on: \"http_502\" is not"),
            "{p:?}"
        );
        assert!(p[1].starts_with("switchback.toml:14: services.app.retry_buffer: 1048576 bytes is out of range: use 0 to 65536"), "{p:?}");
    }

    #[test]
    fn sizes_read_as_users_write_them() {
        let size = |t: &str| parse_size(&t.parse::<toml::Value>().unwrap());
        assert_eq!(size("64"), Some(64));
        assert_eq!(size("\"64k\""), Some(65536));
        assert_eq!(size("\"1M\""), Some(1 << 20));
        assert_eq!(size("\"512b\""), Some(512));
        assert_eq!(size("\"k\""), None);
        assert_eq!(size("-1"), None);
        assert_eq!(size("1.5"), None);
    }

    #[test]
    fn a_pool_has_at_most_64_backends() {
        let list = |n: u16| {
            (1..=n)
                .map(|p| format!("\"127.0.0.1:{}\"", 9000 + p))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let with = |n: u16| {
            MINIMAL.replace(
                "pools.blue = [\"127.0.0.1:9001\"]",
                &format!("pools.blue = [{}]", list(n)),
            )
        };
        assert!(problems(&with(64)).is_empty());
        let p = problems(&with(65));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("services.app.pools.blue: 65 backends: a pool has at most 64"),
            "{p:?}"
        );
    }

    #[test]
    fn observability_sections_have_defaults_and_checks() {
        let c = parse(Path::new("switchback.toml"), MINIMAL).unwrap();
        assert_eq!(c.admin, None, "the admin listener is off unless configured");
        assert!(
            c.access_log.enabled && c.access_log.path.is_none(),
            "access log to stdout by default"
        );
        assert_eq!(c.access_log.format, AccessLogFormat::Json);
        assert!(c.metrics.enabled);
        let text = format!(
            "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9901\"\n[access_log]\nformat = \"combined\"\npath = \"/tmp/a.log\"\n[metrics]\nenabled = false\n"
        );
        let c = parse(Path::new("switchback.toml"), &text).unwrap();
        assert_eq!(c.admin.unwrap().listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.access_log.format, AccessLogFormat::Combined);
        assert!(!c.metrics.enabled);
        let bad =
            format!("{MINIMAL}\n[admin]\nlisten = \"9901\"\n[access_log]\nformat = \"xml\"\n");
        let p = problems(&bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("admin.listen") && p[1].contains("access_log.format"),
            "{p:?}"
        );
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let p = problems("[listen]\nhttp = [\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("switchback.toml:"), "{p:?}");
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM").unwrap(), "example.com");
        assert_eq!(normalize_host("*.example.com").unwrap(), "*.example.com");
        for bad in ["", "example.com:443", "a..b", "*.", "exa mple.com", "*"] {
            assert!(normalize_host(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
