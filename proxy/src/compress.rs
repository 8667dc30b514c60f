//! Compression of answers, for services that list `compress` encodings.
//!
//! The gzip and zstd encoders are pingora's; brotli's is this module's own, because pingora
//! 0.9's flushes its stream but never finishes it (cloudflare/pingora#1013), which strict
//! decoders (Node's `fetch`, the `brotli` tool) reject. This module decides when to compress,
//! which pingora's compression module leaves loose: only text-like types (pingora would take any
//! `application/*`), never an answer the backend already encoded or marked `no-transform`,
//! not below the service's `compress_min_length`, and with the encoding chosen from the
//! client's `Accept-Encoding` by its q-values, ties going to the service's order (pingora takes
//! the client's first). Every answer that could have been compressed says
//! `Vary: Accept-Encoding`, whichever encoding this client got, so that caches keep them apart.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, ETAG, TRANSFER_ENCODING, VARY};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::{Algorithm, Encode, COMPRESSION_ERROR};
use pingora::{OkOrErr, OrErr, Result};
use switchback_config::Encoding;

/// Levels for compressing on the fly, where speed matters as much as size: zlib's default for
/// gzip, and the fast end of brotli's and zstd's "default" ranges.
const GZIP_LEVEL: u32 = 6;
const BROTLI_LEVEL: u32 = 4;
const ZSTD_LEVEL: u32 = 3;

/// The encoding `offered` (in the service's order) that the client's `Accept-Encoding` ranks
/// highest; `None` when it takes none of them. A coding the client does not name is
/// acceptable only through `*`; `q=0` refuses.
pub fn choose(accept: Option<&[u8]>, offered: &[Encoding]) -> Option<Encoding> {
    let accept = std::str::from_utf8(accept?).ok()?;
    let mut best: Option<(Encoding, u16)> = None;
    for &encoding in offered {
        let mut named = None;
        let mut any = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| parse_q(v.trim()))
                })
                .unwrap_or(Some(1000));
            let Some(q) = q else { continue };
            if coding.eq_ignore_ascii_case(encoding.as_str()) {
                named = Some(q);
            } else if coding == "*" {
                any = Some(q);
            }
        }
        let q = named.or(any).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((encoding, q));
        }
    }
    best.map(|(e, _)| e)
}

/// A q-value in thousandths (`"0.5"` → 500); `None` if malformed.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in fraction.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// Text-like types, which compress well: `text/*` (but not event streams, which a compressor
/// would hold back), JSON, JavaScript, XML and SVG.
pub fn compressible_type(content_type: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content_type) else {
        return false;
    };
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if let Some(sub) = mime.strip_prefix("text/") {
        return sub != "event-stream";
    }
    if let Some(sub) = mime.strip_prefix("application/") {
        return matches!(
            sub,
            "json" | "javascript" | "x-javascript" | "ecmascript" | "xml" | "xhtml+xml"
        ) || sub.ends_with("+json")
            || sub.ends_with("+xml");
    }
    mime == "image/svg+xml"
}

/// What the decision to compress reads of an answer's head, on either of switchback's HTTP/1
/// paths (pingora's answer head, or the own path's head parsed in place).
pub trait AnswerHeaders {
    fn status(&self) -> u16;
    /// Every value of the header `name` (lowercase), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]>;

    fn first<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl AnswerHeaders for ResponseHeader {
    fn status(&self) -> u16 {
        self.status.as_u16()
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers.get_all(name).iter().map(|v| v.as_bytes())
    }
}

/// Whether this answer (to a request that was `head_request` or not) may be compressed at
/// all, whatever the client takes.
pub fn eligible(head_request: bool, answer: &impl AnswerHeaders, min_length: usize) -> bool {
    let status = answer.status();
    if head_request || status < 200 || matches!(status, 204 | 206 | 304) {
        return false;
    }
    if answer.first("content-encoding").is_some() {
        return false;
    }
    // A transfer coding other than chunked leaves bytes that are not yet the body.
    if answer
        .first("transfer-encoding")
        .is_some_and(|c| !c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return false;
    }
    if answer.values("cache-control").any(|v| {
        v.split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    }) {
        return false;
    }
    if !answer.first("content-type").is_some_and(compressible_type) {
        return false;
    }
    match answer.first("content-length") {
        // No length (chunked or until close): long enough to be worth it, as nginx assumes.
        None => true,
        Some(length) => std::str::from_utf8(length)
            .ok()
            .and_then(|l| l.trim().parse::<usize>().ok())
            .is_some_and(|l| l > 0 && l >= min_length),
    }
}

/// Whether the answer already says it varies on `Accept-Encoding` (or on everything); when it
/// does not, an eligible answer gets `Vary: Accept-Encoding`.
pub fn varies_on_encoding(answer: &impl AnswerHeaders) -> bool {
    answer.values("vary").any(|v| {
        v.split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    })
}

/// Adds `Vary: Accept-Encoding` unless the answer already varies on it (or on everything).
pub fn add_vary(resp: &mut ResponseHeader) -> pingora::Result<()> {
    if !varies_on_encoding(resp) {
        resp.append_header(VARY, HeaderValue::from_static("Accept-Encoding"))?;
    }
    Ok(())
}

/// The headers a compressed answer loses: its length and ranges are the uncompressed body's,
/// and it goes in chunks (HTTP/1.1) or until the close (HTTP/1.0) instead.
pub const DROPPED: [&str; 3] = ["content-length", "accept-ranges", "transfer-encoding"];

/// The ETag a compressed answer carries in place of `etag`, as nginx does: a strong one made
/// weak (the bytes differ, the meaning does not), a weak one kept; None drops a malformed one.
pub fn weakened_etag(etag: &[u8]) -> Option<Vec<u8>> {
    if etag.starts_with(b"\"") {
        Some([b"W/", etag].concat())
    } else if etag.starts_with(b"W/") {
        Some(etag.to_vec())
    } else {
        None
    }
}

/// Compresses one answer's body.
pub struct Compressor(Box<dyn Encode + Send + Sync>);

impl Compressor {
    /// A compressor for `encoding`.
    pub fn new(encoding: Encoding) -> Result<Compressor> {
        let encoder: Box<dyn Encode + Send + Sync> = match encoding {
            Encoding::Gzip => Algorithm::Gzip.compressor(GZIP_LEVEL),
            Encoding::Zstd => Algorithm::Zstd.compressor(ZSTD_LEVEL),
            Encoding::Brotli => Some(Box::new(BrotliEncoder::new(BROTLI_LEVEL)) as _),
        }
        .or_err(COMPRESSION_ERROR, "no encoder")?;
        Ok(Compressor(encoder))
    }

    /// The encoded bytes for `data`; at the end, what the encoder still held.
    pub fn encode(&mut self, data: &[u8], end: bool) -> Result<Bytes> {
        self.0.encode(data, end)
    }
}

/// Starts compressing an eligible answer with `encoding`: rewrites its head (Content-Encoding,
/// none of [`DROPPED`], a weak ETag, in chunks unless the client is `http10`) and returns the
/// encoder its body goes through.
pub fn start(encoding: Encoding, resp: &mut ResponseHeader, http10: bool) -> Result<Compressor> {
    let compressor = Compressor::new(encoding)?;
    resp.insert_header(CONTENT_ENCODING, encoding.as_str())?;
    for name in DROPPED {
        resp.remove_header(name);
    }
    // The length is not known before the end: HTTP/1.1 answers go in chunks, HTTP/1.0 ones
    // until the close.
    if !http10 {
        resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"))?;
    }
    if let Some(etag) = resp.headers.get(ETAG) {
        match weakened_etag(etag.as_bytes()) {
            Some(weak) => {
                let weak = HeaderValue::from_bytes(&weak)
                    .or_err(COMPRESSION_ERROR, "weakening the etag")?;
                resp.insert_header(ETAG, weak)?;
            }
            None => {
                resp.remove_header(&ETAG);
            }
        }
    }
    Ok(compressor)
}

/// Brotli that finishes its stream at the end (pingora's only flushes it).
struct BrotliEncoder {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl BrotliEncoder {
    fn new(level: u32) -> BrotliEncoder {
        BrotliEncoder {
            // A 512 KiB window (lgwin 19), as pingora's; 4 KiB of input buffer.
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        let started = Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer
            .write_all(input)
            .or_err(COMPRESSION_ERROR, "while compressing with brotli")?;
        let out = if end {
            // into_inner runs the final operation, which writes the last meta-block.
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_out += out.len();
        self.duration += started.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("br", self.total_in, self.total_out, self.duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    fn pick(accept: &str, offered: &[Encoding]) -> Option<Encoding> {
        choose(Some(accept.as_bytes()), offered)
    }

    #[test]
    fn the_client_ranks_and_the_service_breaks_ties() {
        let all = [Zstd, Brotli, Gzip];
        // A browser's list, no q-values: all equal, so the service's first.
        assert_eq!(pick("gzip, deflate, br, zstd", &all), Some(Zstd));
        assert_eq!(pick("gzip, deflate, br", &all), Some(Brotli));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5", &all), Some(Gzip));
        assert_eq!(pick("br;q=0, *;q=0.1", &[Brotli, Gzip]), Some(Gzip));
        assert_eq!(pick("*", &[Gzip]), Some(Gzip));
        assert_eq!(pick("identity", &all), None);
        assert_eq!(pick("gzip;q=0", &all), None);
        assert_eq!(pick("GZIP", &[Gzip]), Some(Gzip));
        // A malformed q-value makes its item count for nothing.
        assert_eq!(pick("gzip;q=2, br", &all), Some(Brotli));
        assert_eq!(choose(None, &all), None);
        assert_eq!(pick("gzip", &[]), None);
    }

    #[test]
    fn only_text_like_types_are_compressed() {
        for t in [
            "text/html; charset=utf-8",
            "text/css",
            "application/json",
            "application/problem+json",
            "application/javascript",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "Text/Plain",
        ] {
            assert!(compressible_type(t.as_bytes()), "{t}");
        }
        for t in [
            "image/png",
            "application/octet-stream",
            "application/zip",
            "application/pdf",
            "text/event-stream",
            "video/mp4",
            "font/woff2",
        ] {
            assert!(!compressible_type(t.as_bytes()), "{t}");
        }
    }

    fn answer(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (n, v) in headers {
            resp.append_header(n.to_string(), *v).unwrap();
        }
        resp
    }

    #[test]
    fn encoded_short_headless_and_no_transform_answers_are_left_alone() {
        let get = false;
        let html = ("content-type", "text/html");
        assert!(eligible(
            get,
            &answer(&[html, ("content-length", "1024")]),
            1024
        ));
        assert!(eligible(get, &answer(&[html]), 1024));
        assert!(!eligible(
            get,
            &answer(&[html, ("content-length", "1023")]),
            1024
        ));
        assert!(!eligible(get, &answer(&[html, ("content-length", "0")]), 0));
        assert!(!eligible(
            get,
            &answer(&[html, ("content-encoding", "gzip")]),
            0
        ));
        assert!(!eligible(
            get,
            &answer(&[html, ("cache-control", "public, no-transform")]),
            0
        ));
        assert!(!eligible(get, &answer(&[]), 0));
        assert!(!eligible(true, &answer(&[html]), 0));
        assert!(!eligible(
            get,
            &answer(&[html, ("transfer-encoding", "gzip, chunked")]),
            0
        ));
        assert!(eligible(
            get,
            &answer(&[html, ("transfer-encoding", "chunked")]),
            0
        ));
        let mut partial = answer(&[html]);
        partial.set_status(206).unwrap();
        assert!(!eligible(get, &partial, 0));
    }

    #[test]
    fn etags_are_weakened_and_malformed_ones_dropped() {
        assert_eq!(weakened_etag(b"\"abc\"").unwrap(), b"W/\"abc\"");
        assert_eq!(weakened_etag(b"W/\"abc\"").unwrap(), b"W/\"abc\"");
        assert_eq!(weakened_etag(b"abc"), None);
    }

    #[test]
    fn vary_is_added_once() {
        let mut resp = answer(&[("vary", "Origin, accept-encoding")]);
        add_vary(&mut resp).unwrap();
        assert_eq!(resp.headers.get_all(VARY).iter().count(), 1);
        let mut resp = answer(&[("vary", "Origin")]);
        add_vary(&mut resp).unwrap();
        assert_eq!(resp.headers.get_all(VARY).iter().count(), 2);
    }

    #[test]
    fn started_answers_say_their_encoding_and_lose_their_length() {
        for encoding in [Gzip, Brotli, Zstd] {
            let mut resp = answer(&[
                ("content-type", "text/plain"),
                ("content-length", "5000"),
                ("etag", "\"abc\""),
            ]);
            let mut compressor = start(encoding, &mut resp, false).expect("compresses");
            assert_eq!(resp.headers["content-encoding"], encoding.as_str());
            assert!(!resp.headers.contains_key("content-length"));
            assert_eq!(resp.headers["etag"], "W/\"abc\"");
            let body = Bytes::from("hello ".repeat(1000));
            let mut out = compressor.encode(&body, false).unwrap().to_vec();
            out.extend_from_slice(&compressor.encode(&[], true).unwrap());
            assert!(out.len() < body.len() / 10, "{encoding:?}: {}", out.len());
            if encoding == Brotli {
                // A finished stream: the decoder sees its end, not just a prefix.
                let mut decoded = Vec::new();
                brotli::BrotliDecompress(&mut &out[..], &mut decoded).expect("a whole stream");
                assert_eq!(decoded, body);
            }
        }
    }
}
