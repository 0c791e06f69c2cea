//! Admission of one GraphQL operation, on every transport: HTTP and each
//! `subscribe` message over the WebSocket go through the same checks,
//! because they run as a schema extension before validation.
//!
//! In order:
//! 1. **Text.** Every string in the arguments (literals, variables and their
//!    defaults) is checked for control characters and bidirectional
//!    overrides ([`values::check_text`]); the refusal names the argument.
//!    No such character reaches a resolver, let alone the store.
//! 2. **Shape.** Depth (introspection's `__schema`/`__type` subtrees are not
//!    counted, so standard tools can introspect), root fields per operation
//!    and mutation fields per document are capped. Complexity, with page
//!    sizes multiplied in, is checked by the schema's validation right
//!    after.
//! 3. **Rate.** The caller's bucket is charged one token for a query or
//!    subscription, one per root field for a mutation (aliases included), so
//!    300 aliased `login`s cost 300 tokens, not one. Tokens the HTTP layer
//!    took for the request already ([`Caller::prepaid`]) count.

use std::any::TypeId;
use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Pos, Request, ServerError, ServerResult, Value};
use marketplace_domain::values::{self, Lines};

use crate::error::ApiError;
use crate::ratelimit::{retry_after_seconds, ClientKey};
use crate::state::AppState;

/// Deepest selection accepted (introspection subtrees not counted).
pub const MAX_DEPTH: usize = 12;
/// Most root fields (aliases included) in one operation.
pub const MAX_ROOT_FIELDS: usize = 20;
/// Most mutation fields in one document's operation.
pub const MAX_MUTATION_FIELDS: usize = 10;

/// Who an operation is charged to, put in the request (HTTP) or the
/// connection's data (WebSocket) by the transport.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    /// The bucket: the account, or the anonymous peer's address; `None`
    /// when the transport cannot tell (tests without connect info).
    pub client: Option<ClientKey>,
    /// Tokens the transport already took for this request.
    pub prepaid: u32,
}

/// The extension factory; one [`Admit`] per request.
#[derive(Debug, Clone, Copy)]
pub struct Admission;

impl ExtensionFactory for Admission {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Admit)
    }
}

struct Admit;

#[async_trait::async_trait]
impl Extension for Admit {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let caller = request
            .data
            .get(&TypeId::of::<Caller>())
            .and_then(|d| d.downcast_ref::<Caller>())
            .copied()
            .or_else(|| ctx.data_opt::<Caller>().copied())
            .unwrap_or_default();
        check_variables(&request.variables)?;
        let name = request.operation_name.clone();
        let cost = {
            let doc = request.parsed_query()?;
            match operation(doc, name.as_deref()) {
                // No operation to run: the executor says why.
                None => 0,
                Some(op) => check_operation(doc, op)?,
            }
        };
        let cost = cost.saturating_sub(caller.prepaid);
        if let (Some(client), true) = (caller.client, cost > 0) {
            if let Some(state) = ctx.data_opt::<AppState>() {
                if let Err(wait) = state.limiter.take(client, cost) {
                    return Err(refusal(ApiError::RateLimited {
                        retry_after_seconds: retry_after_seconds(wait),
                    }));
                }
            }
        }
        next.run(ctx, request).await
    }
}

/// A request-level error: coded, and without a location, since the whole
/// operation is refused.
fn refusal(e: ApiError) -> ServerError {
    let mut error = e.into_graphql().into_server_error(Pos::default());
    error.locations.clear();
    error
}

fn bad_text(path: &str) -> ServerError {
    refusal(ApiError::BadUserInput(format!(
        "{path}: {}",
        values::TEXT_REFUSED
    )))
}

/// The operation a request runs, if it names one that exists (or there is
/// only one).
fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// The fields (names, not aliases) of the operation `name` selects in
/// `doc`, fragments inlined: the root fields, and every field below them.
/// `None` if it selects no operation.
pub fn selected_fields(
    doc: &ExecutableDocument,
    name: Option<&str>,
) -> Option<(OperationType, Vec<String>, Vec<String>)> {
    let op = operation(doc, name)?;
    let mut walk = Walk {
        doc,
        stack: HashSet::new(),
    };
    let mut roots = Vec::new();
    let mut all = Vec::new();
    let _ = walk.fields(&op.selection_set.node, &mut |walk, field| {
        roots.push(field.name.node.to_string());
        walk.all_fields(field, &mut all);
        Ok(())
    });
    Some((op.ty, roots, all))
}

/// Checks the operation's text and shape; returns its cost in tokens.
fn check_operation(doc: &ExecutableDocument, op: &OperationDefinition) -> ServerResult<u32> {
    for var in &op.variable_definitions {
        if let Some(default) = &var.node.default_value {
            check_const(&format!("${}", var.node.name.node), &default.node)?;
        }
    }
    let mut walk = Walk {
        doc,
        stack: HashSet::new(),
    };
    walk.check_text(&op.selection_set.node, "")?;
    let depth = walk.depth(&op.selection_set.node);
    if depth > MAX_DEPTH {
        return Err(refusal(ApiError::BadUserInput(format!(
            "Query is nested too deep: {depth} levels, at most {MAX_DEPTH}"
        ))));
    }
    let roots = walk.root_fields(&op.selection_set.node);
    if roots > MAX_ROOT_FIELDS {
        return Err(refusal(ApiError::BadUserInput(format!(
            "an operation selects at most {MAX_ROOT_FIELDS} root fields (aliases included); \
             this one selects {roots}"
        ))));
    }
    if op.ty == OperationType::Mutation {
        if roots > MAX_MUTATION_FIELDS {
            return Err(refusal(ApiError::BadUserInput(format!(
                "a document runs at most {MAX_MUTATION_FIELDS} mutation fields; this one \
                 runs {roots}: send them as separate requests"
            ))));
        }
        return Ok(u32::try_from(roots).unwrap_or(u32::MAX).max(1));
    }
    Ok(1)
}

fn check_variables(variables: &async_graphql::Variables) -> ServerResult<()> {
    for (name, value) in variables.iter() {
        check_const(&format!("${name}"), value)?;
    }
    Ok(())
}

fn check_const(path: &str, value: &Value) -> ServerResult<()> {
    use Value as C;
    match value {
        C::String(s) if refused(s) => Err(bad_text(path)),
        C::Enum(n) if refused(n.as_str()) => Err(bad_text(path)),
        C::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_const(&format!("{path}[{i}]"), v)),
        C::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            if refused(k.as_str()) {
                return Err(bad_text(path));
            }
            check_const(&format!("{path}.{k}"), v)
        }),
        _ => Ok(()),
    }
}

/// Free text may hold line breaks and tabs (descriptions, comments); every
/// other control character and every bidi override is refused everywhere.
fn refused(s: &str) -> bool {
    s.chars().any(|c| values::is_refused_char(c, Lines::Many))
}

/// A walk over a selection set with fragment spreads inlined. A fragment
/// already being walked is not entered again: a cycle is the validator's
/// to report, and must not hang this walk.
struct Walk<'d> {
    doc: &'d ExecutableDocument,
    stack: HashSet<&'d str>,
}

impl<'d> Walk<'d> {
    /// Calls `f` on every field of `set` (this level only, fragments
    /// inlined).
    fn fields(
        &mut self,
        set: &'d SelectionSet,
        f: &mut dyn FnMut(&mut Self, &'d async_graphql::parser::types::Field) -> ServerResult<()>,
    ) -> ServerResult<()> {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => f(self, &field.node)?,
                Selection::InlineFragment(inline) => {
                    self.fields(&inline.node.selection_set.node, f)?
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.doc.fragments.get(name) else {
                        continue;
                    };
                    if self.stack.insert(name) {
                        let result = self.fields(&fragment.node.selection_set.node, f);
                        self.stack.remove(name);
                        result?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_text(&mut self, set: &'d SelectionSet, parent: &str) -> ServerResult<()> {
        self.fields(set, &mut |walk, field| {
            let name = field.name.node.as_str();
            let path = if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}.{name}")
            };
            for (arg, value) in &field.arguments {
                // Variables are checked on their own; here they are null.
                let literal = value
                    .node
                    .clone()
                    .into_const_with(|_| Ok::<_, std::convert::Infallible>(Value::Null))
                    .unwrap_or(Value::Null);
                check_const(&format!("{path}({})", arg.node), &literal)?;
            }
            walk.check_text(&field.selection_set.node, &path)
        })
    }

    fn depth(&mut self, set: &'d SelectionSet) -> usize {
        let mut deepest = 0;
        let _ = self.fields(set, &mut |walk, field| {
            let below = if matches!(field.name.node.as_str(), "__schema" | "__type") {
                0
            } else {
                walk.depth(&field.selection_set.node)
            };
            deepest = deepest.max(1 + below);
            Ok(())
        });
        deepest
    }

    fn all_fields(
        &mut self,
        field: &'d async_graphql::parser::types::Field,
        out: &mut Vec<String>,
    ) {
        out.push(field.name.node.to_string());
        let _ = self.fields(&field.selection_set.node, &mut |walk, child| {
            walk.all_fields(child, out);
            Ok(())
        });
    }

    fn root_fields(&mut self, set: &'d SelectionSet) -> usize {
        let mut n = 0;
        let _ = self.fields(set, &mut |_, _| {
            n += 1;
            Ok(())
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(query: &str) -> Result<u32, String> {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        let op = operation(&doc, None).expect("one operation");
        check_operation(&doc, op).map_err(|e| e.message)
    }

    #[test]
    fn a_mutation_costs_one_token_per_root_field_fragments_and_aliases_included() {
        assert_eq!(cost("{ a: __typename b: __typename }"), Ok(1));
        assert_eq!(
            cost("mutation { a: login(email: \"x\", password: \"y\") { token } b: login(email: \"x\", password: \"y\") { token } }"),
            Ok(2)
        );
        assert_eq!(
            cost("mutation { ...F ... on Mutation { c: logout } } fragment F on Mutation { a: logout b: logout }"),
            Ok(3)
        );
        let many: String = (0..11).map(|i| format!("l{i}: logout ")).collect();
        let refused = cost(&format!("mutation {{ {many} }}")).expect_err("over the cap");
        assert!(refused.contains("at most 10 mutation fields"), "{refused}");
    }

    #[test]
    fn introspection_subtrees_do_not_count_towards_the_depth_limit() {
        let deep_type_ref = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } } } }";
        assert_eq!(cost(deep_type_ref), Ok(1));
        let too_deep =
            "{ a { b { c { d { e { f { g { h { i { j { k { l { m } } } } } } } } } } } } }";
        let refused = cost(too_deep).expect_err("13 levels");
        assert!(refused.contains("nested too deep"), "{refused}");
    }

    #[test]
    fn a_fragment_cycle_does_not_hang_the_walk() {
        assert!(cost("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }").is_ok());
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_refused_and_named() {
        let refused = cost("mutation { register(input: { email: \"a\\u0000@x.com\" }) { token } }")
            .expect_err("NUL");
        assert!(refused.starts_with("register(input).email:"), "{refused}");
        let refused = cost("{ listings(filter: { search: \"lamp\\u202e\" }) { totalCount } }")
            .expect_err("bidi");
        assert!(refused.starts_with("listings(filter).search:"), "{refused}");
        assert!(cost("mutation { postReview(comment: \"good\\nlamp\") { id } }").is_ok());

        let mut vars = async_graphql::Variables::default();
        vars.insert(
            async_graphql::Name::new("input"),
            Value::from_json(serde_json::json!({ "tags": ["ok", "b\u{0}d"] })).expect("json"),
        );
        let refused = check_variables(&vars).expect_err("NUL in a variable");
        assert!(
            refused.message.starts_with("$input.tags[1]:"),
            "{}",
            refused.message
        );
    }
}
