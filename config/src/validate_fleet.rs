//! The fleet part of validation: `[fleet]`, the etcd cluster several proxies share their
//! desired state through.

use std::path::PathBuf;

use crate::model::*;
use crate::schema::*;
use crate::validate::Validator;

/// The longest node name: one DNS label, as a host name's first part is.
const MAX_NODE_NAME: usize = 63;

/// Whether `name` can name a node: it is a key part in etcd and a metrics label.
fn node_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// This machine's host name, the default node name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

/// Checks an etcd endpoint as etcdctl takes it: `http://host:port` or `https://host:port`.
fn endpoint_problem(url: &str) -> Option<String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Some(format!(
            "{url:?} is not an endpoint URL: write http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port = rest
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !rest.contains('/') => None,
        _ => Some(format!(
            "{url:?} needs a host and a port, and no path (etcd's client port is usually 2379)"
        )),
    }
}

impl Validator<'_> {
    pub(crate) fn fleet(&mut self, raw: Option<&S<RawFleet>>) -> Option<FleetConfig> {
        let section = raw?;
        let raw = section.get_ref();
        let mut etcd: Vec<String> = Vec::new();
        if raw.etcd.get_ref().is_empty() {
            self.problem(
                raw.etcd.span(),
                "fleet.etcd",
                "is empty: list the etcd endpoints, as [\"http://127.0.0.1:2379\"]",
            );
        }
        for url in raw.etcd.get_ref() {
            let text = url.get_ref().trim().trim_end_matches('/').to_string();
            if let Some(problem) = endpoint_problem(&text) {
                self.problem(url.span(), "fleet.etcd", problem);
            } else if etcd.contains(&text) {
                self.problem(url.span(), "fleet.etcd", format!("{text} is listed twice"));
            } else {
                etcd.push(text);
            }
        }
        let prefix = match &raw.prefix {
            None => defaults::FLEET_PREFIX.to_string(),
            Some(p) => {
                let text = p.get_ref().trim().trim_end_matches('/');
                if !text.starts_with('/') || text.chars().any(char::is_whitespace) {
                    self.problem(
                        p.span(),
                        "fleet.prefix",
                        format!(
                            "{:?} must start with / and have no spaces, as \"/switchback\"",
                            p.get_ref()
                        ),
                    );
                }
                text.to_string()
            }
        };
        let node = match &raw.node {
            Some(n) => {
                let name = n.get_ref().trim();
                if !node_name_ok(name) {
                    self.problem(
                        n.span(),
                        "fleet.node",
                        format!("{name:?} cannot name a node: use 1 to {MAX_NODE_NAME} letters, digits, '-', '_' or '.'"),
                    );
                }
                name.to_string()
            }
            None => match host_name() {
                Some(name) if node_name_ok(&name) => name,
                other => {
                    self.problem(
                        section.span(),
                        "fleet.node",
                        format!(
                            "the host name {:?} cannot name a node: set fleet.node",
                            other.unwrap_or_default()
                        ),
                    );
                    String::new()
                }
            },
        };
        let ack_timeout = self.duration(
            &raw.ack_timeout,
            "fleet.ack_timeout",
            defaults::FLEET_ACK_TIMEOUT,
        );
        let tls = etcd.iter().any(|u| u.starts_with("https://"));
        let path = |v: &Option<S<String>>| v.as_ref().map(|p| PathBuf::from(p.get_ref().trim()));
        for (value, key) in [(&raw.ca, "fleet.ca"), (&raw.cert, "fleet.cert")] {
            if let (Some(v), false) = (value, tls) {
                self.problem(
                    v.span(),
                    key,
                    "the etcd endpoints are http://: TLS settings need https:// endpoints",
                );
            }
        }
        let client_cert = match (path(&raw.cert), path(&raw.key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let span = raw.cert.as_ref().or(raw.key.as_ref()).map(|v| v.span());
                self.problem(
                    span.unwrap_or(section.span()),
                    "fleet.cert",
                    "give both cert and key, or neither",
                );
                None
            }
        };
        let user = match (&raw.username, path(&raw.password_file)) {
            (Some(user), Some(file)) => Some((user.get_ref().trim().to_string(), file)),
            (None, None) => None,
            (Some(v), None) => {
                self.problem(
                    v.span(),
                    "fleet.password_file",
                    "a username needs a password_file (mode 0600) that holds its password",
                );
                None
            }
            (None, Some(_)) => {
                let span = raw.password_file.as_ref().map(|v| v.span());
                self.problem(
                    span.unwrap_or(section.span()),
                    "fleet.username",
                    "a password_file needs the username it is for",
                );
                None
            }
        };
        let key_file = match path(&raw.key_file) {
            Some(file) => file,
            None => {
                self.problem(
                    section.span(),
                    "fleet.key_file",
                    "is required: a file (mode 0600) of at least 32 random bytes, the same on every node (head -c 32 /dev/urandom > FILE); the nodes sign canary cookies with it, so a client keeps its pool from node to node",
                );
                PathBuf::new()
            }
        };
        Some(FleetConfig {
            key_file,
            etcd,
            prefix,
            node,
            ack_timeout,
            ca: path(&raw.ca),
            client_cert,
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::validate::parse;

    const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s\"\n[state]\ndir = \"/tmp/d\"\n";

    fn check(extra: &str) -> Result<crate::model::Config, Vec<String>> {
        parse(Path::new("t.toml"), &format!("{BASE}{extra}"))
            .map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    #[test]
    fn without_a_fleet_section_there_is_no_fleet() {
        assert_eq!(check("").unwrap().fleet, None);
    }

    #[test]
    fn a_fleet_takes_defaults_for_what_it_does_not_say() {
        let c = check(
            "[fleet]\netcd = [\"http://127.0.0.1:2379/\"]\nnode = \"edge-1\"\nkey_file = \"/k\"\n",
        )
        .unwrap();
        let fleet = c.fleet.unwrap();
        assert_eq!(fleet.etcd, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(fleet.prefix, "/switchback");
        assert_eq!(fleet.node, "edge-1");
        assert_eq!(fleet.ack_timeout, Duration::from_secs(5));
        assert_eq!(
            (fleet.ca, fleet.client_cert, fleet.user),
            (None, None, None)
        );
    }

    #[test]
    fn the_node_name_defaults_to_the_host_name() {
        let c = check("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nkey_file = \"/k\"\n").unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(c.fleet.unwrap().node, host.trim());
    }

    #[test]
    fn tls_and_credentials_are_taken_in_pairs() {
        let c = check("[fleet]\netcd = [\"https://etcd.internal:2379\"]\nnode = \"a\"\nprefix = \"/prod/edge/\"\nack_timeout = \"2s\"\nca = \"/etc/etcd/ca.pem\"\ncert = \"/etc/etcd/c.pem\"\nkey = \"/etc/etcd/c.key\"\nusername = \"edge\"\npassword_file = \"/etc/switchback/etcd.pass\"\nkey_file = \"/etc/switchback/fleet.key\"\n").unwrap();
        let fleet = c.fleet.unwrap();
        assert_eq!(fleet.prefix, "/prod/edge");
        assert_eq!(fleet.ack_timeout, Duration::from_secs(2));
        assert!(fleet.ca.is_some() && fleet.client_cert.is_some());
        assert_eq!(fleet.user.unwrap().0, "edge");
    }

    #[test]
    fn bad_fleet_settings_are_named_with_their_line() {
        let problems = check("[fleet]\netcd = [\"127.0.0.1:2379\", \"http://a:2379\", \"http://a:2379\", \"http://b\"]\nprefix = \"switchback\"\nnode = \"edge 1\"\nack_timeout = \"0s\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nusername = \"u\"\nkey_file = \"/k\"\n").unwrap_err();
        let expect = [
            ("t.toml:8: fleet.etcd", "not an endpoint URL"),
            ("t.toml:8: fleet.etcd", "listed twice"),
            ("t.toml:8: fleet.etcd", "needs a host and a port"),
            ("t.toml:9: fleet.prefix", "must start with /"),
            ("t.toml:10: fleet.node", "cannot name a node"),
            ("t.toml:11: fleet.ack_timeout", "more than zero"),
            ("t.toml:12: fleet.ca", "need https:// endpoints"),
            ("t.toml:13: fleet.cert", "need https:// endpoints"),
            ("t.toml:13: fleet.cert", "both cert and key"),
            ("t.toml:14: fleet.password_file", "needs a password_file"),
        ];
        for (at, what) in expect {
            assert!(
                problems.iter().any(|p| p.contains(at) && p.contains(what)),
                "no {at} … {what} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        let empty = check("[fleet]\netcd = []\nnode = \"a\"\n").unwrap_err();
        assert!(
            empty
                .iter()
                .any(|p| p.contains("fleet.etcd") && p.contains("is empty")),
            "{empty:?}"
        );
        assert!(
            empty
                .iter()
                .any(|p| p.contains("t.toml:7: fleet.key_file") && p.contains("is required")),
            "{empty:?}"
        );
    }
}
