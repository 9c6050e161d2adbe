//! An SMTP server for development and tests that delivers nowhere: it keeps
//! every message it accepts, in memory and as `.eml` files, and shows them
//! over HTTP, so password-reset and digest emails are real SMTP
//! conversations whose content a test can read.
//!
//! # SMTP
//!
//! `EHLO`/`HELO`, `MAIL FROM`, `RCPT TO`, `DATA` (with dot-unstuffing),
//! `RSET`, `NOOP`, `QUIT`, plus `VRFY` and `HELP` answered politely. Replies
//! are written in order and flushed only when no further command is already
//! buffered, so pipelining clients (RFC 2920) work. No TLS and no AUTH: it
//! listens on loopback for local clients. A message larger than
//! [`Config::max_message_bytes`] is read to its end and refused with `552`.
//! Lines may end in CRLF or a bare LF; stored messages use CRLF.
//!
//! # HTTP
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` |
//! | `GET /api/messages[?to=ADDR]` | JSON list of [`Message`], oldest first, optionally only those with `ADDR` among the envelope recipients (case-insensitive) |
//! | `DELETE /api/messages` | `204`; forgets every message in memory (the `.eml` files stay) |
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use smtp_sink::{Config, SmtpSink};
//! let sink = SmtpSink::bind(Config::ephemeral()).await?;
//! let (smtp, http, mailbox) = (sink.smtp_addr(), sink.http_addr(), sink.mailbox());
//! tokio::spawn(sink.run_until_stopped(std::future::pending()));
//! // send mail to `smtp`, then read `mailbox.list(None)` or GET http://{http}/api/messages
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::{Future, IntoFuture as _};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The largest message accepted by default: 10 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// How many messages are kept in memory by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A command line longer than this is refused (RFC 5321 allows 512).
const MAX_COMMAND_LINE: usize = 4096;
/// More recipients than this in one transaction get `452`.
const MAX_RECIPIENTS: usize = 1000;
/// A client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and how the sink listens and stores.
#[derive(Debug, Clone)]
pub struct Config {
    /// SMTP listener; port 0 picks a free port (see [`SmtpSink::smtp_addr`]).
    pub smtp_addr: SocketAddr,
    /// HTTP listener; port 0 picks a free port (see [`SmtpSink::http_addr`]).
    pub http_addr: SocketAddr,
    /// Directory receiving a `<id>.eml` per accepted message; `None` keeps
    /// messages in memory only.
    pub dir: Option<PathBuf>,
    /// Messages kept in memory; beyond it the oldest are forgotten, so a
    /// long-running dev stack does not grow without bound.
    pub capacity: usize,
    /// Largest message (after dot-unstuffing) accepted; larger ones get `552`.
    pub max_message_bytes: usize,
    /// Name the server gives itself in its greeting and `EHLO` reply.
    pub hostname: String,
}

impl Config {
    /// Both listeners on `127.0.0.1`, free ports, memory only: what a test wants.
    pub fn ephemeral() -> Self {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            smtp_addr: any_port,
            http_addr: any_port,
            dir: None,
            capacity: DEFAULT_CAPACITY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            hostname: "localhost".to_owned(),
        }
    }
}

/// One accepted message, as the HTTP API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// UUIDv7, so ids (and the `.eml` file names) sort by arrival.
    pub id: String,
    /// Envelope sender (`MAIL FROM`); empty for the null sender `<>`.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), in order.
    pub to: Vec<String>,
    /// The `Subject` header, unfolded and with RFC 2047 encoded words
    /// decoded; `None` when the message has none.
    pub subject: Option<String>,
    /// When the final `.` of `DATA` arrived.
    pub received_at: DateTime<Utc>,
    /// The message as received (headers and body, CRLF line ends, dots
    /// unstuffed); bytes that are not UTF-8 are replaced by U+FFFD.
    pub raw: String,
}

/// The messages in memory, shared by the SMTP sessions and the HTTP API.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// Oldest first; `capacity` bounds its length.
    messages: Arc<Mutex<VecDeque<Message>>>,
    capacity: usize,
}

impl Mailbox {
    fn new(capacity: usize) -> Self {
        Self {
            messages: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn push(&self, message: Message) {
        let mut messages = self.lock();
        while messages.len() >= self.capacity {
            messages.pop_front();
        }
        messages.push_back(message);
    }

    /// Messages oldest first, only those addressed to `to` (an envelope
    /// recipient, compared case-insensitively) when it is given.
    pub fn list(&self, to: Option<&str>) -> Vec<Message> {
        self.lock()
            .iter()
            .filter(|m| to.is_none_or(|to| m.to.iter().any(|r| r.eq_ignore_ascii_case(to))))
            .cloned()
            .collect()
    }

    /// Forgets every message.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        // No code path panics while holding the lock; if one ever did, the
        // queue itself is still consistent, so keep serving it.
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sink with both listeners bound, ready to run.
#[derive(Debug)]
pub struct SmtpSink {
    smtp: TcpListener,
    http: TcpListener,
    smtp_addr: SocketAddr,
    http_addr: SocketAddr,
    mailbox: Mailbox,
    config: Arc<Config>,
}

impl SmtpSink {
    /// Binds both listeners (so the ports are known before it runs) and
    /// creates [`Config::dir`] if needed.
    pub async fn bind(config: Config) -> io::Result<Self> {
        if let Some(dir) = &config.dir {
            tokio::fs::create_dir_all(dir).await?;
        }
        let smtp = TcpListener::bind(config.smtp_addr).await?;
        let http = TcpListener::bind(config.http_addr).await?;
        Ok(Self {
            smtp_addr: smtp.local_addr()?,
            http_addr: http.local_addr()?,
            smtp,
            http,
            mailbox: Mailbox::new(config.capacity),
            config: Arc::new(config),
        })
    }

    /// Address of the SMTP listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// Address of the HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The stored messages; stays usable after the sink is started.
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox.clone()
    }

    /// Serves SMTP and HTTP until `shutdown` completes. Open SMTP sessions
    /// are then dropped; a transaction not yet acknowledged with `250` is lost,
    /// as with any SMTP server that goes away.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        // Dropping `stop_tx` tells the HTTP server to stop.
        let (stop_tx, mut stop_rx) = watch::channel(());
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/api/messages", get(list_messages).delete(clear_messages))
            .with_state(self.mailbox.clone());
        let http = tokio::spawn(
            axum::serve(self.http, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.changed().await;
                })
                .into_future(),
        );

        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.smtp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let (mailbox, config) = (self.mailbox.clone(), Arc::clone(&self.config));
                        sessions.spawn(async move {
                            if let Err(error) = Session::new(stream, mailbox, config).run().await {
                                tracing::debug!(%peer, %error, "SMTP session ended with an error");
                            }
                        });
                    }
                    Err(error) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accepting an SMTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(stop_tx);
        sessions.shutdown().await;
        match http.await {
            Ok(result) => result,
            Err(join) => Err(io::Error::other(join)),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListFilter {
    to: Option<String>,
}

async fn list_messages(
    State(mailbox): State<Mailbox>,
    Query(filter): Query<ListFilter>,
) -> Json<Vec<Message>> {
    // `?to=` (empty) means no filter, like no `to` at all.
    Json(mailbox.list(filter.to.as_deref().filter(|to| !to.is_empty())))
}

async fn clear_messages(State(mailbox): State<Mailbox>) -> StatusCode {
    mailbox.clear();
    StatusCode::NO_CONTENT
}

/// How reading one line ended.
enum Line {
    /// A whole line is in the buffer, line end included.
    Complete,
    /// The line exceeded the limit; it was consumed and discarded.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Closed,
}

/// The envelope of the transaction in progress.
#[derive(Debug, Default)]
struct Envelope {
    from: Option<String>,
    to: Vec<String>,
}

/// One SMTP connection.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    mailbox: Mailbox,
    config: Arc<Config>,
}

impl Session {
    fn new(stream: TcpStream, mailbox: Mailbox, config: Arc<Config>) -> Self {
        let (read, write) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer: BufWriter::new(write),
            mailbox,
            config,
        }
    }

    async fn run(mut self) -> io::Result<()> {
        let hostname = self.config.hostname.clone();
        self.reply(&format!("220 {hostname} ESMTP messenger smtp-sink"))
            .await?;
        let mut envelope = Envelope::default();
        let mut line = Vec::new();
        loop {
            match self.read_line(&mut line, MAX_COMMAND_LINE).await? {
                Line::Closed => return Ok(()),
                Line::TooLong => {
                    self.reply("500 5.5.2 Line too long").await?;
                    continue;
                }
                Line::Complete => {}
            }
            let command = String::from_utf8_lossy(trim_line_end(&line)).into_owned();
            let (verb, arg) = command.split_once(' ').unwrap_or((command.as_str(), ""));
            let arg = arg.trim();
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    envelope = Envelope::default();
                    let max = self.config.max_message_bytes;
                    self.reply(&format!(
                        "250-{hostname} greets {arg}\r\n250-PIPELINING\r\n250-SIZE {max}\r\n\
                         250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES"
                    ))
                    .await?;
                }
                "HELO" => {
                    envelope = Envelope::default();
                    self.reply(&format!("250 {hostname}")).await?;
                }
                "MAIL" => {
                    let reply = self.mail(&mut envelope, arg);
                    self.reply(&reply).await?;
                }
                "RCPT" => {
                    let reply = rcpt(&mut envelope, arg);
                    self.reply(reply).await?;
                }
                "DATA" => {
                    if envelope.from.is_none() {
                        self.reply("503 5.5.1 Error: need MAIL command").await?;
                    } else if envelope.to.is_empty() {
                        self.reply("554 5.5.1 Error: no valid recipients").await?;
                    } else {
                        self.data(std::mem::take(&mut envelope)).await?;
                    }
                }
                "RSET" => {
                    envelope = Envelope::default();
                    self.reply("250 2.0.0 Ok").await?;
                }
                "NOOP" => self.reply("250 2.0.0 Ok").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    self.writer.flush().await?;
                    return Ok(());
                }
                "VRFY" => self.reply("252 2.0.0 Will accept any address").await?,
                "HELP" => self.reply("214 2.0.0 See RFC 5321").await?,
                "STARTTLS" | "AUTH" | "EXPN" | "TURN" | "BDAT" => {
                    self.reply("502 5.5.1 Command not implemented").await?;
                }
                _ => self.reply("500 5.5.2 Command not recognized").await?,
            }
        }
    }

    /// `MAIL FROM:<path> [params]`; returns the reply.
    fn mail(&self, envelope: &mut Envelope, arg: &str) -> String {
        if envelope.from.is_some() {
            return "503 5.5.1 Error: nested MAIL command".to_owned();
        }
        let Some((path, params)) = strip_prefix_ignore_case(arg, "FROM:").and_then(parse_path)
        else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".to_owned();
        };
        let declared_size = params.split_whitespace().find_map(|p| {
            strip_prefix_ignore_case(p, "SIZE=").and_then(|n| n.parse::<usize>().ok())
        });
        if declared_size.is_some_and(|n| n > self.config.max_message_bytes) {
            return "552 5.3.4 Message size exceeds fixed maximum message size".to_owned();
        }
        envelope.from = Some(path.to_owned());
        "250 2.1.0 Ok".to_owned()
    }

    /// Reads the message after `DATA` up to the lone `.`, then stores it.
    async fn data(&mut self, envelope: Envelope) -> io::Result<()> {
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let max = self.config.max_message_bytes;
        let mut message = Vec::new();
        let mut too_big = false;
        let mut line = Vec::new();
        loop {
            match self.read_line(&mut line, max.saturating_add(2)).await? {
                Line::Closed => return Ok(()),
                Line::TooLong => too_big = true,
                Line::Complete => {
                    let content = trim_line_end(&line);
                    if content == b"." {
                        break;
                    }
                    let content = content.strip_prefix(b".").unwrap_or(content);
                    if too_big || message.len() + content.len() + 2 > max {
                        // Keep reading to the end so the session stays in
                        // step, but hold nothing more in memory.
                        too_big = true;
                        message = Vec::new();
                    } else {
                        message.extend_from_slice(content);
                        message.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        if too_big {
            return self
                .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await;
        }
        let stored = self.store(envelope, message).await;
        self.reply(&format!("250 2.0.0 Ok: queued as {}", stored.id))
            .await
    }

    async fn store(&self, envelope: Envelope, raw: Vec<u8>) -> Message {
        let id = Uuid::now_v7().to_string();
        if let Some(dir) = &self.config.dir {
            let path = dir.join(format!("{id}.eml"));
            // The message is still served from memory: a full disk must not
            // make every test that sends mail fail.
            if let Err(error) = tokio::fs::write(&path, &raw).await {
                tracing::warn!(path = %path.display(), %error, "could not write the .eml copy");
            }
        }
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let message = Message {
            id,
            from: envelope.from.unwrap_or_default(),
            to: envelope.to,
            subject: header(&raw, "Subject"),
            received_at: Utc::now(),
            raw,
        };
        tracing::info!(id = %message.id, from = %message.from, to = ?message.to, "message received");
        self.mailbox.push(message.clone());
        message
    }

    /// Queues a reply; it is sent when the client has nothing more buffered
    /// (see [`Self::read_line`]), which is what makes pipelining work.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await
    }

    /// Reads one line (through `\n`) into `line`, keeping at most `max`
    /// bytes of it. Flushes pending replies before waiting for the client.
    async fn read_line(&mut self, line: &mut Vec<u8>, max: usize) -> io::Result<Line> {
        line.clear();
        let mut too_long = false;
        loop {
            if self.reader.buffer().is_empty() {
                self.writer.flush().await?;
            }
            let available = tokio::time::timeout(IDLE_TIMEOUT, self.reader.fill_buf())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client idle too long"))??;
            if available.is_empty() {
                return Ok(Line::Closed);
            }
            let (len, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if !too_long {
                if line.len() + len > max {
                    too_long = true;
                    *line = Vec::new();
                } else {
                    line.extend_from_slice(&available[..len]);
                }
            }
            self.reader.consume(len);
            if complete {
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Complete
                });
            }
        }
    }
}

/// `RCPT TO:<path> [params]`; returns the reply.
fn rcpt(envelope: &mut Envelope, arg: &str) -> &'static str {
    if envelope.from.is_none() {
        return "503 5.5.1 Error: need MAIL command";
    }
    let Some((path, _params)) = strip_prefix_ignore_case(arg, "TO:").and_then(parse_path) else {
        return "501 5.5.4 Syntax: RCPT TO:<address>";
    };
    if path.is_empty() {
        return "501 5.1.3 Empty recipient";
    }
    if envelope.to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Too many recipients";
    }
    envelope.to.push(path.to_owned());
    "250 2.1.5 Ok"
}

/// Splits `<path> params` (or a bare `path params`) into the address, without
/// brackets or an obsolete source route, and the parameters.
fn parse_path(arg: &str) -> Option<(&str, &str)> {
    let arg = arg.trim_start();
    let (path, params) = match arg.strip_prefix('<') {
        Some(rest) => rest.split_once('>')?,
        None => arg.split_once(char::is_whitespace).unwrap_or((arg, "")),
    };
    // "<@relay1,@relay2:user@host>" (RFC 5321 4.1.2): keep user@host.
    let path = match path.strip_prefix('@') {
        Some(route) => route.split_once(':')?.1,
        None => path,
    };
    Some((path.trim(), params.trim()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The first header `name` of `raw` (case-insensitive), unfolded, trimmed and
/// with RFC 2047 encoded words decoded.
fn header(raw: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in raw.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break; // end of the header section
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = value.as_mut() {
                value.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((field, body)) = line.split_once(':') {
            if field.trim_end().eq_ignore_ascii_case(name) {
                value = Some(body.to_owned());
            }
        }
    }
    value.map(|v| decode_encoded_words(v.trim()))
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in UTF-8,
/// US-ASCII or ISO-8859-1; anything else is left as it is. Whitespace
/// between two adjacent encoded words is dropped, as the RFC says.
fn decode_encoded_words(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = (&rest[..start], &rest[start + 2..]);
        match decode_word(candidate) {
            Some((decoded, used)) => {
                if !(after_word && before.chars().all(|c| c == ' ' || c == '\t')) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &candidate[used..];
                after_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = candidate;
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes `charset?enc?text?=` (what follows `=?`); returns the text and how
/// many bytes of `word` it spans.
fn decode_word(word: &str) -> Option<(String, usize)> {
    let (charset, rest) = word.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let used = charset.len() + encoding.len() + end + 4;
    let text = &rest[..end];
    if text.contains([' ', '\t']) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => {
            let engine = base64::engine::general_purpose::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::general_purpose::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            engine.decode(text).ok()?
        }
        "Q" | "q" => decode_q(text)?,
        _ => return None,
    };
    // RFC 2231 allows a language suffix: "utf-8*en".
    let charset = charset.split('*').next().unwrap_or_default();
    let decoded = match charset.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" | "us-ascii" => String::from_utf8(bytes).ok()?,
        "iso-8859-1" | "latin1" => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => return None,
    };
    Some((decoded, used))
}

/// The "Q" encoding: `_` is a space, `=XX` a byte in hex.
fn decode_q(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_unfolded_and_decoded() {
        let raw = "From: a@x\r\nSubject: =?utf-8?b?UsOpaW5pdGlhbGlzZXo=?=\r\n =?UTF-8?Q?_le_mot_de_passe?= now\r\nTo: b@x\r\n\r\nSubject: body\r\n";
        assert_eq!(
            header(raw, "subject").as_deref(),
            Some("Réinitialisez le mot de passe now")
        );
        assert_eq!(header("To: b@x\r\n\r\nSubject: no\r\n", "Subject"), None);
        assert_eq!(
            header("Subject: =?bogus =?x?q?a?=\n\n", "Subject").as_deref(),
            Some("=?bogus =?x?q?a?=")
        );
    }

    #[test]
    fn paths_parse_with_and_without_brackets() {
        assert_eq!(parse_path("<a@x> SIZE=10"), Some(("a@x", "SIZE=10")));
        assert_eq!(parse_path("<>"), Some(("", "")));
        assert_eq!(parse_path("b@x"), Some(("b@x", "")));
        assert_eq!(parse_path("<@r1,@r2:c@x>"), Some(("c@x", "")));
        assert_eq!(parse_path("<unterminated"), None);
    }
}
