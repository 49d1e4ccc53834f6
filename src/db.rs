//! The database: one connection type for SQLite and PostgreSQL, a pool, embedded migrations,
//! and `Db::run`, the only way code reaches a connection.
//!
//! `Db::run` moves the closure onto tokio's blocking pool (diesel is synchronous) and re-enters
//! the caller's tracing span there, so a query never stalls an async worker and its logs stay
//! attached to the request that caused it.
//!
//! Connections are made by our own r2d2 manager rather than `MultiConnection::establish`: the
//! derived `establish` tries each backend in turn and hides the real error, and SQLite needs
//! its PRAGMAs on every new connection.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection as _;
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::settings::{DatabaseTarget, Settings};

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend. Queries built with the diesel DSL run on both; the few
/// statements that differ (`FOR UPDATE SKIP LOCKED`, upserts, search) `match` on the variant.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection available: {0}")]
    PoolTimeout(#[source] r2d2::Error),
    #[error("database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
}

/// A failure of the database's environment rather than of the statement: the request may
/// succeed later without any change on the caller's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The server is gone, restarting or refusing connections (PostgreSQL).
    Unreachable,
    /// The volume holding the database is full (SQLite's SQLITE_FULL; ENOSPC anywhere).
    StorageFull,
}

/// Which outage, if any, a query error is. diesel has kinds for a closed connection; a
/// PostgreSQL shutting down (SQLSTATE 57P01–57P03) and a full SQLite volume are only told
/// apart by their messages, which both servers have kept stable for many years.
pub fn outage_of(error: &diesel::result::Error) -> Option<Outage> {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => Some(Outage::Unreachable),
        Error::DatabaseError(_, info) => {
            let message = info.message();
            if message.contains("database or disk is full") {
                Some(Outage::StorageFull)
            } else if [
                "terminating connection due to administrator command",
                "the database system is shutting down",
                "the database system is starting up",
                "the database system is in recovery mode",
                "server closed the connection unexpectedly",
            ]
            .iter()
            .any(|known| message.contains(known))
            {
                Some(Outage::Unreachable)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// True when PostgreSQL refused a text value for holding a NUL character (SQLSTATE 22021):
/// bad input that slipped past the request checks (a form field, say), not a server fault.
pub fn nul_refused_in(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(diesel::result::Error::DatabaseError(_, info)) =
            current.downcast_ref::<diesel::result::Error>()
            && info.message().contains("invalid byte sequence")
            && info.message().contains("0x00")
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// The outage anywhere in an error's chain of causes.
pub fn outage_in(error: &(dyn std::error::Error + 'static)) -> Option<Outage> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(query) = current.downcast_ref::<diesel::result::Error>()
            && let Some(outage) = outage_of(query)
        {
            return Some(outage);
        }
        if current.downcast_ref::<r2d2::Error>().is_some() {
            return Some(Outage::Unreachable);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return Some(Outage::StorageFull);
        }
        cause = current.source();
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    #[error("cannot prepare the SQLite connection: {0}")]
    Setup(#[from] diesel::result::Error),
}

/// Opens connections for the pool, choosing the backend by the configured URL.
#[derive(Debug)]
pub struct ConnectionManager {
    target: DatabaseTarget,
    sqlite_busy_timeout_ms: u64,
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConnection, ConnectError> {
        match &self.target {
            DatabaseTarget::Postgres(url) => {
                Ok(DbConnection::Postgresql(PgConnection::establish(url)?))
            }
            DatabaseTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                // WAL lets readers proceed during a write; NORMAL sync is durable in WAL mode
                // except for the last transactions on power loss, the usual server trade-off.
                // secure_delete zeroes freed pages, so deleted messages do not linger in the file.
                // A 32 MiB page cache per connection keeps the search index's hot pages off the
                // read() path. (No mmap: mapped pages would count in the process's RSS and grow
                // with the database.)
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {};
                     PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;
                     PRAGMA foreign_keys = ON;
                     PRAGMA secure_delete = ON;
                     PRAGMA cache_size = -32768;
                     PRAGMA wal_autocheckpoint = 16384;",
                    self.sqlite_busy_timeout_ms
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), ConnectError> {
        conn.ping()?;
        Ok(())
    }

    /// A connection whose server went away (PostgreSQL restarted) is dropped when it comes
    /// back to the pool instead of being handed out again.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// The pool plus what it points at. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<ConnectionManager>,
    backend: Backend,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Pool numbers for `/metrics` and the admin pages.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

impl Db {
    /// Builds the pool. Connections open lazily except the first, which proves the URL works.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let target = settings.database_target().map_err(anyhow::Error::msg)?;
        let backend = match &target {
            DatabaseTarget::Sqlite(path) => {
                ensure_parent_dir(path)?;
                Backend::Sqlite
            }
            DatabaseTarget::Postgres(_) => Backend::Postgres,
        };
        let description = describe_target(&target);
        let manager = ConnectionManager {
            target,
            sqlite_busy_timeout_ms: settings.database.sqlite_busy_timeout_ms,
        };
        let builder = r2d2::Pool::builder()
            .max_size(settings.database.pool_max_size)
            .min_idle(Some(settings.database.pool_min_idle))
            .connection_timeout(Duration::from_secs(
                settings.database.connect_timeout_secs.max(1),
            ))
            // One cheap ping per checkout means idle connections killed by a database restart
            // are replaced transparently instead of failing the request that drew them.
            .test_on_check_out(true);
        let pool = tokio::task::spawn_blocking(move || builder.build(manager))
            .await
            .context("database start-up task failed")?
            .with_context(|| format!("cannot connect to the database ({description})"))?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `work` with a pooled connection on the blocking pool, inside the caller's span.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = pool.get().map_err(|e| E::from(DbError::PoolTimeout(e)))?;
            work(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Join(e)))?
    }

    pub fn pool_stats(&self) -> PoolStats {
        let state = self.pool.state();
        PoolStats {
            connections: state.connections,
            idle: state.idle_connections,
            max: self.pool.max_size(),
        }
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> anyhow::Result<Vec<String>> {
        self.run(run_migrations).await
    }

    /// Number of embedded migrations not yet applied to the database.
    pub async fn pending_migrations(&self) -> anyhow::Result<usize> {
        self.run(|conn| {
            match conn {
                DbConnection::Sqlite(c) => c.pending_migrations(SQLITE_MIGRATIONS).map(|l| l.len()),
                DbConnection::Postgresql(c) => {
                    c.pending_migrations(POSTGRES_MIGRATIONS).map(|l| l.len())
                }
            }
            .map_err(|e| anyhow::anyhow!("cannot list migrations: {e}"))
        })
        .await
    }
}

/// Locks one row (`SELECT … FOR UPDATE`) until the transaction ends, to serialize changes to
/// it across nodes on PostgreSQL. SQLite needs nothing: `write_transaction` already holds the
/// database's single write lock.
pub fn lock_row(conn: &mut DbConnection, table: LockableTable, id: i64) -> QueryResult<()> {
    if let DbConnection::Postgresql(pg) = conn {
        let sql = match table {
            LockableTable::Tenants => "SELECT id FROM tenants WHERE id = $1 FOR UPDATE",
            LockableTable::Rooms => "SELECT id FROM rooms WHERE id = $1 FOR UPDATE",
            LockableTable::OtaRollouts => "SELECT id FROM ota_rollouts WHERE id = $1 FOR UPDATE",
        };
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::BigInt, _>(id)
            .execute(pg)?;
    }
    Ok(())
}

/// The tables [`lock_row`] locks rows of (a closed list, so no SQL is built from text).
#[derive(Debug, Clone, Copy)]
pub enum LockableTable {
    Tenants,
    Rooms,
    /// A rollout: its devices' reports and the decisions they lead to, one at a time.
    OtaRollouts,
}

/// `Some` with what an insert returned, `None` when it broke a unique constraint (someone
/// else's row is already there); other errors pass through.
pub fn unless_taken<T>(inserted: QueryResult<T>) -> QueryResult<Option<T>> {
    match inserted {
        Ok(value) => Ok(Some(value)),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(None),
        Err(other) => Err(other),
    }
}

/// The one SQLite writer of this process (see `write_transaction`).
static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `work` in a transaction that will write. On SQLite it starts with `BEGIN IMMEDIATE`,
/// taking the write lock before the first read: a plain (deferred) transaction that reads and
/// then writes fails with "database is locked" whenever another writer committed in between
/// (a WAL snapshot conflict, which the busy timeout does not cover). Nested calls become
/// savepoints. On PostgreSQL it is an ordinary transaction.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, work: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    type Manager = <DbConnection as Connection>::TransactionManager;
    let nested = Manager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map_err(E::from)?
        .is_some();
    let DbConnection::Sqlite(sqlite) = conn else {
        return conn.transaction(work);
    };
    if nested {
        return conn.transaction(work);
    }
    // SQLite has one writer at a time. Writers of this process queue here instead of in
    // SQLite's busy handler, which polls with sleeps of up to 100 ms and leaves the database
    // idle while they sleep (measured: posting throughput, docs/benchmarks.md). Other
    // processes (the CLI) still meet the busy timeout.
    let _writer = SQLITE_WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE").map_err(E::from)?;
    match work(conn) {
        Ok(value) => match Manager::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(error) => {
                let _ = Manager::rollback_transaction(conn);
                Err(error.into())
            }
        },
        Err(error) => {
            Manager::rollback_transaction(conn).map_err(E::from)?;
            Err(error)
        }
    }
}

/// Applies the backend's migrations. On PostgreSQL several nodes may start at once, so the
/// migration runs under an advisory lock; the loser finds nothing left to do.
pub fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<Vec<String>> {
    let applied = match conn {
        DbConnection::Sqlite(c) => c
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("SQLite migration failed: {e}"))?
            .iter()
            .map(ToString::to_string)
            .collect(),
        DbConnection::Postgresql(c) => {
            const MIGRATION_LOCK: i64 = 0x636f_6e63_6c61_7665; // "conclave"
            c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                .context("cannot take the migration lock")?;
            let result = c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect())
                .map_err(|e| anyhow::anyhow!("PostgreSQL migration failed: {e}"));
            c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                .context("cannot release the migration lock")?;
            result?
        }
    };
    Ok(applied)
}

fn ensure_parent_dir(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!("cannot create the database directory {}", parent.display())
        })?;
    }
    Ok(())
}

/// A printable name for the database that never includes a password.
pub fn describe_target(target: &DatabaseTarget) -> String {
    match target {
        DatabaseTarget::Sqlite(path) => format!("sqlite {}", path.display()),
        DatabaseTarget::Postgres(url) => match url::Url::parse(url) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                parsed.to_string()
            }
            Err(_) => "postgres (unparsable URL)".to_owned(),
        },
    }
}
