//! nginx's config syntax: words, quoted strings, `;`, blocks, comments and `include`s.

use std::path::{Path, PathBuf};

/// One directive: `name args…;` or `name args… { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// Splits nginx config text into tokens, each with its line.
fn tokenize(path: &Path, text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let error = |line: usize, message: &str| ParseError::Syntax {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    };
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                let token = match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                };
                tokens.push((token, line));
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(error(start, "a quoted string is not closed")),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(e) if e == c || e == '\\' => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => return Err(error(start, "a quoted string is not closed")),
                        },
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}') {
                        break;
                    }
                    if ch == '\\' {
                        chars.next();
                        if let Some(e) = chars.next() {
                            word.push(e);
                        }
                        continue;
                    }
                    word.push(ch);
                    chars.next();
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

/// Parses `path` and every file it includes (relative includes are taken from the directory of
/// the main file, as nginx takes them from its config prefix).
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut seen = Vec::new();
    parse_one(path, &base, &mut seen)
}

fn parse_one(
    path: &Path,
    base: &Path,
    seen: &mut Vec<PathBuf>,
) -> Result<Vec<Directive>, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParseError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if seen.iter().any(|p| p == path) {
        return Err(ParseError::Syntax {
            path: path.to_path_buf(),
            line: 1,
            message: "includes itself".into(),
        });
    }
    seen.push(path.to_path_buf());
    let tokens = tokenize(path, &text)?;
    let mut at = 0;
    let directives = block(path, base, &tokens, &mut at, seen, None)?;
    seen.pop();
    Ok(directives)
}

fn block(
    path: &Path,
    base: &Path,
    tokens: &[(Token, usize)],
    at: &mut usize,
    seen: &mut Vec<PathBuf>,
    opened_at: Option<usize>,
) -> Result<Vec<Directive>, ParseError> {
    let error = |line: usize, message: String| ParseError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut directives = Vec::new();
    loop {
        let Some((token, line)) = tokens.get(*at) else {
            return match opened_at {
                Some(l) => Err(error(l, "this block is not closed".into())),
                None => Ok(directives),
            };
        };
        *at += 1;
        let (name, line) = match token {
            Token::Close if opened_at.is_some() => return Ok(directives),
            Token::Word(w) => (w.clone(), *line),
            other => return Err(error(*line, format!("unexpected {other:?}"))),
        };
        let mut args = Vec::new();
        let body = loop {
            match tokens.get(*at) {
                Some((Token::Word(w), _)) => {
                    args.push(w.clone());
                    *at += 1;
                }
                Some((Token::Semicolon, _)) => {
                    *at += 1;
                    break None;
                }
                Some((Token::Open, _)) => {
                    *at += 1;
                    break Some(block(path, base, tokens, at, seen, Some(line))?);
                }
                _ => return Err(error(line, format!("{name}: missing ';'"))),
            }
        };
        if name == "include" && body.is_none() && args.len() == 1 {
            let files = expand(base, &args[0]);
            if files.iter().all(|f| f.is_file()) {
                for file in files {
                    directives.extend(parse_one(&file, base, seen)?);
                }
                continue;
            }
            // A file that is not there (mime.types next to a copied config, say) is reported
            // by the translation, not fatal.
        }
        directives.push(Directive {
            name,
            args,
            block: body,
            file: path.to_path_buf(),
            line,
        });
    }
}

/// The files an `include` names: a path, or a glob with `*` and `?` in its last part (sorted,
/// as nginx reads them). A glob that matches nothing is no error, as in nginx.
fn expand(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![full];
    }
    let dir = full.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .filter(|e| e.path().is_file())
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_quotes_comments_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("nginx.conf");
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(dir.path().join("conf.d/b.conf"), "server { listen 81; }\n").unwrap();
        std::fs::write(dir.path().join("conf.d/a.conf"), "server { listen 80; }\n").unwrap();
        std::fs::write(dir.path().join("conf.d/skip.txt"), "garbage {").unwrap();
        std::fs::write(
            &main,
            "# a comment\nhttp {\n  add_header X-A \"a; b\" always; # trailing\n  add_header 'X-B' 'it\\'s';\n  include conf.d/*.conf;\n}\n",
        )
        .unwrap();
        let tree = parse_file(&main).unwrap();
        assert_eq!(tree.len(), 1);
        let http = tree[0].block.as_ref().unwrap();
        assert_eq!(http[0].args, ["X-A", "a; b", "always"]);
        assert_eq!(http[0].line, 3);
        assert_eq!(http[1].args, ["X-B", "it's"]);
        let listens: Vec<&str> = http[2..]
            .iter()
            .map(|s| s.block.as_ref().unwrap()[0].args[0].as_str())
            .collect();
        assert_eq!(listens, ["80", "81"], "includes in name order");
        assert!(http[2].file.ends_with("conf.d/a.conf"));
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("nginx.conf");
        for (text, expect) in [
            ("http {\n  listen 80\n}\n", ":2: listen: missing ';'"),
            ("http {\n  server {\n", ":2: this block is not closed"),
            ("add_header \"open;\n", ":1: a quoted string is not closed"),
            ("}\n", ":1: unexpected Close"),
        ] {
            std::fs::write(&main, text).unwrap();
            let e = parse_file(&main).unwrap_err().to_string();
            assert!(e.ends_with(expect), "{e} / {expect}");
        }
        let e = parse_file(&dir.path().join("absent.conf")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
