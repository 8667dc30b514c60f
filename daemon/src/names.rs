//! Backends given by host name (`api-green:8000`, as in a Compose network): looked up at start,
//! when `pool set` names them, and again every `resolver.refresh` (sooner when a record's TTL
//! ends first) while the proxy runs.
//!
//! Lookups go through hickory's stub resolver: `/etc/hosts` first, then the servers of
//! `resolver.nameservers`, or the system's (`/etc/resolv.conf`). Each round builds a resolver
//! of its own, so an edit of either file is seen at the next round and no answer outlives the
//! refresh in a cache. Every address a name yields becomes a backend, health-checked on its
//! own (see [`switchback_proxy::names::Resolved::expand`]).

use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::TokioResolver;
use switchback_config::ResolverConfig;
use switchback_proxy::names::{Answer, Resolved};
use tokio::time::Instant;

/// How long one name may take, over every server and attempt.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The soonest a name is asked again, however short its TTL (a TTL of 0 is common on test and
/// container DNS servers).
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A resolver for one round of lookups, as `config` says.
fn resolver(config: &ResolverConfig) -> TokioResolver {
    let mut builder = if config.nameservers.is_empty() {
        // Without /etc/resolv.conf (a bare container) names can still come from /etc/hosts.
        TokioResolver::builder_tokio().unwrap_or_else(|_| {
            TokioResolver::builder_with_config(
                HickoryConfig::from_name_servers(Vec::new()),
                TokioRuntimeProvider::default(),
            )
        })
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            HickoryConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Always;
    // Both families, IPv4 first: a backend on either is a backend.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    builder.build().unwrap_or_else(|_| {
        TokioResolver::builder_with_config(
            HickoryConfig::from_name_servers(Vec::new()),
            TokioRuntimeProvider::default(),
        )
        .build()
        .expect("a resolver of /etc/hosts alone always builds")
    })
}

/// What one round of lookups found.
#[derive(Debug, Default)]
pub struct Round {
    pub answers: Resolved,
    /// When the soonest of them should be asked again.
    pub next: Duration,
}

/// Looks every host of `hosts` up at once. A lookup that fails for want of an answer (timeout,
/// unreachable server) keeps the addresses `previous` had for the name, with the error; a name
/// the server says has no address gets none.
pub async fn lookup(config: &ResolverConfig, hosts: &[String], previous: &Resolved) -> Round {
    let resolver = resolver(config);
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts {
        let (resolver, host) = (resolver.clone(), host.clone());
        lookups.spawn(async move {
            // An ASCII name is looked up as the labels it is, underscores included, as glibc
            // and Docker's DNS do: Compose names services `flask_server`. hickory's default
            // reading of a &str is IDNA's, which refuses `_` before any query is sent.
            let name = if host.is_ascii() {
                Name::from_ascii(&host)
            } else {
                Name::from_utf8(&host)
            };
            let lookup = async {
                match name {
                    Ok(name) => resolver.lookup_ip(name).await,
                    Err(_) => resolver.lookup_ip(host.as_str()).await,
                }
            };
            let result = tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
                .await
                .map_err(|_| None)
                .and_then(|r| r.map_err(Some));
            (host, result)
        });
    }
    let mut round = Round {
        answers: Resolved::default(),
        next: config.refresh,
    };
    let now = Instant::now();
    while let Some(done) = lookups.join_next().await {
        let Ok((host, result)) = done else { continue };
        let answer = match result {
            Ok(found) => {
                let ttl = found
                    .valid_until()
                    .saturating_duration_since(now.into_std());
                round.next = round.next.min(ttl.max(MIN_REFRESH));
                let mut addrs: Vec<_> = found.iter().collect();
                addrs.dedup();
                Answer { addrs, error: None }
            }
            Err(Some(e)) if e.is_no_records_found() => Answer {
                addrs: Vec::new(),
                error: Some(no_address(&e)),
            },
            Err(e) => Answer {
                addrs: previous
                    .get(&host)
                    .map(|a| a.addrs.clone())
                    .unwrap_or_default(),
                error: Some(match e {
                    Some(e) => format!("lookup failed: {e}"),
                    None => format!(
                        "lookup failed: no answer within {}s",
                        LOOKUP_TIMEOUT.as_secs()
                    ),
                }),
            },
        };
        round.answers.insert(host, answer);
    }
    round
}

fn no_address(e: &NetError) -> String {
    if e.is_nx_domain() {
        "does not resolve: no such name".into()
    } else {
        "does not resolve: the name has no address records".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` is answered by the resolver itself, whatever the servers say (RFC 6761).
    #[tokio::test]
    async fn localhost_resolves_without_a_server() {
        let config = ResolverConfig {
            // Nothing listens here; localhost must not need it.
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            refresh: Duration::from_secs(5),
        };
        let round = lookup(&config, &["localhost".into()], &Resolved::default()).await;
        let answer = round.answers.get("localhost").unwrap();
        assert!(
            answer.addrs.contains(&"127.0.0.1".parse().unwrap()),
            "{answer:?}"
        );
        assert_eq!(answer.error, None);
        assert!(round.next <= config.refresh && round.next >= MIN_REFRESH);
    }

    /// A server that does not answer: the name keeps what it had, and says why. (The clock is
    /// paused: the resolver's timeouts pass as soon as nothing else can happen.)
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_keeps_the_last_addresses() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = ResolverConfig {
            nameservers: vec![silent.local_addr().unwrap()],
            refresh: Duration::from_secs(5),
        };
        let mut previous = Resolved::default();
        previous.insert(
            "api.test".into(),
            Answer {
                addrs: vec!["127.0.0.7".parse().unwrap()],
                error: None,
            },
        );
        let round = lookup(&config, &["api.test".into()], &previous).await;
        let answer = round.answers.get("api.test").unwrap();
        assert_eq!(
            answer.addrs,
            ["127.0.0.7".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            answer
                .error
                .as_deref()
                .unwrap()
                .starts_with("lookup failed"),
            "{answer:?}"
        );
    }
}
