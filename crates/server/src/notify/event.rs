//! What happened, in a format of our own ([`Event`], the content of a queued
//! delivery), and the two bodies receivers get: the registry:2 notification
//! envelope and the Docker Hub payload.
//!
//! Events are queued in speculum's own form and rendered when sent, so a
//! queue file does not depend on the endpoint's format.

use std::time::SystemTime;

use axum::http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The media type of the registry:2 notification envelope.
pub const DISTRIBUTION_EVENTS_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.events.v2+json";

/// The kind of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A manifest was pushed (by tag or by digest). A promotion (a tag
    /// pushed for a digest the registry already holds, as `speculum tag` and
    /// `promote` do) is a push.
    Push,
    /// A manifest or a tag was deleted.
    Delete,
    /// A blob was mounted from another repository.
    Mount,
}

impl Action {
    /// The lowercase name used in payloads and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Mount => "mount",
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The repository, as stored (`myorg/app`, `quay.io/org/app`).
    pub repository: String,
    /// The content's media type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The content's digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The content's size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The tag, for a push or delete by tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Where the content can be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For a mount: the repository the blob came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
}

/// The request that caused an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The request id (`X-Request-Id` when the client sent one).
    pub id: String,
    /// The client's address, when known.
    #[serde(default)]
    pub addr: String,
    /// The `Host` the request was sent to.
    #[serde(default)]
    pub host: String,
    /// The HTTP method.
    pub method: String,
    /// The client's `User-Agent`.
    #[serde(default)]
    pub useragent: String,
}

impl RequestInfo {
    /// The parts of a request an event records. `addr` is the peer when the
    /// server knows it, else the first `X-Forwarded-For` address.
    pub fn new(method: &Method, headers: &HeaderMap, peer: Option<String>) -> RequestInfo {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let id = Some(text("x-request-id"))
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let forwarded = text("x-forwarded-for")
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        RequestInfo {
            id,
            addr: peer.unwrap_or(forwarded),
            host: text(header::HOST.as_str()),
            method: method.to_string(),
            useragent: text(header::USER_AGENT.as_str()),
        }
    }
}

/// One event, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A unique id (UUID v4), also sent as `X-Speculum-Delivery`.
    pub id: String,
    /// When it happened, RFC 3339 in UTC.
    pub timestamp: String,
    /// What happened.
    pub action: Action,
    /// To what.
    pub target: Target,
    /// The request that did it.
    pub request: RequestInfo,
    /// The authenticated user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Event {
    /// A new event happening now.
    pub fn new(
        action: Action,
        target: Target,
        request: RequestInfo,
        actor: Option<String>,
    ) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: rfc3339(SystemTime::now()),
            action,
            target,
            request,
            actor,
        }
    }

    /// The event's time in unix seconds.
    fn unix_time(&self) -> i64 {
        OffsetDateTime::parse(&self.timestamp, &Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or_else(|_| OffsetDateTime::now_utc().unix_timestamp())
    }
}

/// `t` as RFC 3339 in UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Where the registry that emits events runs, for the parts of the payloads
/// that describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// `host:port` of the registry (distribution's `source.addr`).
    pub(crate) addr: String,
    /// This process's id (distribution's `source.instanceID`).
    pub(crate) instance_id: String,
    /// Whether pulls need credentials (Docker Hub's `is_private`).
    pub(crate) private: bool,
}

/// The registry:2 envelope with one event.
pub(crate) fn distribution_body(event: &Event, source: &Source) -> Value {
    let t = &event.target;
    let mut target = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        target.insert(k.to_string(), v);
    };
    if let Some(m) = &t.media_type {
        put("mediaType", json!(m));
    }
    if let Some(d) = &t.digest {
        put("digest", json!(d));
    }
    if let Some(s) = t.size {
        put("size", json!(s));
        put("length", json!(s));
    }
    put("repository", json!(t.repository));
    if let Some(u) = &t.url {
        put("url", json!(u));
    }
    if let Some(tag) = &t.tag {
        put("tag", json!(tag));
    }
    if let Some(f) = &t.from_repository {
        put("fromRepository", json!(f));
    }
    let actor = match &event.actor {
        Some(name) => json!({ "name": name }),
        None => json!({}),
    };
    json!({
        "events": [{
            "id": event.id,
            "timestamp": event.timestamp,
            "action": event.action.as_str(),
            "target": target,
            "request": {
                "id": event.request.id,
                "addr": event.request.addr,
                "host": event.request.host,
                "method": event.request.method,
                "useragent": event.request.useragent,
            },
            "actor": actor,
            "source": { "addr": source.addr, "instanceID": source.instance_id },
        }]
    })
}

/// `(namespace, name)` of a repository for the Docker Hub payload: split at
/// the last `/`, so `namespace/name` is always the whole repository name
/// (`myorg/app` → `myorg`, `app`; `quay.io/org/app` → `quay.io/org`, `app`).
/// A one-component name is an official image: namespace `library`.
pub(crate) fn hub_split(repository: &str) -> (&str, &str) {
    match repository.rsplit_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("library", repository),
    }
}

/// The Docker Hub payload for a push by tag; `None` for any other event
/// (Docker Hub only ever reports pushes of a tag).
pub(crate) fn dockerhub_body(event: &Event, source: &Source) -> Option<Value> {
    let t = &event.target;
    let tag = t.tag.as_deref().filter(|_| event.action == Action::Push)?;
    let (namespace, name) = hub_split(&t.repository);
    let pushed_at = event.unix_time();
    let base = t
        .url
        .as_deref()
        .and_then(|u| u.find("/v2/").map(|i| &u[..i]))
        .unwrap_or_default();
    Some(json!({
        // Docker Hub's legacy callback: kept for receivers that read it;
        // speculum ignores calls to it.
        "callback_url": t.url.clone().unwrap_or_default(),
        "push_data": {
            "pushed_at": pushed_at,
            "pusher": event.actor.clone().unwrap_or_default(),
            "tag": tag,
            "images": [],
        },
        "repository": {
            "repo_name": t.repository,
            "namespace": namespace,
            "name": name,
            "owner": namespace,
            "is_private": source.private,
            "is_official": false,
            "is_trusted": false,
            "status": "Active",
            "description": "",
            "full_description": "",
            "dockerfile": "",
            "repo_url": format!("{base}/v2/{}/tags/list", t.repository),
            "star_count": 0,
            "comment_count": 0,
            // Not tracked: the time of this push stands in for it.
            "date_created": pushed_at,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            addr: "reg.example:5000".into(),
            instance_id: "i-1".into(),
            private: true,
        }
    }

    fn push(tag: Option<&str>) -> Event {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "reg.example:5000".parse().unwrap());
        headers.insert(header::USER_AGENT, "skopeo/1".parse().unwrap());
        headers.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        Event::new(
            Action::Push,
            Target {
                repository: "myorg/app".into(),
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                digest: Some("sha256:ab".into()),
                size: Some(42),
                tag: tag.map(String::from),
                url: Some("https://reg.example:5000/v2/myorg/app/manifests/sha256:ab".into()),
                from_repository: None,
            },
            RequestInfo::new(&Method::PUT, &headers, None),
            Some("zuul".into()),
        )
    }

    #[test]
    fn distribution_envelope() {
        let e = push(Some("v1"));
        let body = distribution_body(&e, &source());
        let ev = &body["events"][0];
        assert_eq!(body["events"].as_array().unwrap().len(), 1);
        assert_eq!(ev["id"], e.id.as_str());
        assert_eq!(ev["action"], "push");
        assert_eq!(
            ev["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(ev["target"]["size"], 42);
        assert_eq!(ev["target"]["length"], 42);
        assert_eq!(ev["target"]["tag"], "v1");
        assert_eq!(ev["target"]["repository"], "myorg/app");
        assert!(ev["target"].get("fromRepository").is_none());
        assert_eq!(ev["request"]["addr"], "10.0.0.1");
        assert_eq!(ev["request"]["host"], "reg.example:5000");
        assert_eq!(ev["request"]["method"], "PUT");
        assert_eq!(ev["request"]["useragent"], "skopeo/1");
        assert_eq!(ev["actor"]["name"], "zuul");
        assert_eq!(ev["source"]["instanceID"], "i-1");
        assert!(OffsetDateTime::parse(ev["timestamp"].as_str().unwrap(), &Rfc3339).is_ok());
        let anonymous = Event { actor: None, ..e };
        assert_eq!(
            distribution_body(&anonymous, &source())["events"][0]["actor"],
            json!({})
        );
    }

    #[test]
    fn dockerhub_payload() {
        let e = push(Some("v1"));
        let body = dockerhub_body(&e, &source()).unwrap();
        assert_eq!(body["push_data"]["tag"], "v1");
        assert_eq!(body["push_data"]["pusher"], "zuul");
        assert_eq!(body["push_data"]["images"], json!([]));
        assert!(body["push_data"]["pushed_at"].as_i64().unwrap() > 1_600_000_000);
        let r = &body["repository"];
        assert_eq!(r["repo_name"], "myorg/app");
        assert_eq!(r["namespace"], "myorg");
        assert_eq!(r["name"], "app");
        assert_eq!(r["owner"], "myorg");
        assert_eq!(r["status"], "Active");
        assert_eq!(r["is_private"], true);
        assert_eq!(
            r["repo_url"],
            "https://reg.example:5000/v2/myorg/app/tags/list"
        );
        assert!(dockerhub_body(&push(None), &source()).is_none());
        assert_eq!(hub_split("quay.io/org/app"), ("quay.io/org", "app"));
        assert_eq!(hub_split("python"), ("library", "python"));
    }

    #[test]
    fn queued_form_round_trips() {
        let e = push(Some("v1"));
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }
}
