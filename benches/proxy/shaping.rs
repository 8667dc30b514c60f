//! `shaping`: what a service's header rules and compression cost.
//!
//! Three same-round comparisons, each in alternating wrk rounds:
//! - switchback with six header rules (four on answers, two on requests) against the same proxy
//!   without, on the upstream's tiny answer, where the rules weigh most;
//! - switchback compressing a 4 KiB HTML page with gzip against the same proxy passing it as it
//!   is, both asked with `Accept-Encoding: gzip`;
//! - switchback's gzip against nginx's (`gzip on`, the same level 6 and minimum length), on the
//!   same page: the peer a user would otherwise put there.

use std::sync::LazyLock;

use super::{alternate, alternate_on, free_port, nginx_bin, nginx_conf, start, Bench, Options};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The upstream's `/page`: 4 KiB of HTML-like text, as a server-rendered page would be.
pub static PAGE: LazyLock<String> = LazyLock::new(|| {
    "<p>switchback moves traffic between pools of backends without dropping a request</p> "
        .chars()
        .cycle()
        .take(4096)
        .collect()
});

/// Writes [`PAGE`] into `dir` for the upstream to serve, and returns its path.
pub fn page_file(dir: &Path) -> PathBuf {
    let path = dir.join("page.html");
    std::fs::write(&path, PAGE.as_bytes()).unwrap();
    path
}

const RULES: &str = "[services.app.response_headers]\n\
    Strict-Transport-Security = \"max-age=31536000\"\nX-Frame-Options = \"SAMEORIGIN\"\n\
    X-Content-Type-Options = \"nosniff\"\nServer = \"\"\n\
    [services.app.request_headers]\nX-Request-Source = \"switchback\"\nUser-Agent = \"\"\n";

const NO_LOG: &str = "[access_log]\nenabled = false\n";

pub fn shaping(bench: &Bench, o: &Options) {
    let (rules_port, plain_port, gzip_port, nginx_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (_rules, _) = bench.switchback_with(rules_port, &format!("{RULES}{NO_LOG}"));
    let (_plain, _) = bench.switchback(plain_port);
    println!(
        "\n== shaping: 6 header rules against none; wrk -t1 -c{} -d{}s, {} rounds",
        o.connections, o.seconds, o.rounds
    );
    alternate(("rules", "plain"), (rules_port, plain_port), &[], o);

    let (_gzip, _) = bench.switchback_with(gzip_port, &format!("compress = [\"gzip\"]\n{NO_LOG}"));
    let gzip = &["Accept-Encoding: gzip"];
    println!(
        "\n== shaping: gzip of a {}-byte text/html page against passing it as it is",
        PAGE.len()
    );
    alternate_on(("gzip", "plain"), (gzip_port, plain_port), "/page", gzip, o);

    let _nginx = start(
        "nginx",
        nginx_gzip(bench, nginx_port),
        nginx_port,
        &bench.dir,
    );
    println!(
        "\n== shaping: switchback's gzip against nginx's (level 6, min length 1024), same page"
    );
    alternate_on(
        ("switchback", "nginx"),
        (gzip_port, nginx_port),
        "/page",
        gzip,
        o,
    );
}

/// nginx in front of the blue upstream, compressing as switchback does.
fn nginx_gzip(bench: &Bench, port: u16) -> Command {
    let conf = nginx_conf(
        &bench.dir.join(format!("nginx-gzip-{port}")),
        &format!(
            "upstream app {{ server 127.0.0.1:{}; keepalive 64; }}\n\
             gzip on; gzip_comp_level 6; gzip_min_length 1024; gzip_vary on; gzip_proxied any;\n\
             server {{ listen 127.0.0.1:{port}; access_log off;\n\
               location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            bench.upstream_blue
        ),
    );
    let mut cmd = Command::new(nginx_bin());
    cmd.args(["-e", "stderr", "-c"]).arg(&conf);
    cmd
}
