//! Property tests of the parsers a client reaches first: digests, repository
//! names, tags, references and manifests. Each runs in `make test` with
//! proptest's default case count; `scripts/fuzz.sh` runs them for a set time
//! (doc/reliability.md). What they check: no input makes a parser panic, what
//! a parser accepts prints back unchanged, and names and tags are accepted
//! exactly when the distribution spec's regular expressions match them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;

use proptest::prelude::*;
use regex::Regex;
use speculum_oci::{Digest, MAX_NAME_LEN, Reference, RepositoryName, Tag, manifest};

/// The spec's name grammar, as a second opinion on the hand-written parser.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap()
});
/// The spec's tag grammar.
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

/// Strings mostly made of the characters names, tags and digests use, so
/// that near misses are common; sometimes anything at all.
fn near_miss(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(
            prop_oneof![
                Just('a'), Just('z'), Just('0'), Just('9'), Just('.'), Just('_'), Just('-'),
                Just('/'), Just(':'), Just('A'), Just('f'), Just('%'), Just('\u{0}'), Just('é'),
            ],
            0..max,
        )
        .prop_map(|chars| chars.into_iter().collect()),
        1 => any::<String>(),
    ]
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES (scripts/fuzz.sh) overrides the default of 256.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn repository_names_follow_the_spec(s in near_miss(40)) {
        let parsed = s.parse::<RepositoryName>();
        let spec = NAME.is_match(&s) && s.len() <= MAX_NAME_LEN;
        prop_assert_eq!(parsed.is_ok(), spec, "{:?}", s);
        if let Ok(name) = parsed {
            prop_assert_eq!(name.to_string(), s);
        }
    }

    #[test]
    fn tags_follow_the_spec(s in near_miss(140)) {
        let parsed = s.parse::<Tag>();
        prop_assert_eq!(parsed.is_ok(), TAG.is_match(&s), "{:?}", s);
        if let Ok(tag) = parsed {
            prop_assert_eq!(tag.to_string(), s);
        }
    }

    #[test]
    fn digests_print_back_as_parsed(prefix in prop_oneof![Just("sha256:"), Just("sha512:"), Just("md5:"), Just("")],
                                    hex in "[0-9a-fA-Fg]{0,130}") {
        let s = format!("{prefix}{hex}");
        if let Ok(digest) = s.parse::<Digest>() {
            prop_assert_eq!(digest.to_string(), s.clone());
            prop_assert!(hex.len() == 64 || hex.len() == 128, "{}", s);
            prop_assert!(!hex.bytes().any(|b| b.is_ascii_uppercase()), "{}", s);
        }
    }

    #[test]
    fn references_are_a_tag_or_a_digest(s in near_miss(80)) {
        match s.parse::<Reference>() {
            Ok(Reference::Tag(tag)) => prop_assert_eq!(tag.as_str(), s.as_str()),
            Ok(Reference::Digest(digest)) => prop_assert_eq!(digest.to_string(), s),
            Err(_) => prop_assert!(s.parse::<Tag>().is_err() && s.parse::<Digest>().is_err()),
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_bytes(content_type in proptest::option::of(media_type()),
                                            bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = manifest::parse(content_type.as_deref(), &bytes);
    }

    #[test]
    fn manifest_parse_never_panics_on_mutated_manifests(content_type in proptest::option::of(media_type()),
                                                        value in manifest_like()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(info) = manifest::parse(content_type.as_deref(), &bytes) {
            // What it accepts has a media type it can serve, and every blob it names is a digest.
            prop_assert!(!info.media_type.is_empty());
            prop_assert!(info.config.iter().chain(&info.layers).chain(&info.manifests)
                .all(|d| d.digest.to_string().contains(':')));
        }
    }
}

fn media_type() -> BoxedStrategy<String> {
    prop_oneof![
        Just("application/vnd.oci.image.manifest.v1+json".to_string()),
        Just("application/vnd.oci.image.index.v1+json".to_string()),
        Just("application/vnd.docker.distribution.manifest.v2+json".to_string()),
        Just("application/vnd.docker.distribution.manifest.list.v2+json".to_string()),
        Just("application/json".to_string()),
        Just("application/vnd.docker.distribution.manifest.v1+prettyjws".to_string()),
        ".{0,40}",
    ]
    .boxed()
}

/// JSON values shaped like manifests and indexes, with fields of the wrong
/// type, missing, or odd, so that the validation paths past JSON parsing run.
fn manifest_like() -> impl Strategy<Value = serde_json::Value> {
    let digest = prop_oneof![
        Just(serde_json::json!(format!("sha256:{}", "a".repeat(64)))),
        Just(serde_json::json!("sha256:short")),
        Just(serde_json::json!(5)),
        Just(serde_json::Value::Null),
    ];
    let size = prop_oneof![
        Just(serde_json::json!(1)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!("1"))
    ];
    let descriptor = (media_type(), digest, size, any::<bool>())
        .prop_map(|(mt, digest, size, platform)| {
            let mut d = serde_json::json!({"mediaType": mt, "digest": digest, "size": size});
            if platform {
                d["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
            }
            d
        })
        .boxed();
    let descriptors = proptest::collection::vec(descriptor.clone(), 0..3).boxed();
    (
        proptest::option::of(prop_oneof![
            Just(serde_json::json!(2)),
            Just(serde_json::json!(1)),
            Just(serde_json::json!("2"))
        ]),
        proptest::option::of(media_type()),
        proptest::option::of(descriptor.clone()),
        proptest::option::of(descriptors.clone()),
        proptest::option::of(descriptors),
        proptest::option::of(descriptor),
    )
        .prop_map(|(schema, mt, config, layers, manifests, subject)| {
            let mut m = serde_json::Map::new();
            let mut put = |k: &str, v: Option<serde_json::Value>| {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            };
            put("schemaVersion", schema);
            put("mediaType", mt.map(serde_json::Value::String));
            put("config", config);
            put("layers", layers.map(serde_json::Value::Array));
            put("manifests", manifests.map(serde_json::Value::Array));
            put("subject", subject);
            serde_json::Value::Object(m)
        })
}
