//! Leadership: one active runner per consumer across all processes.
//!
//! A runner leads while it holds a session-level Postgres advisory lock,
//! `pg_try_advisory_lock(namespace, key)`, on a dedicated connection kept
//! open for as long as it leads (never a pooled one, so the lock cannot leak
//! back into a pool). The key is a stable hash of a name ([`lock_key`]); the
//! two-`int4` form keeps these locks apart from the event store's `bigint`
//! append lock, and the namespace keeps kinds of consumers apart
//! ([`PROJECTION_LOCKS`] for projection builds, [`CONSUMER_LOCKS`] for the
//! consumers of [`crate::runner`]).
//!
//! When the leader's process dies its connection closes and Postgres
//! releases the lock; a standby's next attempt takes it. Holding the lock is
//! not trusted on its own: a new leader also takes a new *generation* for
//! its checkpoint row, and every checkpoint write is fenced on it, so a
//! stale leader's late write fails instead of moving the checkpoint.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// Namespace of the projection builds' locks (`"mktp"` in ASCII).
pub const PROJECTION_LOCKS: i32 = 0x6d6b_7470;
/// Namespace of the locks of [`crate::runner`]'s consumers (`"mktc"`).
pub const CONSUMER_LOCKS: i32 = 0x6d6b_7463;

/// Second half of an advisory lock key: FNV-1a (32 bit) of `name`'s UTF-8
/// bytes, with the sign bit cleared so that it reads the same as `objid` in
/// `pg_locks`. Stable across processes and builds of the binary.
pub fn lock_key(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::try_from(h & 0x7fff_ffff).unwrap_or(0)
}

/// The dedicated connection of one runner: it tries its lock while standing
/// by and holds it while leading.
pub struct LockConnection {
    options: PgConnectOptions,
    namespace: i32,
    key: i32,
    conn: Option<PgConnection>,
    held: bool,
}

impl std::fmt::Debug for LockConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockConnection")
            .field("namespace", &self.namespace)
            .field("key", &self.key)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl LockConnection {
    /// A connection for the lock `(namespace, lock_key(name))`, not yet
    /// opened.
    pub fn new(options: PgConnectOptions, namespace: i32, name: &str) -> Self {
        Self {
            options,
            namespace,
            key: lock_key(name),
            conn: None,
            held: false,
        }
    }

    /// Aims at the lock of `name` (releasing the one held, if another).
    pub async fn target(&mut self, name: &str) {
        let key = lock_key(name);
        if key != self.key {
            self.release().await;
            self.key = key;
        }
    }

    /// Whether this connection holds its lock (as far as it knows).
    pub fn held(&self) -> bool {
        self.held
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Tries to take the lock once. A broken connection is dropped and
    /// reopened on the next call.
    pub async fn try_acquire(&mut self) -> Result<bool, sqlx::Error> {
        let (namespace, key) = (self.namespace, self.key);
        let result = async {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                .bind(namespace)
                .bind(key)
                .fetch_one(self.connection().await?)
                .await
        }
        .await;
        let locked = self.settle(result)?;
        self.held = locked;
        Ok(locked)
    }

    /// Tries to take the lock once and, in the same round trip, reads a
    /// checkpoint position with `position_sql` (a scalar subquery taking
    /// `name` as `$1`), so that a standby can follow the leader.
    pub async fn try_acquire_following(
        &mut self,
        position_sql: &str,
        name: &str,
    ) -> Result<(bool, Option<i64>), sqlx::Error> {
        let (namespace, key) = (self.namespace, self.key);
        let sql = format!("SELECT pg_try_advisory_lock($2, $3), ({position_sql})");
        let result = async {
            sqlx::query_as::<_, (bool, Option<i64>)>(&sql)
                .bind(name)
                .bind(namespace)
                .bind(key)
                .fetch_one(self.connection().await?)
                .await
        }
        .await;
        let result = self.settle(result)?;
        self.held = result.0;
        Ok(result)
    }

    /// Runs a read (`sql` returning one optional BIGINT, `name` as `$1`) on
    /// this connection if it is open; reconnecting is left to the next
    /// attempt at the lock.
    pub async fn read_position(
        &mut self,
        sql: &str,
        name: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let result = sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(name)
            .fetch_optional(conn)
            .await
            .map(Option::flatten);
        self.settle(result)
    }

    /// Whether the lock is still held: the session that took it is alive.
    pub async fn still_held(&mut self) -> bool {
        if !self.held {
            return false;
        }
        let alive = match self.conn.as_mut() {
            Some(conn) => sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok(),
            None => false,
        };
        if !alive {
            self.conn = None;
            self.held = false;
        }
        alive
    }

    /// Whether the lock is still held and `check_sql` (a boolean query
    /// taking `key` as `$1` and the generation as `$2`, e.g. "does the row
    /// still have my generation") holds. `None` if that could not be read.
    pub async fn still_leading(
        &mut self,
        check_sql: &str,
        key: &str,
        generation: i64,
    ) -> Option<bool> {
        if !self.still_held().await {
            return Some(false);
        }
        let conn = self.conn.as_mut()?;
        let row: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(check_sql)
            .bind(key)
            .bind(generation)
            .fetch_optional(conn)
            .await;
        match row {
            Ok(leading) => Some(leading.unwrap_or(false)),
            Err(_) => None,
        }
    }

    /// Gives the lock up (keeping the connection for later attempts); a
    /// connection that cannot unlock is closed, which releases it too.
    pub async fn release(&mut self) {
        if !self.held {
            return;
        }
        self.held = false;
        let unlocked = match self.conn.as_mut() {
            Some(conn) => sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(self.namespace)
                .bind(self.key)
                .execute(&mut *conn)
                .await
                .is_ok(),
            None => true,
        };
        if !unlocked {
            self.conn = None;
        }
    }

    /// Releases the lock and closes the connection.
    pub async fn close(mut self) {
        self.release().await;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// Drops a connection whose query failed (it reconnects next time).
    fn settle<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if result.is_err() {
            self.conn = None;
            self.held = false;
        }
        result
    }
}

/// The `(namespace, key)` pairs of the advisory locks held right now in the
/// current database, for status reports ("does it have a live leader").
pub async fn held_locks(pool: &sqlx::PgPool) -> Result<Vec<(i32, i32)>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT classid::bigint, objid::bigint FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, o)| Some((i32::try_from(c).ok()?, i32::try_from(o).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_non_negative() {
        // FNV-1a of "" is the offset basis; pinned so a change is noticed.
        assert_eq!(lock_key(""), 0x011c_9dc5);
        assert_eq!(lock_key("listings"), lock_key("listings"));
        assert_ne!(lock_key("listings"), lock_key("orders"));
        for name in ["accounts", "listings", "orders", "reviews", "checkout"] {
            assert!(lock_key(name) >= 0);
        }
    }
}
