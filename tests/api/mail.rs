//! Mail leaves through the job queue; in development it is dropped as `.eml` files.

use std::time::Duration;

use conclave::mail::OutgoingMail;

use crate::helpers::{eventually, spawn_app, wait_for_job};

#[tokio::test]
async fn queued_mail_is_written_as_an_eml_file_in_development() {
    let app = spawn_app().await;
    let mail = OutgoingMail {
        to: "Ada <ada@example.com>".to_owned(),
        subject: "Welcome to Conclave".to_owned(),
        text: "Hello Ada, your rooms are ready.".to_owned(),
        html: Some("<p>Hello Ada, your rooms are <b>ready</b>.</p>".to_owned()),
    };
    let id = app
        .state
        .queue
        .enqueue(mail.into_job().unwrap())
        .await
        .unwrap();
    let mail_dir = app.data_dir.path().join("mail");
    let eml = eventually(Duration::from_secs(10), || {
        let mail_dir = mail_dir.clone();
        async move {
            let entry = std::fs::read_dir(&mail_dir)
                .ok()?
                .flatten()
                .find(|e| e.path().extension().is_some_and(|ext| ext == "eml"))?;
            std::fs::read_to_string(entry.path()).ok()
        }
    })
    .await
    .expect("a mail file appears");
    assert!(eml.contains("Subject: Welcome to Conclave"), "{eml}");
    assert!(eml.contains("To: Ada <ada@example.com>"), "{eml}");
    assert!(eml.contains("From: Conclave <conclave@localhost>"), "{eml}");
    assert!(eml.contains("Content-Type: multipart/alternative"), "{eml}");
    wait_for_job(&app.state.queue, id, |job| job.state == "succeeded").await;
}

#[tokio::test]
async fn mail_to_an_invalid_address_goes_dead_without_retrying() {
    let app = spawn_app().await;
    let mail = OutgoingMail {
        to: "not an address".to_owned(),
        subject: "x".to_owned(),
        text: "x".to_owned(),
        html: None,
    };
    let id = app
        .state
        .queue
        .enqueue(mail.into_job().unwrap())
        .await
        .unwrap();
    let job = wait_for_job(&app.state.queue, id, |job| job.state == "dead").await;
    assert_eq!(job.attempts, 1);
    assert!(job.last_error.unwrap().contains("not a valid recipient"));
}

#[tokio::test]
async fn a_failed_delivery_is_retried_until_it_succeeds() {
    use std::sync::Arc;

    use conclave::mail::MemoryMailer;
    use conclave::startup::Seams;

    let mailer = Arc::new(MemoryMailer::failing_first(2));
    let app = crate::helpers::spawn_app_with_seams(
        |_| {},
        Seams {
            mailer: Some(mailer.clone()),
            ..Seams::default()
        },
    )
    .await;
    let mail = OutgoingMail {
        to: "grace@example.com".to_owned(),
        subject: "Your sign-in code".to_owned(),
        text: "123456".to_owned(),
        html: None,
    };
    let id = app
        .state
        .queue
        .enqueue(mail.clone().into_job().unwrap())
        .await
        .unwrap();
    let job = wait_for_job(&app.state.queue, id, |job| job.state == "succeeded").await;
    assert_eq!(job.attempts, 3, "two failures, then success");
    assert_eq!(mailer.sent(), vec![mail], "delivered exactly once");
}

/// A minimal SMTP server that answers every RCPT TO with `rcpt_reply`.
fn fake_smtp(rcpt_reply: &'static str) -> u16 {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let _ = writer.write_all(b"220 fake.test ESMTP\r\n");
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let command = line.to_ascii_uppercase();
                    let reply = match command.split_whitespace().next().unwrap_or("") {
                        "EHLO" | "HELO" => "250 fake.test",
                        "MAIL" | "RSET" | "NOOP" => "250 OK",
                        "RCPT" => rcpt_reply,
                        "QUIT" => {
                            let _ = writer.write_all(b"221 bye\r\n");
                            break;
                        }
                        _ => "502 not implemented",
                    };
                    if writer.write_all(format!("{reply}\r\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

async fn app_with_smtp(port: u16) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(move |s| {
        s.mail.transport = conclave::settings::MailTransportKind::Smtp;
        s.mail.smtp.host = "127.0.0.1".to_owned();
        s.mail.smtp.port = port;
        s.mail.smtp.tls = conclave::settings::SmtpTls::None;
        s.mail.smtp.timeout_secs = 2;
    })
    .await
}

fn mail_to(to: &str) -> OutgoingMail {
    OutgoingMail {
        to: to.to_owned(),
        subject: "Hello".to_owned(),
        text: "Hello".to_owned(),
        html: None,
    }
}

#[tokio::test]
async fn an_smtp_5xx_rejection_goes_dead_without_retrying() {
    let app = app_with_smtp(fake_smtp("550 5.1.1 no such user")).await;
    let id = app
        .state
        .queue
        .enqueue(mail_to("nobody@example.com").into_job().unwrap())
        .await
        .unwrap();
    let job = wait_for_job(&app.state.queue, id, |job| job.state == "dead").await;
    assert_eq!(job.attempts, 1);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("SMTP server refused the mail") && error.contains("no such user"),
        "{error}"
    );
}

#[tokio::test]
async fn an_smtp_4xx_reply_is_retried() {
    let app = app_with_smtp(fake_smtp("451 4.3.0 try again later")).await;
    let id = app
        .state
        .queue
        .enqueue(mail_to("someone@example.com").into_job().unwrap())
        .await
        .unwrap();
    let job = wait_for_job(&app.state.queue, id, |job| {
        job.attempts >= 2 && job.state == "queued"
    })
    .await;
    let error = job.last_error.unwrap();
    assert!(
        error.contains("SMTP delivery failed") && error.contains("try again later"),
        "{error}"
    );
}

/// A real SMTP server (Debian's python3-aiosmtpd) delivering into a maildir.
struct RealSmtp {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for RealSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn real_smtp() -> RealSmtp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maildir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        // Maildir creates its folders only for a path that does not exist yet.
        .arg(maildir.path().join("box"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3-aiosmtpd is installed (scripts/ensure-tools.sh)");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "aiosmtpd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    RealSmtp {
        child,
        port,
        maildir,
    }
}

#[tokio::test]
async fn a_verification_mail_is_delivered_through_a_real_smtp_server() {
    let smtp = real_smtp();
    let app = app_with_smtp(smtp.port).await;
    let response = app
        .post_json(
            "/api/v1/auth/signup",
            &serde_json::json!({"email": "grace@example.com", "password": "correct horse battery staple"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let new_mail = smtp.maildir.path().join("box/new");
    let delivered = eventually(Duration::from_secs(15), || {
        let dir = new_mail.clone();
        async move {
            let entry = std::fs::read_dir(&dir).ok()?.flatten().next()?;
            std::fs::read_to_string(entry.path()).ok()
        }
    })
    .await
    .expect("the SMTP server received the mail");
    let decoded = crate::helpers::read_mails_text(&delivered);
    assert!(
        decoded.contains("Subject: Confirm your email address for Conclave"),
        "{decoded}"
    );
    assert!(decoded.contains("To: grace@example.com"), "{decoded}");
    assert!(decoded.contains("/verify?token="), "{decoded}");
}
