//! `conclave user …` and `conclave audit export` against the configured database, through the
//! real binary.

use std::process::{Command, Output, Stdio};

use conclave::schema::users;
use diesel::prelude::*;

use crate::helpers::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_conclave");
const GOOD_PASSWORD: &str = "correct horse battery staple";

struct Cli {
    dir: tempfile::TempDir,
    db: TestDatabase,
}

impl Cli {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            db: TestDatabase::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        for (name, _) in std::env::vars() {
            if name.starts_with("CONCLAVE") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(self.dir.path())
            .env("CONCLAVE__DATABASE__URL", &self.db.url)
            .env("RUST_LOG", "error")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn create(&self, email: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "user",
            "create",
            "--email",
            email,
            "--password",
            GOOD_PASSWORD,
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    fn users_jsonl(&self) -> Vec<serde_json::Value> {
        self.ok(&["user", "list", "--format", "jsonl"])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn stored_hash(&self, email: &str) -> String {
        let mut conn = conclave::db::DbConnection::establish(&self.connect_url()).unwrap();
        users::table
            .filter(users::email.eq(email))
            .select(users::password_hash)
            .first::<Option<String>>(&mut conn)
            .unwrap()
            .unwrap()
    }

    /// diesel's own connection URL form (SQLite takes a path).
    fn connect_url(&self) -> String {
        self.db
            .url
            .strip_prefix("sqlite://")
            .unwrap_or(&self.db.url)
            .to_owned()
    }
}

fn failure(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[test]
fn the_first_user_becomes_owner_and_later_ones_viewers_unless_told() {
    let cli = Cli::new();
    let out = cli.create("Ada@Example.com", &["--name", "Ada Lovelace"]);
    assert!(
        out.contains("<ada@example.com> as owner of the default workspace"),
        "{out}"
    );
    cli.create("grace@example.com", &[]);
    cli.create("linus@example.com", &["--owner"]);
    cli.create("ken@example.com", &["--role", "operator"]);

    let users = cli.users_jsonl();
    let summary: Vec<(String, String, String)> = users
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().to_owned(),
                u["name"].as_str().unwrap().to_owned(),
                u["memberships"][0]["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "ada@example.com".into(),
                "Ada Lovelace".into(),
                "owner".into()
            ),
            ("grace@example.com".into(), "grace".into(), "viewer".into()),
            ("linus@example.com".into(), "linus".into(), "owner".into()),
            ("ken@example.com".into(), "ken".into(), "operator".into()),
        ]
    );
    assert!(
        users
            .iter()
            .all(|u| u["verified"] == true && u["disabled"] == false)
    );
    assert!(
        users
            .iter()
            .all(|u| u["memberships"][0]["tenant_slug"] == "default")
    );

    let table = cli.ok(&["user", "list"]);
    assert!(
        table.contains("ada@example.com") && table.contains("default:owner"),
        "{table}"
    );
}

#[test]
fn passwords_are_stored_as_argon2id_with_owasp_parameters() {
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{GOOD_PASSWORD}\n")).unwrap();
    cli.ok(&[
        "user",
        "create",
        "--email",
        "ada@example.com",
        "--password-file",
        file.to_str().unwrap(),
    ]);
    let hash = cli.stored_hash("ada@example.com");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(GOOD_PASSWORD));
    // The trailing newline of the file is not part of the password.
    use argon2::PasswordVerifier as _;
    assert!(
        argon2::Argon2::default()
            .verify_password(GOOD_PASSWORD.as_bytes(), hash.as_str())
            .is_ok()
    );
}

#[test]
fn bad_input_is_refused_with_exit_65_and_a_clear_line() {
    let cli = Cli::new();
    for (args, expected) in [
        (
            vec!["--email", "not-an-email", "--password", GOOD_PASSWORD],
            "email: \"not-an-email\" is not a valid address",
        ),
        (
            vec!["--email", "a@example.com", "--password", "short"],
            "password: must be at least 10 characters",
        ),
        (
            vec!["--email", "a@example.com", "--password", "Password123"],
            "password: is one of the most common passwords",
        ),
        (
            vec![
                "--email",
                "a@example.com",
                "--password",
                GOOD_PASSWORD,
                "--role",
                "emperor",
            ],
            "role: \"emperor\" is not one of",
        ),
        (
            vec![
                "--email",
                "a@example.com",
                "--password",
                GOOD_PASSWORD,
                "--name",
                " ",
            ],
            "name: must be 1 to 80 characters",
        ),
    ] {
        let mut full = vec!["user", "create"];
        full.extend(args);
        let (code, stderr) = failure(&cli.run(&full));
        assert_eq!(code, Some(65), "{full:?}: {stderr}");
        assert!(stderr.contains(expected), "{full:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert!(cli.users_jsonl().is_empty(), "nothing was created");

    cli.create("ada@example.com", &[]);
    let (code, stderr) = failure(&cli.run(&[
        "user",
        "create",
        "--email",
        "ADA@example.com",
        "--password",
        GOOD_PASSWORD,
    ]));
    assert_eq!(code, Some(65));
    assert!(
        stderr.contains("an account with this address already exists"),
        "{stderr}"
    );
}

#[test]
fn users_can_be_disabled_and_enabled_and_unknown_users_are_exit_67() {
    let cli = Cli::new();
    cli.create("ada@example.com", &[]);
    assert_eq!(
        cli.ok(&["user", "disable", "--email", "ada@example.com"])
            .trim(),
        "ada@example.com is now disabled"
    );
    assert_eq!(
        cli.ok(&["user", "disable", "--email", "ada@example.com"])
            .trim(),
        "ada@example.com was already disabled"
    );
    assert_eq!(cli.users_jsonl()[0]["disabled"], true);
    assert!(cli.ok(&["user", "list"]).contains("disabled"));
    assert_eq!(
        cli.ok(&["user", "enable", "--email", "ada@example.com"])
            .trim(),
        "ada@example.com is now enabled"
    );
    assert_eq!(cli.users_jsonl()[0]["disabled"], false);

    let (code, stderr) = failure(&cli.run(&["user", "disable", "--email", "nobody@example.com"]));
    assert_eq!(code, Some(67));
    assert_eq!(stderr, "conclave: no user with email nobody@example.com");
}

#[test]
fn the_audit_log_exports_every_account_change_as_json_lines() {
    let cli = Cli::new();
    cli.create("ada@example.com", &[]);
    cli.create("grace@example.com", &["--role", "admin"]);
    cli.ok(&["user", "disable", "--email", "grace@example.com"]);
    let lines: Vec<serde_json::Value> = cli
        .ok(&["audit", "export", "--format", "jsonl"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        vec!["user.created", "user.created", "user.disabled"]
    );
    assert_eq!(lines[0]["details"]["role"], "owner");
    assert_eq!(lines[0]["details"]["via"], "cli");
    assert_eq!(lines[1]["details"]["role"], "admin");
    assert_eq!(lines[2]["subject"], lines[1]["subject"]);
    for line in &lines {
        let at = line["at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert!(line["id"].as_i64().unwrap() > 0);
    }
    // --since filters; a bad time is bad input.
    let future = cli.ok(&["audit", "export", "--since", "2999-01-01T00:00:00Z"]);
    assert!(future.is_empty());
    let (code, stderr) = failure(&cli.run(&["audit", "export", "--since", "yesterday"]));
    assert_eq!(code, Some(65));
    assert!(
        stderr.contains("--since: \"yesterday\" is not an RFC 3339 time"),
        "{stderr}"
    );
}

#[test]
fn reset_2fa_turns_off_two_factor_for_a_user_who_lost_everything() {
    let cli = Cli::new();
    cli.create("ada@example.com", &[]);
    let db_url = cli.connect_url();
    let mut conn = conclave::db::DbConnection::establish(&db_url).unwrap();
    let user_id: i64 = users::table
        .filter(users::email.eq("ada@example.com"))
        .select(users::id)
        .first(&mut conn)
        .unwrap();
    diesel::insert_into(conclave::schema::totp_secrets::table)
        .values((
            conclave::schema::totp_secrets::user_id.eq(user_id),
            conclave::schema::totp_secrets::secret_sealed.eq("v1:irrelevant"),
            conclave::schema::totp_secrets::confirmed_at.eq(Some(chrono::Utc::now().naive_utc())),
            conclave::schema::totp_secrets::created_at.eq(chrono::Utc::now().naive_utc()),
        ))
        .execute(&mut conn)
        .unwrap();
    let out = cli.ok(&["user", "reset-2fa", "--email", "ada@example.com"]);
    assert!(
        out.contains("two-factor authentication is off for ada@example.com"),
        "{out}"
    );
    let left: i64 = conclave::schema::totp_secrets::table
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(left, 0);
    let again = cli.ok(&["user", "reset-2fa", "--email", "ada@example.com"]);
    assert!(
        again.contains("does not use two-factor authentication"),
        "{again}"
    );
    let events = cli.ok(&["audit", "export"]);
    assert!(events.contains("\"event\":\"2fa.disabled\""), "{events}");
    let (code, _) = failure(&cli.run(&["user", "reset-2fa", "--email", "nobody@example.com"]));
    assert_eq!(code, Some(67));
}
