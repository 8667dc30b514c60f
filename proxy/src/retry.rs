//! When a request that failed on one backend is tried again, and why.
//!
//! One rule above all: the client sees one answer. A request is tried again only while no byte
//! of an answer has reached the client, and only when sending it again cannot make a backend
//! act on it twice:
//! - a connection that could not be made, or a *reused* connection that failed before the
//!   request was all handed to it, never gave the request to a backend (a backend closes an
//!   idle keep-alive connection at any time, and a request can cross that close on the wire):
//!   any method is tried again;
//! - once a backend may have the whole request, only an idempotent method is (GET, HEAD,
//!   OPTIONS, TRACE, PUT, DELETE), unless the service sets `retry_non_idempotent`, and only for
//!   the failures its `retry_on` names, as nginx's `proxy_next_upstream` does;
//! - a request body is sent again only while it is all held (pingora's retry buffer, up to
//!   the service's `retry_buffer`).
//!
//! This module decides; [`crate::http`] gathers the facts from pingora and acts.

use switchback_config::RetryOn;

/// Why a request went to another attempt: the `reason` label of
/// `switchback_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection to the backend could be made.
    Connect,
    /// A connection reused from the pool failed before any answer: the backend had closed
    /// it, or closed it as the request came.
    ReusedConnection,
    /// A new connection was reset or closed, or the answer was empty or malformed.
    Error,
    /// No answer within the service's `read_timeout`.
    Timeout,
}

impl RetryReason {
    pub const ALL: [RetryReason; 4] = [
        RetryReason::Connect,
        RetryReason::ReusedConnection,
        RetryReason::Error,
        RetryReason::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::ReusedConnection => "reused_connection",
            RetryReason::Error => "error",
            RetryReason::Timeout => "timeout",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the failure counts toward passing the backend over (the passive health check).
    /// As with nginx's `max_fails`, a failure counts when `retry_on` names it; a failed connect
    /// always does. A reused connection's failure never does: app servers close idle
    /// connections as a matter of course.
    pub fn blames_backend(self, on: RetryOn) -> bool {
        match self {
            RetryReason::Connect => true,
            RetryReason::ReusedConnection => false,
            RetryReason::Error => on.error,
            RetryReason::Timeout => on.timeout,
        }
    }
}

/// How an attempt failed after its connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Reset, closed, an empty or malformed answer.
    Error,
    /// `read_timeout` (or the write deadline) passed.
    Timeout,
}

/// What is known of a failed attempt when its connection had been made.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt {
    pub failure: Failure,
    /// The connection came from the pool of idle connections.
    pub reused: bool,
    /// The whole request (head and body) was handed to the backend's connection.
    pub request_sent: bool,
    /// Some of the answer reached the client.
    pub answer_started: bool,
    /// What was read of the request body is all held, so it can be sent again.
    pub body_held: bool,
    /// The method is idempotent, or the service replays every method.
    pub replayable_method: bool,
}

/// The failure's kind for counting, and whether to try again (`Some`) or answer with an
/// error (`None`).
pub fn after_failure(a: &FailedAttempt, on: RetryOn) -> (RetryReason, Option<RetryReason>) {
    let reason = match a.failure {
        Failure::Timeout => RetryReason::Timeout,
        Failure::Error if a.reused => RetryReason::ReusedConnection,
        Failure::Error => RetryReason::Error,
    };
    if a.answer_started || !a.body_held {
        return (reason, None);
    }
    if reason == RetryReason::ReusedConnection && !a.request_sent {
        // The backend cannot have acted on a request it did not get whole.
        return (reason, Some(reason));
    }
    let named = match a.failure {
        Failure::Error => on.error,
        Failure::Timeout => on.timeout,
    };
    (reason, (a.replayable_method && named).then_some(reason))
}

/// Whether the `read` bytes of a request body that came so far can be sent again: pingora
/// still holds them (`truncated` false) and they are within the service's `limit`. The rest of
/// the body, not read yet, goes to the next attempt as it comes, so a large upload whose
/// connect failed is still retried.
pub fn body_held(read: usize, truncated: bool, limit: usize) -> bool {
    !truncated && read <= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: RetryOn = RetryOn {
        error: true,
        timeout: false,
    };
    const BOTH: RetryOn = RetryOn {
        error: true,
        timeout: true,
    };
    const NONE: RetryOn = RetryOn {
        error: false,
        timeout: false,
    };

    fn get() -> FailedAttempt {
        FailedAttempt {
            failure: Failure::Error,
            reused: false,
            request_sent: true,
            answer_started: false,
            body_held: true,
            replayable_method: true,
        }
    }

    fn post() -> FailedAttempt {
        FailedAttempt {
            replayable_method: false,
            ..get()
        }
    }

    fn retried(a: FailedAttempt, on: RetryOn) -> Option<&'static str> {
        after_failure(&a, on).1.map(RetryReason::as_str)
    }

    #[test]
    fn an_idempotent_request_is_retried_on_the_failures_retry_on_names() {
        assert_eq!(retried(get(), DEFAULT), Some("error"));
        assert_eq!(retried(get(), NONE), None);
        let timeout = FailedAttempt {
            failure: Failure::Timeout,
            ..get()
        };
        assert_eq!(retried(timeout, DEFAULT), None);
        assert_eq!(retried(timeout, BOTH), Some("timeout"));
    }

    #[test]
    fn nothing_is_retried_once_the_answer_started() {
        let started = FailedAttempt {
            answer_started: true,
            ..get()
        };
        assert_eq!(retried(started, BOTH), None);
        let reused_unsent = FailedAttempt {
            reused: true,
            request_sent: false,
            ..started
        };
        assert_eq!(retried(reused_unsent, BOTH), None);
    }

    #[test]
    fn a_request_the_backend_may_have_is_not_replayed_unless_idempotent() {
        assert_eq!(retried(post(), BOTH), None);
        let reused = FailedAttempt {
            reused: true,
            ..post()
        };
        assert_eq!(retried(reused, BOTH), None, "sent whole: it may have acted");
        let allowed = FailedAttempt {
            replayable_method: true,
            ..post()
        };
        assert_eq!(retried(allowed, DEFAULT), Some("error"));
    }

    #[test]
    fn any_method_is_retried_when_a_reused_connection_failed_before_the_request_was_sent() {
        let unsent = FailedAttempt {
            reused: true,
            request_sent: false,
            ..post()
        };
        assert_eq!(retried(unsent, NONE), Some("reused_connection"));
        let fresh_unsent = FailedAttempt {
            reused: false,
            ..unsent
        };
        assert_eq!(
            retried(fresh_unsent, BOTH),
            None,
            "a new connection the backend reset may have been read"
        );
        let timed_out = FailedAttempt {
            failure: Failure::Timeout,
            ..unsent
        };
        assert_eq!(
            retried(timed_out, NONE),
            None,
            "a timeout is no closed connection"
        );
    }

    #[test]
    fn a_body_that_is_not_held_is_never_sent_again() {
        let unheld = FailedAttempt {
            body_held: false,
            ..get()
        };
        assert_eq!(retried(unheld, BOTH), None);
        let unsent = FailedAttempt {
            reused: true,
            request_sent: false,
            ..unheld
        };
        assert_eq!(retried(unsent, BOTH), None);
    }

    #[test]
    fn the_body_limit_counts_what_was_read() {
        assert!(
            body_held(0, false, 0),
            "nothing read yet: the next attempt reads it"
        );
        assert!(body_held(1024, false, 1024));
        assert!(!body_held(1025, false, 1024));
        assert!(!body_held(10, true, 65536), "pingora let go of it");
    }

    #[test]
    fn a_failure_blames_the_backend_when_retry_on_names_it_and_the_connection_was_new() {
        let (reason, _) = after_failure(
            &FailedAttempt {
                reused: true,
                ..get()
            },
            DEFAULT,
        );
        assert!(!reason.blames_backend(BOTH));
        assert!(RetryReason::Error.blames_backend(DEFAULT));
        assert!(!RetryReason::Timeout.blames_backend(DEFAULT));
        assert!(RetryReason::Timeout.blames_backend(BOTH));
        assert!(RetryReason::Connect.blames_backend(NONE));
        for (i, r) in RetryReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
