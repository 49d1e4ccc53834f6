//! `conclave backup create|verify|restore|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{config_failure, exit};
use crate::backup;
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Back up the database now (safe while Conclave runs): one .tar.gz with a manifest.
    Create {
        /// Where to write it (default: backup.dir, or <data_dir>/backups).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Restore a backup into a throwaway database and check it against its manifest.
    Verify { file: PathBuf },
    /// Replace the configured database with a backup (verified first). Stop Conclave first.
    Restore {
        file: PathBuf,
        /// Replace an existing database (SQLite keeps the old file beside it).
        #[arg(long)]
        force: bool,
    },
    /// List the backups in a directory, newest first.
    List {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("conclave: {error:#}");
    ExitCode::from(code)
}

fn summary(manifest: &backup::Manifest) -> String {
    let rows: i64 = manifest.tables.values().sum();
    format!(
        "{} backup of {} (schema {}, Conclave {}): {} tables, {rows} rows, {} bytes, sha256 {}",
        manifest.backend,
        manifest.created_at.to_rfc3339(),
        manifest.schema_version,
        manifest.version,
        manifest.tables.len(),
        manifest.payload_bytes,
        &manifest.sha256[..16.min(manifest.sha256.len())]
    )
}

pub fn backup(settings: &Settings, action: BackupAction) -> ExitCode {
    if let Err(e) = settings.validate() {
        return config_failure(&e);
    }
    match action {
        BackupAction::Create { out } => match backup::create(settings, out.as_deref()) {
            Ok((path, manifest)) => {
                println!("{}", path.display());
                println!("{}", summary(&manifest));
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::UNAVAILABLE, &e),
        },
        BackupAction::Verify { file } => match backup::verify(settings, &file) {
            Ok(verified) => {
                println!("OK {}: {}", file.display(), verified.method);
                println!("{}", summary(&verified.manifest));
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::DATA, &e),
        },
        BackupAction::Restore { file, force } => match backup::restore(settings, &file, force) {
            Ok(manifest) => {
                println!("restored {}", summary(&manifest));
                println!("start Conclave: it applies any newer migrations on start");
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::DATA, &e),
        },
        BackupAction::List { dir } => {
            let dir = dir.unwrap_or_else(|| backup::backup_dir(settings));
            let found = backup::list(&dir);
            if found.is_empty() {
                println!("no backups in {}", dir.display());
            }
            for listed in found {
                match (&listed.manifest, &listed.problem) {
                    (Some(manifest), _) => println!("{}  {}", listed.file, summary(manifest)),
                    (None, Some(problem)) => println!("{}  unreadable: {problem}", listed.file),
                    (None, None) => println!("{}", listed.file),
                }
            }
            ExitCode::SUCCESS
        }
    }
}
