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
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};
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
pub fn choose(accept: Option<&HeaderValue>, offered: &[Encoding]) -> Option<Encoding> {
    let accept = accept?.to_str().ok()?;
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

/// Whether this answer may be compressed at all, whatever the client takes.
pub fn eligible(method: &Method, resp: &ResponseHeader, min_length: usize) -> bool {
    let status = resp.status.as_u16();
    if *method == Method::HEAD || status < 200 || matches!(status, 204 | 206 | 304) {
        return false;
    }
    let headers = &resp.headers;
    if headers.contains_key(CONTENT_ENCODING) {
        return false;
    }
    if headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    }) {
        return false;
    }
    if !headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| compressible_type(t.as_bytes()))
    {
        return false;
    }
    match headers.get(CONTENT_LENGTH) {
        // No length (chunked or until close): long enough to be worth it, as nginx assumes.
        None => true,
        Some(length) => std::str::from_utf8(length.as_bytes())
            .ok()
            .and_then(|l| l.trim().parse::<usize>().ok())
            .is_some_and(|l| l > 0 && l >= min_length),
    }
}

/// Adds `Vary: Accept-Encoding` unless the answer already varies on it (or on everything).
pub fn add_vary(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !present {
        resp.append_header(VARY, HeaderValue::from_static("Accept-Encoding"))?;
    }
    Ok(())
}

/// Compresses one answer's body.
pub struct Compressor(Box<dyn Encode + Send + Sync>);

impl Compressor {
    /// The encoded bytes for `data`; at the end, what the encoder still held.
    pub fn encode(&mut self, data: Option<&Bytes>, end: bool) -> Result<Bytes> {
        self.0.encode(data.map_or(&[][..], |d| d.as_ref()), end)
    }
}

/// Starts compressing an eligible answer with `encoding`: rewrites its head (Content-Encoding,
/// no Content-Length or Accept-Ranges, a weak ETag, as nginx does) and returns the encoder its
/// body goes through.
pub fn start(encoding: Encoding, resp: &mut ResponseHeader) -> Result<Compressor> {
    let encoder: Box<dyn Encode + Send + Sync> = match encoding {
        Encoding::Gzip => Algorithm::Gzip.compressor(GZIP_LEVEL),
        Encoding::Zstd => Algorithm::Zstd.compressor(ZSTD_LEVEL),
        Encoding::Brotli => Some(Box::new(BrotliEncoder::new(BROTLI_LEVEL)) as _),
    }
    .or_err(COMPRESSION_ERROR, "no encoder")?;
    resp.insert_header(CONTENT_ENCODING, encoding.as_str())?;
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    // The length is not known before the end: HTTP/1.1 answers go in chunks.
    resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"))?;
    if let Some(etag) = resp.headers.get(ETAG) {
        let etag = etag.as_bytes();
        if etag.starts_with(b"\"") {
            let weak = HeaderValue::from_bytes(&[b"W/", etag].concat())
                .or_err(COMPRESSION_ERROR, "weakening the etag")?;
            resp.insert_header(ETAG, weak)?;
        } else if !etag.starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
    Ok(Compressor(encoder))
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
        choose(Some(&HeaderValue::from_str(accept).unwrap()), offered)
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
        let get = Method::GET;
        let html = ("content-type", "text/html");
        assert!(eligible(
            &get,
            &answer(&[html, ("content-length", "1024")]),
            1024
        ));
        assert!(eligible(&get, &answer(&[html]), 1024));
        assert!(!eligible(
            &get,
            &answer(&[html, ("content-length", "1023")]),
            1024
        ));
        assert!(!eligible(
            &get,
            &answer(&[html, ("content-length", "0")]),
            0
        ));
        assert!(!eligible(
            &get,
            &answer(&[html, ("content-encoding", "gzip")]),
            0
        ));
        assert!(!eligible(
            &get,
            &answer(&[html, ("cache-control", "public, no-transform")]),
            0
        ));
        assert!(!eligible(&get, &answer(&[]), 0));
        assert!(!eligible(&Method::HEAD, &answer(&[html]), 0));
        let mut partial = answer(&[html]);
        partial.set_status(206).unwrap();
        assert!(!eligible(&get, &partial, 0));
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
            let mut compressor = start(encoding, &mut resp).expect("compresses");
            assert_eq!(resp.headers["content-encoding"], encoding.as_str());
            assert!(!resp.headers.contains_key("content-length"));
            assert_eq!(resp.headers["etag"], "W/\"abc\"");
            let body = Bytes::from("hello ".repeat(1000));
            let mut out = compressor.encode(Some(&body), false).unwrap().to_vec();
            out.extend_from_slice(&compressor.encode(None, true).unwrap());
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
