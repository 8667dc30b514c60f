//! Human durations for the config file and the CLI: `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
//!
//! Durations are strings everywhere a user types one, so that a value never depends on a unit
//! the reader has to remember. One parser serves the config file, the control protocol and the
//! CLI, so `30s` means the same thing in all three.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a duration: write a number and a unit, like \"500ms\", \"30s\", \"2m\" or \"1h\""
)]
pub struct DurationError(pub String);

/// Parses `"250ms"`, `"1.5s"`, `"30s"`, `"2m"`, `"1h"`. A bare `"0"` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Shows a duration the way a user would have written it.
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_users_write() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_numbers_without_units_and_nonsense() {
        for bad in ["", "30", "s", "ms", "1.2.3s", "5 parsecs", "-1s", "1e99h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "30s", "2m", "1h", "1500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(HumanDuration(d).to_string(), text);
        }
    }
}
