//! The access log: one line per request, written by a thread of its own.
//!
//! A worker only moves an [`AccessRecord`] into its thread's lane (`crate::lane`) to the writer
//! (no formatting, no I/O, no wake-up, no lock). The writer thread, at a lower priority than
//! the workers, takes what every lane holds every 10 ms, formats each record (JSON lines or the combined log format) and writes them in
//! one go. When the writer falls behind and a thread's lane is full, the record is dropped and
//! counted (`switchback_access_log_dropped_total`) rather than ever making a request wait. A
//! log file that is moved away (logrotate) is noticed within a second and opened anew.
//!
//! A lane per thread, rather than one queue for all: a queue's slot was last touched by the
//! writer on another core, and a worker waited on that cache line for every record it queued;
//! a lock per thread still cost two locked instructions a record, the second waiting on the
//! record's stores. A lane takes one plain store a record. And a record carries only the
//! [`Instant`] its request ended (read anyway for its duration), which the writer turns into
//! the time of day, so the request path reads the clock once less.
//!
//! A process that is about to exit calls [`AccessLog::flush`], which returns once every record
//! logged before the call is written: no exit path may lose the lines of its last requests.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;

pub use crate::host_and_path::HostAndPath;
use crate::lane;
use crate::request_id::RequestId;
use crate::text::{push_ip, push_padded, push_u64};

/// How a line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// The combined log format of Apache and nginx, followed by duration, service, pool and
    /// backend.
    Combined,
}

/// Everything a line says about one request.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// When the request ended; the writer tells the time of day from it.
    pub ended: Instant,
    pub client: Option<IpAddr>,
    /// The Host header, then the path and query, as the client sent them.
    pub host_and_path: HostAndPath,
    pub method: http::Method,
    /// The pool was forced by an override, not chosen by the split.
    pub forced: bool,
    /// Attempts after the first: the answer came from a retry when this is above 0.
    pub retries: u32,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub service: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    /// The backend connection was an idle keep-alive one (None: no backend connection).
    pub reused: Option<bool>,
    /// Refused by an access rule, for this reason (`deny`, `auth`, `rate`).
    pub denied: Option<&'static str>,
    /// `$request_id`; None: one the log makes (the request had none, and sent none on).
    pub request_id: Option<RequestId>,
}

impl AccessRecord {
    pub fn host(&self) -> &str {
        self.host_and_path.host()
    }

    /// Path and query.
    pub fn path(&self) -> &str {
        self.host_and_path.path()
    }
}

/// The sending side, cloned into every worker.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    /// Asks the writer to write out everything logged so far; it answers on the sender. The
    /// writer stops once every sender is gone.
    flush_tx: Sender<Sender<()>>,
    dropped: IntCounter,
}

/// What the workers and the writer of one log share.
struct Shared {
    /// The writer's end of every thread's lane, from the first record the thread logged on.
    /// Locked by a worker once, to add its lane.
    lanes: Mutex<Vec<lane::Receiver<AccessRecord>>>,
    /// Records a thread's lane holds at most.
    cap: usize,
}

thread_local! {
    /// This thread's lane in each log it logged to (one, but for tests).
    static LANES: RefCell<Vec<(Weak<Shared>, lane::Sender<AccessRecord>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Records a thread's lane holds at most: over a second of a busy thread's requests, the
/// writer taking them every 10 ms.
const LANE_CAP: usize = 65_536;

impl AccessLog {
    /// Starts the writer thread. `path` None means standard output.
    pub fn start(
        format: Format,
        path: Option<PathBuf>,
        dropped: IntCounter,
    ) -> io::Result<AccessLog> {
        let sink = Sink::open(path)?;
        let shared = Arc::new(Shared {
            lanes: Mutex::default(),
            cap: LANE_CAP,
        });
        let (flush_tx, flush_rx) = channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access log".into())
            .spawn(move || {
                yield_to_workers();
                write_loop(&writer, flush_rx, sink, format)
            })?;
        Ok(AccessLog {
            shared,
            flush_tx,
            dropped,
        })
    }

    /// Waits until every record logged before this call is written and flushed, or `timeout`
    /// passes; says which. For exit paths: a process that exits without it loses what the
    /// writer had not reached yet.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = channel();
        if self.flush_tx.send(done_tx).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// Sends a record down this thread's lane to the writer; never waits. A record that finds
    /// the lane full, or its thread ending (its thread-locals gone), is dropped and counted.
    #[inline]
    pub fn log(&self, record: AccessRecord) {
        self.log_with(|| record);
    }

    /// As [`Self::log`], for the record `make` builds: built in its place in the lane, so the
    /// record (a few hundred bytes) is not copied on its way there. Not called when the record
    /// would be dropped.
    #[inline]
    pub fn log_with(&self, make: impl FnOnce() -> AccessRecord) {
        let kept = LANES.try_with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            let ours = Arc::as_ptr(&self.shared);
            let i = match lanes.iter().position(|(log, _)| Weak::as_ptr(log) == ours) {
                Some(i) => i,
                None => {
                    lanes.retain(|(log, _)| log.strong_count() > 0);
                    let (tx, rx) = lane::lane(self.shared.cap);
                    self.shared
                        .lanes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(rx);
                    lanes.push((Arc::downgrade(&self.shared), tx));
                    lanes.len() - 1
                }
            };
            lanes[i].1.send_with(make).is_ok()
        });
        if kept != Ok(true) {
            self.dropped.inc();
        }
    }
}

enum Sink {
    Stdout(io::BufWriter<io::Stdout>),
    File {
        path: PathBuf,
        file: io::BufWriter<std::fs::File>,
        inode: u64,
        checked: Instant,
    },
}

impl Sink {
    fn open(path: Option<PathBuf>) -> io::Result<Sink> {
        use std::os::unix::fs::MetadataExt;
        match path {
            None => Ok(Sink::Stdout(io::BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            ))),
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                let inode = file.metadata()?.ino();
                Ok(Sink::File {
                    path,
                    file: io::BufWriter::with_capacity(64 * 1024, file),
                    inode,
                    checked: Instant::now(),
                })
            }
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { file, .. } => file,
        }
    }

    /// Opens the file anew when it was moved or removed since it was opened.
    fn reopen_if_rotated(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Sink::File {
            path,
            file,
            inode,
            checked,
        } = self
        else {
            return;
        };
        if checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        *checked = Instant::now();
        let current = std::fs::metadata(&*path).map(|m| m.ino()).ok();
        if current != Some(*inode) {
            let _ = file.flush();
            if let Ok(Sink::File {
                file: f, inode: i, ..
            }) = Sink::open(Some(path.clone()))
            {
                *file = f;
                *inode = i;
            }
        }
    }
}

/// How often the writer takes what the lanes hold. The writer never parks where a worker would
/// have to wake it (a futex call per request). Often enough that each turn is short (at 90,000
/// requests a second, about 900 lines): a long turn on a core a worker wanted delays that
/// worker's requests by as much.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// The writer thread's nice value: below the workers', so that the scheduler lets a worker
/// that has requests to serve go before the writer, which only has to keep up on average.
const WRITER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority to [`WRITER_NICE`] (on Linux, a nice value is the
/// thread's own). A thread that cannot keeps its priority.
fn yield_to_workers() {
    // SAFETY: plain system calls on the calling thread, with no memory passed.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE);
    }
}

#[inline(never)] // the benches tell the writer thread apart by this name
fn write_loop(shared: &Shared, flush_rx: Receiver<Sender<()>>, mut sink: Sink, format: Format) {
    let mut line = String::with_capacity(512);
    loop {
        // Asks taken before the records: everything logged before them is written by the time
        // they are answered.
        let mut asks: Vec<Sender<()>> = Vec::new();
        let last = loop {
            match flush_rx.try_recv() {
                Ok(ask) => asks.push(ask),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let clock = (Instant::now(), SystemTime::now());
        // Taken out while they are read, so that a thread adding its lane never waits on
        // the writing.
        let mut lanes =
            std::mem::take(&mut *shared.lanes.lock().unwrap_or_else(PoisonError::into_inner));
        let mut wrote = false;
        for lane in &mut lanes {
            lane.drain(|record| {
                line.clear();
                format_record(&record, wall_time(record.ended, clock), format, &mut line);
                let _ = sink.writer().write_all(line.as_bytes());
                wrote = true;
            });
        }
        // A lane whose thread ended is dropped once it is empty.
        lanes.retain_mut(|lane| !lane.finished());
        {
            let mut live = shared.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            lanes.append(&mut live);
            *live = lanes;
        }
        if wrote || !asks.is_empty() || last {
            let _ = sink.writer().flush();
        }
        for done in asks {
            let _ = done.send(());
        }
        if last {
            return;
        }
        sink.reopen_if_rotated();
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// The time of day at `ended`, from a reading of both clocks (`now`, `wall`) taken close by.
fn wall_time(ended: Instant, (now, wall): (Instant, SystemTime)) -> SystemTime {
    match now.checked_duration_since(ended) {
        Some(ago) => wall - ago,
        None => wall + (ended - now),
    }
}

/// Formats one record, newline included.
pub fn format_record(r: &AccessRecord, time: SystemTime, format: Format, out: &mut String) {
    match format {
        Format::Json => {
            out.push_str("{\"time\":\"");
            write_rfc3339(time, out);
            out.push_str("\",\"client\":\"");
            match r.client {
                Some(ip) => push_ip(out, ip),
                None => out.push('-'),
            }
            out.push('"');
            out.push_str(",\"host\":");
            json_str(r.host(), out);
            out.push_str(",\"method\":");
            json_str(r.method.as_str(), out);
            out.push_str(",\"path\":");
            json_str(r.path(), out);
            out.push_str(",\"status\":");
            push_u64(out, r.status as u64);
            out.push_str(",\"bytes\":");
            push_u64(out, r.bytes);
            out.push_str(",\"duration_ms\":");
            push_millis(out, r.duration);
            out.push_str(",\"service\":");
            opt_json_str(r.service.as_deref(), out);
            out.push_str(",\"pool\":");
            opt_json_str(r.pool.as_deref(), out);
            out.push_str(",\"backend\":");
            match r.backend {
                Some(b) => {
                    out.push('"');
                    if b.is_ipv6() {
                        out.push('[');
                        push_ip(out, b.ip());
                        out.push(']');
                    } else {
                        push_ip(out, b.ip());
                    }
                    out.push(':');
                    push_u64(out, b.port() as u64);
                    out.push('"');
                }
                None => out.push_str("null"),
            }
            out.push_str(match r.reused {
                Some(true) => ",\"reused\":true",
                Some(false) => ",\"reused\":false",
                None => ",\"reused\":null",
            });
            if let Some(reason) = r.denied {
                out.push_str(",\"denied\":\"");
                out.push_str(reason);
                out.push('"');
            }
            match &r.request_id {
                Some(RequestId::Given(id)) => {
                    out.push_str(",\"request_id\":");
                    json_str(id, out);
                }
                // Only the log has the id: it is made here, off the request's thread.
                fresh => {
                    out.push_str(",\"request_id\":\"");
                    fresh
                        .clone()
                        .unwrap_or_else(RequestId::fresh)
                        .push_str_to(out);
                    out.push('"');
                }
            }
            out.push_str(",\"retries\":");
            push_u64(out, r.retries as u64);
            out.push_str(if r.forced {
                ",\"forced\":true}\n"
            } else {
                ",\"forced\":false}\n"
            });
        }
        Format::Combined => {
            let client = r
                .client
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            let _ = write!(out, "{client} - - [");
            write_clf_time(time, out);
            let _ = writeln!(
                out,
                "] \"{} {} HTTP/1.1\" {} {} \"-\" \"-\" host={} duration_ms={:.3} service={} pool={} backend={}",
                r.method,
                r.path().replace('"', "%22"),
                r.status,
                r.bytes,
                if r.host().is_empty() { "-" } else { r.host() },
                r.duration.as_secs_f64() * 1000.0,
                r.service.as_deref().unwrap_or("-"),
                r.pool.as_deref().unwrap_or("-"),
                r.backend.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            );
            // Appended only when they say something, so ordinary lines keep their shape.
            if r.retries > 0 {
                out.insert_str(out.len() - 1, &format!(" retries={}", r.retries));
            }
            if r.forced {
                out.insert_str(out.len() - 1, " forced=true");
            }
            if let Some(reason) = r.denied {
                out.insert_str(out.len() - 1, &format!(" denied={reason}"));
            }
            if let Some(id) = &r.request_id {
                out.insert_str(out.len() - 1, &format!(" request_id={id}"));
            }
        }
    }
}

/// Milliseconds with three decimals: `1.500`.
fn push_millis(out: &mut String, d: Duration) {
    let micros = d.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

fn opt_json_str(s: Option<&str>, out: &mut String) {
    match s {
        Some(s) => json_str(s, out),
        None => out.push_str("null"),
    }
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = switchback_config::time::civil(d.as_secs() as i64);
    (y, mo, day, h, mi, s, d.subsec_millis())
}

fn write_rfc3339(t: SystemTime, out: &mut String) {
    // Lines come in bursts within the same second: the date and time up to the seconds are
    // formatted once per second, and only the milliseconds per line.
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != since.as_secs() {
            let (y, mo, d, h, mi, s, _) = civil(t);
            let text = &mut cache.1;
            text.clear();
            push_padded(text, y.max(0) as u64, 4);
            for (sep, n) in [('-', mo), ('-', d), ('T', h), (':', mi), (':', s)] {
                text.push(sep);
                push_padded(text, n as u64, 2);
            }
            cache.0 = since.as_secs();
        }
        out.push_str(&cache.1);
    });
    out.push('.');
    push_padded(out, since.subsec_millis() as u64, 3);
    out.push('Z');
}

fn write_clf_time(t: SystemTime, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[mo as usize - 1]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T21:08:10.786Z
    fn time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_381_690_786)
    }

    fn record() -> AccessRecord {
        AccessRecord {
            ended: Instant::now(),
            client: Some("127.0.0.1".parse().unwrap()),
            host_and_path: {
                let mut text = HostAndPath::with_host("app.test");
                text.push_path("/a\"b?x=1");
                text
            },
            method: http::Method::GET,
            forced: false,
            retries: 0,
            request_id: None,
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1500),
            service: Some("app".into()),
            pool: Some("blue".into()),
            backend: Some("127.0.0.1:9001".parse().unwrap()),
            reused: Some(true),
            denied: None,
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut line = String::new();
        format_record(&record(), time(), Format::Json, &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-22T21:08:10.786Z");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["host"], "app.test");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b?x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["service"], "app");
        assert_eq!(v["pool"], "blue");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["reused"], true);
        assert_eq!(v["retries"], 0);
        assert_eq!(v["forced"], false);
        // A request with no id of its own gets one here; a given one is kept, escaped.
        let id = v["request_id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        let mut r = record();
        r.request_id = RequestId::given(b"a\"b");
        line.clear();
        format_record(&r, time(), Format::Json, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "a\"b");
    }

    #[test]
    fn answers_that_came_from_a_retry_are_marked() {
        let mut r = record();
        r.retries = 2;
        r.forced = true;
        let mut line = String::new();
        format_record(&r, time(), Format::Json, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["retries"], 2);
        line.clear();
        format_record(&r, time(), Format::Combined, &mut line);
        assert!(
            line.ends_with(" backend=127.0.0.1:9001 retries=2 forced=true\n"),
            "{line}"
        );
        line.clear();
        format_record(&record(), time(), Format::Combined, &mut line);
        assert!(!line.contains("retries="), "{line}");
    }

    #[test]
    fn forced_requests_are_marked() {
        let mut r = record();
        r.forced = true;
        let mut line = String::new();
        format_record(&r, time(), Format::Json, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["forced"], true);
        line.clear();
        format_record(&r, time(), Format::Combined, &mut line);
        assert!(
            line.ends_with(" backend=127.0.0.1:9001 forced=true\n"),
            "{line}"
        );
    }

    #[test]
    fn unrouted_requests_have_null_service_pool_backend() {
        let mut r = record();
        (r.service, r.pool, r.backend) = (None, None, None);
        let mut line = String::new();
        format_record(&r, time(), Format::Json, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["service"].is_null() && v["pool"].is_null() && v["backend"].is_null());
    }

    #[test]
    fn combined_format_matches_what_log_tools_expect() {
        let mut line = String::new();
        format_record(&record(), time(), Format::Combined, &mut line);
        assert_eq!(
            line,
            "127.0.0.1 - - [22/Nov/2026:21:08:10 +0000] \"GET /a%22b?x=1 HTTP/1.1\" 200 12 \"-\" \"-\" host=app.test duration_ms=1.500 service=app pool=blue backend=127.0.0.1:9001\n"
        );
    }

    #[test]
    fn dates_are_right_across_leap_years() {
        let mut s = String::new();
        write_rfc3339(SystemTime::UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2024-02-29T12:00:00Z
        write_rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_208_000),
            &mut s,
        );
        assert_eq!(s, "2024-02-29T12:00:00.000Z");
        // Within the same second only the milliseconds change; the next second is new.
        for (offset_ms, text) in [
            (250, "2024-02-29T12:00:00.250Z"),
            (999, "2024-02-29T12:00:00.999Z"),
            (1_001, "2024-02-29T12:00:01.001Z"),
            (86_400_000, "2024-03-01T12:00:00.000Z"),
        ] {
            s.clear();
            write_rfc3339(
                SystemTime::UNIX_EPOCH
                    + Duration::from_secs(1_709_208_000)
                    + Duration::from_millis(offset_ms),
                &mut s,
            );
            assert_eq!(s, text);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog {
            shared: Arc::new(Shared {
                lanes: Mutex::default(),
                cap: 1,
            }),
            flush_tx: channel().0,
            dropped: dropped.clone(),
        };
        log.log(record());
        log.log(record());
        log.log(record());
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn the_time_of_day_is_told_from_when_the_request_ended() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wall_time(now - ms(30), (now, time())), time() - ms(30));
        assert_eq!(wall_time(now + ms(5), (now, time())), time() + ms(5));
        assert_eq!(wall_time(now, (now, time())), time());
    }

    #[test]
    fn records_of_every_thread_are_written_even_once_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(Format::Json, Some(path.clone()), dropped.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        log.log(record());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(log.flush(Duration::from_secs(10)), "the writer answered");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            1000,
            "every thread's lines are written"
        );
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn flush_returns_once_everything_queued_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(Format::Json, Some(path.clone()), dropped).unwrap();
        for _ in 0..1000 {
            log.log(record());
        }
        assert!(log.flush(Duration::from_secs(10)), "the writer answered");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000, "every queued line is written");
    }
}
