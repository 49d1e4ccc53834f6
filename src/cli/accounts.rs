//! `conclave user …` and `conclave audit …`: account administration from the shell, against
//! the configured database (migrated first, so they work on a fresh installation).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use secrecy::SecretString;

use super::exit;
use crate::auth::users::{self, CreateUserError, CreatedVia, NewUser};
use crate::auth::{Email, PasswordHasher, PasswordPolicy};
use crate::db::{Db, DbError};
use crate::settings::Settings;
use crate::tenancy::Role;

type Outcome = Result<(), (u8, anyhow::Error)>;

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a verified user (the first user of the installation becomes the owner).
    Create(CreateArgs),
    /// List users with their roles.
    List {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Stop a user from signing in (their data stays).
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Let a disabled user sign in again.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// Turn off a user's two-factor authentication (they lost their phone and their codes).
    #[command(name = "reset-2fa")]
    ResetTwoFactor {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    email: String,
    /// The password (visible to other local users in the process list; prefer --password-file).
    #[arg(
        long,
        conflicts_with = "password_file",
        required_unless_present = "password_file"
    )]
    password: Option<String>,
    /// A file holding the password (a trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Display name; defaults to the part of the email before the @.
    #[arg(long)]
    name: Option<String>,
    /// Role in the default workspace.
    #[arg(long, conflicts_with = "owner")]
    role: Option<String>,
    /// Make the user an owner of the default workspace (same as --role owner).
    #[arg(long)]
    owner: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Write the audit log to stdout, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

fn bad_input(message: impl std::fmt::Display) -> (u8, anyhow::Error) {
    (exit::DATA, anyhow::anyhow!("{message}"))
}

fn failure(error: impl Into<anyhow::Error>) -> (u8, anyhow::Error) {
    (exit::FAILURE, error.into())
}

async fn database(settings: &Settings) -> Result<Db, (u8, anyhow::Error)> {
    let db = Db::connect(settings)
        .await
        .map_err(|e| (exit::UNAVAILABLE, e))?;
    db.migrate().await.map_err(failure)?;
    Ok(db)
}

pub async fn user(settings: Settings, action: UserAction) -> Outcome {
    match action {
        UserAction::Create(args) => create(settings, args).await,
        UserAction::List { format } => list(settings, format).await,
        UserAction::Disable { email } => set_disabled(settings, &email, true).await,
        UserAction::Enable { email } => set_disabled(settings, &email, false).await,
        UserAction::ResetTwoFactor { email } => reset_two_factor(settings, &email).await,
    }
}

async fn reset_two_factor(settings: Settings, email: &str) -> Outcome {
    let email = Email::parse(email).map_err(bad_input)?;
    let db = database(&settings).await?;
    let target = email.clone();
    let user = db
        .run(move |conn| users::find_by_email(conn, &target).map_err(DbError::from))
        .await
        .map_err(failure)?
        .ok_or_else(|| (exit::NO_USER, anyhow::anyhow!("no user with email {email}")))?;
    let user_id = user.id;
    let outcome = db
        .run(move |conn| Ok::<_, DbError>(crate::auth::two_factor::disable_in(conn, user_id)))
        .await
        .map_err(failure)?;
    match outcome {
        Ok(()) => {
            println!(
                "two-factor authentication is off for {email}; they can sign in with their password"
            );
            Ok(())
        }
        Err(crate::auth::two_factor::TwoFactorError::NotOn) => {
            println!("{email} does not use two-factor authentication");
            Ok(())
        }
        Err(e) => Err(failure(e)),
    }
}

async fn create(settings: Settings, args: CreateArgs) -> Outcome {
    let email = Email::parse(&args.email).map_err(bad_input)?;
    let password = match (&args.password, &args.password_file) {
        (Some(password), _) => password.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --password-file {}", file.display()))
            .map_err(|e| (exit::DATA, e))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Err(bad_input("password: give --password or --password-file")),
    };
    let password = SecretString::from(password);
    PasswordPolicy::new(settings.accounts.password_min_length)
        .check(&password, &email)
        .map_err(bad_input)?;
    let display_name = match &args.name {
        Some(name) => users::parse_display_name(name).map_err(bad_input)?,
        None => email
            .as_str()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    let role = match (&args.role, args.owner) {
        (_, true) => Some(Role::Owner),
        (Some(role), false) => Some(role.parse::<Role>().map_err(bad_input)?),
        (None, false) => None,
    };
    let db = database(&settings).await?;
    let hasher = PasswordHasher::new(
        settings.accounts.hash_concurrency,
        settings.accounts.hash_queue,
    );
    let password_hash = hasher.hash(password).await.map_err(failure)?;
    let new = NewUser {
        email,
        display_name,
        password_hash: Some(password_hash),
        verified: true,
        role,
        via: CreatedVia::Cli,
    };
    let created = db
        .run(move |conn| Ok::<_, DbError>(users::create(conn, new)))
        .await
        .map_err(failure)?;
    match created {
        Ok((user, role)) => {
            println!(
                "created user {} <{}> as {role} of the default workspace",
                user.id, user.email
            );
            Ok(())
        }
        Err(CreateUserError::EmailTaken) => Err(bad_input(CreateUserError::EmailTaken)),
        Err(CreateUserError::Database(e)) => Err(failure(e)),
    }
}

async fn list(settings: Settings, format: ListFormat) -> Outcome {
    let db = database(&settings).await?;
    let all = db
        .run(|conn| users::list(conn).map_err(DbError::from))
        .await
        .map_err(failure)?;
    let mut out = std::io::stdout().lock();
    match format {
        ListFormat::Jsonl => {
            for (user, memberships) in &all {
                let line = serde_json::json!({
                    "id": user.id,
                    "email": user.email,
                    "name": user.display_name,
                    "verified": user.email_verified_at.is_some(),
                    "disabled": user.disabled_at.is_some(),
                    "created_at": user.created_at.and_utc().to_rfc3339(),
                    "memberships": memberships,
                });
                writeln!(out, "{line}").map_err(failure)?;
            }
        }
        ListFormat::Table => {
            writeln!(
                out,
                "{:>5}  {:<32}  {:<20}  {:<9}  roles",
                "id", "email", "name", "status"
            )
            .map_err(failure)?;
            for (user, memberships) in &all {
                let status = match (user.disabled_at, user.email_verified_at) {
                    (Some(_), _) => "disabled",
                    (None, None) => "unverified",
                    (None, Some(_)) => "active",
                };
                let roles: Vec<String> = memberships
                    .iter()
                    .map(|m| format!("{}:{}", m.tenant_slug, m.role))
                    .collect();
                writeln!(
                    out,
                    "{:>5}  {:<32}  {:<20}  {:<9}  {}",
                    user.id,
                    user.email,
                    user.display_name,
                    status,
                    roles.join(",")
                )
                .map_err(failure)?;
            }
        }
    }
    Ok(())
}

async fn set_disabled(settings: Settings, email: &str, disabled: bool) -> Outcome {
    let email = Email::parse(email).map_err(bad_input)?;
    let db = database(&settings).await?;
    let target = email.clone();
    let changed = db
        .run(move |conn| users::set_disabled(conn, &target, disabled, None).map_err(DbError::from))
        .await
        .map_err(failure)?;
    let verb = if disabled { "disabled" } else { "enabled" };
    match changed {
        None => Err((exit::NO_USER, anyhow::anyhow!("no user with email {email}"))),
        Some(true) => {
            println!("{email} is now {verb}");
            Ok(())
        }
        Some(false) => {
            println!("{email} was already {verb}");
            Ok(())
        }
    }
}

pub async fn audit(settings: Settings, action: AuditAction) -> Outcome {
    let AuditAction::Export {
        format: ExportFormat::Jsonl,
        since,
    } = action;
    let since = since
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| t.naive_utc())
                .map_err(|e| bad_input(format!("--since: {text:?} is not an RFC 3339 time ({e})")))
        })
        .transpose()?;
    let db = database(&settings).await?;
    let mut after_id = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let batch = db
            .run(move |conn| {
                crate::audit::page(conn, after_id, since, 1_000).map_err(DbError::from)
            })
            .await
            .map_err(failure)?;
        let Some(last) = batch.last() else { break };
        after_id = last.id;
        for row in batch {
            let line =
                serde_json::to_string(&crate::audit::ExportedEvent::from(row)).map_err(failure)?;
            writeln!(out, "{line}").map_err(failure)?;
        }
    }
    out.flush().map_err(failure)?;
    Ok(())
}
