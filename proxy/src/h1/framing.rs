//! HTTP/1.1 framing on switchback's own path: request and answer heads parsed in place with
//! httparse, the rules that keep a request from being read two ways (smuggling), where each
//! body ends, and chunked bodies checked as they pass.
//!
//! Every rule is a named function with its own test. A head is never forwarded as the client
//! wrote it: each header line is written anew from what was parsed, so a byte httparse did not
//! take as part of a name or value never reaches a backend.

use std::mem::MaybeUninit;

/// The most header lines a head may have (as pingora's parser).
pub const MAX_HEADERS: usize = 256;

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (answers only).
    Close,
}

/// Why a request head is refused with 400 and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// httparse refused it: obs-fold, whitespace before a colon, a bare CR, a NUL or CTL in
    /// the target, a bad token.
    Malformed,
    /// More header lines than [`MAX_HEADERS`].
    TooManyHeaders,
    /// Both Content-Length and Transfer-Encoding.
    LengthAndChunked,
    /// A Transfer-Encoding other than exactly `chunked`, given once.
    TransferEncoding,
    /// Transfer-Encoding on HTTP/1.0, which has none.
    TransferEncodingOn10,
    /// A Content-Length that is not all digits, or too large.
    BadLength,
    /// Content-Length given twice.
    DuplicateLength,
    /// HTTP/1.1 without Host.
    NoHost,
    /// Host given twice.
    DuplicateHost,
}

/// A request head, parsed in place.
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// The head's length, its empty line included.
    pub len: usize,
    pub framing: Framing,
    /// The Host header's value (empty when there is none).
    pub host: &'b [u8],
    /// The client asked to close after this request.
    pub close: bool,
    /// An `Upgrade` header, or `upgrade` in Connection.
    pub upgrade: bool,
    /// An `Expect` header.
    pub expect: bool,
    /// A Connection header names headers to leave out (any token but close, keep-alive and
    /// upgrade): see [`dropped_by_connection`].
    pub names_headers: bool,
    /// The first `X-Request-ID` header's value.
    pub request_id: Option<&'b [u8]>,
}

/// Parses a whole request head at the start of `buf` (None when it is not all there) and
/// applies every rule of [`Refusal`].
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
) -> Result<Option<RequestHead<'b, 'h>>, Refusal> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(_) => return Err(Refusal::Malformed),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal::Malformed);
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut head = RequestHead {
        method,
        target,
        minor,
        headers,
        len,
        framing: Framing::None,
        host: b"",
        close: minor == 0,
        upgrade: false,
        expect: false,
        names_headers: false,
        request_id: None,
    };
    let mut length = None;
    let mut chunked = None;
    let mut hosts = 0;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refusal::DuplicateLength);
            }
            length = Some(content_length(h.value).ok_or(Refusal::BadLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor == 0 {
                return Err(Refusal::TransferEncodingOn10);
            }
            if chunked.is_some() || !is_exactly_chunked(h.value) {
                return Err(Refusal::TransferEncoding);
            }
            chunked = Some(());
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            head.host = h.value;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    head.close = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    head.upgrade = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    head.names_headers = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            head.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect = true;
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            head.request_id.get_or_insert(h.value);
        }
    }
    head.framing = framing_of_request(length, chunked.is_some())?;
    check_host(hosts, minor)?;
    Ok(Some(head))
}

/// A request's body framing from its Content-Length and Transfer-Encoding: both at once is
/// refused, as the two could be read two ways.
pub fn framing_of_request(length: Option<u64>, chunked: bool) -> Result<Framing, Refusal> {
    match (length, chunked) {
        (Some(_), true) => Err(Refusal::LengthAndChunked),
        (None, true) => Ok(Framing::Chunked),
        (Some(0), false) | (None, false) => Ok(Framing::None),
        (Some(n), false) => Ok(Framing::Length(n)),
    }
}

/// HTTP/1.1 needs exactly one Host; HTTP/1.0 at most one.
pub fn check_host(count: usize, minor: u8) -> Result<(), Refusal> {
    match count {
        0 if minor >= 1 => Err(Refusal::NoHost),
        0 | 1 => Ok(()),
        _ => Err(Refusal::DuplicateHost),
    }
}

/// A Content-Length value: digits only (no sign, no list, no spaces inside), at most 18 of
/// them so it cannot overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + (d - b'0') as u64))
}

/// Whether a Transfer-Encoding value is `chunked` and nothing else.
pub fn is_exactly_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Headers that concern one connection only, never forwarded either way (`Transfer-Encoding`
/// is kept: bodies pass in the framing they came in).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 5] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether `name` is listed in one of the message's Connection headers, and so hop by hop and
/// left out. Framing headers and Host are never left out for it: a body's length dropped on
/// the way while the body is sent would have the next hop read the body as a request.
pub fn dropped_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    const KEPT: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
    if KEPT.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Why a backend's answer is not taken (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAnswer {
    Malformed,
    /// Content-Length given twice, or not digits.
    BadLength,
    /// The head is larger than switchback reads.
    TooLarge,
}

/// A backend's answer head, parsed in place.
#[derive(Debug)]
pub struct AnswerHead<'b, 'h> {
    pub status: u16,
    pub reason: &'b str,
    pub minor: u8,
    pub headers: &'h [httparse::Header<'b>],
    pub len: usize,
    pub framing: Framing,
    /// The backend will close the connection after this answer.
    pub close: bool,
    /// A Connection header names headers to leave out (see [`RequestHead::names_headers`]).
    pub names_headers: bool,
}

/// Parses a whole answer head at the start of `buf` (None when it is not all there), the
/// answer to a request that was `head_request` or not.
pub fn parse_answer<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
    head_request: bool,
) -> Result<Option<AnswerHead<'b, 'h>>, BadAnswer> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadAnswer::Malformed),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(BadAnswer::Malformed);
    };
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    let mut length = None;
    let mut coding: Option<&[u8]> = None;
    let mut close = minor == 0;
    let mut names_headers = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).ok_or(BadAnswer::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadAnswer::BadLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding of the last header decides.
            coding = tokens(h.value).last().or(coding);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    if minor == 0 {
                        close = false;
                    }
                } else if !token.eq_ignore_ascii_case(b"upgrade") {
                    names_headers = true;
                }
            }
        }
    }
    let framing = framing_of_answer(status, head_request, length, coding);
    Ok(Some(AnswerHead {
        status,
        reason: resp.reason.unwrap_or(""),
        minor,
        headers,
        len,
        framing,
        close: close || framing == Framing::Close,
        names_headers,
    }))
}

/// How an answer's body ends: none after HEAD, a 1xx, 204 or 304; by chunks when its last
/// transfer coding is chunked (Transfer-Encoding overrides Content-Length); at the close for
/// any other coding or when no length is given.
pub fn framing_of_answer(
    status: u16,
    head_request: bool,
    length: Option<u64>,
    coding: Option<&[u8]>,
) -> Framing {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    match (coding, length) {
        (Some(c), _) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), _) => Framing::Close,
        (None, Some(0)) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Close,
    }
}

/// The longest chunk extension taken, and the longest trailer section.
pub const MAX_CHUNK_EXTENSION: usize = 256;
pub const MAX_TRAILERS: usize = 8192;

/// A chunked body that is wrong: a size that is not hex or overflows, an extension too long
/// or with control bytes, a chunk not ended by CRLF, a trailer that is not a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

/// A chunked body read as it passes: it checks each size line, data and trailer, and writes
/// the body on in chunked form with each size line written anew (extensions dropped).
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    left: u64,
    /// Trailer bytes seen so far.
    trailers: usize,
    /// Data bytes seen so far (sizes and framing aside).
    data: u64,
    /// Only the data is written on, without the chunked framing (for an HTTP/1.0 client).
    plain: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

impl Chunks {
    /// A decoder that writes on only the body's data: for a client that does not take chunks.
    pub fn plain() -> Chunks {
        Chunks {
            plain: true,
            ..Chunks::default()
        }
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The body's data bytes so far, without the chunked framing.
    pub fn data(&self) -> u64 {
        self.data
    }

    /// Takes what it can of `input`, appending what is to be sent on to `out`: how many bytes
    /// of `input` it took. What it did not take is an incomplete line, to be given again with
    /// more behind it.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => {
                    let Some((taken, size)) = chunk_size_line(rest)? else {
                        return Ok(at);
                    };
                    at += taken;
                    if !self.plain {
                        push_hex(out, size);
                        out.extend_from_slice(b"\r\n");
                    }
                    self.left = size;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = (self.left.min(rest.len() as u64)) as usize;
                    out.extend_from_slice(&rest[..n]);
                    at += n;
                    self.left -= n as u64;
                    self.data += n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadChunk);
                    }
                    if !self.plain {
                        out.extend_from_slice(b"\r\n");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                        if self.trailers + rest.len() > MAX_TRAILERS {
                            return Err(BadChunk);
                        }
                        return Ok(at);
                    };
                    let line = &rest[..end + 1];
                    self.trailers += line.len();
                    if self.trailers > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    at += line.len();
                    if line == b"\r\n" {
                        if !self.plain {
                            out.extend_from_slice(b"\r\n");
                        }
                        self.state = ChunkState::Done;
                    } else {
                        let line = trailer_line(line)?;
                        if !self.plain {
                            out.extend_from_slice(line);
                        }
                    }
                }
            }
        }
    }
}

/// A chunk-size line at the start of `buf`: its length and the size, or None while its CRLF
/// has not come. The size is 1 to 15 hex digits; an extension (`;…`) is at most
/// [`MAX_CHUNK_EXTENSION`] bytes of visible characters, spaces and tabs.
pub fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BadChunk> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 15 {
        return Err(BadChunk);
    }
    if digits == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(BadChunk);
    }
    let mut at = digits;
    if buf[at] == b';' {
        let ext = buf[at..]
            .iter()
            .take(MAX_CHUNK_EXTENSION + 1)
            .take_while(|&&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
            .count();
        if ext > MAX_CHUNK_EXTENSION {
            return Err(BadChunk);
        }
        at += ext;
    }
    match (buf.get(at), buf.get(at + 1)) {
        (None, _) | (Some(b'\r'), None) => Ok(None),
        (Some(b'\r'), Some(b'\n')) => {
            let size = buf[..digits].iter().fold(0u64, |n, &d| {
                n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64
            });
            Ok(Some((at + 2, size)))
        }
        _ => Err(BadChunk),
    }
}

/// A trailer line (ending in LF) checked as a header line: a token, a colon, a value of no
/// control bytes; given back as it is to be sent on.
fn trailer_line(line: &[u8]) -> Result<&[u8], BadChunk> {
    let body = line.strip_suffix(b"\r\n").ok_or(BadChunk)?;
    let colon = body.iter().position(|&b| b == b':').ok_or(BadChunk)?;
    let name_ok = colon > 0
        && body[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let value_ok = body[colon + 1..]
        .iter()
        .all(|&b| b == b'\t' || b >= b' ' && b != 0x7f);
    if name_ok && value_ok {
        Ok(line)
    } else {
        Err(BadChunk)
    }
}

pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &[u8]) -> Result<Option<(Framing, bool, bool)>, Refusal> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        parse_request(text, &mut headers).map(|h| h.map(|h| (h.framing, h.close, h.upgrade)))
    }

    #[test]
    fn a_plain_get_has_no_body_and_keeps_alive() {
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some((Framing::None, false, false)))
        );
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(
            request(b"GET / HTTP/1.0\r\n\r\n"),
            Ok(Some((Framing::None, true, false)))
        );
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\n\r\n"),
            Ok(Some((Framing::None, true, true)))
        );
    }

    #[test]
    fn bodies_by_length_or_chunks() {
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
            Ok(Some((Framing::Length(12), false, false)))
        );
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, false, false)))
        );
    }

    #[test]
    fn length_and_chunked_together_are_refused() {
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::LengthAndChunked)
        );
        assert_eq!(
            framing_of_request(Some(3), true),
            Err(Refusal::LengthAndChunked)
        );
    }

    #[test]
    fn a_transfer_encoding_other_than_chunked_is_refused() {
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "chunkedx",
            "identity",
            "\"chunked\"",
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                request(text.as_bytes()),
                Err(Refusal::TransferEncoding),
                "{te}"
            );
        }
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::TransferEncoding)
        );
    }

    #[test]
    fn transfer_encoding_on_http_1_0_is_refused() {
        assert_eq!(
            request(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::TransferEncodingOn10)
        );
    }

    #[test]
    fn connection_never_drops_framing_or_host() {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let head = parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: content-length, host, x-a\r\n\r\n",
            &mut headers,
        )
        .unwrap()
        .unwrap();
        assert!(!dropped_by_connection(head.headers, b"Content-Length"));
        assert!(!dropped_by_connection(head.headers, b"host"));
        assert!(dropped_by_connection(head.headers, b"X-A"));
    }

    #[test]
    fn a_duplicate_or_non_digit_length_is_refused() {
        assert_eq!(
            request(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
            ),
            Err(Refusal::DuplicateLength)
        );
        for cl in ["+3", "-1", "3, 3", "0x10", "", "1 2", "9999999999999999999"] {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(request(text.as_bytes()), Err(Refusal::BadLength), "{cl:?}");
        }
        assert_eq!(content_length(b" 42 "), Some(42));
    }

    #[test]
    fn obs_fold_space_before_colon_bare_cr_and_ctl_in_target_are_refused() {
        for text in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n",
            b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x00\r\n\r\n",
        ] {
            assert_eq!(
                request(text),
                Err(Refusal::Malformed),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_missing_or_duplicate_host_is_refused() {
        assert_eq!(request(b"GET / HTTP/1.1\r\n\r\n"), Err(Refusal::NoHost));
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(check_host(0, 0), Ok(()));
    }

    fn answer(text: &[u8], head: bool) -> Result<Option<(Framing, bool)>, BadAnswer> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        parse_answer(text, &mut headers, head).map(|h| h.map(|h| (h.framing, h.close)))
    }

    #[test]
    fn an_answer_ends_by_length_chunks_or_close() {
        let ok = |h: &str| format!("HTTP/1.1 200 OK\r\n{h}\r\n");
        assert_eq!(
            answer(ok("Content-Length: 5\r\n").as_bytes(), false),
            Ok(Some((Framing::Length(5), false)))
        );
        assert_eq!(
            answer(
                ok("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n").as_bytes(),
                false
            ),
            Ok(Some((Framing::Chunked, false)))
        );
        assert_eq!(
            answer(ok("Transfer-Encoding: gzip\r\n").as_bytes(), false),
            Ok(Some((Framing::Close, true)))
        );
        assert_eq!(
            answer(ok("").as_bytes(), false),
            Ok(Some((Framing::Close, true)))
        );
        assert_eq!(
            answer(ok("Content-Length: 5\r\n").as_bytes(), true),
            Ok(Some((Framing::None, false)))
        );
        assert_eq!(
            answer(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            Ok(Some((Framing::None, false)))
        );
        assert_eq!(
            answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok(Some((Framing::Length(1), true)))
        );
        assert_eq!(
            answer(
                ok("Content-Length: 5\r\nContent-Length: 6\r\n").as_bytes(),
                false
            ),
            Err(BadAnswer::BadLength)
        );
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
    }

    fn dechunk_at(body: &[u8], split: usize) -> Result<(Vec<u8>, bool), BadChunk> {
        let mut chunks = Chunks::default();
        let mut out = Vec::new();
        let mut pending = body[..split].to_vec();
        let taken = chunks.feed(&pending, &mut out)?;
        pending.drain(..taken);
        pending.extend_from_slice(&body[split..]);
        let taken = chunks.feed(&pending, &mut out)?;
        assert_eq!(taken, pending.len(), "all taken once all came");
        Ok((out, chunks.done()))
    }

    #[test]
    fn a_chunked_body_split_at_every_byte_passes_the_same() {
        let body = b"5;name=value\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n";
        let want = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n".to_vec();
        for split in 0..=body.len() {
            assert_eq!(
                dechunk_at(body, split),
                Ok((want.clone(), true)),
                "split {split}"
            );
        }
    }

    #[test]
    fn a_plain_decoder_writes_only_the_data() {
        let body = b"5;name=value\r\nhello\r\n3\r\n123\r\n0\r\nX-Sum: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut chunks = Chunks::plain();
            let mut out = Vec::new();
            let taken = chunks.feed(&body[..split], &mut out).unwrap();
            let mut pending = body[taken..split].to_vec();
            pending.extend_from_slice(&body[split..]);
            assert_eq!(chunks.feed(&pending, &mut out), Ok(pending.len()));
            assert_eq!(out, b"hello123", "split {split}");
            assert!(chunks.done());
            assert_eq!(chunks.data(), 8);
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        for body in [
            &b"g\r\n"[..],
            b"\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"1000000000000000\r\n",
            b"5\nhello\r\n",
            b"5 \r\nhello\r\n",
            b"5\r\nhelloXX",
            b"5;a\x01b\r\n",
            b"0\r\nnot a header\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            let mut out = Vec::new();
            assert_eq!(
                Chunks::default().feed(body, &mut out),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!("5;{}\r\n", "a".repeat(MAX_CHUNK_EXTENSION + 1));
        assert_eq!(chunk_size_line(long.as_bytes()), Err(BadChunk));
        assert_eq!(
            chunk_size_line(b"fffffffffffffff\r\n"),
            Ok(Some((17, 0xfff_ffff_ffff_ffff)))
        );
    }
}
