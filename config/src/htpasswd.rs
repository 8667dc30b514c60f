//! htpasswd files, as Apache's `htpasswd` writes them, for `basic_auth`: one `user:hash` a
//! line, with bcrypt (`$2y$`, `-B`), SHA-256 and SHA-512 crypt (`$5$`, `$6$`, `-2`/`-5`) and
//! APR1 (`$apr1$`, `-m`, the default) hashes; MD5 crypt (`$1$`) too, which nginx also reads.
//!
//! Plain-text and `{SHA}` entries (`-p`, `-s`) are refused at load: the first is no hash at
//! all, the second an unsalted SHA-1 that a lookup table reverses.

use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use sha_crypt::{PasswordVerifier, ShaCrypt};

/// The users of one htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Htpasswd {
    pub path: PathBuf,
    /// `(user, hash)`, in the file's order; a user listed twice is refused at load.
    users: Vec<(String, String)>,
    /// A hash of the contents: credentials checked against one version of the file are not
    /// believed for another, and a reload of the same contents changes nothing.
    pub generation: u64,
}

impl Htpasswd {
    /// Reads and checks the file; an error names the file and line.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        Htpasswd::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Htpasswd, String> {
        let mut users: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("{}: not a user:hash line", at()));
            };
            if user.is_empty() {
                return Err(format!("{}: the user name is empty", at()));
            }
            if users.iter().any(|(u, _)| u == user) {
                return Err(format!("{}: user {user:?} is listed twice", at()));
            }
            if let Err(e) = kind(hash) {
                return Err(format!("{}: user {user:?}: {e}", at()));
            }
            users.push((user.to_string(), hash.to_string()));
        }
        if users.is_empty() {
            return Err(format!(
                "{}: lists no user: add one with `htpasswd -B {} NAME`",
                path.display(),
                path.display()
            ));
        }
        let generation = {
            use std::hash::Hasher;
            let mut h = std::hash::DefaultHasher::new();
            h.write(text.as_bytes());
            h.finish()
        };
        Ok(Htpasswd {
            path: path.to_path_buf(),
            users,
            generation,
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Costs what the user's hash costs (bcrypt and SHA crypt
    /// are slow on purpose): callers cache the answer.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some((_, hash)) = self.users.iter().find(|(u, _)| u == user) else {
            return false;
        };
        match kind(hash) {
            Ok(Kind::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
            Ok(Kind::ShaCrypt) => ShaCrypt::default()
                .verify_password(password, hash.as_str())
                .is_ok(),
            Ok(Kind::Md5(magic)) => {
                let rest = &hash[magic.len()..];
                let salt = rest.split('$').next().unwrap_or("");
                let computed = md5_crypt(password, salt.as_bytes(), magic);
                constant_time_eq(computed.as_bytes(), hash.as_bytes())
            }
            Err(_) => false,
        }
    }
}

enum Kind {
    Bcrypt,
    ShaCrypt,
    /// MD5 crypt, with its magic: `$apr1$` or `$1$`.
    Md5(&'static str),
}

fn kind(hash: &str) -> Result<Kind, String> {
    if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
        return Ok(Kind::Bcrypt);
    }
    if hash.starts_with("$5$") || hash.starts_with("$6$") {
        return Ok(Kind::ShaCrypt);
    }
    for magic in ["$apr1$", "$1$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            return match rest.split_once('$') {
                Some((salt, digest)) if !salt.is_empty() && digest.len() == 22 => {
                    Ok(Kind::Md5(magic))
                }
                _ => Err(format!("{magic} hash is malformed")),
            };
        }
    }
    if hash.starts_with("{SHA}") {
        return Err("{SHA} is unsalted SHA-1, which is refused: write the entry again with `htpasswd -B` (bcrypt)".into());
    }
    Err("not a bcrypt ($2y$), SHA-crypt ($5$, $6$) or APR1 ($apr1$) hash; plain-text passwords are refused: write the entry again with `htpasswd -B` (bcrypt)".into())
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MD5 crypt (Poul-Henning Kamp's), with `magic` `$1$` or Apache's `$apr1$`: the full hash
/// string for `password` and `salt` (at most 8 characters of it are used).
fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic.as_bytes());
    ctx.update(salt);
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut digest: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize().into();
    }
    let mut out = String::with_capacity(magic.len() + salt.len() + 23);
    out.push_str(magic);
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut push = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let d = |i: usize| digest[i] as u32;
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push(d(11), 2);
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes an htpasswd file in `dir` with one user, bob (password hunter2, bcrypt), for the
    /// tests of configs that name one.
    pub(crate) fn write_bob(dir: &Path) -> PathBuf {
        let path = dir.join("users");
        std::fs::write(
            &path,
            "bob:$2y$04$oNaRnAmvhQSfY010Whl6hO7DiDA7SW2dHCTIeYxtQXkgi4xVWXO9e\n",
        )
        .unwrap();
        path
    }

    // Written by Debian's `htpasswd` (apache2-utils 2.4): -m, -B -C 4, -5, -2.
    const FILE: &str = "\
alice:$apr1$ip0X0PP2$8og/wHGk..NneTYr7RzVj/
bob:$2y$04$oNaRnAmvhQSfY010Whl6hO7DiDA7SW2dHCTIeYxtQXkgi4xVWXO9e
# a comment, and a blank line

carol:$6$oaZFUvsa92AV0B6i$zgDFh3EhN06gwe8W2slFXAaVyRViwP0L0wAPJ7/MvhJB8Fu2izlRT.OMat0fVifExka8VBwZ6lLWAAvo7PBJD/
dave:$5$BBNSpJLYdEs.UMTw$7Ez1V5jlICRgWFJnnh73vOyGqRbZ4kr6DbKrZB5dRo6
";

    fn file() -> Htpasswd {
        Htpasswd::parse(Path::new("users"), FILE).unwrap()
    }

    #[test]
    fn each_kind_of_hash_checks_its_password() {
        let f = file();
        assert_eq!(f.len(), 4);
        for (user, password) in [
            ("alice", "secret"),
            ("bob", "hunter2"),
            ("carol", "pw"),
            ("dave", "pw2"),
        ] {
            assert!(f.verify(user, password.as_bytes()), "{user}");
            assert!(!f.verify(user, b"wrong"), "{user}");
            assert!(!f.verify(user, b""), "{user}");
        }
        assert!(!f.verify("mallory", b"secret"));
        // One user's password is not another's.
        assert!(!f.verify("bob", b"secret"));
    }

    #[test]
    fn md5_crypt_matches_the_reference() {
        // As `openssl passwd -1 -salt saltstri password` prints it: the salt is cut at 8.
        assert_eq!(
            md5_crypt(b"password", b"saltstring", "$1$"),
            "$1$saltstri$qQY4WxjABChYG1ccLpfkz/"
        );
    }

    #[test]
    fn weak_and_broken_entries_are_refused_with_their_line() {
        let e = Htpasswd::parse(
            Path::new("f"),
            "a:$apr1$x$y\nerin:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("f:1: user \"a\": $apr1$ hash is malformed"),
            "{e}"
        );
        let e = Htpasswd::parse(Path::new("f"), "erin:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n")
            .unwrap_err();
        assert!(
            e.starts_with("f:1: user \"erin\": {SHA} is unsalted"),
            "{e}"
        );
        let e = Htpasswd::parse(Path::new("f"), "\nfred:pw\n").unwrap_err();
        assert!(e.contains("f:2: user \"fred\": not a bcrypt"), "{e}");
        assert!(e.contains("plain-text passwords are refused"), "{e}");
        let e = Htpasswd::parse(Path::new("f"), "nocolon\n").unwrap_err();
        assert!(e.contains("f:1: not a user:hash line"), "{e}");
        let e = Htpasswd::parse(Path::new("f"), "# nobody\n").unwrap_err();
        assert!(e.contains("lists no user"), "{e}");
        let twice =
            format!("{FILE}alice:$2y$04$oNaRnAmvhQSfY010Whl6hO7DiDA7SW2dHCTIeYxtQXkgi4xVWXO9e\n");
        let e = Htpasswd::parse(Path::new("f"), &twice).unwrap_err();
        assert!(e.contains("\"alice\" is listed twice"), "{e}");
    }

    #[test]
    fn a_load_with_other_contents_is_another_generation() {
        let a = file();
        let b = Htpasswd::parse(Path::new("users"), &FILE.replace("dave", "dan")).unwrap();
        assert_ne!(a.generation, b.generation);
    }
}
