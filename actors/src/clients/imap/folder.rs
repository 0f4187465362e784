//! [`ImapFolder`]: a logged-in session on one source's folder, with the commands the IMAP
//! sources send, each bounded by `imap.timeout_ms` and failing with one classified
//! [`ImapError`]. Nothing here sets `\Seen` by reading: bodies and headers are fetched with
//! `BODY.PEEK`.

use super::error::{within, ImapError};
use super::{Caps, ImapSession};
use crate::model::AttachmentMeta;
use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{BodyStructure, ContentEncoding};
use async_imap::types::UnsolicitedResponse;
use chrono::SecondsFormat;
use futures_util::TryStreamExt;
use std::future::Future;
use std::time::Duration;

/// How long a polite LOGOUT may take before the connection is just dropped.
const LOGOUT_WAIT: Duration = Duration::from_secs(2);

/// A logged-in session on one folder. Made by [`Connector::connect`](super::Connector::connect);
/// [`select`](Self::select) it before reading or changing messages.
pub(crate) struct ImapFolder {
    session: ImapSession,
    caps: Caps,
    /// The source's name, in every error.
    source_name: String,
    /// The folder read (`source.folder`).
    folder: String,
    /// `imap.timeout_ms`: the bound of each command.
    timeout: Duration,
}

/// The folder's state as SELECT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selected {
    pub(crate) uid_validity: u32,
    /// The UID the next message will get; `None` when the server does not say.
    pub(crate) uid_next: Option<u32>,
}

/// What a FETCH brings of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The whole message.
    Whole,
    /// The header (at most its first `max_bytes`) and the attachments BODYSTRUCTURE lists.
    Header { max_bytes: u64 },
}

/// One fetched message, borrowed from the server's answer.
pub(crate) struct Fetched<'a> {
    pub(crate) uid: u32,
    /// INTERNALDATE, RFC 3339 ("" when the server sent none, and always for [`Part::Whole`]).
    pub(crate) internal_date: String,
    /// The message ([`Part::Whole`]) or its header ([`Part::Header`]).
    pub(crate) bytes: &'a [u8],
    /// [`Part::Header`] only: the attachments BODYSTRUCTURE lists.
    pub(crate) attachments: Vec<AttachmentMeta>,
}

/// How a wait in IDLE ended (when the server did not fail it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woken<T> {
    /// The server reported a change (EXISTS, EXPUNGE, …) or closed the stream: read now.
    Changed,
    /// The wait passed without news.
    Timeout,
    /// The caller's `stop` future ended first, with this.
    Stopped(T),
}

/// The end of [`ImapFolder::idle`]: how it ended, and the folder again when the session
/// survived (DONE was answered); `None` means reconnect.
pub(crate) struct Idled<T> {
    pub(crate) end: Result<Woken<T>, ImapError>,
    pub(crate) folder: Option<ImapFolder>,
}

impl ImapFolder {
    pub(super) fn new(
        session: ImapSession,
        caps: Caps,
        source_name: String,
        folder: String,
        timeout: Duration,
    ) -> Self {
        Self {
            session,
            caps,
            source_name,
            folder,
            timeout,
        }
    }

    /// What the server can do.
    pub(crate) fn caps(&self) -> Caps {
        self.caps
    }

    /// Runs `op` on the session within the timeout; its failure is classified as `command`'s.
    async fn run<T>(
        &mut self,
        command: &'static str,
        op: impl AsyncFnOnce(&mut ImapSession) -> async_imap::error::Result<T>,
    ) -> Result<T, ImapError> {
        let name = self.source_name.as_str();
        let session = &mut self.session;
        within(name, self.timeout, command, async {
            op(session)
                .await
                .map_err(|e| ImapError::of_command(name, command, e))
        })
        .await
    }

    /// SELECTs the folder. A NO is [`ImapError::Folder`]; no UIDVALIDITY is a protocol error.
    pub(crate) async fn select(&mut self) -> Result<Selected, ImapError> {
        // What the server announced before this SELECT, its answer reports again: only what
        // comes after it is news for [`announced_mail`](Self::announced_mail).
        while self.session.unsolicited_responses.try_recv().is_ok() {}
        let folder = self.folder.clone();
        let mailbox = match self.run("SELECT", async |s| s.select(&folder).await).await {
            Ok(mb) => mb,
            Err(ImapError::Refused { reason, .. }) => {
                return Err(ImapError::Folder {
                    source_name: self.source_name.clone(),
                    folder,
                    reason,
                })
            }
            Err(e) => return Err(e),
        };
        let uid_validity = mailbox.uid_validity.ok_or_else(|| ImapError::Protocol {
            source_name: self.source_name.clone(),
            reason: "SELECT reported no UIDVALIDITY".into(),
        })?;
        Ok(Selected {
            uid_validity,
            uid_next: mailbox.uid_next,
        })
    }

    /// The UIDs above `last`, ascending (`UID SEARCH UID last+1:*`, without the message a
    /// server names for `*` when none is above).
    pub(crate) async fn uids_above(&mut self, last: u32) -> Result<Vec<u32>, ImapError> {
        let Some(from) = last.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.search(&format!("UID {from}:*"), from..=u32::MAX).await
    }

    /// The UIDs in `lo..=hi` of messages larger than `bytes` (`UID SEARCH UID lo:hi LARGER
    /// bytes`), ascending. Dovecot answers it from its index, without a line per message.
    pub(crate) async fn larger_than(
        &mut self,
        lo: u32,
        hi: u32,
        bytes: u64,
    ) -> Result<Vec<u32>, ImapError> {
        self.search(&format!("UID {lo}:{hi} LARGER {bytes}"), lo..=hi)
            .await
    }

    /// `UID SEARCH query`: the UIDs found within `keep` (a server may name one outside the
    /// set asked for), ascending.
    async fn search(
        &mut self,
        query: &str,
        keep: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<u32>, ImapError> {
        let found = self
            .run("UID SEARCH", async |s| s.uid_search(query).await)
            .await?;
        let mut uids: Vec<u32> = found.into_iter().filter(|u| keep.contains(u)).collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// `(uid, RFC822.SIZE)` of the messages `uids` (ascending) that still exist, ascending,
    /// once each.
    pub(crate) async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u32)>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let set = uid_set(uids);
        let mut sizes: Vec<(u32, u32)> = self
            .run("UID FETCH sizes", async |s| {
                s.uid_fetch(&set, "(UID RFC822.SIZE)")
                    .await?
                    .try_filter_map(|f| async move { Ok(f.uid.map(|u| (u, f.size.unwrap_or(0)))) })
                    .try_collect()
                    .await
            })
            .await?;
        sizes.retain(|(u, _)| uids.binary_search(u).is_ok());
        sizes.sort_unstable();
        sizes.dedup_by_key(|(u, _)| *u);
        Ok(sizes)
    }

    /// Fetches `part` of the messages `uids` (none for an empty list), handing each to `each`
    /// as it arrives (so only one answer is held at a time); keeps what `each` returns.
    pub(crate) async fn fetch<T>(
        &mut self,
        uids: &[u32],
        part: Part,
        mut each: impl FnMut(Fetched<'_>) -> Option<T>,
    ) -> Result<Vec<T>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let set = uid_set(uids);
        let query = match part {
            // No INTERNALDATE: Dovecot stats each Maildir file for it (a sixth of a whole
            // FETCH's time); only a message without a Date header needs it (`internal_dates`).
            Part::Whole => "(UID BODY.PEEK[])".to_string(),
            Part::Header { max_bytes } => {
                format!("(UID INTERNALDATE BODY.PEEK[HEADER]<0.{max_bytes}> BODYSTRUCTURE)")
            }
        };
        self.run("UID FETCH", async |s| {
            let mut out = Vec::new();
            let mut stream = s.uid_fetch(&set, &query).await?;
            while let Some(f) = stream.try_next().await? {
                let Some(uid) = f.uid else { continue };
                let (bytes, attachments) = match part {
                    Part::Whole => match f.body() {
                        Some(body) => (body, Vec::new()),
                        None => continue,
                    },
                    Part::Header { .. } => (
                        f.header().unwrap_or_default(),
                        f.bodystructure().map(attachments_of).unwrap_or_default(),
                    ),
                };
                let internal_date = f
                    .internal_date()
                    .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_default();
                out.extend(each(Fetched {
                    uid,
                    internal_date,
                    bytes,
                    attachments,
                }));
            }
            Ok(out)
        })
        .await
    }

    /// The INTERNALDATEs of `uids` (RFC 3339), in the server's order; a message gone since
    /// is missing.
    pub(crate) async fn internal_dates(
        &mut self,
        uids: &[u32],
    ) -> Result<Vec<(u32, String)>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let set = uid_set(uids);
        self.run("UID FETCH INTERNALDATE", async |s| {
            s.uid_fetch(&set, "(UID INTERNALDATE)")
                .await?
                .try_filter_map(|f| async move {
                    Ok(f.uid
                        .zip(f.internal_date())
                        .map(|(uid, date)| (uid, date.to_rfc3339_opts(SecondsFormat::Secs, true))))
                })
                .try_collect()
                .await
        })
        .await
    }

    /// Flags `uids` `\Seen` (`UID STORE +FLAGS.SILENT`).
    pub(crate) async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        self.store_flags(&uid_set(uids), "(\\Seen)").await
    }

    /// Moves `uids` to `target`: `UID MOVE` where the server has MOVE, otherwise `UID COPY`,
    /// `\Seen \Deleted`, and `UID EXPUNGE` (plain EXPUNGE without UIDPLUS).
    pub(crate) async fn move_to(&mut self, uids: &[u32], target: &str) -> Result<(), ImapError> {
        let set = uid_set(uids);
        if self.caps.mv {
            return self
                .run("UID MOVE", async |s| s.uid_mv(&set, target).await)
                .await;
        }
        self.run("UID COPY", async |s| s.uid_copy(&set, target).await)
            .await?;
        self.store_flags(&set, "(\\Seen \\Deleted)").await?;
        if self.caps.uidplus {
            self.run("UID EXPUNGE", async |s| {
                s.uid_expunge(&set).await?.try_collect::<Vec<_>>().await
            })
            .await?;
        } else {
            self.run("EXPUNGE", async |s| {
                s.expunge().await?.try_collect::<Vec<_>>().await
            })
            .await?;
        }
        Ok(())
    }

    async fn store_flags(&mut self, set: &str, flags: &str) -> Result<(), ImapError> {
        let query = format!("+FLAGS.SILENT {flags}");
        self.run("UID STORE", async |s| {
            s.uid_store(set, &query)
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        Ok(())
    }

    /// Whether the server announced new mail (`* n EXISTS`) since the last SELECT in an answer
    /// async-imap set aside: an announcement inside the answer to another command (a FETCH, a
    /// STORE, DONE) goes to the session's unsolicited channel, which only this reads, and the
    /// server does not repeat it in the next IDLE. Empties the channel.
    pub(crate) fn announced_mail(&mut self) -> bool {
        let set_aside = &self.session.unsolicited_responses;
        announces_mail(set_aside.is_full(), || set_aside.try_recv().ok())
    }

    /// Waits in IDLE (RFC 2177) until the server reports a change (also one it reported before
    /// `+ idling`), `wait` passes, or `stop` ends (it is polled only once IDLE runs); then ends
    /// IDLE with DONE. A server that will not start IDLE fails it with [`ImapError::Refused`].
    pub(crate) async fn idle<T>(self, wait: Duration, stop: impl Future<Output = T>) -> Idled<T> {
        let lost = |e| Idled {
            end: Err(e),
            folder: None,
        };
        let Self {
            session,
            caps,
            source_name,
            folder,
            timeout,
        } = self;
        let set_aside = session.unsolicited_responses.clone();
        let mut handle = session.idle();
        match tokio::time::timeout(timeout, handle.init()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return lost(ImapError::of_idle_start(&source_name, e)),
            Err(_) => return lost(ImapError::timeout(&source_name, timeout, "IDLE")),
        }
        // New mail announced between IDLE and `+ idling` was set aside by `init`: the wait
        // below would not see it, and the server does not say it again.
        let end = if announces_mail(set_aside.is_full(), || set_aside.try_recv().ok()) {
            Woken::Changed
        } else {
            let (fut, _interrupt) = handle.wait_with_timeout(wait);
            tokio::select! {
                r = fut => match r {
                    // The stream ended (the interrupt is never used): read now, reconnecting.
                    Ok(IdleResponse::NewData(_) | IdleResponse::ManualInterrupt) => Woken::Changed,
                    Ok(IdleResponse::Timeout) => Woken::Timeout,
                    Err(e) => return lost(ImapError::of_command(&source_name, "IDLE", e)),
                },
                t = stop => Woken::Stopped(t),
            }
        };
        let folder = match tokio::time::timeout(timeout, handle.done()).await {
            Ok(Ok(session)) => Some(Self::new(session, caps, source_name, folder, timeout)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "DONE failed; reconnecting on the next poll");
                None
            }
            Err(_) => {
                tracing::debug!("DONE timed out; reconnecting on the next poll");
                None
            }
        };
        Idled {
            end: Ok(end),
            folder,
        }
    }

    /// Logs out politely (bounded), dropping the connection.
    pub(crate) async fn logout(mut self) {
        let _ = tokio::time::timeout(LOGOUT_WAIT, self.session.logout()).await;
    }
}

/// Empties what async-imap set aside (`next` takes one response; `full`: the channel was full,
/// 100 responses, so later ones were dropped); whether it held news of new mail. `EXISTS` is
/// that news (RFC 3501 7.3.1: sent whenever the mailbox grows); a full channel may have
/// dropped one, so it counts as news too (at worst one poll more).
fn announces_mail(full: bool, mut next: impl FnMut() -> Option<UnsolicitedResponse>) -> bool {
    let mut news = full;
    while let Some(response) = next() {
        news |= matches!(response, UnsolicitedResponse::Exists(_));
    }
    news
}

/// `1:3,7,9:10`: the UIDs (in any order, repeats allowed) as an IMAP sequence set.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// The attachments a BODYSTRUCTURE lists (for a message whose body is not fetched): every
/// single part that is not a text body, or that has a file name or an `attachment`
/// disposition, with its type and size. The size is the decoded size (for base64, as far as it
/// follows from the encoded octets the server reports: 57 bytes per 78-octet line).
fn attachments_of(bs: &BodyStructure<'_>) -> Vec<AttachmentMeta> {
    let mut out = Vec::new();
    walk_parts(bs, &mut out);
    out
}
fn walk_parts(bs: &BodyStructure<'_>, out: &mut Vec<AttachmentMeta>) {
    let (common, other) = match bs {
        BodyStructure::Multipart { bodies, .. } => {
            for b in bodies {
                walk_parts(b, out);
            }
            return;
        }
        BodyStructure::Basic { common, other, .. }
        | BodyStructure::Text { common, other, .. }
        | BodyStructure::Message { common, other, .. } => (common, other),
    };
    let param = |params: &Option<Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)>>,
                 key: &str| {
        params
            .iter()
            .flatten()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_string())
    };
    let disposition = common.disposition.as_ref();
    let name = disposition
        .and_then(|d| param(&d.params, "filename"))
        .or_else(|| param(&common.ty.params, "name"));
    let is_attachment = disposition.is_some_and(|d| d.ty.eq_ignore_ascii_case("attachment"));
    let is_text = common.ty.ty.eq_ignore_ascii_case("text");
    if !(is_attachment || name.is_some() || !is_text) {
        return;
    }
    let octets = u64::from(other.octets);
    let size = match other.transfer_encoding {
        ContentEncoding::Base64 => octets * 57 / 78,
        _ => octets,
    };
    out.push(AttachmentMeta {
        name: name.unwrap_or_default(),
        content_type: format!("{}/{}", common.ty.ty, common.ty.subtype).to_ascii_lowercase(),
        size,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compressed_into_ranges_in_any_order() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[10, 9, 7, 3, 2, 1, 2]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn only_an_exists_or_a_full_channel_announces_new_mail_and_everything_is_taken() {
        let mut set_aside = vec![
            UnsolicitedResponse::Expunge(3),
            UnsolicitedResponse::Recent(0),
            UnsolicitedResponse::Exists(7),
            UnsolicitedResponse::Expunge(1),
        ];
        assert!(announces_mail(false, || set_aside.pop()));
        assert!(set_aside.is_empty());
        let mut expunged = vec![UnsolicitedResponse::Expunge(2)];
        assert!(!announces_mail(false, || expunged.pop()));
        assert!(announces_mail(true, || None));
    }
}
