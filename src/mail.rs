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
    /// Renders `templates/mail/<name>/` (`subject.txt`, `body.txt`, optional `body.html`).
    pub fn compose(
        templates: &crate::web::Templates,
        name: &str,
        to: &str,
        context: &tera::Context,
    ) -> anyhow::Result<Self> {
        let render = |part: &str| {
            templates
                .render(&format!("mail/{name}/{part}"), context)
                .map_err(|e| anyhow::anyhow!("mail template {name}/{part}: {e:?}"))
        };
        let html_name = format!("mail/{name}/body.html");
        Ok(Self {
            to: to.to_owned(),
            subject: render("subject.txt")?.trim().to_owned(),
            text: render("body.txt")?,
            html: if templates.has(&html_name) {
                Some(render("body.html")?)
            } else {
                None
            },
        })
    }

    pub fn into_job(self) -> anyhow::Result<NewJob> {
        NewJob::new(SEND_MAIL_JOB, &self)
    }
}

/// Why a mail was not sent. `Rejected` will never succeed (bad address, mailbox unknown,
/// policy refusal); `Failed` may succeed later (connection refused, timeout, 4xx replies).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the mail was refused for good: {0:#}")]
    Rejected(anyhow::Error),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

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
            let message = self.build(mail).map_err(SendError::Rejected)?;
            match &self.transport {
                Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|e| {
                    // 5xx replies are final; everything else (4xx, network, TLS) may pass later.
                    if e.is_permanent() {
                        SendError::Rejected(
                            anyhow::Error::new(e).context("SMTP server refused the mail"),
                        )
                    } else {
                        SendError::Failed(anyhow::Error::new(e).context("SMTP delivery failed"))
                    }
                }),
                Transport::File(file) => file.send(message).await.map(drop).map_err(|e| {
                    SendError::Failed(anyhow::Error::new(e).context("cannot write mail file"))
                }),
            }
        })
    }
}

/// The in-memory fake of the `Mailer` seam, for tests: records every mail and can be told to
/// fail its first deliveries like an unreachable SMTP server.
#[derive(Default)]
pub struct MemoryMailer {
    sent: std::sync::Mutex<Vec<OutgoingMail>>,
    failures_left: std::sync::atomic::AtomicU32,
}

impl MemoryMailer {
    pub fn failing_first(deliveries: u32) -> Self {
        Self {
            sent: std::sync::Mutex::default(),
            failures_left: std::sync::atomic::AtomicU32::new(deliveries),
        }
    }

    pub fn sent(&self) -> Vec<OutgoingMail> {
        self.sent
            .lock()
            .map(|sent| sent.clone())
            .unwrap_or_default()
    }
}

impl Mailer for MemoryMailer {
    fn send<'a>(&'a self, mail: &'a OutgoingMail) -> SendFuture<'a> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            let failing = self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(SendError::Failed(anyhow::anyhow!(
                    "connection refused (simulated)"
                )));
            }
            self.sent
                .lock()
                .map_err(|_| SendError::Failed(anyhow::anyhow!("mailer lock poisoned")))?
                .push(mail.clone());
            Ok(())
        })
    }
}

/// Registers the `mail.send` job. A mail the transport rejects for good goes straight to
/// `dead`; everything else (connection refused, timeouts, 4xx replies) is retried with backoff.
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
            mailer.send(&mail).await.map_err(|e| match e {
                SendError::Rejected(e) => JobError::Permanent(e),
                SendError::Failed(e) => JobError::Retry(e),
            })
        }
    });
}
