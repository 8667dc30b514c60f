//! A request's id (`$request_id`): the `X-Request-ID` the client or a proxy in front gave it,
//! or a new random 128-bit one, written as 32 hex digits. The access log carries it, and a
//! `request_headers` rule hands it to the backend, so one id follows a request through every
//! log.
//!
//! A fresh id costs a few multiplications on a per-thread generator, no lock and no syscall,
//! and is formatted where it is written. A request path makes one only when a header rule
//! sends it; an id only the access log has is made by the log's writer thread.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// The longest `X-Request-ID` taken as given; a longer one is replaced by a fresh id.
const MAX_GIVEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    Fresh(u128),
    Given(Box<str>),
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish(),
    );
}

/// splitmix64: each call a new well-mixed 64-bit value from a per-thread counter seeded by the
/// OS's randomness (through std's hasher keys).
fn next() -> u64 {
    STATE.with(|state| {
        let x = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl RequestId {
    pub fn fresh() -> RequestId {
        RequestId::Fresh(((next() as u128) << 64) | next() as u128)
    }

    /// The id of a request that carried `given` in `X-Request-ID` (None: it carried none): that
    /// value when it is one, else a fresh one.
    pub fn of(given: Option<&[u8]>) -> RequestId {
        given
            .and_then(RequestId::given)
            .unwrap_or_else(RequestId::fresh)
    }

    /// An `X-Request-ID` value taken as the request's id: visible ASCII, at most 200 bytes.
    pub fn given(value: &[u8]) -> Option<RequestId> {
        let ok = !value.is_empty()
            && value.len() <= MAX_GIVEN
            && value.iter().all(|b| (0x21..0x7f).contains(b));
        // Checked to be ASCII just above.
        ok.then(|| RequestId::Given(String::from_utf8_lossy(value).into()))
    }

    /// Appends the id as written in a header or a log line.
    pub fn push_to(&self, out: &mut Vec<u8>) {
        match self {
            RequestId::Given(text) => out.extend_from_slice(text.as_bytes()),
            RequestId::Fresh(n) => out.extend_from_slice(&hex(*n)),
        }
    }

    /// [`RequestId::push_to`] for text.
    pub fn push_str_to(&self, out: &mut String) {
        match self {
            RequestId::Given(text) => out.push_str(text),
            RequestId::Fresh(n) => {
                out.push_str(std::str::from_utf8(&hex(*n)).expect("hex digits are ASCII"))
            }
        }
    }
}

/// The 32 lower-case hex digits of `n`.
fn hex(n: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((n >> ((31 - i) * 4)) & 0xf) as usize];
    }
    out
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Given(text) => f.write_str(text),
            RequestId::Fresh(n) => write!(f, "{n:032x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_32_hex_digits_and_differ() {
        let a = RequestId::fresh();
        let b = RequestId::fresh();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|c| c.is_ascii_hexdigit()));
        let mut bytes = Vec::new();
        a.push_to(&mut bytes);
        assert_eq!(bytes, text.as_bytes());
        let mut same = String::new();
        a.push_str_to(&mut same);
        assert_eq!(same, text);
        assert_eq!(RequestId::Fresh(0xab).to_string(), format!("{:032x}", 0xab));
    }

    #[test]
    fn a_given_id_is_kept_when_it_is_one() {
        assert_eq!(
            RequestId::of(Some(b"abc-123")),
            RequestId::Given("abc-123".into())
        );
        for bad in [&b""[..], b"has space", b"\xff\xfe", &[b'a'; 201]] {
            assert!(matches!(RequestId::of(Some(bad)), RequestId::Fresh(_)));
        }
        assert!(matches!(RequestId::of(None), RequestId::Fresh(_)));
    }
}
