//! The config loader on any input: a valid config or every problem as file:line: key, never a
//! panic. Inputs are random text, and the documented example with one value replaced by
//! something hostile.

use std::path::Path;

use proptest::prelude::*;
use switchback_config::{parse, Config, MAX_BACKENDS_PER_POOL};

const EXAMPLE: &str = include_str!("../../examples/switchback.toml");

/// Values that have broken parsers before: empty, negative, huge, wrong types, odd units.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\"\"",
            "-1",
            "0",
            "1e309",
            "18446744073709551616",
            "9223372036854775807",
            "true",
            "[]",
            "{}",
            "[\"\"]",
            "\"0s\"",
            "\"0ms\"",
            "\"99999999999999999h\"",
            "\"1.5s\"",
            "\"-5s\"",
            "\"64k\"",
            "\"2m\"",
            "\"0\"",
            "\"::\"",
            "\"[::1]:0\"",
            "\"127.0.0.1:65536\"",
            "\"*.\"",
            "\"0777\"",
            "\"99999\"",
            "\"acme\"",
            "\"off\"",
            "{ cert = \"\", key = \"\" }",
            "\"10.0.0.0/99\"",
            "\"\\u0000\"",
            "[\"127.0.0.1:1\", \"127.0.0.1:1\"]",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        ".{0,16}".prop_map(|s| format!("{s:?}")),
        ".{0,16}",
    ]
}

/// The example file with the value of one `key = value` line replaced.
fn mutated_example() -> impl Strategy<Value = String> {
    let lines: Vec<usize> = EXAMPLE
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(" = "))
        .map(|(i, _)| i)
        .collect();
    (prop::sample::select(lines), hostile_value(), any::<bool>()).prop_map(
        |(line, value, uncomment)| {
            EXAMPLE
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    if i == line {
                        let (key, _) = l.split_once(" = ").unwrap();
                        format!("{key} = {value}")
                    } else if uncomment && l.starts_with("# ") && l.contains(" = ") {
                        // Optional keys too, written as the comments show them.
                        l[2..].to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
}

fn check(text: &str) {
    match parse(Path::new("switchback.toml"), text) {
        Ok(config) => valid(&config),
        Err(e) => {
            let report = e.to_string();
            assert!(!report.is_empty());
            for line in report.lines() {
                assert!(
                    line.starts_with("switchback.toml:"),
                    "a problem names the file: {line}"
                );
            }
        }
    }
}

/// What every loaded config promises the rest of the proxy.
fn valid(config: &Config) {
    assert!(!config.listen.http.is_empty() || !config.listen.https.is_empty());
    assert!(config.server.max_connections >= 1);
    assert!(config.server.max_request_head <= switchback_config::MAX_REQUEST_HEAD_LIMIT);
    for service in &config.services {
        if service.redirect.is_some() {
            assert!(service.pools.is_empty() && service.active.is_empty());
            continue;
        }
        // Another pool may be empty (`pool set` fills it later); the active one may not.
        let active = service.pools.iter().find(|p| p.name == service.active);
        assert!(
            active.is_some_and(|p| !p.backends.is_empty()),
            "the active pool exists and has backends"
        );
        for pool in &service.pools {
            assert!(pool.backends.len() <= MAX_BACKENDS_PER_POOL);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn any_text_loads_or_fails_cleanly(text in ".{0,300}") {
        check(&text);
    }

    #[test]
    fn the_example_with_a_hostile_value_loads_or_fails_cleanly(text in mutated_example()) {
        check(&text);
    }
}

#[test]
fn the_example_itself_loads() {
    valid(&parse(Path::new("switchback.toml"), EXAMPLE).expect("the example is valid"));
}
