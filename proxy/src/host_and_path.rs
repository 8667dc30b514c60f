//! A request's Host header, then its path and query, as the access log keeps them: in the
//! record itself when they fit, which most requests' do.
//!
//! The record is written by the request's worker thread and read and dropped by the log's
//! writer thread. Text on the heap would be allocated by the one and freed by the other, and
//! such a block, when the worker's allocator hands it out again, is still in the other core's
//! cache: the allocation waits for it. Within the record, the text costs no allocation and
//! travels with the record's own cache lines.

/// Bytes of host, path and query kept within the record (a short host and path, as most are);
/// longer text goes to the heap. The record is copied a few times on its way, so it stays small.
const INLINE: usize = 61;

#[derive(Clone)]
pub struct HostAndPath {
    text: Text,
}

#[derive(Clone)]
enum Text {
    Inline {
        len: u8,
        /// Where the host ends.
        host_len: u8,
        bytes: [u8; INLINE],
    },
    Heap {
        text: String,
        host_len: usize,
    },
}

impl Default for HostAndPath {
    fn default() -> HostAndPath {
        HostAndPath {
            text: Text::Inline {
                len: 0,
                host_len: 0,
                bytes: [0; INLINE],
            },
        }
    }
}

impl HostAndPath {
    /// The host alone; the path follows with [`HostAndPath::push_path`].
    pub fn with_host(host: &str) -> HostAndPath {
        let mut text = HostAndPath::default();
        text.push(host);
        match &mut text.text {
            Text::Inline { len, host_len, .. } => *host_len = *len,
            Text::Heap { host_len, .. } => *host_len = host.len(),
        }
        text
    }

    /// Appends the path and query.
    pub fn push_path(&mut self, path_and_query: &str) {
        self.push(path_and_query);
    }

    fn push(&mut self, s: &str) {
        match &mut self.text {
            Text::Inline {
                len,
                host_len,
                bytes,
            } => {
                let at = *len as usize;
                match bytes.get_mut(at..at + s.len()) {
                    Some(room) => {
                        room.copy_from_slice(s.as_bytes());
                        *len = (at + s.len()) as u8;
                    }
                    None => {
                        let host_len = *host_len as usize;
                        let mut text = String::with_capacity(at + s.len());
                        text.push_str(self.as_str());
                        text.push_str(s);
                        self.text = Text::Heap { text, host_len };
                    }
                }
            }
            Text::Heap { text, .. } => text.push_str(s),
        }
    }

    fn as_str(&self) -> &str {
        match &self.text {
            Text::Inline { len, bytes, .. } => {
                let bytes = &bytes[..*len as usize];
                // SAFETY: only whole `&str`s are ever copied in, one after another, so the bytes
                // up to `len` are UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Text::Heap { text, .. } => text,
        }
    }

    fn host_len(&self) -> usize {
        match &self.text {
            Text::Inline { host_len, .. } => *host_len as usize,
            Text::Heap { host_len, .. } => *host_len,
        }
    }

    pub fn host(&self) -> &str {
        self.as_str().get(..self.host_len()).unwrap_or("")
    }

    /// Path and query.
    pub fn path(&self) -> &str {
        self.as_str().get(self.host_len()..).unwrap_or("")
    }
}

impl std::fmt::Debug for HostAndPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAndPath")
            .field("host", &self.host())
            .field("path", &self.path())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_path_come_back_apart_inline_or_on_the_heap() {
        let mut short = HostAndPath::with_host("app.test");
        short.push_path("/a?b=1");
        assert_eq!((short.host(), short.path()), ("app.test", "/a?b=1"));
        assert!(matches!(short.text, Text::Inline { .. }));

        // Exactly full stays inline; one byte more moves it all to the heap.
        let host = "h".repeat(INLINE - 10);
        let mut full = HostAndPath::with_host(&host);
        full.push_path("/123456789");
        assert!(matches!(full.text, Text::Inline { .. }));
        assert_eq!((full.host(), full.path()), (host.as_str(), "/123456789"));
        let mut over = HostAndPath::with_host(&host);
        over.push_path("/1234567890");
        assert!(matches!(over.text, Text::Heap { .. }));
        assert_eq!((over.host(), over.path()), (host.as_str(), "/1234567890"));

        // A host too long on its own, and text that is not ASCII.
        let long = "é".repeat(INLINE);
        let mut heap = HostAndPath::with_host(&long);
        heap.push_path("/ü");
        assert_eq!((heap.host(), heap.path()), (long.as_str(), "/ü"));
        let empty = HostAndPath::default();
        assert_eq!((empty.host(), empty.path()), ("", ""));
    }
}
