//! `switchback import nginx`: reads an nginx config (following its `include`s) and writes the
//! switchback config that does the same, with every directive it could not carry over named by
//! file and line.
//!
//! [`parse`] turns nginx's syntax into a tree of directives; [`translate`] maps the tree onto
//! switchback's keys, with [`servers`] deciding where each service is routed (listeners,
//! default servers, redirects) and [`vars`] renaming nginx's variables. nginx's grammar is
//! small: words separated by blanks, `;` ending a directive, `{ … }` a block, `#` a comment to
//! the end of the line, and single- or double-quoted words with backslash escapes.

mod parse;
mod servers;
mod translate;
mod vars;

pub use parse::{parse_file, Directive, ParseError};
pub use translate::{translate, Import, Untranslated};

use std::path::Path;

/// Reads `path` (and what it includes) and translates it.
pub fn import(path: &Path) -> Result<Import, ParseError> {
    let directives = parse_file(path)?;
    Ok(translate(&directives))
}
