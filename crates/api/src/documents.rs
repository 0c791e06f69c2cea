//! Parsed GraphQL documents, kept by their text.
//!
//! A client sends the same few operations over and over, with other
//! variables. Parsing one took 4.6 % of the server's CPU in the
//! hot-listing checkout benchmark, so `/graphql` keeps the parsed form of
//! the most recently used documents and hands a request a copy of it
//! instead of parsing its text again. A document is the same whatever the
//! variables, and validation and execution still run on every request.
//!
//! Bounded both ways: at most [`Documents::CAPACITY`] documents, and only
//! texts up to [`Documents::MAX_QUERY_LEN`] bytes are kept. A document that
//! does not parse is never kept, so bad input costs what it did before.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;
use lru::LruCache;

/// The most recently used parsed documents.
pub struct Documents {
    parsed: Mutex<LruCache<String, ExecutableDocument>>,
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.parsed.lock().map_or(0, |p| p.len());
        f.debug_struct("Documents").field("kept", &kept).finish()
    }
}

impl Default for Documents {
    fn default() -> Self {
        Self {
            parsed: Mutex::new(LruCache::new(
                NonZeroUsize::new(Self::CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl Documents {
    /// Most documents kept.
    pub const CAPACITY: usize = 512;
    /// Longest query text kept, in bytes.
    pub const MAX_QUERY_LEN: usize = 4_096;

    /// Gives `request` its parsed document: a copy of the kept one, or
    /// parsed now and kept if it parses and is short enough.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > Self::MAX_QUERY_LEN {
            return;
        }
        let kept = self
            .parsed
            .lock()
            .ok()
            .and_then(|mut parsed| parsed.get(&request.query).cloned());
        if let Some(document) = kept {
            request.set_parsed_query(document);
            return;
        }
        let Ok(document) = request.parsed_query().cloned() else {
            return;
        };
        if let Ok(mut parsed) = self.parsed.lock() {
            parsed.put(request.query.clone(), document);
        }
    }

    /// How many documents are kept.
    pub fn len(&self) -> usize {
        self.parsed.lock().map_or(0, |p| p.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::types::DocumentOperations;

    fn request(query: &str) -> async_graphql::Request {
        async_graphql::Request::new(query)
    }

    fn field_names(request: &mut async_graphql::Request) -> Vec<String> {
        let Ok(doc) = request.parsed_query() else {
            return Vec::new();
        };
        let DocumentOperations::Single(op) = &doc.operations else {
            return Vec::new();
        };
        op.node
            .selection_set
            .node
            .items
            .iter()
            .filter_map(|s| match &s.node {
                async_graphql::parser::types::Selection::Field(f) => {
                    Some(f.node.name.node.to_string())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_kept_document_is_the_one_its_text_parses_to() {
        let documents = Documents::default();
        let mut first = request("{ me { id } listings { totalCount } }");
        documents.prepare(&mut first);
        assert_eq!(documents.len(), 1);
        let mut again = request("{ me { id } listings { totalCount } }");
        documents.prepare(&mut again);
        assert_eq!(field_names(&mut again), ["me", "listings"]);
        let mut other = request("{ categories }");
        documents.prepare(&mut other);
        assert_eq!(field_names(&mut other), ["categories"], "not the kept one");
        assert_eq!(documents.len(), 2);
    }

    #[test]
    fn a_request_whose_text_is_kept_gets_the_kept_document_without_parsing() {
        let documents = Documents::default();
        let kept = async_graphql::parser::parse_query("{ categories }").expect("parses");
        documents
            .parsed
            .lock()
            .expect("lock")
            .put("{ me { id } }".to_owned(), kept);
        let mut hit = request("{ me { id } }");
        documents.prepare(&mut hit);
        assert_eq!(
            field_names(&mut hit),
            ["categories"],
            "the kept document, not a new parse of the text"
        );
    }

    #[test]
    fn keeps_neither_bad_nor_long_documents_and_no_more_than_its_capacity() {
        let documents = Documents::default();
        let mut bad = request("{ me { id ");
        documents.prepare(&mut bad);
        assert!(bad.parsed_query().is_err(), "the error is still reported");
        let long = format!(
            "{{ me {{ id }} }} #{}",
            "x".repeat(Documents::MAX_QUERY_LEN)
        );
        documents.prepare(&mut request(&long));
        assert!(documents.is_empty());
        for i in 0..Documents::CAPACITY + 10 {
            documents.prepare(&mut request(&format!("query Q{i} {{ me {{ id }} }}")));
        }
        assert_eq!(documents.len(), Documents::CAPACITY);
    }
}
