//! The control-protocol decoder on any input: a request or a clean error, never a panic.

use proptest::prelude::*;
use switchback_control::protocol::{decode_request, COMMANDS};

/// A JSON value of any shape, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::String),
        prop::sample::select(vec![
            "app",
            "blue",
            "green",
            "127.0.0.1:9001",
            "10",
            "10.5",
            "-1",
            "1e400",
            "30s",
            "0ms",
        ])
        .prop_map(|s| serde_json::Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request-shaped object: a known command (mostly) with fields of the protocol's names and
/// values of any type.
fn request_like() -> impl Strategy<Value = String> {
    let cmd = prop_oneof![
        4 => prop::sample::select(COMMANDS.to_vec()).prop_map(str::to_string),
        1 => ".{0,10}",
    ];
    let field = prop::sample::select(vec![
        "service",
        "pool",
        "percent",
        "backends",
        "wait",
        "wait_drain",
        "timeout",
        "steps",
        "interval",
        "max_error_rate",
        "max_p95",
        "min_requests",
        "force",
        "host",
        "abort",
        "watch",
        "all",
        "cmd",
        "x",
    ]);
    (cmd, prop::collection::btree_map(field, json(), 0..6)).prop_map(|(cmd, fields)| {
        let mut object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        object.insert("cmd".into(), serde_json::Value::String(cmd));
        serde_json::Value::Object(object).to_string()
    })
}

fn check(line: &[u8]) {
    match decode_request(line) {
        Ok(request) => {
            // A decoded request encodes back to a line that decodes to the same request.
            let line = serde_json::to_string(&request).expect("a request serializes");
            let again = decode_request(line.as_bytes()).expect("an encoded request decodes");
            assert_eq!(again, request);
        }
        Err(e) => assert!(!e.message.is_empty(), "an error says what is wrong"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(line in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&line);
    }

    #[test]
    fn any_json_decodes_or_fails_cleanly(value in json()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn request_shaped_objects_decode_or_fail_cleanly(line in request_like()) {
        check(line.as_bytes());
    }
}
