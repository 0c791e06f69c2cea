//! Helpers shared by the contract tests: where the files are, how a schema
//! is compiled, and which aggregate decodes which event type.

#![allow(dead_code)]

pub mod samples;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use marketplace_domain::account::AccountEvent;
use marketplace_domain::asset::AssetEvent;
use marketplace_domain::email_claim::EmailClaimEvent;
use marketplace_domain::listing::ListingEvent;
use marketplace_domain::order::OrderEvent;
use marketplace_domain::payment::PaymentEvent;
use marketplace_domain::review::ReviewEvent;
use marketplace_domain::{Event, EventSet};
use marketplace_event_schemas::personal::{self, DataKey};
use marketplace_event_schemas::{decode, encode, CodecError, Encoded};
use serde_json::Value;

/// The data key the sealed fixtures (`account.registered` v2,
/// `review.submitted` v2) were sealed
/// under: every fixture belongs to one made-up person.
pub const FIXTURE_KEY: [u8; 32] = [0x42; 32];

/// The fixtures' data key.
pub fn fixture_key() -> DataKey {
    DataKey::from_bytes(FIXTURE_KEY)
}

/// `encoded` with its personal fields sealed as the store keeps them.
pub fn sealed(mut encoded: Encoded) -> Encoded {
    encoded.data = personal::seal(
        encoded.event_type,
        encoded.schema_version,
        encoded.data,
        &fixture_key(),
    )
    .unwrap_or_else(|e| panic!("seal {}: {e}", encoded.event_type));
    encoded
}

/// Stored `data` with its personal fields opened with the fixture key.
pub fn opened(event_type: &str, version: u32, data: Value) -> Value {
    personal::open(event_type, version, data, Some(&fixture_key()))
        .unwrap_or_else(|e| panic!("open {event_type} v{version}: {e}"))
}

/// `event-schemas/`.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every stored event type of every aggregate, as the domain declares it
/// ([`Event::versions`]).
pub fn all_types() -> Vec<&'static str> {
    Event::versions().into_iter().map(|(t, _)| t).collect()
}

/// Reads and parses a JSON file, naming it on failure.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `schemas/<event_type>/v<version>.json`.
pub fn schema_path(event_type: &str, version: u32) -> PathBuf {
    root()
        .join("schemas")
        .join(event_type)
        .join(format!("v{version}.json"))
}

/// The schema of `event_type` at `version`, compiled as draft 2020-12 with
/// `format` asserted (2020-12 only annotates it by default).
pub fn validator(event_type: &str, version: u32) -> jsonschema::Validator {
    let path = schema_path(event_type, version);
    let schema = read_json(&path);
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: does not compile: {e}", path.display()))
}

/// Every violation of `doc` against `validator`, one per line.
pub fn violations(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect()
}

/// Panics, listing every violation, unless `doc` is valid.
pub fn assert_valid(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors = violations(validator, doc);
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n  {}\ndocument: {doc:#}",
        errors.join("\n  ")
    );
}

/// One stored document under `fixtures/`.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The directory name.
    pub event_type: String,
    /// From `v<N>[-name].json`.
    pub version: u32,
    /// The file, for messages.
    pub path: PathBuf,
    /// Its contents.
    pub data: Value,
}

/// Parses `v<N>.json` or `v<N>-<name>.json` into `N`.
pub fn version_of_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".json")?.strip_prefix('v')?;
    let digits = match stem.split_once('-') {
        Some((_, "")) => return None,
        Some((digits, _)) => digits,
        None => stem,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    out.sort();
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: not a UTF-8 name", path.display()))
        .to_owned()
}

/// `<kind>/<event_type>/<files>` as event type → versions (with the
/// files), refusing anything that does not follow the layout.
pub fn layout(kind: &str) -> BTreeMap<String, BTreeMap<u32, Vec<PathBuf>>> {
    let mut out: BTreeMap<String, BTreeMap<u32, Vec<PathBuf>>> = BTreeMap::new();
    for dir in sorted_entries(&root().join(kind)) {
        assert!(
            dir.is_dir(),
            "{}: only one directory per event type belongs in {kind}/",
            dir.display()
        );
        let event_type = file_name(&dir);
        let versions = out.entry(event_type).or_default();
        for file in sorted_entries(&dir) {
            let name = file_name(&file);
            let version = version_of_file_name(&name).unwrap_or_else(|| {
                panic!(
                    "{}: expected v<N>.json{}",
                    file.display(),
                    if kind == "fixtures" {
                        " or v<N>-<name>.json"
                    } else {
                        ""
                    }
                )
            });
            if kind == "schemas" {
                assert_eq!(
                    name,
                    format!("v{version}.json"),
                    "{}: schemas are named v<N>.json",
                    file.display()
                );
            }
            versions.entry(version).or_default().push(file);
        }
    }
    out
}

/// Every fixture file.
pub fn fixtures() -> Vec<Fixture> {
    layout("fixtures")
        .into_iter()
        .flat_map(|(event_type, versions)| {
            versions.into_iter().flat_map(move |(version, files)| {
                let event_type = event_type.clone();
                files.into_iter().map(move |path| Fixture {
                    event_type: event_type.clone(),
                    version,
                    data: read_json(&path),
                    path,
                })
            })
        })
        .collect()
}

fn through<E: EventSet>(
    event_type: &str,
    version: u32,
    data: Value,
) -> Result<Encoded, CodecError> {
    let event: E = decode(event_type, version, data)?;
    encode(&event)
}

/// Decodes stored data into the current domain type of the aggregate that
/// owns `event_type` (opening its personal fields with the fixture key,
/// upcasting when old), and encodes (and seals) it again at the current
/// version, as the store would.
pub fn decode_and_reencode(
    event_type: &str,
    version: u32,
    data: Value,
) -> Result<Encoded, CodecError> {
    let data = opened(event_type, version, data);
    decode_plain(event_type, version, data).map(sealed)
}

fn decode_plain(event_type: &str, version: u32, data: Value) -> Result<Encoded, CodecError> {
    if AccountEvent::TYPES.contains(&event_type) {
        through::<AccountEvent>(event_type, version, data)
    } else if EmailClaimEvent::TYPES.contains(&event_type) {
        through::<EmailClaimEvent>(event_type, version, data)
    } else if ListingEvent::TYPES.contains(&event_type) {
        through::<ListingEvent>(event_type, version, data)
    } else if OrderEvent::TYPES.contains(&event_type) {
        through::<OrderEvent>(event_type, version, data)
    } else if ReviewEvent::TYPES.contains(&event_type) {
        through::<ReviewEvent>(event_type, version, data)
    } else if PaymentEvent::TYPES.contains(&event_type) {
        through::<PaymentEvent>(event_type, version, data)
    } else if AssetEvent::TYPES.contains(&event_type) {
        through::<AssetEvent>(event_type, version, data)
    } else {
        panic!("{event_type}: no aggregate declares this event type")
    }
}
