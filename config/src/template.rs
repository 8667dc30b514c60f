//! Values with variables in them: `request_headers` values (`X-Real-IP = "$client_ip"`) and a
//! redirect's `to` (`"https://example.com$request_uri"`).
//!
//! A variable is `$name` or `${name}` (for a name followed by a letter); `$$` is a `$`. A `$`
//! followed by anything else is itself. Which variables a value may use depends on where it is:
//! validation refuses the others, so the proxy expands only what it knows.

use std::fmt;

/// What a variable stands for, per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address, after `trusted_proxies` and the PROXY protocol.
    ClientIp,
    /// The request's host name: no port, lower case.
    Host,
    /// `http` or `https`.
    Scheme,
    /// The request's id: the `X-Request-ID` it came with, or a new random 128-bit hex one.
    RequestId,
    /// The client's port, as the connection (or its PROXY header) has it.
    RemotePort,
    /// The path and query as the client sent them.
    RequestUri,
    /// The port of the listener that took the request.
    ServerPort,
}

impl Var {
    const ALL: [Var; 7] = [
        Var::ClientIp,
        Var::Host,
        Var::Scheme,
        Var::RequestId,
        Var::RemotePort,
        Var::RequestUri,
        Var::ServerPort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Var::ClientIp => "client_ip",
            Var::Host => "host",
            Var::Scheme => "scheme",
            Var::RequestId => "request_id",
            Var::RemotePort => "remote_port",
            Var::RequestUri => "request_uri",
            Var::ServerPort => "server_port",
        }
    }

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The variables a request header value may use.
pub const HEADER_VARS: &[Var] = &[
    Var::ClientIp,
    Var::Host,
    Var::Scheme,
    Var::RequestId,
    Var::RemotePort,
];

/// The variables a redirect may use.
pub const REDIRECT_VARS: &[Var] = &[Var::Host, Var::RequestUri, Var::Scheme, Var::ServerPort];

/// One piece of a value: text as written, or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// A value split into its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// Splits `text`, refusing variables not in `allowed`.
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(more) = after.strip_prefix('$') {
                literal.push('$');
                rest = more;
                continue;
            }
            let (name, more) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], &braced[end + 1..]),
                    None => return Err(format!("\"${{\" without its \"}}\" in {text:?}")),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                // Not a variable: a price, a regex anchor, a lone "$".
                literal.push('$');
                rest = after;
                continue;
            }
            let var = Var::from_name(name)
                .filter(|v| allowed.contains(v))
                .ok_or_else(|| {
                    let known: Vec<String> =
                        allowed.iter().map(|v| format!("${}", v.name())).collect();
                    format!(
                        "${name} is not a variable here: use {} (write $$ for a \"$\")",
                        known.join(", ")
                    )
                })?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(var));
            rest = more;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The value has no variable: it is the same for every request.
    pub fn fixed(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Piece::Text(text)] => Some(text),
            _ => None,
        }
    }

    pub fn uses(&self, var: Var) -> bool {
        self.0.contains(&Piece::Var(var))
    }

    /// The value with each variable's value from `value`.
    pub fn expand(&self, out: &mut String, mut value: impl FnMut(Var, &mut String)) {
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => value(*var, out),
            }
        }
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str) -> Result<String, String> {
        let template = Template::parse(text, HEADER_VARS)?;
        let mut out = String::new();
        template.expand(&mut out, |var, out| {
            out.push_str(match var {
                Var::ClientIp => "203.0.113.7",
                Var::Host => "example.com",
                _ => "?",
            })
        });
        Ok(out)
    }

    #[test]
    fn variables_are_expanded_and_the_rest_kept_as_written() {
        assert_eq!(expand("$client_ip").unwrap(), "203.0.113.7");
        assert_eq!(expand("for=$client_ip;by").unwrap(), "for=203.0.113.7;by");
        assert_eq!(expand("${host}name").unwrap(), "example.comname");
        assert_eq!(expand("$$5 and $ and $9").unwrap(), "$5 and $ and $9");
        assert_eq!(expand("plain").unwrap(), "plain");
        assert_eq!(
            Template::parse("plain", HEADER_VARS).unwrap().fixed(),
            Some("plain")
        );
        assert_eq!(Template::parse("$host", HEADER_VARS).unwrap().fixed(), None);
        assert_eq!(
            Template::parse("a$$b", HEADER_VARS).unwrap().fixed(),
            Some("a$b")
        );
    }

    #[test]
    fn unknown_or_misplaced_variables_are_refused_with_the_known_ones() {
        let e = expand("$remote_addr").unwrap_err();
        assert!(e.contains("$remote_addr is not a variable here"), "{e}");
        assert!(e.contains("$client_ip"), "{e}");
        // $request_uri belongs to redirects.
        assert!(expand("$request_uri").is_err());
        assert!(Template::parse("https://x$request_uri", REDIRECT_VARS).is_ok());
        assert!(Template::parse("$client_ip", REDIRECT_VARS).is_err());
        assert!(expand("${host").is_err());
    }
}
