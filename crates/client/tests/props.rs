//! Property tests of image references as users type them (`speculum copy
//! SRC DEST`, role variables): no input makes the parser panic, and what it
//! accepts is normalised once for all (printing and parsing again gives the
//! same reference). `scripts/fuzz.sh` runs them for a set time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use speculum_client::{ImageRef, parse_repository};

/// Strings made of what references are made of, often nearly valid.
fn reference_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("docker://"),
        Just("oci:"),
        Just("docker.io/"),
        Just("library/"),
        Just("localhost"),
        Just(":5000"),
        Just("[::1]"),
        Just("quay.io/"),
        Just("org/"),
        Just("app"),
        Just(":latest"),
        Just(":v1.2"),
        Just("@sha256:"),
        Just("0123456789abcdef"),
        Just("/"),
        Just(":"),
        Just("@"),
        Just("UPPER"),
        Just(".."),
        Just("-"),
        Just("_"),
        Just("é"),
        Just("\u{0}"),
    ];
    prop_oneof![
        4 => proptest::collection::vec(part, 0..8).prop_map(|parts| parts.concat()),
        1 => any::<String>(),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn image_references_normalise_once(s in reference_like()) {
        if let Ok(parsed) = s.parse::<ImageRef>() {
            let again = parsed.to_string().parse::<ImageRef>();
            prop_assert_eq!(again.as_ref().ok(), Some(&parsed), "{:?} printed as {}", s, parsed);
        }
    }

    #[test]
    fn repositories_normalise_once(s in reference_like()) {
        if let Ok(parsed) = parse_repository(&s) {
            prop_assert!(parsed.tag.is_none() && parsed.digest.is_none(), "{:?}", s);
            let again = parse_repository(&parsed.to_string());
            prop_assert_eq!(again.as_ref().ok(), Some(&parsed), "{:?} printed as {}", s, parsed);
        }
    }
}
