//! Backups: `conclave backup create|verify|restore|list` and the scheduled `backup.scheduled`
//! job.
//!
//! A backup is one gzip'd tar file, `conclave-<UTC time>-<backend>.tar.gz`, holding
//! `manifest.json` (time, Conclave's version, schema version, the payload's size and SHA-256,
//! and the row count of every table) and the payload:
//! - **SQLite**: `database.sqlite`, made with `VACUUM INTO` on a separate connection — a
//!   consistent copy taken while the server keeps serving (it is one read transaction);
//! - **PostgreSQL**: `database.pgdump`, `pg_dump --format=custom`, run on a snapshot exported
//!   from a repeatable-read transaction in which the row counts are taken too, so the counts
//!   and the dump describe the same instant.
//!
//! Keys are never inside: the database holds message keys only wrapped by the key-encryption
//! key, which lives in the key provider (env, file, Vault) and must be escrowed separately
//! (docs/operations.md). Files are written as `.partial`, synced, then renamed, and are mode
//! 0600. `verify` restores into a throwaway database (a temporary SQLite file, or a temporary
//! PostgreSQL database on the configured server) and compares integrity and row counts with
//! the manifest; `restore` verifies first.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Datelike as _, Utc};
use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::db::DbError;
use crate::jobs::{JobError, JobRegistry, Queue};
use crate::settings::{DatabaseTarget, Settings};

/// The archive layout's version.
pub const FORMAT: u32 = 1;
/// The job kind of scheduled backups.
pub const JOB: &str = "backup.scheduled";
const MANIFEST: &str = "manifest.json";
const SQLITE_PAYLOAD: &str = "database.sqlite";
const PG_PAYLOAD: &str = "database.pgdump";
const PREFIX: &str = "conclave-";
const SUFFIX: &str = ".tar.gz";

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub format: u32,
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    /// Conclave's version that made it.
    pub version: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// The newest applied migration.
    pub schema_version: String,
    /// The payload's name inside the archive.
    pub payload: String,
    pub payload_bytes: u64,
    /// SHA-256 of the payload, lower-case hex.
    pub sha256: String,
    /// Rows per table at the moment of the backup.
    pub tables: BTreeMap<String, i64>,
}

/// Where scheduled backups go: `backup.dir`, or `<data_dir>/backups`.
pub fn backup_dir(settings: &Settings) -> PathBuf {
    settings
        .backup
        .dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("backups"))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Schema version and row counts, read on `conn` (inside whatever snapshot it has open).
fn facts<C>(conn: &mut C, tables_sql: &str) -> anyhow::Result<(String, BTreeMap<String, i64>)>
where
    C: Connection,
    for<'a> diesel::query_builder::SqlQuery:
        diesel::query_dsl::LoadQuery<'a, C, Name> + diesel::query_dsl::LoadQuery<'a, C, Count>,
{
    let names: Vec<Name> = diesel::sql_query(tables_sql).load(conn)?;
    let mut tables = BTreeMap::new();
    for Name { name } in names {
        let count: Count =
            diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {}", quoted(&name)))
                .get_result(conn)?;
        tables.insert(name, count.n);
    }
    let version: Vec<Name> = diesel::sql_query(
        "SELECT version AS name FROM __diesel_schema_migrations ORDER BY version DESC LIMIT 1",
    )
    .load(conn)?;
    let version = version
        .into_iter()
        .next()
        .map(|v| v.name)
        .unwrap_or_default();
    Ok((version, tables))
}

const SQLITE_TABLES: &str = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name";
const PG_TABLES: &str =
    "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename";

fn sqlite(path: &Path) -> anyhow::Result<SqliteConnection> {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())
        .with_context(|| format!("cannot open {}", path.display()))?;
    // The server may be writing: wait for its lock rather than failing.
    conn.batch_execute("PRAGMA busy_timeout = 30000")?;
    Ok(conn)
}

/// The `pg_dump`/`pg_restore` to use: on PATH, else the newest in /usr/lib/postgresql.
fn pg_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(path);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let tool = entry.path().join("bin").join(name);
            tool.is_file().then_some((version, tool))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, tool)| tool).ok_or_else(|| {
        anyhow!("{name} is not installed: install the PostgreSQL client tools (Debian: postgresql-client) of the server's version or newer")
    })
}

/// A PostgreSQL command for `url`, with the password in the environment, not in argv (where
/// `ps` would show it).
fn pg_command(tool: &str, url: &str) -> anyhow::Result<(Command, String)> {
    let mut parsed = url::Url::parse(url).context("database.url is not a URL")?;
    let mut command = Command::new(pg_tool(tool)?);
    if let Some(password) = parsed.password() {
        let password = percent_encoding::percent_decode_str(password)
            .decode_utf8_lossy()
            .into_owned();
        command.env("PGPASSWORD", password);
        let _ = parsed.set_password(None);
    }
    Ok((command, parsed.to_string()))
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        total,
    ))
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes a backup into `out_dir` (default [`backup_dir`]); returns its path and manifest.
pub fn create(settings: &Settings, out_dir: Option<&Path>) -> anyhow::Result<(PathBuf, Manifest)> {
    let dir = out_dir.map_or_else(|| backup_dir(settings), Path::to_path_buf);
    private_dir(&dir)?;
    let work = tempfile::Builder::new()
        .prefix(".conclave-backup-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let created_at = Utc::now();
    let target = settings.database_target().map_err(|e| anyhow!(e))?;
    let (backend, payload_name, schema_version, tables) = match &target {
        DatabaseTarget::Sqlite(db) => {
            if !db.exists() {
                bail!(
                    "{} does not exist: there is nothing to back up",
                    db.display()
                );
            }
            let payload = work.path().join(SQLITE_PAYLOAD);
            let mut conn = sqlite(db)?;
            diesel::sql_query("VACUUM INTO ?")
                .bind::<Text, _>(payload.to_string_lossy())
                .execute(&mut conn)
                .context("VACUUM INTO failed")?;
            drop(conn);
            let (version, tables) = facts(&mut sqlite(&payload)?, SQLITE_TABLES)?;
            ("sqlite", SQLITE_PAYLOAD, version, tables)
        }
        DatabaseTarget::Postgres(url) => {
            let payload = work.path().join(PG_PAYLOAD);
            let mut conn = PgConnection::establish(url).context("cannot connect to PostgreSQL")?;
            conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            let snapshot: Name =
                diesel::sql_query("SELECT pg_export_snapshot() AS name").get_result(&mut conn)?;
            let (version, tables) = facts(&mut conn, PG_TABLES)?;
            let (mut dump, url) = pg_command("pg_dump", url)?;
            dump.arg("--format=custom")
                .arg("--no-owner")
                .arg("--no-privileges")
                .arg(format!("--snapshot={}", snapshot.name))
                .arg(format!("--file={}", payload.display()))
                .arg(format!("--dbname={url}"));
            let dumped = run(dump, "pg_dump");
            conn.batch_execute("COMMIT")?;
            dumped?;
            ("postgres", PG_PAYLOAD, version, tables)
        }
    };
    let payload = work.path().join(payload_name);
    let (sha256, payload_bytes) = sha256_of(&payload)?;
    let manifest = Manifest {
        format: FORMAT,
        created_at,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: backend.to_owned(),
        schema_version,
        payload: payload_name.to_owned(),
        payload_bytes,
        sha256,
        tables,
    };
    let name = format!(
        "{PREFIX}{}-{backend}{SUFFIX}",
        created_at.format("%Y%m%dT%H%M%S%3fZ")
    );
    let dest = dir.join(name);
    write_archive(&dest, &manifest, &payload)?;
    Ok((dest, manifest))
}

fn write_archive(dest: &Path, manifest: &Manifest, payload: &Path) -> anyhow::Result<()> {
    let partial = dest.with_extension("partial");
    let file = {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        options
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?
    };
    let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    let manifest_bytes = serde_json::to_vec_pretty(manifest)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest_bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(manifest.created_at.timestamp().max(0).unsigned_abs());
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, manifest_bytes.as_slice())?;
    let mut source = File::open(payload)?;
    tar.append_file(&manifest.payload, &mut source)?;
    let gzip = tar.into_inner()?;
    let mut file = gzip.finish()?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&partial, dest)
        .with_context(|| format!("cannot rename to {}", dest.display()))?;
    if let Some(parent) = dest.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn not_a_backup(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{} is not a readable Conclave backup: {why}",
        path.display()
    )
}

/// Reads the manifest (the archive's first entry) without unpacking the payload.
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = archive.entries().map_err(|e| not_a_backup(path, e))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| not_a_backup(path, "it is empty"))?
        .map_err(|e| not_a_backup(path, e))?;
    if entry.path().map_err(|e| not_a_backup(path, e))?.as_os_str() != MANIFEST {
        return Err(not_a_backup(path, "it does not start with manifest.json"));
    }
    read_manifest_entry(path, &mut entry)
}

fn read_manifest_entry(path: &Path, entry: &mut impl std::io::Read) -> anyhow::Result<Manifest> {
    let mut text = String::new();
    entry
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| not_a_backup(path, e))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| not_a_backup(path, format!("manifest: {e}")))?;
    if manifest.format != FORMAT {
        bail!(
            "{} is a backup of format {}; this Conclave reads format {FORMAT}",
            path.display(),
            manifest.format
        );
    }
    Ok(manifest)
}

/// Unpacks the payload into `into` and checks it against the manifest's size and SHA-256.
fn extract(path: &Path, into: &Path) -> anyhow::Result<(Manifest, PathBuf)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut manifest = None;
    let mut payload = None;
    for entry in archive.entries().map_err(|e| not_a_backup(path, e))? {
        let mut entry = entry.map_err(|e| not_a_backup(path, e))?;
        let name = entry
            .path()
            .map_err(|e| not_a_backup(path, e))?
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            MANIFEST => manifest = Some(read_manifest_entry(path, &mut entry)?),
            SQLITE_PAYLOAD | PG_PAYLOAD => {
                // Fixed names only: nothing in the archive chooses where a file is written.
                let out = into.join(&name);
                let mut file = File::create(&out)?;
                std::io::copy(&mut entry, &mut file).map_err(|e| not_a_backup(path, e))?;
                file.sync_all()?;
                payload = Some(out);
            }
            other => return Err(not_a_backup(path, format!("unexpected entry {other:?}"))),
        }
    }
    let manifest = manifest.ok_or_else(|| not_a_backup(path, "no manifest.json"))?;
    let payload = payload.ok_or_else(|| not_a_backup(path, "no database inside"))?;
    if payload
        .file_name()
        .is_none_or(|n| n != manifest.payload.as_str())
    {
        return Err(not_a_backup(
            path,
            "the payload is not the one the manifest names",
        ));
    }
    let (sha256, bytes) = sha256_of(&payload)?;
    if bytes != manifest.payload_bytes || sha256 != manifest.sha256 {
        bail!(
            "{} is damaged: the database inside does not match its manifest's SHA-256",
            path.display()
        );
    }
    Ok((manifest, payload))
}

fn compare(expected: &BTreeMap<String, i64>, found: &BTreeMap<String, i64>) -> anyhow::Result<()> {
    for (table, rows) in expected {
        match found.get(table) {
            Some(n) if n == rows => {}
            Some(n) => bail!("table {table}: {rows} rows in the manifest, {n} restored"),
            None => bail!("table {table} is missing from the restored database"),
        }
    }
    if let Some(extra) = found.keys().find(|t| !expected.contains_key(*t)) {
        bail!("table {extra} is in the restored database but not in the manifest");
    }
    Ok(())
}

/// What `verify` checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// How it was checked, for the report.
    pub method: String,
}

/// Restores `path` into a throwaway database and compares it with its manifest.
pub fn verify(settings: &Settings, path: &Path) -> anyhow::Result<Verified> {
    let work = tempfile::tempdir()?;
    let (manifest, payload) = extract(path, work.path())?;
    let method = match manifest.backend.as_str() {
        "sqlite" => {
            let mut conn = sqlite(&payload)?;
            let check: Vec<Name> =
                diesel::sql_query("SELECT integrity_check AS name FROM pragma_integrity_check")
                    .load(&mut conn)?;
            if check.len() != 1 || check[0].name != "ok" {
                let problems: Vec<String> = check.into_iter().take(5).map(|c| c.name).collect();
                bail!("integrity check failed: {}", problems.join("; "));
            }
            let (_, tables) = facts(&mut conn, SQLITE_TABLES)?;
            compare(&manifest.tables, &tables)?;
            "opened a copy: integrity check ok, row counts match".to_owned()
        }
        "postgres" => match settings.database_target() {
            Ok(DatabaseTarget::Postgres(url)) => verify_postgres(&url, &payload, &manifest)?,
            _ => {
                let (mut list, _) = pg_command("pg_restore", "postgres://localhost/")?;
                list.arg("--list").arg(&payload);
                run(list, "pg_restore --list")?;
                "read the dump's table of contents (no PostgreSQL configured to restore into)"
                    .to_owned()
            }
        },
        other => bail!("unknown backend {other:?} in the manifest"),
    };
    Ok(Verified { manifest, method })
}

fn verify_postgres(url: &str, payload: &Path, manifest: &Manifest) -> anyhow::Result<String> {
    let name = format!("conclave_verify_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(url).context("cannot connect to PostgreSQL")?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .context("cannot create a temporary database to restore into (the role needs CREATEDB)")?;
    let mut target = url::Url::parse(url)?;
    target.set_path(&name);
    let outcome = (|| {
        let (mut restore, target_url) = pg_command("pg_restore", target.as_str())?;
        restore
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg("--exit-on-error")
            .arg(format!("--dbname={target_url}"))
            .arg(payload);
        run(restore, "pg_restore")?;
        let mut conn = PgConnection::establish(target.as_str())?;
        let (_, tables) = facts(&mut conn, PG_TABLES)?;
        compare(&manifest.tables, &tables)
    })();
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    outcome?;
    Ok("restored into a temporary database: row counts match".to_owned())
}

/// Verifies `path`, then makes it the configured database. SQLite keeps the file it replaces
/// (`<db>.before-restore-<time>`); PostgreSQL is restored in one transaction (`--clean`).
pub fn restore(settings: &Settings, path: &Path, force: bool) -> anyhow::Result<Manifest> {
    let work = tempfile::tempdir()?;
    let target = settings.database_target().map_err(|e| anyhow!(e))?;
    let (manifest, payload) = extract(path, work.path())?;
    match (&target, manifest.backend.as_str()) {
        (DatabaseTarget::Sqlite(db), "sqlite") => {
            let verified = verify(settings, path)?;
            drop(verified);
            if db.exists() && !force {
                bail!(
                    "{} exists: stop Conclave, then run again with --force (the current file is kept beside it)",
                    db.display()
                );
            }
            if let Some(parent) = db.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let incoming = db.with_extension("restoring");
            std::fs::copy(&payload, &incoming)?;
            File::open(&incoming)?.sync_all()?;
            let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
            for suffix in ["", "-wal", "-shm"] {
                let current = PathBuf::from(format!("{}{suffix}", db.display()));
                if current.exists() {
                    // The old WAL must not meet the new file: it would be replayed into it.
                    let kept =
                        PathBuf::from(format!("{}.before-restore-{stamp}{suffix}", db.display()));
                    std::fs::rename(&current, &kept)?;
                }
            }
            std::fs::rename(&incoming, db)?;
        }
        (DatabaseTarget::Postgres(url), "postgres") => {
            let mut conn = PgConnection::establish(url).context("cannot connect to PostgreSQL")?;
            let existing: Count = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM pg_tables WHERE schemaname = 'public'",
            )
            .get_result(&mut conn)?;
            if existing.n > 0 && !force {
                bail!(
                    "the configured database is not empty: stop Conclave, then run again with --force to replace its contents"
                );
            }
            let (mut restore, url) = pg_command("pg_restore", url)?;
            restore
                .arg("--clean")
                .arg("--if-exists")
                .arg("--no-owner")
                .arg("--no-privileges")
                .arg("--single-transaction")
                .arg("--exit-on-error")
                .arg(format!("--dbname={url}"))
                .arg(&payload);
            run(restore, "pg_restore")?;
            let (_, tables) = facts(&mut conn, PG_TABLES)?;
            compare(&manifest.tables, &tables)?;
        }
        (_, backend) => bail!(
            "this is a {backend} backup and the configured database is {}: restore it into the same kind",
            match target {
                DatabaseTarget::Sqlite(_) => "SQLite",
                DatabaseTarget::Postgres(_) => "PostgreSQL",
            }
        ),
    }
    Ok(manifest)
}

/// A backup file found in a directory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub file: String,
    pub bytes: u64,
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be read.
    pub problem: Option<String>,
}

impl Listed {
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.manifest.as_ref().map(|m| m.created_at)
    }
}

/// The backups in `dir`, newest first.
pub fn list(dir: &Path) -> Vec<Listed> {
    let mut found: Vec<Listed> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(PREFIX) && name.ends_with(SUFFIX)
        })
        .map(|entry| {
            let path = entry.path();
            let (manifest, problem) = match read_manifest(&path) {
                Ok(manifest) => (Some(manifest), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            Listed {
                file: entry.file_name().to_string_lossy().into_owned(),
                bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
                manifest,
                problem,
            }
        })
        .collect();
    found.sort_by(|a, b| b.file.cmp(&a.file));
    found
}

/// Which backups retention removes: it keeps the newest of each of the last `daily` days that
/// have one, and of each of the last `weekly` ISO weeks; never the newest backup.
pub fn to_prune(backups: &[(String, DateTime<Utc>)], daily: usize, weekly: usize) -> Vec<String> {
    let mut sorted: Vec<&(String, DateTime<Utc>)> = backups.iter().collect();
    sorted.sort_by_key(|b| std::cmp::Reverse(b.1));
    let mut days = Vec::new();
    let mut weeks = Vec::new();
    let mut prune = Vec::new();
    for (index, (name, at)) in sorted.into_iter().enumerate() {
        let day = at.date_naive();
        let week = (at.iso_week().year(), at.iso_week().week());
        let mut keep = index == 0;
        if !days.contains(&day) && days.len() < daily {
            days.push(day);
            keep = true;
        }
        if !weeks.contains(&week) && weeks.len() < weekly {
            weeks.push(week);
            keep = true;
        }
        if !keep {
            prune.push(name.clone());
        }
    }
    prune
}

/// Deletes what [`to_prune`] says in `dir`; answers the names deleted.
pub fn prune(dir: &Path, daily: usize, weekly: usize) -> anyhow::Result<Vec<String>> {
    let dated: Vec<(String, DateTime<Utc>)> = list(dir)
        .into_iter()
        .filter_map(|l| Some((l.file.clone(), l.created_at()?)))
        .collect();
    let doomed = to_prune(&dated, daily, weekly);
    for name in &doomed {
        std::fs::remove_file(dir.join(name)).with_context(|| format!("cannot delete {name}"))?;
    }
    Ok(doomed)
}

/// Publishes the newest good backup's time as `backup_last_success_timestamp_seconds`.
pub fn publish_last_success(dir: &Path) {
    if let Some(newest) = list(dir).iter().find_map(Listed::created_at) {
        metrics::gauge!("backup_last_success_timestamp_seconds").set(newest.timestamp() as f64);
    }
}

/// Registers the scheduled backup: a backup into [`backup_dir`], then retention, then the
/// next run `backup.interval_hours` later (an hour later after a failure, which is logged and
/// counted, not retried at once: a missing `pg_dump` will not appear by itself).
pub fn register_jobs(registry: &mut JobRegistry, settings: std::sync::Arc<Settings>, queue: Queue) {
    registry.register(JOB, move |_job| {
        let (settings, queue) = (settings.clone(), queue.clone());
        async move {
            if !settings.backup.enabled {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let dir = backup_dir(&settings);
            let outcome = tokio::task::spawn_blocking({
                let (settings, dir) = (settings.clone(), dir.clone());
                move || -> anyhow::Result<(PathBuf, Manifest, Vec<String>)> {
                    let (path, manifest) = create(&settings, Some(&dir))?;
                    let pruned =
                        prune(&dir, settings.backup.keep_daily, settings.backup.keep_weekly)?;
                    Ok((path, manifest, pruned))
                }
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|done| done);
            let every = chrono::TimeDelta::hours(i64::from(settings.backup.interval_hours));
            let next = match outcome {
                Ok((path, manifest, pruned)) => {
                    metrics::counter!("backups_total", "outcome" => "succeeded").increment(1);
                    metrics::histogram!("backup_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::gauge!("backup_last_success_timestamp_seconds")
                        .set(manifest.created_at.timestamp() as f64);
                    metrics::gauge!("backup_last_size_bytes")
                        .set(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64);
                    tracing::info!(
                        file = %path.display(),
                        pruned = pruned.len(),
                        "scheduled backup written"
                    );
                    Utc::now() + every
                }
                Err(e) => {
                    metrics::counter!("backups_total", "outcome" => "failed").increment(1);
                    tracing::error!(error = %format!("{e:#}"), dir = %dir.display(), "scheduled backup failed");
                    Utc::now() + every.min(chrono::TimeDelta::hours(1))
                }
            };
            let db = queue.db().clone();
            db.run(move |conn| {
                queue
                    .ensure_scheduled_in(conn, JOB, next, false)
                    .map_err(DbError::from)
            })
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
            Ok(())
        }
    });
}

/// Schedules the first backup ten minutes after start, unless one is waiting (every node
/// calls it; one job exists).
pub async fn schedule(queue: &Queue, settings: &Settings) -> Result<(), DbError> {
    if !settings.backup.enabled {
        return Ok(());
    }
    queue
        .schedule_recurring(JOB, chrono::TimeDelta::minutes(10))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn retention_keeps_seven_days_and_four_weeks() {
        // Two backups a day for 60 days, newest first: 2026-11-30 back to 2026-10-02.
        let mut backups = Vec::new();
        for day in 0..60 {
            for hour in [3, 15] {
                let at = Utc
                    .with_ymd_and_hms(2026, 11, 30, hour, 0, 0)
                    .single()
                    .expect("a valid time")
                    - chrono::TimeDelta::days(day);
                backups.push((format!("b-{day:02}-{hour:02}"), at));
            }
        }
        let pruned = to_prune(&backups, 7, 4);
        let kept: Vec<&String> = backups
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !pruned.contains(n))
            .collect();
        // The newest of each of the last 7 days (Monday 30 November starts a new ISO week, so
        // they span two weeks), plus the newest of each of the two older weeks.
        assert_eq!(kept.len(), 7 + 2, "{kept:?}");
        assert!(kept.contains(&&"b-08-15".to_owned()) && kept.contains(&&"b-15-15".to_owned()));
        assert!(kept.contains(&&"b-00-15".to_owned()), "the newest is kept");
        assert!(!kept.contains(&&"b-00-03".to_owned()), "one per day");
        assert!(pruned.contains(&"b-59-03".to_owned()));
        assert!(
            to_prune(&backups[..1], 0, 0).is_empty(),
            "never the only backup"
        );
    }

    #[test]
    fn row_counts_must_match_table_by_table() {
        let expected: BTreeMap<String, i64> = [("a".to_owned(), 2), ("b".to_owned(), 0)].into();
        assert!(compare(&expected, &expected).is_ok());
        let fewer: BTreeMap<String, i64> = [("a".to_owned(), 1), ("b".to_owned(), 0)].into();
        assert!(
            compare(&expected, &fewer)
                .unwrap_err()
                .to_string()
                .contains("table a: 2 rows in the manifest, 1 restored")
        );
        let missing: BTreeMap<String, i64> = [("a".to_owned(), 2)].into();
        assert!(compare(&expected, &missing).is_err());
    }
}
