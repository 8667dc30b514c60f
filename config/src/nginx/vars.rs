//! nginx's variables in the values switchback expands: `proxy_set_header X-Real-IP
//! $remote_addr` becomes `X-Real-IP = "$client_ip"`, `return 301 https://$host$request_uri` a
//! redirect to `"https://$host$request_uri"`.
//!
//! Both spell a variable `$name` or `${name}`; they differ in names (nginx's `$remote_addr` is
//! switchback's `$client_ip`) and in a `$` that starts no variable, which switchback writes `$$`
//! so that the value means the same whatever follows it. A value with a variable switchback has
//! no equivalent for is not translated at all: half a header is worse than a note.

/// What an nginx variable becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sub {
    /// switchback's variable of this name.
    Var(&'static str),
    /// Text that is the same for every request (`$server_name` is the server block's first
    /// name).
    Text(String),
}

/// The nginx variables a request header value may use, by their switchback names.
pub(super) fn header_var(name: &str) -> Option<Sub> {
    let var = match name {
        "remote_addr" => "client_ip",
        "host" => "host",
        "scheme" => "scheme",
        "request_id" => "request_id",
        "remote_port" => "remote_port",
        _ => return None,
    };
    Some(Sub::Var(var))
}

/// What request header values may use, for notes.
pub(super) const HEADER_VARS: &str =
    "$remote_addr (as $client_ip), $host, $scheme, $request_id and $remote_port";

/// The nginx variables a redirect may use; `$server_name` is written out as `server_name`.
pub(super) fn redirect_var(name: &str, server_name: Option<&str>) -> Option<Sub> {
    let var = match name {
        "host" => "host",
        "request_uri" => "request_uri",
        "scheme" => "scheme",
        "server_port" => "server_port",
        "server_name" => return server_name.map(|n| Sub::Text(n.to_string())),
        _ => return None,
    };
    Some(Sub::Var(var))
}

/// What redirects may use, for notes.
pub(super) const REDIRECT_VARS: &str =
    "$host, $request_uri, $scheme, $server_port and $server_name";

/// `text` with its nginx variables in switchback's spelling, by `sub`; `Err` names the first
/// variable `sub` has no equivalent for.
pub(super) fn translate(text: &str, sub: impl Fn(&str) -> Option<Sub>) -> Result<String, String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, more) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => ("", after),
            },
            None => {
                let end = after.find(|c| !name_char(c)).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.is_empty() {
            out.push_str("$$");
            rest = after;
            continue;
        }
        match sub(name).ok_or_else(|| format!("${name}"))? {
            // `${name}` where a letter follows, which would otherwise lengthen the name.
            Sub::Var(var) if more.starts_with(name_char) => out.push_str(&format!("${{{var}}}")),
            Sub::Var(var) => out.push_str(&format!("${var}")),
            Sub::Text(text) => out.push_str(&text.replace('$', "$$")),
        }
        rest = more;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Template, HEADER_VARS as SWITCHBACK_HEADER_VARS};

    #[test]
    fn variables_are_renamed_and_a_lone_dollar_is_escaped() {
        let header = |text: &str| translate(text, header_var);
        assert_eq!(header("$remote_addr").unwrap(), "$client_ip");
        assert_eq!(header("${host}x").unwrap(), "${host}x");
        assert_eq!(
            header("for=$remote_addr:$remote_port").unwrap(),
            "for=$client_ip:$remote_port"
        );
        assert_eq!(header("5$ or $").unwrap(), "5$$ or $$");
        assert_eq!(header("plain").unwrap(), "plain");
        assert_eq!(header("$http_x_user").unwrap_err(), "$http_x_user");
        // A regex capture is nginx's too, and means nothing to switchback.
        assert_eq!(header("$1").unwrap_err(), "$1");
        // What comes out is what switchback's own parser reads back.
        for text in [
            "$remote_addr",
            "${host}x",
            "5$ or $",
            "a$request_id-$scheme",
        ] {
            let out = header(text).unwrap();
            Template::parse(&out, SWITCHBACK_HEADER_VARS)
                .unwrap_or_else(|e| panic!("{text} -> {out}: {e}"));
        }
        let redirect = |text: &str, name| translate(text, |v| redirect_var(v, name));
        assert_eq!(
            redirect("https://$server_name$request_uri", Some("a.test")).unwrap(),
            "https://a.test$request_uri"
        );
        assert_eq!(
            redirect("https://$server_name$request_uri", None).unwrap_err(),
            "$server_name"
        );
        assert_eq!(
            redirect("https://$host:$server_port$request_uri", None).unwrap(),
            "https://$host:$server_port$request_uri"
        );
    }
}
