//! Leadership: one active runner per projection across all processes.
//!
//! A runner leads a build of a projection (see [`crate::builds`]) while it
//! holds a session-level Postgres advisory lock,
//! `pg_try_advisory_lock(LOCK_NAMESPACE, key)`, on a dedicated connection
//! kept open for as long as it leads (not a pooled one, so the lock can
//! never leak back into the pool). The key is a stable hash of the build's
//! schema name ([`lock_key`]), so the live build and a rebuild of the same
//! projection have a leader each; the two-`int4` form keeps these locks
//! apart from the event store's `bigint` append lock, and Postgres scopes
//! advisory locks to the database.
//!
//! When the leader's process dies, its connection closes and Postgres
//! releases the lock; a standby's next attempt takes it. Holding the lock is
//! not trusted on its own: a new leader bumps the checkpoint row's
//! `generation`, and every batch commit checks it (see [`crate::runtime`]).

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// First half of every projection lock key (`"mktp"` in ASCII).
pub const LOCK_NAMESPACE: i32 = 0x6d6b_7470;

/// Second half of an advisory lock key: FNV-1a (32 bit) of `name`'s UTF-8
/// bytes (a build's schema for leadership, a projection's name for
/// [`crate::builds::BUILD_LOCK_NAMESPACE`]), with the sign bit cleared so
/// that it reads the same as `objid` in `pg_locks`. Stable across processes
/// and builds of the binary.
pub fn lock_key(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::try_from(h & 0x7fff_ffff).unwrap_or(0)
}

/// The dedicated connection of one runner: it tries the lock of its target
/// build while standing by and holds it while leading.
pub(crate) struct LockConnection {
    options: PgConnectOptions,
    key: i32,
    conn: Option<PgConnection>,
    held: bool,
}

impl LockConnection {
    /// A connection for the lock of the build in `schema` (not yet opened).
    pub(crate) fn new(options: PgConnectOptions, schema: &str) -> Self {
        Self {
            options,
            key: lock_key(schema),
            conn: None,
            held: false,
        }
    }

    /// Aims at the lock of the build in `schema` (releasing the one held,
    /// if it is another).
    pub(crate) async fn target(&mut self, schema: &str) {
        let key = lock_key(schema);
        if key != self.key {
            self.release().await;
            self.key = key;
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Tries to take the lock once; also returns the checkpoint position of
    /// `name`'s live build (if any), so a standby can follow it.
    /// A broken connection is dropped and reopened on the next call.
    pub(crate) async fn try_acquire(
        &mut self,
        name: &str,
    ) -> Result<(bool, Option<i64>), sqlx::Error> {
        let key = self.key;
        let result = async {
            sqlx::query_as::<_, (bool, Option<i64>)>(
                "SELECT pg_try_advisory_lock($1, $2), \
                 (SELECT position FROM projection_checkpoints WHERE name = $3 AND live)",
            )
            .bind(LOCK_NAMESPACE)
            .bind(key)
            .bind(name)
            .fetch_one(self.connection().await?)
            .await
        }
        .await;
        match result {
            Ok((locked, position)) => {
                self.held = locked;
                Ok((locked, position))
            }
            Err(e) => {
                self.conn = None;
                self.held = false;
                Err(e)
            }
        }
    }

    /// The checkpoint position of `name`'s live build, read on this
    /// connection if it is open (reconnecting is left to
    /// [`LockConnection::try_acquire`]).
    pub(crate) async fn follow(&mut self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let result = sqlx::query_scalar::<_, i64>(
            "SELECT position FROM projection_checkpoints WHERE name = $1 AND live",
        )
        .bind(name)
        .fetch_optional(conn)
        .await;
        if result.is_err() {
            self.conn = None;
            self.held = false;
        }
        result
    }

    /// Whether the lock is still held: the session that took it is alive.
    pub(crate) async fn still_held(&mut self) -> bool {
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

    /// Whether the lock is still held and the build in `schema` still has
    /// leadership `generation` and is not retired (a switch retires the
    /// build it replaces; a takeover bumps the generation). `None` if that
    /// could not be read.
    pub(crate) async fn still_leading(&mut self, schema: &str, generation: i64) -> Option<bool> {
        if !self.still_held().await {
            return Some(false);
        }
        let conn = self.conn.as_mut()?;
        let row: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
            "SELECT generation = $2 AND NOT retired FROM projection_checkpoints \
             WHERE schema_name = $1",
        )
        .bind(schema)
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
    pub(crate) async fn release(&mut self) {
        if !self.held {
            return;
        }
        self.held = false;
        let unlocked = match self.conn.as_mut() {
            Some(conn) => sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_NAMESPACE)
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
    pub(crate) async fn close(mut self) {
        self.release().await;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
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
        for name in ["accounts", "listings", "orders", "reviews"] {
            assert!(lock_key(name) >= 0);
        }
    }
}
