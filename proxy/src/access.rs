//! `[[services.NAME.access]]` at work: the rule for a request's path (the longest
//! `path_prefix` that covers it), then its address lists, its login and its rate, in that
//! order, as nginx checks `allow`/`deny` before `auth_basic` and both before `limit_req`.
//!
//! A service with no rules has no [`Access`] at all, so its requests pay one branch.
//!
//! The state a rule keeps (remembered logins, rate buckets) lives as long as the service's
//! config does not change: a switch keeps it, a reload that changes the service starts anew.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchback_config::{AccessRule, BasicAuth, Cidr, RateKey, RateLimit};

use crate::split::RequestHeaders;

/// Why a request was refused: the label of `switchback_access_denied_total` and of the access
/// log's `denied` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Its address is denied, or not allowed: 403.
    Address,
    /// No login, or a wrong one: 401 with `WWW-Authenticate` for this realm.
    Auth { realm: Box<str> },
    /// Over the rate: 429, with `Retry-After` in whole seconds.
    Rate { retry_after: u64 },
}

impl Denial {
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Address => "deny",
            Denial::Auth { .. } => "auth",
            Denial::Rate { .. } => "rate",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Denial::Address => 403,
            Denial::Auth { .. } => 401,
            Denial::Rate { .. } => 429,
        }
    }

    /// The answer's extra header, if it has one.
    pub fn header(&self) -> Option<(&'static str, String)> {
        match self {
            Denial::Address => None,
            Denial::Auth { realm } => Some((
                "www-authenticate",
                format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            )),
            Denial::Rate { retry_after } => Some(("retry-after", retry_after.to_string())),
        }
    }

    pub fn body(&self) -> &'static [u8] {
        match self {
            Denial::Address => b"forbidden\n",
            Denial::Auth { .. } => b"login required\n",
            Denial::Rate { .. } => b"too many requests: slow down\n",
        }
    }
}

/// What a request that passed carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Passed {
    /// Its `Authorization` header was the rule's login, which the backend does not get.
    pub strip_authorization: bool,
}

/// A service's rules, with their state.
#[derive(Debug)]
pub struct Access {
    /// Longest prefix first, the rule for the whole service (no prefix) last.
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// The prefix as matched (no trailing slash, but for "/"); None: every path.
    prefix: Option<Box<str>>,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    auth: Option<Auth>,
    rate: Option<Limiter>,
}

impl Access {
    /// None for a service without rules.
    pub fn new(rules: &[AccessRule], max_keys: usize) -> Option<Access> {
        if rules.is_empty() {
            return None;
        }
        let rules = rules
            .iter()
            .map(|r| Rule {
                prefix: r.path_prefix.as_deref().map(|p| match_key(p).into()),
                allow: r.allow.clone(),
                deny: r.deny.clone(),
                auth: r.basic_auth.as_ref().map(Auth::new),
                rate: r.rate.as_ref().map(|l| Limiter::new(l, max_keys)),
            })
            .collect();
        Some(Access { rules })
    }

    /// Checks a request for `path` from `client` against the rule that covers its path.
    pub fn check<H: RequestHeaders>(
        &self,
        path: &str,
        client: Option<IpAddr>,
        headers: &H,
        now: Option<Instant>,
    ) -> Result<Passed, Denial> {
        let path = normalize(path);
        let Some(rule) = self.rules.iter().find(|r| match &r.prefix {
            None => true,
            Some(p) => prefix_matches(p, &path),
        }) else {
            return Ok(Passed::default());
        };
        if !rule.deny.is_empty() || !rule.allow.is_empty() {
            // A request whose client is not known (a Unix socket) passes no address rule.
            let Some(ip) = client else {
                return Err(Denial::Address);
            };
            if rule.deny.iter().any(|c| c.contains(ip)) {
                return Err(Denial::Address);
            }
            if !rule.allow.is_empty() && !rule.allow.iter().any(|c| c.contains(ip)) {
                return Err(Denial::Address);
            }
        }
        let mut passed = Passed::default();
        if let Some(auth) = &rule.auth {
            auth.check(headers.first("authorization"))?;
            passed.strip_authorization = !auth.config.pass_authorization;
        }
        if let Some(rate) = &rule.rate {
            rate.take(client, headers, now.unwrap_or_else(Instant::now))?;
        }
        Ok(passed)
    }
}

/// The part of a prefix that matching compares (see `switchback_config`'s rule: `/admin/`
/// covers `/admin` too).
fn match_key(prefix: &str) -> &str {
    match prefix.strip_suffix('/') {
        Some("") | None => prefix,
        Some(p) => p,
    }
}

/// On whole segments: `/admin` covers `/admin`, `/admin/` and `/admin/x`, not `/administrator`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The path as a backend would read it, for matching only (the request goes on as it came):
/// percent-escapes decoded, `.` and `..` segments resolved, repeated slashes folded. Otherwise
/// `/%61dmin/` or `//admin/` or `/x/../admin/` would walk around a rule for `/admin/`.
/// Borrows in the common case of a path with none of these.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    // One pass: no escape, no backslash, no `//` and no `/.`.
    let mut plain = true;
    let mut after_slash = false;
    for &b in bytes {
        if b == b'%' || b == b'\\' || (after_slash && (b == b'/' || b == b'.')) {
            plain = false;
            break;
        }
        after_slash = b == b'/';
    }
    if plain {
        return Cow::Borrowed(path);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        // Some backends take a backslash for a slash.
        decoded.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || text.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// How long a checked login is remembered, right or wrong.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);
/// Logins remembered at most; the memory is forgotten whole when it is full.
const AUTH_CACHE_SIZE: usize = 10_000;

#[derive(Debug)]
struct Auth {
    config: BasicAuth,
    hasher: RandomState,
    /// Keyed by a hash of the file's contents and the header: when it expires, and whether it
    /// was right.
    seen: Mutex<HashMap<u64, (Instant, bool)>>,
}

impl Auth {
    fn new(config: &BasicAuth) -> Auth {
        Auth {
            config: config.clone(),
            hasher: RandomState::new(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, header: Option<&[u8]>) -> Result<(), Denial> {
        let denied = || Denial::Auth {
            realm: self.config.realm.as_str().into(),
        };
        let header = header.ok_or_else(denied)?;
        let key = {
            let mut h = self.hasher.build_hasher();
            self.config.users.generation.hash(&mut h);
            header.hash(&mut h);
            h.finish()
        };
        let now = Instant::now();
        if let Some(&(until, right)) = self.lock().get(&key) {
            if until > now {
                return if right { Ok(()) } else { Err(denied()) };
            }
        }
        let right = credentials(header)
            .is_some_and(|(user, password)| self.config.users.verify(&user, &password));
        let mut seen = self.lock();
        if seen.len() >= AUTH_CACHE_SIZE {
            seen.clear();
        }
        seen.insert(key, (now + AUTH_CACHE_TTL, right));
        if right {
            Ok(())
        } else {
            Err(denied())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, bool)>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The longest login header checked: SHA-crypt's cost grows with the password's length, so a
/// client could otherwise buy seconds of a worker's time with one long password. bcrypt reads
/// 72 bytes at most anyway.
const MAX_CREDENTIALS: usize = 1024;

/// The user and password of a `Basic` Authorization header.
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    if header.len() > MAX_CREDENTIALS {
        return None;
    }
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

/// A hasher that passes a `u64` through: for keys that are keyed hashes already.
#[derive(Debug, Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A token bucket per key, kept as the time its bucket will be full again (GCRA): one word a
/// key.
#[derive(Debug)]
struct Limiter {
    by: RateKey,
    /// Nanoseconds between two requests at the rate.
    interval: u64,
    /// How far ahead of now a key's time may run: the burst.
    tolerance: u64,
    max_keys: usize,
    epoch: Instant,
    /// Keys the hash of header values (SipHash) ...
    hasher: RandomState,
    /// ... and of addresses (a folded multiply, as foldhash's: a few instructions).
    seeds: [u64; 2],
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Key hash → when its bucket is full again, in nanoseconds since `epoch`. The keys are
    /// keyed hashes already, so the map uses them as they are.
    full_at: HashMap<u64, u64, BuildHasherDefault<Identity>>,
    /// Keys in the order they came, for forgetting the oldest.
    order: VecDeque<u64>,
}

impl Limiter {
    fn new(config: &RateLimit, max_keys: usize) -> Limiter {
        let interval = (1e9 / config.per_second).round().max(1.0) as u64;
        Limiter {
            by: config.by.clone(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
            max_keys: max_keys.max(1),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            seeds: {
                let random = RandomState::new();
                [random.hash_one(1u8), random.hash_one(2u8) | 1]
            },
            buckets: Mutex::default(),
        }
    }

    fn take<H: RequestHeaders>(
        &self,
        client: Option<IpAddr>,
        headers: &H,
        now: Instant,
    ) -> Result<(), Denial> {
        let header = match &self.by {
            RateKey::Header(name) => headers.first(name),
            RateKey::Ip => None,
        };
        let fold = |x: u64, seed: u64| {
            let full = u128::from(x ^ self.seeds[0]) * u128::from(seed);
            (full as u64) ^ ((full >> 64) as u64)
        };
        // Tagged, so that no header value hashes as an address does.
        let key = match (header, client) {
            (Some(value), _) => {
                let mut h = self.hasher.build_hasher();
                h.write(value);
                h.finish().rotate_left(1) | 1
            }
            (None, Some(IpAddr::V4(ip))) => fold(u64::from(ip.to_bits()), self.seeds[1]) & !1,
            (None, Some(IpAddr::V6(ip))) => {
                let bits = ip.to_bits();
                fold(
                    fold(bits as u64, self.seeds[1]) ^ (bits >> 64) as u64,
                    self.seeds[1],
                ) & !1
            }
            // No address (a Unix socket) and no header: one bucket for all such requests.
            (None, None) => 0,
        };
        self.take_key(key, now)
    }

    fn take_key(&self, key: u64, now: Instant) -> Result<(), Denial> {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Buckets { full_at, order } = &mut *buckets;
        match full_at.get_mut(&key) {
            Some(at) => {
                let start = (*at).max(now);
                if start - now > self.tolerance {
                    let wait = start - now - self.tolerance;
                    return Err(Denial::Rate {
                        retry_after: wait.div_ceil(1_000_000_000).max(1),
                    });
                }
                *at = start + self.interval;
            }
            None => {
                while full_at.len() >= self.max_keys {
                    match order.pop_front() {
                        Some(old) => {
                            full_at.remove(&old);
                        }
                        None => break,
                    }
                }
                full_at.insert(key, now + self.interval);
                order.push_back(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use std::path::Path;
    use switchback_config::htpasswd::Htpasswd;

    fn rule(prefix: Option<&str>) -> AccessRule {
        AccessRule {
            path_prefix: prefix.map(str::to_string),
            allow: Vec::new(),
            deny: Vec::new(),
            basic_auth: None,
            rate: None,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_comes_first_then_allow_and_the_longest_prefix_decides() {
        let mut admin = rule(Some("/admin/"));
        admin.allow = vec!["10.0.0.0/8".parse().unwrap()];
        admin.deny = vec!["10.9.0.0/16".parse().unwrap()];
        let mut open = rule(Some("/admin/public"));
        open.deny = vec!["192.0.2.0/24".parse().unwrap()];
        let access = Access::new(&[open, admin], 10).unwrap();
        let h = HeaderMap::new();
        let check = |path: &str, client: &str| access.check(path, ip(client), &h, None);
        assert_eq!(check("/admin/x", "10.1.2.3"), Ok(Passed::default()));
        assert_eq!(check("/admin", "10.1.2.3"), Ok(Passed::default()));
        assert_eq!(check("/admin/x", "10.9.2.3"), Err(Denial::Address));
        assert_eq!(check("/admin/x", "203.0.113.1"), Err(Denial::Address));
        assert_eq!(check("/admin", "203.0.113.1"), Err(Denial::Address));
        // The longer prefix has its own rule, which allows everyone it does not deny.
        assert_eq!(
            check("/admin/public/a", "203.0.113.1"),
            Ok(Passed::default())
        );
        assert_eq!(check("/admin/public/a", "192.0.2.1"), Err(Denial::Address));
        // Not under the prefix: no rule.
        assert_eq!(
            check("/administrator", "203.0.113.1"),
            Ok(Passed::default())
        );
        assert_eq!(check("/", "203.0.113.1"), Ok(Passed::default()));
        // Spellings a backend reads as /admin/ meet the rule too.
        for path in [
            "/%61dmin/x",
            "//admin/x",
            "/x/../admin/",
            "/./admin",
            "/admin%2Fx",
        ] {
            assert_eq!(check(path, "203.0.113.1"), Err(Denial::Address), "{path}");
        }
        // No client address: no address rule passes.
        assert_eq!(
            access.check("/admin/", None, &h, None),
            Err(Denial::Address)
        );
    }

    #[test]
    fn paths_are_normalized_for_matching() {
        assert_eq!(normalize("/a/b?x"), "/a/b?x");
        assert_eq!(normalize("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(normalize("/%2e%2e/%2e%2e/etc"), "/etc");
        assert_eq!(normalize("/a%zz"), "/a%zz");
        assert_eq!(normalize("/a%"), "/a%");
        assert_eq!(normalize("/.."), "/");
        assert_eq!(normalize("\\admin"), "/admin");
    }

    impl Access {
        fn check_at<H: RequestHeaders>(
            &self,
            path: &str,
            client: Option<IpAddr>,
            headers: &H,
        ) -> Result<Passed, Denial> {
            self.check(path, client, headers, None)
        }
    }

    fn users() -> Htpasswd {
        Htpasswd::parse(
            Path::new("users"),
            "bob:$2y$04$oNaRnAmvhQSfY010Whl6hO7DiDA7SW2dHCTIeYxtQXkgi4xVWXO9e\n",
        )
        .unwrap()
    }

    fn basic(user_password: &str) -> HeaderMap {
        use base64::Engine;
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(user_password);
        h.insert("authorization", format!("Basic {token}").parse().unwrap());
        h
    }

    #[test]
    fn logins_are_checked_and_remembered() {
        let mut r = rule(None);
        r.basic_auth = Some(BasicAuth {
            realm: "admin".into(),
            users: users(),
            pass_authorization: false,
        });
        let access = Access::new(&[r], 10).unwrap();
        let denied = Err(Denial::Auth {
            realm: "admin".into(),
        });
        let client = ip("192.0.2.1");
        assert_eq!(access.check_at("/", client, &HeaderMap::new()), denied);
        assert_eq!(access.check_at("/", client, &basic("bob:wrong")), denied);
        assert_eq!(access.check_at("/", client, &basic("eve:hunter2")), denied);
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(access.check_at("/", client, &bearer), denied);
        let long = format!("bob:{}", "x".repeat(2000));
        assert_eq!(access.check_at("/", client, &basic(&long)), denied);
        let right = Ok(Passed {
            strip_authorization: true,
        });
        assert_eq!(access.check_at("/", client, &basic("bob:hunter2")), right);
        // Remembered: the second check is a lookup.
        assert_eq!(access.rules[0].auth.as_ref().unwrap().lock().len(), 5);
        assert_eq!(access.check_at("/", client, &basic("bob:hunter2")), right);
        assert_eq!(access.check_at("/", client, &basic("bob:wrong")), denied);
        let header = Denial::Auth {
            realm: "admin".into(),
        }
        .header()
        .unwrap();
        assert_eq!(
            header,
            (
                "www-authenticate",
                "Basic realm=\"admin\", charset=\"UTF-8\"".into()
            )
        );
    }

    fn limiter(per_second: f64, burst: u32, max_keys: usize) -> Limiter {
        Limiter::new(
            &RateLimit {
                limit: String::new(),
                per_second,
                burst,
                by: RateKey::Ip,
            },
            max_keys,
        )
    }

    #[test]
    fn the_bucket_lets_the_burst_through_then_the_rate() {
        let l = limiter(5.0, 10, 100);
        let t0 = l.epoch + Duration::from_secs(1);
        // At one instant: one at the rate, and the burst of 10 beyond it.
        let passed = (0..50).filter(|_| l.take_key(7, t0).is_ok()).count();
        assert_eq!(passed, 11);
        assert_eq!(l.take_key(7, t0), Err(Denial::Rate { retry_after: 1 }));
        // Then one every 200 ms.
        assert!(l.take_key(7, t0 + Duration::from_millis(199)).is_err());
        assert!(l.take_key(7, t0 + Duration::from_millis(201)).is_ok());
        assert!(l.take_key(7, t0 + Duration::from_millis(202)).is_err());
        // Another key has its own bucket.
        assert!(l.take_key(8, t0).is_ok());
        // A slow rate tells how long to wait, in whole seconds.
        let slow = limiter(1.0 / 60.0, 0, 100);
        let t = slow.epoch;
        assert!(slow.take_key(1, t).is_ok());
        assert_eq!(slow.take_key(1, t), Err(Denial::Rate { retry_after: 60 }));
    }

    #[test]
    fn the_oldest_key_is_forgotten_when_the_limit_is_reached() {
        let l = limiter(1.0, 0, 3);
        let t = l.epoch;
        for key in 1..=3 {
            assert!(l.take_key(key, t).is_ok());
            assert!(l.take_key(key, t).is_err());
        }
        assert!(l.take_key(4, t).is_ok());
        let buckets = l.buckets.lock().unwrap();
        assert_eq!(buckets.full_at.len(), 3);
        assert!(!buckets.full_at.contains_key(&1));
        drop(buckets);
        // Forgotten: its bucket starts full again.
        assert!(l.take_key(1, t).is_ok());
        assert!(l.take_key(2, t).is_ok());
    }

    #[test]
    fn a_rate_by_header_counts_each_value_and_falls_back_to_the_address() {
        let l = Limiter::new(
            &RateLimit {
                limit: String::new(),
                per_second: 1.0,
                burst: 0,
                by: RateKey::Header("x-api-key".into()),
            },
            100,
        );
        let now = Instant::now();
        let key = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", k.parse().unwrap());
            h
        };
        let client = ip("192.0.2.1");
        assert!(l.take(client, &key("a"), now).is_ok());
        assert!(l.take(client, &key("a"), now).is_err());
        assert!(l.take(client, &key("b"), now).is_ok());
        assert!(l.take(client, &HeaderMap::new(), now).is_ok());
        assert!(l.take(client, &HeaderMap::new(), now).is_err());
        assert!(l.take(ip("192.0.2.2"), &HeaderMap::new(), now).is_ok());
    }
}
