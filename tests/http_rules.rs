//! What a service does to the HTTP it carries, against the real binary with real clients:
//! header rules set and remove headers both ways, answers are compressed with gzip, br and zstd
//! only when they should be, and request bodies over the limit get 413 before the backend has
//! them.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_set_and_remove_headers_on_requests_and_answers() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         [services.app.request_headers]\nX-Env = \"prod\"\nUser-Agent = \"\"\n\
         [services.app.response_headers]\nX-Frame-Options = \"SAMEORIGIN\"\nX-Content-Type-Options = \"nosniff\"\nX-Pool = \"\"\n",
        app.addr
    ));
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    conn.host = "www.example.com".into();
    let answer = conn
        .get_with("/headers", &[("user-agent", "curl/8"), ("x-env", "dev")])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let seen: Vec<&str> = answer.body.lines().collect();
    assert!(seen.contains(&"x-env: prod"), "{seen:?}");
    assert!(
        !seen.iter().any(|l| l.starts_with("x-env: dev")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.starts_with("user-agent")),
        "{seen:?}"
    );
    // The client's Host reaches the backend as it was sent.
    assert!(seen.contains(&"host: www.example.com"), "{seen:?}");
    assert_eq!(answer.headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    assert!(
        !answer.headers.contains_key("x-pool"),
        "{:?}",
        answer.headers
    );
}

fn decode(encoding: &str, raw: &[u8]) -> String {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(raw)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(raw, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(raw).unwrap(),
        other => panic!("no decoder for {other}"),
    }
    String::from_utf8(out).unwrap()
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_answers_are_compressed_once_and_only_when_worth_it() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\ncompress = [\"zstd\", \"br\", \"gzip\"]\n",
        app.addr
    ));
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let original = sample_text(20_000);
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        // A browser's list: the service's first choice among what it takes.
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5", "gzip"),
    ] {
        for chunked in ["", "&chunked=1"] {
            let path = format!("/text?bytes=20000&type=text%2Fhtml{chunked}");
            let answer = conn
                .get_with(&path, &[("accept-encoding", accept)])
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(
                header(&answer, "content-encoding"),
                expected,
                "{accept} {path}"
            );
            assert_eq!(header(&answer, "vary"), "Accept-Encoding");
            assert!(
                answer.raw.len() < original.len() / 5,
                "{accept}: {}",
                answer.raw.len()
            );
            assert_eq!(decode(expected, &answer.raw), original, "{accept} {path}");
        }
    }
    let plain = |answer: &Answer, what: &str| {
        assert_eq!(answer.status, 200, "{what}");
        assert_eq!(header(answer, "content-encoding"), "", "{what}");
    };
    // Below compress_min_length (1024 by default), by its Content-Length.
    let short = conn
        .get_with("/text?bytes=1000", &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    plain(&short, "short");
    assert_eq!(short.body, sample_text(1000));
    // A type that is not text.
    let image = conn
        .get_with(
            "/text?bytes=5000&type=image%2Fpng",
            &[("accept-encoding", "gzip")],
        )
        .await
        .unwrap();
    plain(&image, "image");
    assert_eq!(image.raw.len(), 5000);
    // A client that takes none of the service's encodings gets the text as it is, and the
    // answer still says it depends on Accept-Encoding.
    let identity = conn
        .get_with("/text?bytes=5000", &[("accept-encoding", "deflate")])
        .await
        .unwrap();
    plain(&identity, "identity");
    assert_eq!(header(&identity, "vary"), "Accept-Encoding");
    assert_eq!(identity.body, sample_text(5000));
    // What the backend encoded itself goes through untouched: not compressed again.
    let encoded = conn
        .get_with(
            "/text?bytes=5000&encoding=br",
            &[("accept-encoding", "gzip, br, zstd")],
        )
        .await
        .unwrap();
    assert_eq!(header(&encoded, "content-encoding"), "br");
    assert_eq!(encoded.raw, sample_text(5000).as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_answers_lose_their_length_and_ranges_and_weaken_their_etag() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\ncompress = [\"gzip\"]\n",
        app.addr
    ));
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let answer = conn
        .get_with("/text?bytes=5000&etag=v1", &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(header(&answer, "content-encoding"), "gzip");
    assert_eq!(header(&answer, "etag"), "W/\"v1\"");
    assert_eq!(header(&answer, "accept-ranges"), "");
    assert_eq!(header(&answer, "content-length"), "");
    assert_eq!(header(&answer, "transfer-encoding"), "chunked");
    assert_eq!(decode("gzip", &answer.raw), sample_text(5000));
    // Uncompressed, the same answer keeps all three.
    let plain = conn.get("/text?bytes=5000&etag=v1").await.unwrap();
    assert_eq!(header(&plain, "etag"), "\"v1\"");
    assert_eq!(header(&plain, "accept-ranges"), "bytes");
    assert_eq!(header(&plain, "content-length"), "5000");
    // A HEAD is never compressed: it says the uncompressed length.
    let head = conn
        .send(
            "HEAD",
            "/text?bytes=5000",
            &[("accept-encoding", "gzip")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(header(&head, "content-encoding"), "");
    assert_eq!(header(&head, "content-length"), "5000");

    // An HTTP/1.0 client takes no chunks: the compressed body is ended by the close, whether
    // the backend's answer had a length or came in chunks.
    for chunked in ["", "&chunked=1"] {
        let mut s = raw_connect(proxy.addr());
        write!(
            s,
            "GET /text?bytes=20000{chunked} HTTP/1.0\r\nHost: app.test\r\n\
             Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        if let Err(e) = s.read_to_end(&mut all) {
            panic!(
                "{e}: {:?}",
                String::from_utf8_lossy(&all[..all.len().min(400)])
            );
        }
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(
            decode("gzip", &all[split..]),
            sample_text(20_000),
            "{chunked}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_off_unless_a_service_asks_for_it() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        app.addr
    ));
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let answer = conn
        .get_with("/text?bytes=20000", &[("accept-encoding", "gzip, br")])
        .await
        .unwrap();
    assert_eq!(header(&answer, "content-encoding"), "");
    assert_eq!(header(&answer, "vary"), "");
    assert_eq!(answer.body, sample_text(20_000));
}

/// Sends `head` (and `body`) on a new connection and reads the answer.
fn post_raw(proxy: &Proxy, head: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = raw_connect(proxy.addr());
    s.write_all(head.as_bytes()).unwrap();
    // A proxy that answers early may close before it has read all of this: that is its right.
    let _ = s.write_all(body);
    read_raw_answer(&mut s)
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(format!("{:X}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn bodies_over_the_limit_get_413_and_never_reach_the_backend_whole() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start_with_server(
        "max_request_body = \"4k\"",
        &format!(
            "[services.app]\nhosts = [\"app.test\"]\nactive = \"blue\"\npools.blue = [\"{0}\"]\nmax_request_body = \"10k\"\n\
             [services.small]\nhosts = [\"small.test\"]\nactive = \"blue\"\npools.blue = [\"{0}\"]\n",
            app.addr
        ),
    );
    let post = |host: &str, length: usize| {
        format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: {length}\r\n\r\n")
    };
    // Under the service's own limit, with a length and chunked: the backend has both.
    let fits = vec![b'a'; 10 * 1024];
    assert_eq!(
        post_raw(&proxy, &post("app.test", fits.len()), &fits)
            .unwrap()
            .0,
        200
    );
    let head = "POST /upload HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(
        post_raw(&proxy, head, &chunked(&fits, 1000)).unwrap().0,
        200
    );
    assert_eq!(app.complete_bodies.load(Ordering::SeqCst), 2);
    let requests = app.requests.load(Ordering::SeqCst);

    // A declared length over the limit: 413 at once, the body never sent, nothing proxied.
    let (status, body) = post_raw(&proxy, &post("app.test", 10 * 1024 + 1), b"").unwrap();
    assert_eq!(status, 413);
    assert!(body.contains("max_request_body"), "{body}");
    // A service without a limit of its own has the server's.
    assert_eq!(
        post_raw(&proxy, &post("small.test", 5000), b"").unwrap().0,
        413
    );
    assert_eq!(app.requests.load(Ordering::SeqCst), requests);

    // Chunked, crossing the limit: cut with 413; the backend never gets the whole body.
    let over = vec![b'b'; 16 * 1024];
    let (status, _) = post_raw(&proxy, head, &chunked(&over, 1024)).unwrap();
    assert_eq!(status, 413);
    assert_eq!(app.complete_bodies.load(Ordering::SeqCst), 2);
    assert_eq!(
        proxy.metric("switchback_client_errors_total{reason=\"body_too_large\"}"),
        Some(3.0)
    );
    // The proxy serves on.
    assert_eq!(
        post_raw(&proxy, &post("app.test", 5), b"hello").unwrap().0,
        200
    );
}
