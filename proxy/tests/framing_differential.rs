//! A differential property test of the own HTTP/1.1 path's framing: random and mutated request
//! heads and chunk-size lines go through `switchback_proxy::h1::framing` and through reference
//! rules written here from RFC 9112 alone, line by line, sharing no code (not even httparse)
//! with the parser under test. Wherever the own path takes a head, the reference must take it
//! too, with the same length and the same body framing: the own path may be stricter, never
//! looser, and never reads a body two ways. Heads built to be well formed must be taken by both.

use std::mem::MaybeUninit;

use proptest::prelude::*;
use switchback_proxy::h1::framing::{
    chunk_size_line, parse_request, Framing, Refusal, MAX_HEADERS,
};

/// The reference's verdict on a buffer that starts with a request head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// No empty line yet.
    Incomplete,
    Refused,
    /// The head's length (its empty line included) and how its body ends.
    Taken(usize, Framing),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9112 read strictly, with the leniencies it allows a recipient: a bare LF ends a line,
/// and empty lines before the request line are skipped.
fn reference(buf: &[u8]) -> Verdict {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    let end = loop {
        let Some(lf) = buf[at..].iter().position(|&b| b == b'\n') else {
            return Verdict::Incomplete;
        };
        let line = &buf[at..at + lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += lf + 1;
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break at;
        }
        lines.push(line);
    };
    if lines.iter().any(|l| l.contains(&b'\r')) {
        return Verdict::Refused;
    }
    // request-line = method SP request-target SP HTTP-version
    let parts: Vec<&[u8]> = lines[0].split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Verdict::Refused;
    };
    let target_ok = |b: &u8| (0x21..=0x7e).contains(b) || *b >= 0x80;
    if method.is_empty()
        || !method.iter().copied().all(is_tchar)
        || target.is_empty()
        || !target.iter().all(target_ok)
    {
        return Verdict::Refused;
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Verdict::Refused,
    };
    let (mut length, mut chunked, mut hosts) = (None::<u64>, false, 0);
    for line in &lines[1..] {
        // field-line = field-name ":" OWS field-value OWS; no obs-fold.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Verdict::Refused;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value_ok = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80;
        if name.is_empty() || !name.iter().copied().all(is_tchar) || !value.iter().all(value_ok) {
            return Verdict::Refused;
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Verdict::Refused;
            }
            let parsed = value.iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let Some(parsed) = parsed else {
                return Verdict::Refused;
            };
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor == 0 || chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Verdict::Refused;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if hosts > 1 || (hosts == 0 && minor == 1) {
        return Verdict::Refused;
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return Verdict::Refused,
        (None, true) => Framing::Chunked,
        (None | Some(0), false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    };
    Verdict::Taken(end, framing)
}

/// The own path's verdict, in the reference's terms.
fn own(buf: &[u8]) -> Result<Verdict, Refusal> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    Ok(match parse_request(buf, &mut headers)? {
        None => Verdict::Incomplete,
        Some(head) => Verdict::Taken(head.len, head.framing),
    })
}

/// The own path is the reference or stricter.
fn agree(buf: &[u8]) -> Result<(), TestCaseError> {
    let reference = reference(buf);
    match own(buf) {
        Err(_) => {}
        Ok(Verdict::Taken(len, framing)) => prop_assert_eq!(
            &reference,
            &Verdict::Taken(len, framing),
            "taken by the own path as {:?}: {:?}",
            (len, framing),
            String::from_utf8_lossy(buf)
        ),
        Ok(Verdict::Incomplete) => prop_assert!(
            !matches!(reference, Verdict::Taken(..)),
            "the own path waits for more of a whole head: {:?}",
            String::from_utf8_lossy(buf)
        ),
        Ok(Verdict::Refused) => unreachable!("own() refuses with Err"),
    }
    Ok(())
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "M-SEARCH", "G{T",
];
const TARGETS: &[&str] = &[
    "/",
    "/a/b?c=d&e",
    "*",
    "http://example.com/x",
    "/%00",
    "/\u{e9}",
    "/a\u{1}b",
    "/a\u{7f}",
];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1"];
const SEPARATORS: &[&str] = &[": ", ":", ":\t", ": \t ", " : ", " :"];
const ENDINGS: &[&str] = &["\r\n", "\n", "\r"];

/// A header line's name and value: the ones that decide framing, with values good and bad.
fn field() -> impl Strategy<Value = (String, String)> {
    let name = prop::sample::select(vec![
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Connection",
        "X-Thing",
        "Bad Name",
        "",
        "X\u{0}",
    ]);
    let value = prop::sample::select(vec![
        "a",
        "example.com:8080",
        "0",
        "5",
        "17",
        " 5 ",
        "+5",
        "5, 5",
        "0x10",
        "18446744073709551615",
        "18446744073709551616",
        "999999999999999999",
        "chunked",
        "Chunked",
        " chunked ",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "close",
        "keep-alive",
        "",
        "v\u{0}",
        "v\u{7f}",
        "\u{fc}",
    ]);
    (name, value).prop_map(|(n, v)| (n.to_string(), v.to_string()))
}

/// One of `all`, mostly (nine times in ten) one of its first `good`.
fn mostly(all: &'static [&'static str], good: usize) -> impl Strategy<Value = &'static str> {
    prop_oneof![
        9 => prop::sample::select(&all[..good]),
        1 => prop::sample::select(all),
    ]
}

/// A request head from parts, good and bad: methods, targets, versions, header lines, the
/// separators between name and value, line endings, an optional folded line. Each part is good
/// most of the time, so that many heads are bad in one way only.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        mostly(METHODS, 7),
        mostly(TARGETS, 4),
        mostly(VERSIONS, 2),
        prop::option::weighted(0.8, mostly(ENDINGS, 2)),
        prop::collection::vec((field(), mostly(SEPARATORS, 4), mostly(ENDINGS, 2)), 0..5),
        prop::bool::weighted(0.1),
        mostly(ENDINGS, 2),
    )
        .prop_map(|(method, target, version, host, fields, fold, end)| {
            let mut head = format!("{method} {target} {version}\r\n");
            if let Some(eol) = host {
                head.push_str(&format!("Host: a{eol}"));
            }
            for ((name, value), sep, eol) in fields {
                head.push_str(&format!("{name}{sep}{value}{eol}"));
            }
            if fold {
                head.push_str(" folded\r\n");
            }
            head.push_str(end);
            head.push_str("body");
            head.into_bytes()
        })
}

/// A well-formed head: one Host on HTTP/1.1, at most one of Content-Length and
/// Transfer-Encoding: chunked, CRLF or LF line endings.
fn good_head() -> impl Strategy<Value = (Vec<u8>, Framing)> {
    (
        prop::sample::select(&METHODS[..7]),
        prop::sample::select(&TARGETS[..6]),
        0..3u8,
        0..100_000u64,
        prop::sample::select(&["\r\n", "\n"][..]),
        prop::collection::vec("[A-Za-z0-9-]{1,12}", 0..5),
    )
        .prop_map(|(method, target, body, length, eol, names)| {
            let mut head = format!("{method} {target} HTTP/1.1{eol}Host: a{eol}");
            for name in names {
                head.push_str(&format!("X-{name}: v{eol}"));
            }
            let framing = match body {
                0 => Framing::None,
                1 => {
                    head.push_str(&format!("Content-Length: {length}{eol}"));
                    if length == 0 {
                        Framing::None
                    } else {
                        Framing::Length(length)
                    }
                }
                _ => {
                    head.push_str(&format!("Transfer-Encoding: chunked{eol}"));
                    Framing::Chunked
                }
            };
            head.push_str(eol);
            (head.into_bytes(), framing)
        })
}

/// A byte edit: insert, replace or remove at a position (taken modulo the length).
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, u8),
    Replace(usize, u8),
    Remove(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop::sample::select(vec![
        b'\r', b'\n', 0, b' ', b'\t', b':', 0x7f, 0x80, b'a', b'0', b',', b';',
    ]);
    let edit = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Edit::Replace(at, b)),
        any::<usize>().prop_map(Edit::Remove),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(mut buf: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = buf.len().max(1);
        match *edit {
            Edit::Insert(at, b) => buf.insert(at % (len + 1).min(buf.len() + 1), b),
            Edit::Replace(at, b) if !buf.is_empty() => buf[at % len] = b,
            Edit::Remove(at) if !buf.is_empty() => {
                buf.remove(at % len);
            }
            _ => {}
        }
    }
    buf
}

/// The reference's chunk-size line: 1*HEXDIG [ ";" extension of visible bytes, SP, HTAB ] CRLF.
fn reference_chunk(buf: &[u8]) -> Option<Option<(usize, u64)>> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Some(None);
    };
    let line = buf[..lf].strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    if digits == 0 || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    if !rest
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
    {
        return None;
    }
    let size = line[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(16)?
            .checked_add(u64::from((d as char).to_digit(16)?))
    })?;
    Some(Some((lf + 1, size)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn heads_from_parts_are_read_as_the_reference_reads_them_or_refused(buf in head()) {
        agree(&buf)?;
    }

    #[test]
    fn mutated_heads_are_read_as_the_reference_reads_them_or_refused(
        (buf, _) in good_head(),
        edits in edits(),
    ) {
        agree(&apply(buf, &edits))?;
    }

    #[test]
    fn well_formed_heads_are_taken_by_both_with_the_same_framing((buf, framing) in good_head()) {
        let taken = Verdict::Taken(buf.len(), framing);
        prop_assert_eq!(&reference(&buf), &taken);
        prop_assert_eq!(&own(&buf).expect("taken"), &taken);
    }

    #[test]
    fn a_head_cut_short_is_never_taken((buf, _) in good_head(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(buf.len());
        prop_assert!(!matches!(own(&buf[..cut]), Ok(Verdict::Taken(..))));
    }

    #[test]
    fn chunk_size_lines_are_read_as_the_reference_reads_them_or_refused(
        size in "[0-9a-fA-F]{1,17}",
        ext in prop::option::of("[ -~\t]{0,20}"),
        eol in prop::sample::select(&["\r\n", "\n", "\r", "", "\r\r\n"][..]),
        edits in prop::collection::vec(any::<u8>(), 0..2),
    ) {
        let mut line = size.into_bytes();
        if let Some(ext) = ext {
            line.push(b';');
            line.extend_from_slice(ext.as_bytes());
        }
        line.extend_from_slice(eol.as_bytes());
        // A stray byte before the line's end, sometimes.
        for b in edits {
            let at = usize::from(b) % line.len().max(1);
            line.insert(at, b);
        }
        line.extend_from_slice(b"data");
        if let Ok(Some(taken)) = chunk_size_line(&line) {
            prop_assert_eq!(reference_chunk(&line), Some(Some(taken)),
                "taken as {:?}: {:?}", taken, String::from_utf8_lossy(&line));
        }
    }
}
