//! The served GraphQL schema against its two references: the committed
//! `schema.graphql` at the repository root (kept byte-for-byte current) and
//! the API contract `tests/api-contract.graphql` (a verbatim copy of
//! `shared/api-contract.graphql`), which the served schema must contain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_graphql_parser::types::{
    BaseType, FieldDefinition, InputValueDefinition, Type, TypeDefinition, TypeKind,
    TypeSystemDefinition,
};
use async_graphql_parser::{parse_schema, Positioned};

/// The committed SDL, at the repository root.
fn committed_schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schema.graphql")
}

/// Line endings and trailing newlines do not count: `cargo run -- schema`
/// prints one more newline than `sdl()` returns, and checkouts may use CRLF.
fn normalized(sdl: &str) -> String {
    format!("{}\n", sdl.replace("\r\n", "\n").trim_end())
}

#[test]
fn schema_is_current() {
    let path = committed_schema_path();
    let served = normalized(&marketplace_api::graphql::sdl());
    let committed = std::fs::read_to_string(&path).map(|sdl| normalized(&sdl));
    if committed
        .as_ref()
        .is_ok_and(|committed| *committed == served)
    {
        return;
    }

    let in_ci = std::env::var("CI").is_ok_and(|ci| !ci.is_empty() && ci != "false" && ci != "0");
    let update = std::env::var("UPDATE_SCHEMA").is_ok_and(|update| update == "1");
    if update && !in_ci {
        std::fs::write(&path, &served)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        eprintln!("UPDATE_SCHEMA=1: rewrote {}", path.display());
        return;
    }

    let problem = match committed {
        Ok(committed) => {
            let first_difference = committed
                .lines()
                .zip(served.lines())
                .position(|(committed, served)| committed != served)
                .unwrap_or_else(|| committed.lines().count().min(served.lines().count()));
            format!(
                "differs from the served schema, first at line {}:\n  committed: {:?}\n  served:    {:?}",
                first_difference + 1,
                committed.lines().nth(first_difference).unwrap_or("<end of file>"),
                served.lines().nth(first_difference).unwrap_or("<end of file>"),
            )
        }
        Err(error) => format!("cannot be read: {error}"),
    };
    panic!(
        "{} {problem}\n\nRegenerate it from the repository root with\n    \
         cargo run -p marketplace-cli -- schema > schema.graphql\n\
         (or `UPDATE_SCHEMA=1 cargo test -p marketplace-api --test schema_contract`, \
         which never rewrites when CI is set) and commit the result.",
        path.display()
    );
}

/// Differences from the contract that are known and accepted for now (none
/// today). The test fails when one is closed as well as when a new one
/// appears: then update this list.
const KNOWN_GAPS: &[&str] = &[];

#[test]
fn served_schema_contains_the_contract() {
    let contract = Schema::parse(
        "tests/api-contract.graphql",
        include_str!("api-contract.graphql"),
    );
    let served = Schema::parse("the served SDL", &marketplace_api::graphql::sdl());

    let mut differences = contract_differences(&contract, &served);
    differences.sort();
    let mut known: Vec<String> = KNOWN_GAPS.iter().map(ToString::to_string).collect();
    known.sort();

    if differences != known {
        let new: Vec<_> = differences.iter().filter(|d| !known.contains(d)).collect();
        let closed: Vec<_> = known.iter().filter(|k| !differences.contains(k)).collect();
        panic!(
            "the served schema does not match the contract as KNOWN_GAPS expects\n\n\
             every difference ({}):\n{}\n\n\
             new (fix the schema, or add to KNOWN_GAPS):\n{}\n\n\
             closed (remove from KNOWN_GAPS):\n{}",
            differences.len(),
            bullets(differences.iter()),
            bullets(new.into_iter()),
            bullets(closed.into_iter()),
        );
    }
}

fn bullets<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let lines: Vec<String> = items.map(|item| format!("  - {item}")).collect();
    if lines.is_empty() {
        "  (none)".to_owned()
    } else {
        lines.join("\n")
    }
}

/// The parts of a parsed SDL document the comparison reads.
struct Schema {
    types: BTreeMap<String, TypeDefinition>,
    /// The root type names for `Query`, `Mutation` and `Subscription`.
    roots: [(&'static str, Option<String>); 3],
}

impl Schema {
    fn parse(origin: &str, sdl: &str) -> Self {
        let document =
            parse_schema(sdl).unwrap_or_else(|error| panic!("cannot parse {origin}: {error}"));
        let mut types = BTreeMap::new();
        let mut schema_definition = None;
        for definition in document.definitions {
            match definition {
                TypeSystemDefinition::Type(definition) => {
                    let definition = definition.node;
                    types.insert(definition.name.node.to_string(), definition);
                }
                TypeSystemDefinition::Schema(definition) => {
                    schema_definition = Some(definition.node)
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        let roots = match schema_definition {
            Some(definition) => [
                ("Query", definition.query.map(|name| name.node.to_string())),
                (
                    "Mutation",
                    definition.mutation.map(|name| name.node.to_string()),
                ),
                (
                    "Subscription",
                    definition.subscription.map(|name| name.node.to_string()),
                ),
            ],
            // Without a schema definition the roots are the types so named.
            None => ["Query", "Mutation", "Subscription"]
                .map(|root| (root, types.contains_key(root).then(|| root.to_owned()))),
        };
        Self { types, roots }
    }

    fn root(&self, operation: &str) -> Option<&String> {
        self.roots
            .iter()
            .find(|(name, _)| *name == operation)
            .and_then(|(_, root)| root.as_ref())
    }
}

/// Everything in `contract` that `served` lacks or weakens, one line each.
fn contract_differences(contract: &Schema, served: &Schema) -> Vec<String> {
    let mut differences = Vec::new();

    for (operation, contract_root) in &contract.roots {
        let Some(contract_root) = contract_root else {
            continue;
        };
        let contract_type = &contract.types[contract_root];
        let Some(served_type) = served
            .root(operation)
            .and_then(|served_root| served.types.get(served_root))
        else {
            differences.push(format!("schema: no {operation} root in the served schema"));
            if let TypeKind::Object(object) = &contract_type.kind {
                for field in &object.fields {
                    differences.push(format!("{operation}.{}: missing", field.node.name.node));
                }
            }
            continue;
        };
        compare_type(operation, contract_type, served_type, &mut differences);
    }

    let contract_roots: Vec<&String> = contract
        .roots
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .collect();
    for (name, contract_type) in &contract.types {
        if contract_roots.contains(&name) {
            continue;
        }
        match served.types.get(name) {
            Some(served_type) => compare_type(name, contract_type, served_type, &mut differences),
            None => differences.push(format!("type {name}: missing")),
        }
    }
    differences
}

fn kind_name(kind: &TypeKind) -> &'static str {
    match kind {
        TypeKind::Scalar => "scalar",
        TypeKind::Object(_) => "type",
        TypeKind::Interface(_) => "interface",
        TypeKind::Union(_) => "union",
        TypeKind::Enum(_) => "enum",
        TypeKind::InputObject(_) => "input",
    }
}

/// Compares one contract type with the served type it maps to; `label` names
/// it in the differences (the operation name for roots).
fn compare_type(
    label: &str,
    contract: &TypeDefinition,
    served: &TypeDefinition,
    differences: &mut Vec<String>,
) {
    match (&contract.kind, &served.kind) {
        (TypeKind::Scalar, TypeKind::Scalar) => {}
        (TypeKind::Object(contract), TypeKind::Object(served)) => {
            compare_output_fields(label, &contract.fields, &served.fields, differences);
        }
        (TypeKind::Interface(contract), TypeKind::Interface(served)) => {
            compare_output_fields(label, &contract.fields, &served.fields, differences);
        }
        (TypeKind::Union(contract), TypeKind::Union(served)) => {
            for member in &contract.members {
                if !served.members.iter().any(|m| m.node == member.node) {
                    differences.push(format!("union {label}: member {} missing", member.node));
                }
            }
        }
        (TypeKind::Enum(contract), TypeKind::Enum(served)) => {
            for value in &contract.values {
                let value = &value.node.value.node;
                if !served.values.iter().any(|v| v.node.value.node == *value) {
                    differences.push(format!("{label}.{value}: enum value missing"));
                }
            }
        }
        (TypeKind::InputObject(contract), TypeKind::InputObject(served)) => {
            compare_inputs(label, &contract.fields, &served.fields, differences);
        }
        (contract, served) => differences.push(format!(
            "type {label}: served as {} but the contract has {}",
            kind_name(served),
            kind_name(contract),
        )),
    }
}

fn compare_output_fields(
    owner: &str,
    contract: &[Positioned<FieldDefinition>],
    served: &[Positioned<FieldDefinition>],
    differences: &mut Vec<String>,
) {
    for field in contract {
        let field = &field.node;
        let name = &field.name.node;
        let Some(served_field) = served.iter().find(|s| s.node.name.node == *name) else {
            differences.push(format!("{owner}.{name}: missing"));
            continue;
        };
        let served_field = &served_field.node;
        if !output_satisfies(&field.ty.node, &served_field.ty.node) {
            differences.push(format!(
                "{owner}.{name}: served as {} but the contract needs {} (or stricter)",
                served_field.ty.node, field.ty.node,
            ));
        }
        compare_inputs(
            &format!("{owner}.{name}"),
            &field.arguments,
            &served_field.arguments,
            differences,
        );
    }
}

/// Arguments of a field, or fields of an input object: each in the contract
/// must be served and accept at least what the contract's accepts, and what
/// the served schema adds must be optional.
fn compare_inputs(
    owner: &str,
    contract: &[Positioned<InputValueDefinition>],
    served: &[Positioned<InputValueDefinition>],
    differences: &mut Vec<String>,
) {
    for input in contract {
        let input = &input.node;
        let name = &input.name.node;
        match served.iter().find(|s| s.node.name.node == *name) {
            None => differences.push(format!("{owner}({name}): missing")),
            Some(served_input) => {
                let served_ty = &served_input.node.ty.node;
                if !input_accepts(&input.ty.node, served_ty) {
                    differences.push(format!(
                        "{owner}({name}): served as {served_ty} but the contract needs {} (or laxer)",
                        input.ty.node,
                    ));
                }
            }
        }
    }
    for extra in served {
        let extra = &extra.node;
        let name = &extra.name.node;
        let required = !extra.ty.node.nullable && extra.default_value.is_none();
        if required && !contract.iter().any(|c| c.node.name.node == *name) {
            differences.push(format!(
                "{owner}({name}): served as required {} but the contract does not have it",
                extra.ty.node,
            ));
        }
    }
}

/// An output type is served correctly when it is the contract's type with at
/// least the same non-null guarantees, at every list level.
fn output_satisfies(contract: &Type, served: &Type) -> bool {
    if !contract.nullable && served.nullable {
        return false;
    }
    match (&contract.base, &served.base) {
        (BaseType::Named(contract), BaseType::Named(served)) => contract == served,
        (BaseType::List(contract), BaseType::List(served)) => output_satisfies(contract, served),
        _ => false,
    }
}

/// An input type is served correctly when it accepts every value the
/// contract's type accepts: it is never non-null where the contract allows
/// null, at every list level.
fn input_accepts(contract: &Type, served: &Type) -> bool {
    if contract.nullable && !served.nullable {
        return false;
    }
    match (&contract.base, &served.base) {
        (BaseType::Named(contract), BaseType::Named(served)) => contract == served,
        (BaseType::List(contract), BaseType::List(served)) => input_accepts(contract, served),
        _ => false,
    }
}

#[test]
fn nullability_rules_go_the_right_way() {
    let ty = |sdl: &str| Type::new(sdl).expect("a type");
    assert!(output_satisfies(&ty("String"), &ty("String!")));
    assert!(!output_satisfies(&ty("String!"), &ty("String")));
    assert!(output_satisfies(&ty("[Role]"), &ty("[Role!]!")));
    assert!(!output_satisfies(&ty("[Role!]!"), &ty("[Role]!")));
    assert!(!output_satisfies(&ty("[Role!]!"), &ty("Role!")));
    assert!(input_accepts(&ty("Int!"), &ty("Int")));
    assert!(!input_accepts(&ty("Int"), &ty("Int!")));
    assert!(input_accepts(&ty("[String!]"), &ty("[String]")));
    assert!(!input_accepts(&ty("[String]"), &ty("[String!]")));
    assert!(!input_accepts(&ty("ID"), &ty("String")));
}
