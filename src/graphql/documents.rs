//! Parsed and validated documents, kept by their text. A GraphQL client sends the same few documents
//! over and over with different variables; parsing one (pest), checking it against our shape limits and
//! running async-graphql's 22 validation rules cost more than everything else a `generateCode` does on
//! our side (callgrind, docs/BENCHMARKS.md). A document seen before is cloned from here instead, already
//! checked by the guard; once async-graphql has validated it for an operation, later requests for that
//! operation skip validation, as Apollo Server's document store does.
//!
//! Validation also looks at variable values (a String argument given the number 123 is refused before
//! execution). That part still holds: validation is skipped only when every variable of the operation
//! is a plain scalar (String, ID, Boolean, Int, Float) whose value is present or defaulted and fits
//! its declared type (a null never does), which with the document already valid is all the
//! variable check of validation asks. Any
//! other variable (an input object, a list, an enum, a custom scalar) or a value that does not fit:
//! full validation, as without the cache. So the answer to a request never depends on what came
//! before it.
//!
//! Bounded: at most `capacity` documents of at most `MAX_QUERY_BYTES` each; when full, an arbitrary
//! entry makes room. A client that sends a new document every time gains nothing but loses nothing
//! either (it pays the parse it would have paid). Only documents that parsed and passed the guard are
//! kept; a refused document is checked again every time it comes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextValidation,
};
use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, Type,
};
use async_graphql::{Request, ServerError, ServerResult, ValidationResult, Value, Variables};

use crate::graphql::error::{parse_error, refusal_error};
use crate::graphql::guard::{DocumentLimits, check_document};
use crate::graphql::{OperationInfo, RequestContext};

/// Longer documents are parsed every time (ours are under 500 bytes; GraphiQL's introspection query is
/// about 1.7 KiB).
pub const MAX_QUERY_BYTES: usize = 4096;

struct Entry {
    doc: ExecutableDocument,
    /// async-graphql's validation result, by operation name, once a request passed validation.
    validated: Mutex<Vec<(Option<String>, ValidationResult)>>,
}

impl Entry {
    fn validated_for(&self, operation: Option<&str>) -> Option<ValidationResult> {
        let validated = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        validated
            .iter()
            .find(|(name, _)| name.as_deref() == operation)
            .map(|(_, result)| *result)
    }

    fn remember(&self, operation: Option<String>, result: ValidationResult) {
        // Validation passes before async-graphql looks the operation name up, so a request naming an
        // operation the document does not have also gets here: only names the document has are
        // remembered, so the list is bounded by the document's operations.
        if self.operation(operation.as_deref()).is_none() {
            return;
        }
        let mut validated = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        if !validated.iter().any(|(name, _)| *name == operation) {
            validated.push((operation, result));
        }
    }

    /// The operation a request with this operation name runs, as async-graphql selects it.
    fn operation(&self, operation: Option<&str>) -> Option<&OperationDefinition> {
        match (&self.doc.operations, operation) {
            (DocumentOperations::Single(op), None) => Some(&op.node),
            (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
            (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
                ops.values().next().map(|op| &op.node)
            }
            _ => None,
        }
    }

    /// Whether every variable of the operation is a plain scalar whose value fits its declared type.
    fn variables_fit(&self, operation: Option<&str>, variables: &Variables) -> bool {
        let Some(op) = self.operation(operation) else {
            return false;
        };
        // A variable sent but not declared is ignored by validation and execution alike.
        op.variable_definitions.iter().all(|def| {
            let def = &def.node;
            let value = variables.get(&def.name.node);
            match value {
                None => def.default_value.is_some() || def.var_type.node.nullable,
                Some(value) => scalar_fits(&def.var_type.node, value),
            }
        })
    }
}

/// A null is never taken as fitting: for a variable with a default, an explicit null is not the
/// default, and validation judges it against the position the variable is used in (a nullable
/// variable with a default may fill a non-null argument, and then null is refused).
fn scalar_fits(ty: &Type, value: &Value) -> bool {
    let BaseType::Named(name) = &ty.base else {
        return false;
    };
    match (name.as_str(), value) {
        ("String", Value::String(_)) | ("ID", Value::String(_)) | ("Boolean", Value::Boolean(_)) => true,
        ("Int", Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        ("Float", Value::Number(_)) => true,
        _ => false,
    }
}

/// Request data: validation of this document and operation passed before, and the variables fit.
struct Prevalidated(ValidationResult);

/// Request data: validate, and remember a success for this document and operation.
struct RememberValidation {
    entry: Arc<Entry>,
    operation: Option<String>,
}

pub struct DocumentCache {
    entries: Mutex<HashMap<Box<str>, Arc<Entry>>>,
    capacity: usize,
    skipped_validations: AtomicU64,
}

impl DocumentCache {
    pub fn new(capacity: usize) -> Self {
        DocumentCache {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
            capacity,
            skipped_validations: AtomicU64::new(0),
        }
    }

    fn get(&self, query: &str) -> Option<Arc<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(query)
            .cloned()
    }

    fn insert(&self, query: &str, doc: ExecutableDocument) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            doc,
            validated: Mutex::new(Vec::new()),
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity
            && let Some(victim) = entries.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        entries.insert(query.into(), entry.clone());
        entry
    }

    /// Requests that skipped async-graphql's validation (tests prove the cache works with it).
    pub fn skipped_validations(&self) -> u64 {
        self.skipped_validations.load(Ordering::Relaxed)
    }

    /// Gives `request` its parsed document, from here or by parsing and checking it, and tells the
    /// `ValidationCache` extension whether validation can be skipped. `Err`: the document does not
    /// parse (GRAPHQL_PARSE_FAILED) or breaks a limit (QUERY_LIMIT_EXCEEDED), and must not run.
    pub fn prepare(&self, request: &mut Request, limits: &DocumentLimits) -> Result<(), ServerError> {
        let entry = match self.get(&request.query) {
            Some(entry) => {
                request.set_parsed_query(entry.doc.clone());
                entry
            }
            None => {
                let query = request.query.clone();
                let doc = request.parsed_query().map_err(parse_error)?;
                check_document(doc, limits).map_err(refusal_error)?;
                // Not kept (too long, or no cache): parsed and checked every time.
                if query.len() > MAX_QUERY_BYTES || self.capacity == 0 {
                    return Ok(());
                }
                self.insert(&query, doc.clone())
            }
        };
        let operation = request.operation_name.as_deref();
        match entry.validated_for(operation) {
            Some(result) if entry.variables_fit(operation, &request.variables) => {
                self.skipped_validations.fetch_add(1, Ordering::Relaxed);
                request.data.insert(Prevalidated(result));
            }
            _ => request.data.insert(RememberValidation {
                operation: request.operation_name.clone(),
                entry,
            }),
        }
        Ok(())
    }
}

/// The async-graphql extension that puts every request through the cache and the guard before it is
/// parsed (`prepare_request`: a refused document runs nothing), and skips or remembers validation as
/// `DocumentCache::prepare` decided. The HTTP layer knows none of this.
/// Tells the HTTP layer (through `RequestContext::operation`) which operation kind and root field the
/// request runs, from the document already parsed here.
fn record_operation(request: &mut Request) {
    let operation_name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else {
        return;
    };
    let op = match (&doc.operations, operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next().map(|op| &op.node),
        _ => None,
    };
    let Some(op) = op else { return };
    let kind = match op.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    let root_field = op.selection_set.node.items.iter().find_map(|s| match &s.node {
        Selection::Field(f) => Some(f.node.name.node.as_str()),
        _ => None,
    });
    let info = OperationInfo {
        kind,
        root_field: crate::ops::metrics::operation_label(root_field),
    };
    if let Some(context) = request
        .data
        .get(&std::any::TypeId::of::<RequestContext>())
        .and_then(|d| d.downcast_ref::<RequestContext>())
    {
        let _ = context.operation.set(info);
    }
}

pub struct DocumentGuard {
    cache: Arc<DocumentCache>,
    limits: Arc<DocumentLimits>,
}

impl DocumentGuard {
    pub fn new(cache: Arc<DocumentCache>, limits: DocumentLimits) -> Self {
        DocumentGuard {
            cache,
            limits: Arc::new(limits),
        }
    }
}

impl ExtensionFactory for DocumentGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentGuardExtension {
            cache: self.cache.clone(),
            limits: self.limits.clone(),
        })
    }
}

struct DocumentGuardExtension {
    cache: Arc<DocumentCache>,
    limits: Arc<DocumentLimits>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for DocumentGuardExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        self.cache.prepare(&mut request, &self.limits)?;
        record_operation(&mut request);
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        if let Some(Prevalidated(result)) = ctx.data_opt::<Prevalidated>() {
            return Ok(*result);
        }
        let result = next.run(ctx).await;
        if let (Ok(validated), Some(remember)) = (&result, ctx.data_opt::<RememberValidation>()) {
            remember.entry.remember(remember.operation.clone(), *validated);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(query: &str) -> Entry {
        Entry {
            doc: async_graphql::parser::parse_query(query).unwrap(),
            validated: Mutex::new(Vec::new()),
        }
    }

    fn result() -> ValidationResult {
        ValidationResult {
            cache_control: Default::default(),
            complexity: 1,
            depth: 1,
        }
    }

    #[test]
    fn only_operations_the_document_has_are_remembered() {
        let single = entry("{ __typename }");
        for i in 0..50 {
            single.remember(Some(format!("bogus{i}")), result());
        }
        assert!(single.validated.lock().unwrap().is_empty());
        single.remember(None, result());
        single.remember(None, result());
        assert_eq!(single.validated.lock().unwrap().len(), 1);

        let named = entry("query A { __typename } query B { __typename }");
        named.remember(None, result()); // two operations: a name is required
        named.remember(Some("C".into()), result());
        named.remember(Some("A".into()), result());
        assert_eq!(named.validated.lock().unwrap().len(), 1);
        assert!(named.validated_for(Some("A")).is_some());
        assert!(named.validated_for(Some("B")).is_none());
    }

    #[test]
    fn which_variables_fit() {
        let e = entry(
            "mutation M($s: String!, $n: String, $d: String = \"x\", $b: Boolean, $i: Int, $o: RegisterInput) { __typename }",
        );
        let vars = |v: serde_json::Value| Variables::from_json(v);
        let base = serde_json::json!({ "s": "a" });
        assert!(e.variables_fit(Some("M"), &vars(base.clone())));
        assert!(
            e.variables_fit(None, &vars(base.clone())),
            "the only operation, not named"
        );
        assert!(
            !e.variables_fit(Some("M"), &vars(serde_json::json!({}))),
            "missing non-null"
        );
        assert!(
            !e.variables_fit(Some("M"), &vars(serde_json::json!({ "s": 1 }))),
            "wrong type"
        );
        assert!(!e.variables_fit(Some("M"), &vars(serde_json::json!({ "s": null }))));
        assert!(
            !e.variables_fit(Some("M"), &vars(serde_json::json!({ "s": "a", "d": null }))),
            "an explicit null is not the default"
        );
        assert!(!e.variables_fit(Some("M"), &vars(serde_json::json!({ "s": "a", "n": null }))));
        assert!(!e.variables_fit(
            Some("M"),
            &vars(serde_json::json!({ "s": "a", "i": 3_000_000_000u64 }))
        ));
        assert!(e.variables_fit(
            Some("M"),
            &vars(serde_json::json!({ "s": "a", "i": 7, "b": true }))
        ));
        assert!(
            !e.variables_fit(Some("M"), &vars(serde_json::json!({ "s": "a", "o": {} }))),
            "input object"
        );
    }
}
