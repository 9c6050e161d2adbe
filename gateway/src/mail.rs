//! Outgoing mail of the gateway: the password-reset message, over SMTP
//! (lettre) to `GATEWAY_SMTP_URL`.
//!
//! The body is plain text, 7-bit, with the token on a line of its own,
//! `reset-token: <token>` (API.md), and in a link to the web client
//! (`GATEWAY_PUBLIC_URL`). The token is never logged; failures are logged
//! with the recipient's user id only.

use std::time::Duration;

use anyhow::Context;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Config;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// A password-reset mail to send. `Debug` omits the token.
pub struct ResetMail<'a> {
    pub to: &'a str,
    pub token: &'a str,
    /// RFC 3339, when the token stops working.
    pub expires_at: &'a str,
}

impl std::fmt::Debug for ResetMail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetMail")
            .field("to", &self.to)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The plain-text body of a reset mail.
fn reset_body(public_url: &str, mail: &ResetMail<'_>) -> String {
    let base = public_url.trim_end_matches('/');
    format!(
        "Someone (hopefully you) asked to reset the password of your Messenger\r\n\
         account. To choose a new password, open this link:\r\n\
         \r\n\
         {base}/reset-password#token={token}\r\n\
         \r\n\
         or enter this token in the app:\r\n\
         \r\n\
         reset-token: {token}\r\n\
         \r\n\
         It works once, until {expires}. If you did not ask for it, ignore\r\n\
         this message: your password stays as it is.\r\n",
        token = mail.token,
        expires = mail.expires_at,
    )
}

/// Sends a password-reset mail.
pub async fn send_reset(config: &Config, mail: &ResetMail<'_>) -> anyhow::Result<()> {
    let from: Mailbox = config
        .mail_from
        .parse()
        .context("GATEWAY_MAIL_FROM is not a mailbox")?;
    let to: Mailbox = mail.to.parse().context("the recipient is not a mailbox")?;
    let text = reset_body(&config.public_url, mail);
    // 7-bit when it fits (ASCII, short lines), so the token line reaches
    // the reader verbatim; otherwise lettre picks an encoding.
    let body =
        Body::new_with_encoding(text, ContentTransferEncoding::SevenBit).unwrap_or_else(Body::new);
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject("Reset your Messenger password")
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .context("building the message")?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
        .context("GATEWAY_SMTP_URL is not a usable SMTP URL")?
        .timeout(Some(SMTP_TIMEOUT))
        .build();
    transport.send(message).await.context("sending over SMTP")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_has_its_own_line() {
        let mail = ResetMail {
            to: "a@example.test",
            token: "abc_DEF-123",
            expires_at: "2030-01-01T00:00:00Z",
        };
        let body = reset_body("https://m.example/", &mail);
        assert!(body.split("\r\n").any(|l| l == "reset-token: abc_DEF-123"));
        assert!(body.contains("https://m.example/reset-password#token=abc_DEF-123"));
        assert!(!format!("{mail:?}").contains("abc_DEF"));
    }
}
