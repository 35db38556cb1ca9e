//! Docker Hub's and Quay's REST APIs for tags.
//!
//! Neither service deletes a tag through the distribution API without
//! deleting the manifest (and so every tag on it), so tag deletion and tag
//! ages go through their own APIs. Base URLs are configurable so that tests
//! can point them at a local server.

use bytes::Bytes;
use reqwest::{StatusCode, Url, header};
use time::OffsetDateTime;

use crate::auth::Credentials;
use crate::error::{Error, Result};
use crate::registry::{host_of, read_limited};

/// Docker Hub's public API.
pub const HUB_URL: &str = "https://hub.docker.com";

/// A tag and when it was last pushed, as a tag API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// The tag.
    pub name: String,
    /// When it was last pushed or modified, if known.
    pub updated: Option<OffsetDateTime>,
}

fn api_error(api: &str, what: &str, status: StatusCode, body: &Bytes) -> Error {
    let text = String::from_utf8_lossy(body);
    let short: String = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Error::Registry {
        registry: api.to_string(),
        method: String::new(),
        path: what.to_string(),
        status: status.as_u16(),
        detail: if short.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            short
        },
    }
}

fn join(base: &Url, path: &str) -> Result<Url> {
    let mut b = base.clone();
    if !b.path().ends_with('/') {
        let p = format!("{}/", b.path());
        b.set_path(&p);
    }
    b.join(path.trim_start_matches('/'))
        .map_err(|e| Error::input(format!("invalid API URL: {e}")))
}

/// `req` with `Authorization: Bearer <token>` when there is a token.
fn with_bearer(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.header(header::AUTHORIZATION, format!("Bearer {t}")),
        None => req,
    }
}

/// Send `req` to the API named `api`; a failure to send is a transport error.
async fn send(api: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    req.send().await.map_err(|e| Error::Transport {
        registry: api.to_string(),
        source: e,
    })
}

/// Send a tag DELETE: its status and (best effort) its body, up to 1 MiB.
async fn send_delete(api: &str, req: reqwest::RequestBuilder) -> Result<(StatusCode, Bytes)> {
    let resp = send(api, req).await?;
    let status = resp.status();
    let body = read_limited(resp, 1 << 20).await.unwrap_or_default();
    Ok((status, body))
}

/// GET one page of a tag list (at most 64 MiB), failing on an error status.
async fn get_tag_page<T: serde::de::DeserializeOwned>(
    api: &str,
    req: reqwest::RequestBuilder,
    path: &str,
) -> Result<T> {
    let resp = send(api, req).await?;
    let status = resp.status();
    let body = read_limited(resp, 64 << 20).await?;
    if !status.is_success() {
        return Err(api_error(api, path, status, &body));
    }
    serde_json::from_slice(&body)
        .map_err(|e| Error::Unsupported(format!("{api} sent an invalid tag page: {e}")))
}

/// A Docker Hub API client, logged in lazily.
#[derive(Debug)]
pub struct DockerHub {
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    token: tokio::sync::Mutex<Option<String>>,
}

impl DockerHub {
    /// A client for the Hub API at `base` (normally [`HUB_URL`]).
    pub fn new(
        base: &str,
        http: reqwest::Client,
        credentials: Option<Credentials>,
    ) -> Result<DockerHub> {
        let base = Url::parse(base)
            .map_err(|e| Error::input(format!("invalid Docker Hub URL {base:?}: {e}")))?;
        Ok(DockerHub {
            base,
            http,
            credentials,
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn name(&self) -> String {
        host_of(&self.base)
    }

    async fn login(&self) -> Result<String> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let c = self.credentials.as_ref().ok_or_else(|| Error::Auth {
            registry: self.name(),
            reason: "Docker Hub's API needs credentials (--creds, an auth file or environment)"
                .into(),
        })?;
        // Current endpoint first; the legacy one for older deployments.
        let url = join(&self.base, "/v2/auth/token")?;
        let req = self
            .http
            .post(url)
            .json(&serde_json::json!({"identifier": c.username, "secret": c.password}));
        let resp = send(&self.name(), req).await?;
        let (status, body) = (resp.status(), read_limited(resp, 1 << 20).await?);
        let token = if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            let url = join(&self.base, "/v2/users/login/")?;
            let req = self
                .http
                .post(url)
                .json(&serde_json::json!({"username": c.username, "password": c.password}));
            let resp = send(&self.name(), req).await?;
            let (status, body) = (resp.status(), read_limited(resp, 1 << 20).await?);
            if !status.is_success() {
                return Err(Error::Auth {
                    registry: self.name(),
                    reason: format!("login answered {status}"),
                });
            }
            token_field(&body, "token")
        } else if status.is_success() {
            token_field(&body, "access_token")
        } else {
            return Err(Error::Auth {
                registry: self.name(),
                reason: format!("login answered {status}"),
            });
        };
        let token = token.ok_or_else(|| Error::Auth {
            registry: self.name(),
            reason: "login sent no token".into(),
        })?;
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Delete one tag: `DELETE /v2/repositories/NS/REPO/tags/TAG/`.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let token = self.login().await?;
        let path = format!("/v2/repositories/{repository}/tags/{tag}/");
        let req = with_bearer(self.http.delete(join(&self.base, &path)?), Some(&token));
        let (status, body) = send_delete(&self.name(), req).await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NotFound(format!(
                "tag {tag} of docker.io/{repository}"
            ))),
            s => Err(api_error(&self.name(), &path, s, &body)),
        }
    }

    /// Every tag with its `last_updated` time, following `next` pages.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<TagInfo>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            next: Option<String>,
            #[serde(default)]
            results: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            #[serde(default)]
            last_updated: Option<String>,
        }
        let token = if self.credentials.is_some() {
            Some(self.login().await?)
        } else {
            None
        };
        let mut url = join(&self.base, &format!("/v2/repositories/{repository}/tags"))?;
        url.query_pairs_mut().append_pair("page_size", "100");
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let req = with_bearer(self.http.get(url.clone()), token.as_deref());
            let page: Page = get_tag_page(&self.name(), req, url.path()).await?;
            out.extend(page.results.into_iter().map(|e| TagInfo {
                updated: e.last_updated.as_deref().and_then(parse_rfc3339),
                name: e.name,
            }));
            match page.next.filter(|n| !n.is_empty()) {
                Some(n) => {
                    url = self
                        .base
                        .join(&n)
                        .map_err(|e| Error::input(format!("invalid next page: {e}")))?
                }
                None => break,
            }
        }
        Ok(out)
    }
}

fn token_field(body: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get(field)
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A Quay API client (application token with `repo:write`).
#[derive(Debug)]
pub struct Quay {
    base: Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl Quay {
    /// A client for the Quay API at `base` (normally `https://<registry>`).
    pub fn new(base: &str, http: reqwest::Client, token: Option<String>) -> Result<Quay> {
        let base = Url::parse(base)
            .map_err(|e| Error::input(format!("invalid Quay URL {base:?}: {e}")))?;
        Ok(Quay { base, http, token })
    }

    fn name(&self) -> String {
        host_of(&self.base)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        with_bearer(req, self.token.as_deref())
    }

    /// Delete one tag: `DELETE /api/v1/repository/NS/REPO/tag/TAG`.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        if self.token.is_none() {
            return Err(Error::Auth {
                registry: self.name(),
                reason: "Quay's API needs an application token (--quay-token or QUAY_API_TOKEN)"
                    .into(),
            });
        }
        let path = format!("/api/v1/repository/{repository}/tag/{tag}");
        let req = self.authed(self.http.delete(join(&self.base, &path)?));
        let (status, body) = send_delete(&self.name(), req).await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NotFound(format!(
                "tag {tag} of {}/{repository}",
                self.name()
            ))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Error::Auth {
                registry: self.name(),
                reason: format!("{status} deleting tag {tag}"),
            }),
            s => Err(api_error(&self.name(), &path, s, &body)),
        }
    }

    /// Every active tag with its start time, following pages.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<TagInfo>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Vec<Entry>,
            #[serde(default)]
            has_additional: bool,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            #[serde(default)]
            start_ts: Option<i64>,
            #[serde(default)]
            last_modified: Option<String>,
        }
        let mut out = Vec::new();
        for page_no in 1..10_000 {
            let mut url = join(&self.base, &format!("/api/v1/repository/{repository}/tag/"))?;
            url.query_pairs_mut()
                .append_pair("onlyActiveTags", "true")
                .append_pair("limit", "100")
                .append_pair("page", &page_no.to_string());
            let req = self.authed(self.http.get(url.clone()));
            let page: Page = get_tag_page(&self.name(), req, url.path()).await?;
            out.extend(page.tags.into_iter().map(|e| {
                TagInfo {
                    updated: e
                        .start_ts
                        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                        .or_else(|| e.last_modified.as_deref().and_then(parse_rfc2822)),
                    name: e.name,
                }
            }));
            if !page.has_additional {
                break;
            }
        }
        Ok(out)
    }
}

fn parse_rfc2822(s: &str) -> Option<OffsetDateTime> {
    // Quay writes "Thu, 02 Nov 2023 10:00:00 -0000".
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05.123456Z").map(|t| t.unix_timestamp()),
            Some(1704164645)
        );
        assert_eq!(
            parse_rfc2822("Tue, 02 Jan 2024 03:04:05 -0000").map(|t| t.unix_timestamp()),
            Some(1704164645)
        );
        let b = Url::parse("http://127.0.0.1:1/prefix").unwrap();
        assert_eq!(
            join(&b, "/v2/x").unwrap().as_str(),
            "http://127.0.0.1:1/prefix/v2/x"
        );
    }
}
