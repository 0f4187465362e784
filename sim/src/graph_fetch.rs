//! `ms1-sim graph-fetch`: the plainest Graph delta reader, as the benchmark's yardstick — one
//! token, then per mailbox `GET …/messages/delta` with `Prefer: odata.maxpagesize`, following
//! each `@odata.nextLink` until the `@odata.deltaLink`, discarding the messages. The only
//! parsing is finding the link: what the server gives, with nothing done with it.

use anyhow::{bail, Context};
use std::time::{Duration, Instant};

/// The message properties the daemon selects (kept equal to its `$select`, so both read the
/// same pages).
const SELECT: &str =
    "id,internetMessageId,subject,from,toRecipients,receivedDateTime,sentDateTime,hasAttachments,bodyPreview";

/// Where to read and as whom.
pub struct Target<'a> {
    /// The simulator's root, `http://127.0.0.1:PORT` (Graph under `/v1.0`, the token
    /// endpoint under `/{tenant}/oauth2/v2.0/token`).
    pub root: &'a str,
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

/// What the loop read, over all mailboxes.
pub struct Fetched {
    pub messages: u64,
    pub pages: u64,
    pub bytes: u64,
    /// From the first page request to the last answer (the token excluded).
    pub seconds: f64,
}

/// Reads every mailbox's delta to its end, the mailboxes side by side (one reader each), pages
/// of `page_size`.
pub async fn run(
    target: &Target<'_>,
    mailboxes: &[String],
    page_size: u32,
) -> anyhow::Result<Fetched> {
    let http = awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(60))
        .finish();
    let token = token(&http, target).await?;
    let started = Instant::now();
    let readers: Vec<_> = mailboxes
        .iter()
        .map(|mailbox| {
            let (http, token) = (http.clone(), token.clone());
            let url = format!(
                "{}/v1.0/users/{mailbox}/mailFolders/inbox/messages/delta?$select={SELECT}",
                target.root
            );
            actix_rt::spawn(async move { read_delta(&http, &token, url, page_size).await })
        })
        .collect();
    let mut total = Fetched {
        messages: 0,
        pages: 0,
        bytes: 0,
        seconds: 0.0,
    };
    for reader in readers {
        let one = reader.await.context("a reader panicked")??;
        total.messages += one.messages;
        total.pages += one.pages;
        total.bytes += one.bytes;
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}

/// A client-credentials token for Graph.
async fn token(http: &awc::Client, target: &Target<'_>) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
    }
    let url = format!("{}/{}/oauth2/v2.0/token", target.root, target.tenant);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", target.client_id),
        ("client_secret", target.client_secret),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let mut resp = http
        .post(&url)
        .send_form(&form)
        .await
        .map_err(|e| anyhow::anyhow!("token request to {url}: {e}"))?;
    let body = resp.body().await?;
    if !resp.status().is_success() {
        bail!(
            "token endpoint answered {}: {}",
            resp.status(),
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice::<Answer>(&body)
        .context("token answer")?
        .access_token)
}

/// One mailbox's delta, page after page, to the deltaLink.
async fn read_delta(
    http: &awc::Client,
    token: &str,
    mut url: String,
    page_size: u32,
) -> anyhow::Result<Fetched> {
    let mut fetched = Fetched {
        messages: 0,
        pages: 0,
        bytes: 0,
        seconds: 0.0,
    };
    let prefer = format!("odata.maxpagesize={page_size}");
    loop {
        let mut resp = http
            .get(&url)
            .insert_header(("Authorization", format!("Bearer {token}")))
            .insert_header(("Prefer", prefer.as_str()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let body = resp.body().limit(64 * 1024 * 1024).await?;
        if !resp.status().is_success() {
            bail!(
                "GET {url} answered {}: {}",
                resp.status(),
                String::from_utf8_lossy(&body)
            );
        }
        let text = std::str::from_utf8(&body).context("a page that is not UTF-8")?;
        fetched.pages += 1;
        fetched.bytes += body.len() as u64;
        // Every message item carries an etag; `@removed` items do not.
        fetched.messages += text.matches("\"@odata.etag\":").count() as u64;
        match link(text, "@odata.nextLink") {
            Some(next) => url = next.to_string(),
            None if link(text, "@odata.deltaLink").is_some() => return Ok(fetched),
            None => bail!("a page with neither a nextLink nor a deltaLink"),
        }
    }
}

/// The value of a page's `"name":"…"` link (the links come last; they hold no escapes).
fn link<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = page.rfind(&key)? + key.len();
    let len = page[start..].find('"')?;
    Some(&page[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_found_at_the_end_of_a_page() {
        let page = r#"{"value":[{"@odata.etag":"W/\"x\"","id":"A"}],"@odata.nextLink":"http://h/v1.0/d?$skiptoken=ab"}"#;
        assert_eq!(
            link(page, "@odata.nextLink"),
            Some("http://h/v1.0/d?$skiptoken=ab")
        );
        assert_eq!(link(page, "@odata.deltaLink"), None);
    }
}
