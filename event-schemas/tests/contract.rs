//! The stored-event contract: every current event matches its current
//! schema, every fixture matches the schema of its version and decodes into
//! the current domain type, and the files cover every type and version.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use marketplace_domain::order::{OrderEvent, OrderPlaced};
use marketplace_domain::Event;
use marketplace_event_schemas::upcast::{current_version, CURRENT_VERSIONS};
use marketplace_event_schemas::{decode, CodecError};
use serde_json::{json, Value};
use support::{
    all_types, assert_valid, decode_and_reencode, fixtures, layout, read_json, samples,
    schema_path, validator, violations,
};

fn current(event_type: &str) -> u32 {
    current_version(event_type)
        .unwrap_or_else(|| panic!("{event_type}: missing from CURRENT_VERSIONS"))
}

#[test]
fn every_current_event_encodes_to_a_document_valid_against_its_current_schema() {
    let samples = samples::all();
    let mut seen = BTreeSet::new();
    for s in &samples {
        assert_eq!(
            s.schema_version,
            current(s.event_type),
            "{}: encode writes a version other than CURRENT_VERSIONS says",
            s.event_type
        );
        let v = validator(s.event_type, s.schema_version);
        assert_valid(
            &v,
            &s.data,
            &format!("encoded {} v{}", s.event_type, s.schema_version),
        );
        seen.insert(s.event_type);
    }
    let missing: Vec<_> = all_types()
        .into_iter()
        .filter(|t| !seen.contains(t))
        .collect();
    assert!(missing.is_empty(), "no sample event for {missing:?}");
}

#[test]
fn every_fixture_is_valid_against_the_schema_of_its_version() {
    let all = fixtures();
    assert!(!all.is_empty());
    for f in &all {
        let v = validator(&f.event_type, f.version);
        assert_valid(&v, &f.data, &f.path.display().to_string());
    }
}

#[test]
fn every_fixture_decodes_into_the_current_type() {
    for f in fixtures() {
        let what = f.path.display().to_string();
        let current = current(&f.event_type);
        let back = decode_and_reencode(&f.event_type, f.version, f.data.clone())
            .unwrap_or_else(|e| panic!("{what}: does not decode: {e}"));
        assert_eq!(back.event_type, f.event_type, "{what}");
        assert_eq!(back.schema_version, current, "{what}");
        // Whatever an old document upcasts to is a valid current document.
        assert_valid(
            &validator(&f.event_type, current),
            &back.data,
            &format!("{what}, decoded and encoded again"),
        );
        if f.version == current {
            // A current fixture is exactly what this build writes: it
            // survives decode → encode unchanged (sealed fields compared
            // opened: every sealing draws a fresh nonce).
            assert_eq!(
                support::opened(&f.event_type, current, back.data),
                support::opened(&f.event_type, current, f.data.clone()),
                "{what}: changed by decode → encode"
            );
        }
    }
}

#[test]
fn the_historic_order_placed_v1_fixture_reads_as_version_2() {
    let path = support::root().join("fixtures/order.placed/v1-mixed.json");
    let v1 = read_json(&path);
    let event: OrderEvent = decode("order.placed", 1, v1).expect("upcast and decode");
    let OrderEvent::Placed(placed) = event else {
        panic!("decoded into {event:?}")
    };
    let expected: OrderPlaced = serde_json::from_value(json!({
        "order_id": "0192f1a0-3c4d-7e5f-8a6b-7c8d9e0f1a2b",
        "buyer_id": "01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f",
        "seller_id": "01932c4f-1b2c-7d3e-8f4a-5b6c7d8e9f01",
        "lines": [
            {
                "listing_id": "01933a10-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                "seller_id": "01932c4f-1b2c-7d3e-8f4a-5b6c7d8e9f01",
                "kind": "PHYSICAL",
                "quantity": 2,
                "unit_price": { "minor": 1999, "currency": "EUR" }
            },
            {
                "listing_id": "01933a12-7f80-7192-a3b4-c5d6e7f80912",
                "seller_id": "01932c4f-1b2c-7d3e-8f4a-5b6c7d8e9f01",
                "kind": "DIGITAL",
                "quantity": 1,
                "unit_price": { "minor": 500, "currency": "EUR" }
            }
        ],
        "total": { "minor": 4498, "currency": "EUR" },
        "placed_at": "2024-11-05T14:03:27.512Z"
    }))
    .expect("a valid v2 document");
    assert_eq!(placed, expected);
}

#[test]
fn a_v1_order_placed_without_its_currency_is_refused_with_a_clear_error() {
    let path = support::root().join("fixtures/order.placed/v1.json");
    let mut v1 = read_json(&path);
    v1.as_object_mut().expect("an object").remove("currency");
    let err = decode::<OrderEvent>("order.placed", 1, v1).expect_err("must be refused");
    assert!(
        matches!(&err, CodecError::Upcast { from: 1, reason, .. } if reason.contains("currency")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "order.placed v1 cannot be upcast to v2: missing field `currency`"
    );
}

/// The files cover exactly the types the domain declares
/// ([`Event::versions`]), every version from 1 to the declared one, with at
/// least one fixture per version.
#[test]
fn schemas_and_fixtures_cover_every_type_and_version() {
    let declared: BTreeMap<String, u32> = Event::versions()
        .into_iter()
        .map(|(t, v)| (t.to_owned(), v))
        .collect();
    let types: BTreeSet<String> = declared.keys().cloned().collect();
    for kind in ["schemas", "fixtures"] {
        let found: BTreeMap<String, BTreeSet<u32>> = layout(kind)
            .into_iter()
            .map(|(t, versions)| (t, versions.into_keys().collect()))
            .collect();
        let unknown: Vec<_> = found.keys().filter(|t| !types.contains(*t)).collect();
        assert!(
            unknown.is_empty(),
            "{kind}/ has directories for unknown event types {unknown:?}"
        );
        for (t, version) in &declared {
            let want: BTreeSet<u32> = (1..=*version).collect();
            let got = found.get(t).cloned().unwrap_or_default();
            assert_eq!(
                got, want,
                "{kind}/{t}/ must hold versions 1..={version} exactly"
            );
        }
    }
}

/// Every schema is a draft 2020-12 document that names itself, shuts out
/// unknown fields and requires every field it lists.
#[test]
fn every_schema_is_a_strict_draft_2020_12_document() {
    for t in all_types() {
        for version in 1..=current(t) {
            let path = schema_path(t, version);
            let what = path.display().to_string();
            let schema = read_json(&path);
            if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
                panic!("{what}: not a valid draft 2020-12 schema: {e}");
            }
            assert_eq!(
                schema["$schema"],
                json!("https://json-schema.org/draft/2020-12/schema"),
                "{what}"
            );
            assert_eq!(
                schema["$id"],
                json!(format!("urn:marketplace:event:{t}:v{version}")),
                "{what}"
            );
            assert_eq!(schema["type"], json!("object"), "{what}");
            assert_eq!(schema["additionalProperties"], json!(false), "{what}");
            let listed: BTreeSet<&str> = schema["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: no properties"))
                .keys()
                .map(String::as_str)
                .collect();
            let required: BTreeSet<&str> = schema["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no required"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(listed, required, "{what}: every field is required");
        }
    }
}

/// The schemas say which fields are personal (`"x-personal": true`), and
/// say it exactly as `personal::PERSONAL` does for the current version;
/// a sealed fixture's personal fields hold no plain text.
#[test]
fn the_current_schemas_mark_exactly_the_personal_fields() {
    use marketplace_event_schemas::personal::personal_fields;
    for t in all_types() {
        let version = current(t);
        let schema = read_json(&schema_path(t, version));
        let marked: BTreeSet<String> = schema["properties"]
            .as_object()
            .map(|p| {
                p.iter()
                    .filter(|(_, v)| v["x-personal"] == json!(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let listed: BTreeSet<String> = personal_fields(t, version)
            .map(|p| p.fields.iter().map(|f| (*f).to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(marked, listed, "{t} v{version}: x-personal marks");
        if let Some(p) = personal_fields(t, version) {
            assert!(
                p.sealed,
                "{t} v{version}: current personal fields are sealed"
            );
        }
    }
    let v2 = read_json(&support::root().join("fixtures/account.registered/v2.json"));
    assert!(!v2.to_string().contains("ada.lovelace"), "{v2}");
    let plain = support::opened("account.registered", 2, v2);
    assert_eq!(plain["email"], json!("ada.lovelace@example.org"));
}

/// The historic plain-text registration (v1) still decodes, and after an
/// erasure (no key) reads with its personal fields erased.
#[test]
fn a_historic_plain_registration_decodes_and_reads_as_erased_without_its_key() {
    use marketplace_domain::account::AccountEvent;
    use marketplace_domain::values::Personal;
    let v1 = read_json(&support::root().join("fixtures/account.registered/v1.json"));
    let event: AccountEvent = decode("account.registered", 1, v1.clone()).expect("decodes");
    let AccountEvent::Registered(r) = event else {
        panic!("decoded into {event:?}")
    };
    assert_eq!(
        r.email.known().map(|e| e.as_str().to_owned()),
        Some("ada.lovelace@example.org".to_owned())
    );
    let shredded =
        marketplace_event_schemas::personal::open("account.registered", 1, v1, None).expect("open");
    let event: AccountEvent = decode("account.registered", 1, shredded).expect("decodes");
    let AccountEvent::Registered(r) = event else {
        panic!("decoded into {event:?}")
    };
    assert_eq!(r.email, Personal::Erased);
    assert_eq!(r.display_name, Personal::Erased);
    assert!(r.password_hash.is_erased());
}

/// A historic plain-text review (v1) still decodes through the upcaster,
/// and after its author's erasure reads with the comment erased; the
/// current (v2) fixture holds the comment sealed.
#[test]
fn a_historic_plain_review_decodes_and_reads_with_its_comment_erased_without_the_key() {
    use marketplace_domain::review::ReviewEvent;
    use marketplace_domain::values::Personal;
    let v1 = read_json(&support::root().join("fixtures/review.submitted/v1.json"));
    let event: ReviewEvent = decode("review.submitted", 1, v1.clone()).expect("decodes");
    let ReviewEvent::Submitted(r) = event else {
        panic!("decoded into {event:?}")
    };
    assert_eq!(
        r.comment.known().map(|c| c.as_str().to_owned()),
        Some("Beautiful lamp, carefully packed and exactly as described.".to_owned())
    );
    assert_eq!(r.rating.stars(), 5, "the rest stays");
    let shredded =
        marketplace_event_schemas::personal::open("review.submitted", 1, v1, None).expect("open");
    let event: ReviewEvent = decode("review.submitted", 1, shredded).expect("decodes");
    let ReviewEvent::Submitted(r) = event else {
        panic!("decoded into {event:?}")
    };
    assert_eq!(r.comment, Personal::Erased);
    assert_eq!(r.rating.stars(), 5, "the rating survives the erasure");

    let v2 = read_json(&support::root().join("fixtures/review.submitted/v2.json"));
    assert!(!v2.to_string().contains("Beautiful lamp"), "{v2}");
    let erased =
        marketplace_event_schemas::personal::open("review.submitted", 2, v2, None).expect("open");
    assert_eq!(erased["comment"], Value::Null);
}

/// Each event type is declared once, with one current version, and the
/// registry reads that version.
#[test]
fn every_event_type_is_declared_once_and_the_registry_reads_its_version() {
    let declared = Event::versions();
    let names: BTreeSet<&str> = declared.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names.len(),
        declared.len(),
        "an event type is declared twice"
    );
    for (name, version) in &declared {
        assert_eq!(current_version(name), Some(*version), "{name}");
    }
    assert_eq!(CURRENT_VERSIONS.len(), declared.len());
}

/// The schemas are not vacuous: documents that break the contract in the
/// usual ways are refused.
#[test]
fn schemas_refuse_documents_that_break_the_contract() {
    let fixture =
        |t: &str, name: &str| read_json(&support::root().join(format!("fixtures/{t}/{name}.json")));
    type Breaker = fn(&mut Value);
    let cases: &[(&str, &str, u32, &str, Breaker)] = &[
        ("order.placed", "v2", 2, "an unknown field", |d| {
            d["discount"] = json!(0);
        }),
        ("order.placed", "v2", 2, "a missing field", |d| {
            d.as_object_mut().map(|o| o.remove("total"));
        }),
        ("order.placed", "v2", 2, "a lower-case currency", |d| {
            d["total"]["currency"] = json!("eur");
        }),
        ("order.placed", "v2", 2, "a fractional amount", |d| {
            d["total"]["minor"] = json!(44.98);
        }),
        ("order.placed", "v2", 2, "no lines", |d| {
            d["lines"] = json!([]);
        }),
        ("order.placed", "v2", 2, "a v1 line", |d| {
            d["lines"][0] = json!({
                "listing_id": "01933a10-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                "seller_id": "01932c4f-1b2c-7d3e-8f4a-5b6c7d8e9f01",
                "kind": "PHYSICAL", "quantity": 2, "unit_price_minor": 1999
            });
        }),
        ("order.placed", "v1", 1, "a v2 total", |d| {
            d["total"] = json!({ "minor": 3998, "currency": "EUR" });
        }),
        ("order.placed", "v1", 1, "no currency", |d| {
            d.as_object_mut().map(|o| o.remove("currency"));
        }),
        ("order.placed", "v2", 2, "an upper-case uuid", |d| {
            d["order_id"] = json!("01934B20-3C4D-7E5F-8A6B-7C8D9E0F1A2B");
        }),
        (
            "order.placed",
            "v2",
            2,
            "a timestamp that is not RFC 3339",
            |d| {
                d["placed_at"] = json!("2025-01-12 19:22:30");
            },
        ),
        ("order.placed", "v2", 2, "an unknown listing kind", |d| {
            d["lines"][0]["kind"] = json!("SERVICE");
        }),
        ("review.submitted", "v1", 1, "six stars", |d| {
            d["rating"] = json!(6);
        }),
        ("review.submitted", "v1", 1, "zero stars", |d| {
            d["rating"] = json!(0);
        }),
        (
            "listing.created",
            "v1-digital",
            1,
            "a short content hash",
            |d| {
                d["content_hash"] = json!("abc123");
            },
        ),
        (
            "listing.created",
            "v1-physical",
            1,
            "an upper-case tag",
            |d| {
                d["tags"] = json!(["Vintage"]);
            },
        ),
        ("listing.created", "v1-physical", 1, "a repeated tag", |d| {
            d["tags"] = json!(["vintage", "vintage"]);
        }),
        (
            "listing.created",
            "v1-physical",
            1,
            "an untrimmed title",
            |d| {
                d["title"] = json!(" Brass desk lamp");
            },
        ),
        (
            "listing.created",
            "v1-physical",
            1,
            "a negative quantity",
            |d| {
                d["quantity"] = json!(-1);
            },
        ),
        ("account.registered", "v1", 1, "an upper-case email", |d| {
            d["email"] = json!("Ada@example.org");
        }),
        ("account.registered", "v1", 1, "no roles", |d| {
            d["roles"] = json!([]);
        }),
        (
            "account.registered",
            "v1",
            1,
            "a plain-text password",
            |d| {
                d["password_hash"] = json!("hunter2");
            },
        ),
        (
            "account.sale_credited",
            "v1-fee",
            1,
            "an unknown share",
            |d| {
                d["share"] = json!("TIP");
            },
        ),
        ("order.rejected", "v1", 1, "an empty reason", |d| {
            d["reason"] = json!("");
        }),
        ("order.rejected", "v1", 1, "a control character", |d| {
            d["reason"] = json!("insufficient\u{7}funds");
        }),
    ];
    for (t, name, version, why, breaker) in cases {
        let mut doc = fixture(t, name);
        let v = validator(t, *version);
        assert_valid(&v, &doc, &format!("{t}/{name}"));
        breaker(&mut doc);
        assert!(
            !violations(&v, &doc).is_empty(),
            "{t} v{version} accepted {why}: {doc:#}"
        );
    }
}
