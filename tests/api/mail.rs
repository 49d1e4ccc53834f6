//! Mail leaves through the job queue; in development it is dropped as `.eml` files.

use std::time::Duration;

use conclave::mail::OutgoingMail;

use crate::helpers::{eventually, spawn_app};

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
    let job = eventually(Duration::from_secs(5), || async {
        let job = app.state.queue.get(id).await.unwrap()?;
        (job.state == "succeeded").then_some(job)
    })
    .await;
    assert!(job.is_some(), "the mail job is marked succeeded");
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
    let job = eventually(Duration::from_secs(10), || async {
        let job = app.state.queue.get(id).await.unwrap()?;
        (job.state == "dead").then_some(job)
    })
    .await
    .expect("the job is dead");
    assert_eq!(job.attempts, 1);
    assert!(job.last_error.unwrap().contains("not a valid recipient"));
}
