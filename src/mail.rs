//! Outgoing mail. The `Mailer` trait is the seam: SMTP (lettre, STARTTLS or implicit TLS,
//! optional auth) in production, `.eml` files under `<data_dir>/mail` in development, and an
//! in-memory fake in tests. Mail is sent from the `mail.send` job so a slow or failing SMTP
//! server never holds up a request and a failed delivery is retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use crate::jobs::{JobError, JobRegistry, NewJob};
use crate::settings::{MailTransportKind, Settings, SmtpTls};

pub const SEND_MAIL_JOB: &str = "mail.send";

/// A message ready to send; what the `mail.send` job carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

impl OutgoingMail {
    pub fn into_job(self) -> anyhow::Result<NewJob> {
        NewJob::new(SEND_MAIL_JOB, &self)
    }
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

pub trait Mailer: Send + Sync {
    fn send<'a>(&'a self, mail: &'a OutgoingMail) -> SendFuture<'a>;
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// The production mailer over lettre.
pub struct LettreMailer {
    from: Mailbox,
    transport: Transport,
}

impl LettreMailer {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let from: Mailbox = settings
            .mail
            .from
            .parse()
            .with_context(|| format!("mail.from: {:?} is not a mailbox", settings.mail.from))?;
        let transport = match settings.mail.transport {
            MailTransportKind::File => {
                let dir = settings.mail_dir();
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("cannot create the mail directory {}", dir.display())
                })?;
                Transport::File(AsyncFileTransport::new(dir))
            }
            MailTransportKind::Smtp => {
                let smtp = &settings.mail.smtp;
                let mut builder = match smtp.tls {
                    SmtpTls::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?
                    }
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
                    SmtpTls::None => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                    }
                }
                .port(smtp.port)
                .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
                if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
                    builder = builder.credentials(Credentials::new(
                        user.clone(),
                        password.expose_secret().to_owned(),
                    ));
                }
                Transport::Smtp(builder.build())
            }
        };
        Ok(Self { from, transport })
    }

    fn build(&self, mail: &OutgoingMail) -> anyhow::Result<Message> {
        let to: Mailbox = mail
            .to
            .parse()
            .with_context(|| format!("{:?} is not a valid recipient", mail.to))?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&mail.subject);
        let message = match &mail.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                html.clone(),
            ))?,
            None => builder.body(mail.text.clone())?,
        };
        Ok(message)
    }
}

impl Mailer for LettreMailer {
    fn send<'a>(&'a self, mail: &'a OutgoingMail) -> SendFuture<'a> {
        Box::pin(async move {
            let message = self.build(mail)?;
            match &self.transport {
                Transport::Smtp(smtp) => {
                    smtp.send(message).await.context("SMTP delivery failed")?;
                }
                Transport::File(file) => {
                    file.send(message).await.context("cannot write mail file")?;
                }
            }
            Ok(())
        })
    }
}

/// Registers the `mail.send` job. A recipient the transport rejects outright is permanent;
/// everything else (connection refused, timeouts, 4xx replies) is retried with backoff.
pub fn register_jobs(registry: &mut JobRegistry, mailer: Arc<dyn Mailer>) {
    registry.register(SEND_MAIL_JOB, move |job| {
        let mailer = mailer.clone();
        async move {
            let mail: OutgoingMail = job.payload()?;
            if mail.to.parse::<Mailbox>().is_err() {
                return Err(JobError::Permanent(anyhow::anyhow!(
                    "{:?} is not a valid recipient",
                    mail.to
                )));
            }
            mailer.send(&mail).await.map_err(JobError::Retry)
        }
    });
}
