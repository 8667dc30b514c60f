//! The split: which pool of a service each client's request goes to.
//!
//! Every client has a bucket, 0 to 999, that does not change while it keeps its identity: a
//! cookie the proxy sets (a new client draws a random bucket), or a hash of a request header or
//! of the client address. A client is on the canary when its bucket is below the canary weight
//! in thousandths. So a split holds for as long as the weight does, raising the weight only
//! moves clients from stable to canary, and lowering it only moves them back.
//!
//! Testers can force a pool with a request header or cookie (`green`, or `green:SECRET` when
//! the service sets a secret); an override naming an unknown pool is ignored.
//!
//! This module depends on nothing else in the crate: the routing table holds a [`Split`] per
//! service and asks [`choose`] where a request goes.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use switchback_config::{CanaryConfig, Sticky};

/// Buckets per client population: weights have one decimal of a percent.
pub const BUCKETS: u32 = 1000;

/// The live canary of a service, as the request path reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canary {
    /// Index into the service's pools.
    pub pool: usize,
    /// 1 to 1000.
    pub permille: u32,
}

impl Canary {
    #[inline]
    pub fn takes(&self, bucket: u32) -> bool {
        bucket < self.permille
    }
}

/// How one table generation splits a service's requests between its pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Index of the pool new requests go to.
    pub active: usize,
    /// A share of clients sent to another pool than the active one.
    pub canary: Option<Canary>,
    /// Whether a request may force its pool (an override header or cookie is configured).
    pub overridable: bool,
}

impl Split {
    /// Whether a request's headers or address can change its pool; when not, every request
    /// goes to the active pool without a look at them.
    #[inline]
    pub fn looks_at_requests(&self) -> bool {
        self.canary.is_some() || self.overridable
    }

    /// The share of new requests (0 to 1) pool `index` gets, overrides aside.
    pub fn traffic_ratio(&self, index: usize) -> f64 {
        let canary = self
            .canary
            .map_or(0.0, |c| c.permille as f64 / BUCKETS as f64);
        match self.canary {
            Some(c) if c.pool == index => canary,
            _ if index == self.active => 1.0 - canary,
            _ => 0.0,
        }
    }
}

/// How a request may force its pool, parsed once per table build so that a request pays no
/// header-name parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub header: Option<HeaderName>,
    pub cookie: Option<Box<str>>,
    /// When set, an override must say `POOL:SECRET`.
    pub secret: Option<Box<str>>,
}

impl Overrides {
    pub fn from_config(config: &CanaryConfig) -> Overrides {
        Overrides {
            header: config
                .override_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            cookie: config.override_cookie.as_deref().map(Into::into),
            secret: config.override_secret.as_deref().map(Into::into),
        }
    }

    /// Whether any override is on.
    pub fn any(&self) -> bool {
        self.header.is_some() || self.cookie.is_some()
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into the service's pools.
    pub pool: usize,
    /// A bucket drawn for a client without one, to hand back in the sticky cookie.
    pub new_bucket: Option<u32>,
    /// The request named its pool with an override.
    pub forced: bool,
    /// The request carried the override header (valid or not): it must not reach the backend.
    pub override_header_seen: bool,
    /// The request carried the override cookie (valid or not): it must not reach the backend.
    pub override_cookie_seen: bool,
}

/// Picks the pool of one request: an override when the request carries a valid one (naming a
/// pool `pool_index` knows), else the canary when the client's bucket falls in it, else the
/// active pool.
pub fn choose(
    split: &Split,
    overrides: &Overrides,
    sticky: &Sticky,
    pool_index: impl Fn(&str) -> Option<usize>,
    headers: &impl RequestHeaders,
    client: Option<IpAddr>,
    signer: &BucketSigner,
) -> Choice {
    let mut choice = Choice {
        pool: split.active,
        new_bucket: None,
        forced: false,
        override_header_seen: false,
        override_cookie_seen: false,
    };
    if split.overridable {
        let secret = overrides.secret.as_deref();
        let header = overrides
            .header
            .as_ref()
            .and_then(|h| headers.first(h.as_str()));
        let cookie_value = overrides.cookie.as_deref().and_then(|c| cookie(headers, c));
        choice.override_header_seen = header.is_some();
        choice.override_cookie_seen = cookie_value.is_some();
        let named = header
            .and_then(|v| override_pool(std::str::from_utf8(v).ok()?, secret))
            .or_else(|| override_pool(cookie_value?, secret));
        if let Some(index) = named.and_then(&pool_index) {
            choice.pool = index;
            choice.forced = true;
            return choice;
        }
    }
    let Some(canary) = split.canary else {
        return choice;
    };
    let by_address = || client.map_or_else(random_bucket, bucket_of_ip);
    let bucket = match sticky {
        Sticky::Cookie(name) => match cookie(headers, name).and_then(|v| signer.verify(v)) {
            Some(b) => b,
            None => {
                let b = random_bucket();
                choice.new_bucket = Some(b);
                b
            }
        },
        Sticky::Header(name) => headers
            .first(name.as_str())
            .map_or_else(by_address, bucket_of),
        Sticky::Ip => by_address(),
    };
    if canary.takes(bucket) {
        choice.pool = canary.pool;
    }
    choice
}

/// A stable bucket for some identifying bytes (a header value, an address): the same bytes
/// give the same bucket in every process and after every restart.
pub fn bucket_of(bytes: &[u8]) -> u32 {
    // FNV-1a, then the splitmix64 finalizer so that neighbouring inputs spread out.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % BUCKETS as u64) as u32
}

pub fn bucket_of_ip(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => bucket_of(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => bucket_of(&v4.octets()),
            None => bucket_of(&v6.octets()),
        },
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
    );
}

/// A random bucket for a client seen for the first time.
pub fn random_bucket() -> u32 {
    RNG.with(|state| {
        // xorshift64*: plenty for spreading clients, and no lock or syscall.
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % BUCKETS as u64) as u32
    })
}

/// Signs the bucket cookie, so that a client cannot choose its own bucket: the value is
/// `BUCKET.TAG`, TAG the first 16 bytes of HMAC-SHA256(key, BUCKET) in hex. A value that does
/// not verify (forged, unsigned, from another key) counts as no cookie: a fresh draw. With 1000
/// buckets every value is computed once, so the request path compares strings and never hashes.
pub struct BucketSigner {
    values: Box<[Box<str>]>,
}

impl BucketSigner {
    pub fn new(key: &[u8]) -> BucketSigner {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let values = (0..BUCKETS)
            .map(|bucket| {
                let text = bucket.to_string();
                let tag = ring::hmac::sign(&key, text.as_bytes());
                let mut value = String::with_capacity(text.len() + 33);
                value.push_str(&text);
                value.push('.');
                for b in &tag.as_ref()[..16] {
                    value.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
                    value.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
                }
                value.into_boxed_str()
            })
            .collect();
        BucketSigner { values }
    }

    /// A signer with a random key of its own (a process that keeps no state dir, tests).
    pub fn random() -> BucketSigner {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("the system's random source");
        BucketSigner::new(&key)
    }

    /// The signed cookie value of `bucket`.
    pub fn value(&self, bucket: u32) -> &str {
        &self.values[bucket as usize % self.values.len()]
    }

    /// The bucket of a signed value, or None when the value is not one this key signed.
    pub fn verify(&self, value: &str) -> Option<u32> {
        let (bucket, _) = value.split_once('.')?;
        let bucket = parse_bucket(bucket)?;
        constant_time_eq(value.as_bytes(), self.value(bucket).as_bytes()).then_some(bucket)
    }
}

impl std::fmt::Debug for BucketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BucketSigner")
    }
}

/// A bucket number as the sticky cookie carries it, before its tag.
pub fn parse_bucket(value: &str) -> Option<u32> {
    if value.is_empty() || value.len() > 3 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| *b < BUCKETS)
}

/// What the split reads of a request's headers, whichever transport parsed them: pingora's
/// header map, or the HTTP/1 path's parse of the head in place.
pub trait RequestHeaders {
    /// The first value of the header `name` (lowercase).
    fn first(&self, name: &str) -> Option<&[u8]>;
    /// Every Cookie header's value, in order.
    fn cookies(&self) -> impl Iterator<Item = &[u8]>;
}

impl RequestHeaders for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a impl RequestHeaders, name: &str) -> Option<&'a str> {
    headers
        .cookies()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The pool an override value names: `POOL`, or `POOL:SECRET` when a secret is required.
pub fn override_pool<'a>(value: &'a str, secret: Option<&str>) -> Option<&'a str> {
    let value = value.trim();
    match secret {
        None => Some(value).filter(|v| !v.is_empty() && !v.contains(':')),
        Some(secret) => {
            let (pool, given) = value.split_once(':')?;
            constant_time_eq(given.as_bytes(), secret.as_bytes()).then_some(pool)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's Cookie headers without cookie `name`, as one header value; None when nothing
/// is left.
pub fn cookies_without(headers: &impl RequestHeaders, name: &str) -> Option<String> {
    let kept: Vec<&str> = headers
        .cookies()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Writes the Set-Cookie value that keeps a bucket (`value`, signed by
/// [`BucketSigner::value`]) for a client: a month, every path, not readable by scripts. The
/// HTTP/1 path writes it straight into the answer head, with no allocation of its own.
pub fn write_sticky_cookie(out: &mut Vec<u8>, name: &str, value: &str, secure: bool) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax");
    if secure {
        out.extend_from_slice(b"; Secure");
    }
}

/// [`write_sticky_cookie`]'s value on its own.
pub fn sticky_cookie(name: &str, value: &str, secure: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + value.len() + 64);
    write_sticky_cookie(&mut v, name, value, secure);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_buckets_are_stable_and_spread_evenly() {
        assert_eq!(bucket_of(b"user-42"), bucket_of(b"user-42"));
        let mut per_tenth = [0u32; 10];
        for i in 0..100_000u32 {
            per_tenth[(bucket_of(format!("user-{i}").as_bytes()) / 100) as usize] += 1;
        }
        for n in per_tenth {
            assert!((9_500..10_500).contains(&n), "{per_tenth:?}");
        }
        let mut hit = 0;
        for i in 0..20_000u32 {
            let ip = IpAddr::from([127, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            hit += (bucket_of_ip(ip) < 100) as u32;
        }
        assert!((1_800..2_200).contains(&hit), "{hit} of 20000 at 10%");
    }

    #[test]
    fn random_buckets_cover_the_range() {
        let mut seen = [false; BUCKETS as usize];
        let mut low = 0;
        for _ in 0..50_000 {
            let b = random_bucket();
            seen[b as usize] = true;
            low += (b < 100) as u32;
        }
        assert!(seen.iter().all(|s| *s));
        assert!((4_600..5_400).contains(&low), "{low}");
    }

    #[test]
    fn raising_the_weight_never_moves_a_client_back_to_stable() {
        for bucket in 0..BUCKETS {
            let mut was_canary = false;
            for permille in 1..=BUCKETS {
                let now = Canary { pool: 1, permille }.takes(bucket);
                assert!(!was_canary || now, "bucket {bucket} left at {permille}");
                was_canary = now;
            }
            assert!(was_canary, "everyone is on the canary at 100%");
        }
    }

    fn split(canary: Option<Canary>, overridable: bool) -> Split {
        Split {
            active: 0,
            canary,
            overridable,
        }
    }

    fn pools(name: &str) -> Option<usize> {
        ["blue", "green"].iter().position(|p| *p == name)
    }

    #[test]
    fn choose_takes_overrides_then_buckets_then_the_active_pool() {
        let config = CanaryConfig {
            override_header: Some("x-switchback-pool".into()),
            override_cookie: Some("switchback_pool".into()),
            ..CanaryConfig::default()
        };
        let overrides = Overrides::from_config(&config);
        assert!(overrides.any());
        let signer = BucketSigner::new(b"a test key");
        let choose = |split: &Split, headers: &HeaderMap| {
            choose(
                split,
                &overrides,
                &config.sticky,
                pools,
                headers,
                None,
                &signer,
            )
        };
        let none = HeaderMap::new();
        let plain = split(None, false);
        assert_eq!(choose(&plain, &none).pool, 0);

        let mut forced = HeaderMap::new();
        forced.insert("x-switchback-pool", "green".parse().unwrap());
        let c = choose(&split(None, true), &forced);
        assert_eq!((c.pool, c.forced), (1, true));
        let c = choose(&plain, &forced);
        assert_eq!((c.pool, c.forced), (0, false), "not overridable: ignored");
        let mut unknown = HeaderMap::new();
        unknown.insert("x-switchback-pool", "red".parse().unwrap());
        let c = choose(&split(None, true), &unknown);
        assert_eq!((c.pool, c.forced), (0, false), "an unknown pool is ignored");

        let half = split(
            Some(Canary {
                pool: 1,
                permille: 500,
            }),
            false,
        );
        let mut low = HeaderMap::new();
        let signed = |b: u32| {
            format!("switchback_bucket={}", signer.value(b))
                .parse()
                .unwrap()
        };
        low.insert("cookie", signed(17));
        let c = choose(&half, &low);
        assert_eq!(
            (c.pool, c.new_bucket),
            (1, None),
            "bucket 17 is in a 50% canary"
        );
        let mut high = HeaderMap::new();
        high.insert("cookie", signed(917));
        assert_eq!(choose(&half, &high).pool, 0);
        // A bucket the client wrote itself, or one signed by another key, is a fresh draw.
        for forged in ["17", "17.00000000000000000000000000000000"] {
            let mut h = HeaderMap::new();
            h.insert(
                "cookie",
                format!("switchback_bucket={forged}").parse().unwrap(),
            );
            assert!(choose(&half, &h).new_bucket.is_some(), "{forged}");
        }
        let other = BucketSigner::new(b"another key");
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("switchback_bucket={}", other.value(17))
                .parse()
                .unwrap(),
        );
        assert!(
            choose(&half, &h).new_bucket.is_some(),
            "another key's cookie"
        );
        let c = choose(&half, &none);
        let drawn = c.new_bucket.expect("a new client draws a bucket");
        assert_eq!(c.pool, if drawn < 500 { 1 } else { 0 });
    }

    #[test]
    fn signed_bucket_values_verify_only_as_given() {
        let signer = BucketSigner::new(b"k");
        for b in [0, 17, 999] {
            let v = signer.value(b);
            assert_eq!(v.split_once('.').unwrap().1.len(), 32, "{v}");
            assert_eq!(signer.verify(v), Some(b));
        }
        let v = signer.value(17).to_string();
        let mut flipped = v.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(signer.verify(std::str::from_utf8(&flipped).unwrap()), None);
        // The tag of one bucket does not sign another.
        let moved = v.replacen("17.", "18.", 1);
        assert_eq!(signer.verify(&moved), None);
        assert_eq!(signer.verify("17"), None);
        assert_eq!(signer.verify(""), None);
    }

    #[test]
    fn traffic_ratios_add_up() {
        let s = split(
            Some(Canary {
                pool: 1,
                permille: 125,
            }),
            false,
        );
        assert_eq!(s.traffic_ratio(1), 0.125);
        assert_eq!(s.traffic_ratio(0), 0.875);
        assert_eq!(s.traffic_ratio(2), 0.0);
        assert_eq!(split(None, false).traffic_ratio(0), 1.0);
    }

    #[test]
    fn cookies_and_overrides_parse() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; switchback_bucket=17".parse().unwrap());
        h.append("cookie", "switchback_pool=green".parse().unwrap());
        assert_eq!(cookie(&h, "switchback_bucket"), Some("17"));
        assert_eq!(cookie(&h, "switchback_pool"), Some("green"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(parse_bucket("17"), Some(17));
        assert_eq!(parse_bucket("999"), Some(999));
        for bad in ["1000", "", "-1", "x", "0017"] {
            assert_eq!(parse_bucket(bad), None, "{bad}");
        }
        assert_eq!(override_pool("green", None), Some("green"));
        assert_eq!(override_pool("green:s3cret", Some("s3cret")), Some("green"));
        assert_eq!(override_pool("green:wrong", Some("s3cret")), None);
        assert_eq!(override_pool("green", Some("s3cret")), None);
        assert!(sticky_cookie("b", "5.ab", true).ends_with(b"; Secure"));
        assert_eq!(
            cookies_without(&h, "switchback_pool").as_deref(),
            Some("a=1; switchback_bucket=17")
        );
        let mut only = HeaderMap::new();
        only.append("cookie", "switchback_pool=green:s3cret".parse().unwrap());
        assert_eq!(cookies_without(&only, "switchback_pool"), None);
    }
}
