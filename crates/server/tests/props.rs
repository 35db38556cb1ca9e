//! Property tests of what a client (or an operator's file) hands the server
//! to parse: bearer tokens and the serve configuration. No input may panic;
//! a token is accepted only exactly as signed. `scripts/fuzz.sh` runs these
//! for a set time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use speculum_server::Settings;
use speculum_server::token::{Grant, TokenKey};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn key() -> TokenKey {
    TokenKey::new(
        b"a-test-secret-of-some-length",
        "speculum",
        Duration::from_secs(300),
    )
}

fn signed(now: SystemTime) -> String {
    let grant = Grant {
        kind: "repository".into(),
        name: "org/app".into(),
        actions: vec!["pull".into()],
    };
    let key = key();
    key.sign(&key.claims("zuul", vec![grant], now))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tokens_of_any_shape_are_refused_without_panic(token in "[A-Za-z0-9_.=-]{0,200}|.{0,64}") {
        prop_assert!(key().verify(&token, SystemTime::now()).is_err());
    }

    #[test]
    fn a_token_changed_anywhere_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let now = SystemTime::now();
        let token = signed(now);
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let changed = String::from_utf8_lossy(&bytes).into_owned();
        // Base64url decoders may ignore the low bits of a last character: those
        // changes leave the same bytes, so only a change of the decoded token counts.
        prop_assume!(decoded(&changed) != decoded(&token));
        prop_assert!(key().verify(&changed, now).is_err(), "accepted {changed:?}");
    }

    #[test]
    fn any_configuration_text_parses_or_fails_cleanly(text in config_like()) {
        let _ = Settings::parse(&text, Path::new("/nonexistent/registry.yaml"), |_| None);
    }
}

/// The three parts of a token, base64url-decoded (None where not decodable).
fn decoded(token: &str) -> Vec<Option<Vec<u8>>> {
    use base64::Engine as _;
    token
        .split('.')
        .map(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .collect()
}

/// YAML shaped like a serve configuration, with keys and values that are
/// often wrong in type or range, and `%(NAME)` variables.
fn config_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("address"),
        Just("port"),
        Just("public-url"),
        Just("tls-cert"),
        Just("secret"),
        Just("users"),
        Just("anonymous-read"),
        Just("storage"),
        Just("gc"),
        Just("webhooks"),
        Just("upstreams"),
        Just("metrics"),
        Just("log-format"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        Just("127.0.0.1".to_string()),
        Just("-1".to_string()),
        Just("99999999999".to_string()),
        Just("{driver: filesystem, root: /tmp/x}".to_string()),
        Just("[]".to_string()),
        Just("{interval: 1h, grace: 0s, uploads: 1x}".to_string()),
        Just("%(NOPE)".to_string()),
        Just("[{name: a, pass: b, access: write}]".to_string()),
        Just("\"\"".to_string()),
        Just("{endpoints: [{url: 'http://[', format: dockerhub}]}".to_string()),
        "[ -~]{0,20}",
    ];
    proptest::collection::vec((key, value), 0..8).prop_map(|pairs| {
        let mut text = String::from("registry:\n");
        for (k, v) in pairs {
            text.push_str(&format!("  {k}: {v}\n"));
        }
        text
    })
}
