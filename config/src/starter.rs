//! The starter config `switchback init` writes: one service, its host names, a blue pool with
//! the app's backends and a green pool for the next deploy, TLS by ACME unless turned off, and
//! the common keys a newcomer looks for next, commented out, each with what it does.
//!
//! It is text built here rather than a serialized [`crate::Config`], because the comments are
//! the point: the file is where a new user learns the config. The text is checked by
//! [`crate::parse`] before anyone writes it.

use std::fmt::Write;

/// What `switchback init` was told.
#[derive(Debug, Clone)]
pub struct Starter {
    /// The service's name (`services.NAME`).
    pub service: String,
    /// The host names the service answers for.
    pub hosts: Vec<String>,
    /// The backends of the blue pool, which serves first.
    pub blue: Vec<String>,
    /// The backends of the green pool; empty until the next deploy's `pool set`.
    pub green: Vec<String>,
    /// Certificates by ACME (Let's Encrypt unless `acme.directory` says otherwise).
    pub acme: bool,
    /// The ACME account's contact address.
    pub acme_email: Option<String>,
    /// The plain-HTTP listen address.
    pub http: String,
    /// The HTTPS listen address (with ACME only).
    pub https: String,
    /// The control socket.
    pub socket: String,
    /// The state directory.
    pub state_dir: String,
}

impl Starter {
    /// The defaults of a packaged install: ports 80 and 443 on every IPv4 address, the socket
    /// under systemd's `RuntimeDirectory` and the state under its `StateDirectory`.
    pub fn new(hosts: Vec<String>, blue: Vec<String>) -> Starter {
        Starter {
            service: "app".into(),
            hosts,
            blue,
            green: Vec::new(),
            acme: true,
            acme_email: None,
            http: "0.0.0.0:80".into(),
            https: "0.0.0.0:443".into(),
            socket: "/run/switchback/control.sock".into(),
            state_dir: "/var/lib/switchback".into(),
        }
    }

    /// The config file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "# switchback's config, written by `switchback init`. Every key is in the README's\n\
             # table of keys. After an edit, `switchback check` validates the file, and\n\
             # `systemctl reload switchback` (or `switchback reload`) applies it without dropping\n\
             # a connection.\n\n\
             [listen]\n\
             http = [{}]\n",
            quote(&self.http)
        );
        if self.acme {
            let _ = writeln!(s, "https = [{}]", quote(&self.https));
        }
        let _ = write!(
            s,
            "\n[control]\n\
             # The CLI talks to the proxy through this socket. It is mode 0600: root and the\n\
             # proxy's own user may use it; `mode = \"0660\"` with `group` lets a deploy user in.\n\
             socket = {}\n\n\
             [state]\n\
             # The live state (active pool, canary, pool changes), certificates and keys.\n\
             dir = {}\n",
            quote(&self.socket),
            quote(&self.state_dir)
        );
        if self.acme {
            s.push_str(
                "\n[acme]\n\
                 # Let's Encrypt by default. It must reach this host on port 80 for every name\n\
                 # below. `staging = true` uses its staging CA while you try things out.\n",
            );
            match &self.acme_email {
                Some(email) => {
                    let _ = writeln!(s, "email = {}", quote(email));
                }
                None => s.push_str(
                    "# email = \"ops@example.com\"    # where the CA writes about expiring certificates\n",
                ),
            }
        }
        let _ = write!(
            s,
            "\n[services.{}]\n\
             hosts = [{}]\n",
            self.service,
            list(&self.hosts)
        );
        if self.acme {
            s.push_str(
                "# A certificate per host, ordered and renewed by ACME; plain HTTP is redirected to\n\
                 # HTTPS (but for the ACME challenge), and HTTPS answers carry HSTS.\n\
                 tls = \"acme\"\n",
            );
        }
        let _ = write!(
            s,
            "# New requests go to the active pool. A deploy fills the other pool and switches:\n\
             #   switchback pool set green 127.0.0.1:8001 && switchback switch green\n\
             active = \"blue\"\n\
             pools.blue = [{}]\n\
             pools.green = [{}]\n\
             # A backend is taken out after 3 failed checks in a row and back after 2 passes.\n\
             health = {{ path = \"/\", interval = \"2s\", timeout = \"1s\" }}\n\
             # max_request_body = \"100m\"      # the largest upload (413 above it)\n\
             # compress = [\"br\", \"gzip\"]      # compress text answers the backend sends plain\n\
             # drain_timeout = \"30s\"          # how long the old pool keeps its requests after a switch\n\
             \n\
             # Prometheus metrics, /healthz and /readyz. Keep it on loopback or a private address.\n\
             # [admin]\n\
             # listen = \"127.0.0.1:9180\"\n\
             \n\
             # One JSON line per request, on stdout (the journal) unless a path is given.\n\
             # [access_log]\n\
             # path = \"/var/log/switchback/access.log\"\n",
            list(&self.blue),
            list(&self.green)
        );
        s
    }
}

/// A TOML basic string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| quote(v))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parsed(starter: &Starter) -> crate::Config {
        let text = starter.render();
        crate::parse(Path::new("switchback.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_acme_starter_is_a_valid_config_with_what_was_asked() {
        let mut starter = Starter::new(
            vec!["app.example.com".into(), "www.example.com".into()],
            vec!["127.0.0.1:8000".into()],
        );
        starter.acme_email = Some("ops@example.com".into());
        let config = parsed(&starter);
        let app = config.service("app").unwrap();
        assert_eq!(app.hosts, vec!["app.example.com", "www.example.com"]);
        assert_eq!(config.acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(config.listen.https.len(), 1);
        assert_eq!(
            config.control.socket,
            Path::new("/run/switchback/control.sock")
        );
    }

    #[test]
    fn the_plain_starter_has_no_tls_and_may_fill_green() {
        let mut starter = Starter::new(vec!["localhost".into()], vec!["127.0.0.1:8000".into()]);
        starter.acme = false;
        starter.green = vec!["127.0.0.1:8001".into()];
        starter.http = "127.0.0.1:8080".into();
        let config = parsed(&starter);
        assert!(config.listen.https.is_empty());
        let green = &config.service("app").unwrap().pools[1];
        assert_eq!((green.name.as_str(), green.backends.len()), ("green", 1));
    }

    #[test]
    fn values_are_quoted_so_they_cannot_add_keys() {
        let mut starter = Starter::new(
            vec!["a\"\nactive = \"green".into()],
            vec!["127.0.0.1:8000".into()],
        );
        starter.acme = false;
        let text = starter.render();
        let config = crate::parse(Path::new("x.toml"), &text);
        // The host is refused as a host name; what matters is that it stayed one value.
        let raw: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(raw["services"]["app"]["active"].as_str(), Some("blue"));
        assert!(config.is_err());
    }
}
