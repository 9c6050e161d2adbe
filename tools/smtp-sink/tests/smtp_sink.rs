//! The dev SMTP sink, in-process on free ports: a mail sent with lettre is
//! read back over HTTP, and the protocol copes with pipelining, oversized
//! messages and dot-stuffing.

use std::path::PathBuf;

use anyhow::{ensure, Context as _, Result};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use smtp_sink::{Config, Mailbox, Message, SmtpSink};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Starts a sink on free ports; it runs until the test's runtime ends.
async fn start(config: Config) -> Result<(std::net::SocketAddr, std::net::SocketAddr, Mailbox)> {
    let sink = SmtpSink::bind(config).await?;
    let addrs = (sink.smtp_addr(), sink.http_addr(), sink.mailbox());
    tokio::spawn(sink.run_until_stopped(std::future::pending()));
    Ok(addrs)
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn mail_sent_over_smtp_is_read_back_over_http() -> Result<()> {
    let dir = TempDir(std::env::temp_dir().join(format!("smtp-sink-{}", uuid::Uuid::new_v4())));
    let (smtp, http, _) = start(Config {
        dir: Some(dir.0.clone()),
        ..Config::ephemeral()
    })
    .await?;

    let email = lettre::Message::builder()
        .from("Messenger <noreply@messenger.test>".parse()?)
        .to("Alice <alice@example.test>".parse()?)
        .subject("Réinitialisez votre mot de passe")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "Hello Alice,\n.a line starting with a dot\n.\nBye\n",
        ))?;
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .build()
        .send(email)
        .await?;

    let client = reqwest::Client::new();
    let api = format!("http://{http}/api/messages");
    let health = client.get(format!("http://{http}/healthz")).send().await?;
    ensure!(health.status().is_success(), "healthz: {}", health.status());

    let messages: Vec<Message> = client
        .get(&api)
        .query(&[("to", "ALICE@example.test")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let [message] = messages.as_slice() else {
        anyhow::bail!("expected exactly one message, got {messages:?}");
    };
    assert_eq!(message.from, "noreply@messenger.test");
    assert_eq!(message.to, ["alice@example.test"]);
    assert_eq!(
        message.subject.as_deref(),
        Some("Réinitialisez votre mot de passe")
    );
    // lettre sent "..a line..." and ".." on the wire; the sink unstuffs them.
    assert!(
        message
            .raw
            .trim_end()
            .ends_with("\r\n\r\nHello Alice,\r\n.a line starting with a dot\r\n.\r\nBye"),
        "{:?}",
        message.raw
    );

    let eml = std::fs::read_to_string(dir.0.join(format!("{}.eml", message.id)))
        .context("reading the .eml copy")?;
    assert_eq!(eml, message.raw);

    let others: Vec<Message> = client
        .get(&api)
        .query(&[("to", "bob@example.test")])
        .send()
        .await?
        .json()
        .await?;
    assert!(others.is_empty(), "{others:?}");

    let deleted = client.delete(&api).send().await?;
    assert_eq!(deleted.status(), reqwest::StatusCode::NO_CONTENT);
    let left: Vec<Message> = client.get(&api).send().await?.json().await?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// Reads one (possibly multi-line) SMTP reply and returns its code.
async fn reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        ensure!(reader.read_line(&mut line).await? > 0, "connection closed");
        // "250-..." continues, "250 ..." ends the reply.
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .context("short reply")?
                .parse()
                .context(line.clone());
        }
    }
}

#[tokio::test]
async fn pipelined_commands_oversized_messages_and_rset() -> Result<()> {
    let (smtp, _, mailbox) = start(Config {
        max_message_bytes: 1024,
        ..Config::ephemeral()
    })
    .await?;
    let (read, mut write) = TcpStream::connect(smtp).await?.into_split();
    let mut read = BufReader::new(read);
    assert_eq!(reply(&mut read).await?, 220);

    // A whole pipelined group in one write (RFC 2920), then a message that
    // is too big: refused, and the session stays usable.
    write
        .write_all(b"EHLO test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        .await?;
    for expected in [250, 250, 250, 354] {
        assert_eq!(reply(&mut read).await?, expected);
    }
    write.write_all(&[b'x'; 2000]).await?;
    write.write_all(b"\r\n.\r\n").await?;
    assert_eq!(reply(&mut read).await?, 552);

    write
        .write_all(b"RSET\r\nNOOP\r\nMAIL FROM:<> SIZE=20\r\nRCPT TO:<c@x>\r\nDATA\r\n")
        .await?;
    for expected in [250, 250, 250, 250, 354] {
        assert_eq!(reply(&mut read).await?, expected);
    }
    // Bare LF line ends are tolerated; "..x" is unstuffed to ".x".
    write
        .write_all(b"Subject: hi\r\n\r\n..x\n.\r\nQUIT\r\n")
        .await?;
    assert_eq!(reply(&mut read).await?, 250);
    assert_eq!(reply(&mut read).await?, 221);

    let messages = mailbox.list(None);
    let [message] = messages.as_slice() else {
        anyhow::bail!("expected exactly one message, got {messages:?}");
    };
    assert_eq!(
        (message.from.as_str(), message.to.as_slice()),
        ("", &["c@x".to_owned()][..])
    );
    assert_eq!(message.subject.as_deref(), Some("hi"));
    assert_eq!(message.raw, "Subject: hi\r\n\r\n.x\r\n");
    Ok(())
}
