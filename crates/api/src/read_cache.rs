//! Small in-process caches of the hottest reads: the first pages of the
//! unfiltered catalogue, listings by id, and accounts by id (the sellers
//! a catalogue page names).
//!
//! Every entry is tagged with the position its read model had reached when
//! it was read, and is served only while that read model is still at that
//! position ([`Progress`], which the projectors, or the checkpoint
//! follower of an API-only process, move after each commit). So a commit
//! invalidates the read model's entries at once, and a request with
//! `X-Consistency-Token`, which first waits until the read model has
//! passed the token, is never served an entry from before it: an entry is
//! at least as new as the position it is tagged with.
//!
//! The caches are bounded: a table that reaches its size is cleared.
//!
//! Only reads of the primary fill them: a read replica's rows may be older
//! than the primary position they would be tagged with. A replica's reads
//! go through a [`ReadCache::read_only`] view of the same tables, which
//! serves current entries and keeps nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use marketplace_projections::read_models::accounts::{self, AccountRow};
use marketplace_projections::read_models::listings::{self, ListingPage, ListingRow, Sort, Want};
use marketplace_projections::Progress;
use marketplace_store::Position;
use uuid::Uuid;

/// Most listings or accounts kept.
pub const MAX_ROWS: usize = 20_000;
/// Most catalogue pages kept.
pub const MAX_PAGES: usize = 512;

/// A first page of the unfiltered catalogue (PUBLISHED, no filter, no
/// cursor): its sort, size and extras.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// Order.
    pub sort: Sort,
    /// Page size.
    pub first: usize,
    /// Total and facets.
    pub want: Want,
}

struct Table<K, V> {
    read_model: &'static str,
    max: usize,
    entries: Mutex<HashMap<K, (Position, V)>>,
}

impl<K: Hash + Eq, V: Clone> Table<K, V> {
    fn new(read_model: &'static str, max: usize) -> Self {
        Self {
            read_model,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Position, V)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, progress: &Progress, key: &K) -> Option<V> {
        let now = progress.position(self.read_model);
        let entries = self.lock();
        let (at, value) = entries.get(key)?;
        (*at == now).then(|| value.clone())
    }

    fn put(&self, key: K, at: Position, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key, (at, value));
    }
}

struct Tables {
    pages: Table<PageKey, Arc<ListingPage>>,
    listings: Table<Uuid, Option<ListingRow>>,
    accounts: Table<Uuid, Option<AccountRow>>,
}

/// The caches, shared by every request of a process.
pub struct ReadCache {
    progress: Progress,
    tables: Arc<Tables>,
    /// Whether reads through this handle are kept (false: a replica's).
    fills: bool,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

impl ReadCache {
    /// Empty caches following `progress`.
    pub fn new(progress: Progress) -> Self {
        Self {
            progress,
            tables: Arc::new(Tables {
                pages: Table::new(listings::NAME, MAX_PAGES),
                listings: Table::new(listings::NAME, MAX_ROWS),
                accounts: Table::new(accounts::NAME, MAX_ROWS),
            }),
            fills: true,
        }
    }

    /// The same tables for reads of a replica: current entries are served,
    /// nothing read through it is kept.
    pub fn read_only(&self) -> Self {
        Self {
            progress: self.progress.clone(),
            tables: self.tables.clone(),
            fills: false,
        }
    }

    /// Where the listings read model is now: the tag of what is read next.
    pub fn listings_position(&self) -> Position {
        self.progress.position(listings::NAME)
    }

    /// Where the accounts read model is now.
    pub fn accounts_position(&self) -> Position {
        self.progress.position(accounts::NAME)
    }

    /// A cached first page, if still current.
    pub fn page(&self, key: &PageKey) -> Option<Arc<ListingPage>> {
        self.tables.pages.get(&self.progress, key)
    }

    /// Keeps a first page read when the listings read model was at `at`.
    pub fn put_page(&self, key: PageKey, at: Position, page: Arc<ListingPage>) {
        if self.fills {
            self.tables.pages.put(key, at, page);
        }
    }

    /// A cached listing (`Some(None)`: known not to exist), if still current.
    pub fn listing(&self, id: Uuid) -> Option<Option<ListingRow>> {
        self.tables.listings.get(&self.progress, &id)
    }

    /// Keeps a listing (or its absence) read at `at`.
    pub fn put_listing(&self, id: Uuid, at: Position, row: Option<ListingRow>) {
        if self.fills {
            self.tables.listings.put(id, at, row);
        }
    }

    /// A cached account, if still current.
    pub fn account(&self, id: Uuid) -> Option<Option<AccountRow>> {
        self.tables.accounts.get(&self.progress, &id)
    }

    /// Keeps an account (or its absence) read at `at`.
    pub fn put_account(&self, id: Uuid, at: Position, row: Option<AccountRow>) {
        if self.fills {
            self.tables.accounts.put(id, at, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(title: &str) -> ListingRow {
        ListingRow {
            listing_id: Uuid::nil(),
            seller_id: Uuid::nil(),
            kind: "PHYSICAL".into(),
            title: title.into(),
            description: String::new(),
            category: "home".into(),
            tags: vec![],
            price_minor: 1,
            currency: "EUR".into(),
            quantity: 1,
            status: "PUBLISHED".into(),
            content_hash: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
            reserved: 0,
            sold: 0,
            rating_count: 0,
            average_rating: None,
        }
    }

    #[test]
    fn an_entry_is_served_only_while_its_read_model_has_not_moved() {
        let progress = Progress::default();
        let cache = ReadCache::new(progress.clone());
        let id = Uuid::now_v7();
        progress.advance(listings::NAME, Position(7));
        let at = cache.listings_position();
        cache.put_listing(id, at, Some(row("old")));
        assert_eq!(
            cache.listing(id).flatten().map(|r| r.title),
            Some("old".into())
        );
        // Another read model moving changes nothing…
        progress.advance(accounts::NAME, Position(9));
        assert!(cache.listing(id).is_some());
        // …the listings read model committing invalidates it.
        progress.advance(listings::NAME, Position(8));
        assert!(cache.listing(id).is_none());
    }

    #[test]
    fn a_read_only_view_serves_current_entries_and_keeps_nothing() {
        let progress = Progress::default();
        let cache = ReadCache::new(progress.clone());
        let replica = cache.read_only();
        let (kept, ignored) = (Uuid::now_v7(), Uuid::now_v7());
        let at = cache.listings_position();
        cache.put_listing(kept, at, Some(row("primary")));
        replica.put_listing(ignored, at, Some(row("replica")));
        assert_eq!(
            replica.listing(kept).flatten().map(|r| r.title),
            Some("primary".into())
        );
        assert!(cache.listing(ignored).is_none());
        assert!(replica.listing(ignored).is_none());
    }

    #[test]
    fn a_full_table_is_cleared_rather_than_grown() {
        let cache = ReadCache::new(Progress::default());
        for _ in 0..MAX_ROWS + 5 {
            cache.put_account(Uuid::now_v7(), Position::START, None);
        }
        assert!(cache.tables.accounts.lock().len() <= MAX_ROWS);
    }
}
