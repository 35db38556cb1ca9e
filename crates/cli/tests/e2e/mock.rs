//! Small local HTTP servers: a Bearer token server in front of a real
//! registry, and stand-ins for Docker Hub's and Quay's tag APIs that follow
//! their documented requests and answers (the SaaS services cannot be reached
//! from tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::TryStreamExt;

/// A server running on its own runtime, stopped on drop.
pub struct Server {
    pub addr: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn serve(app: impl FnOnce(String) -> Router) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = app(addr.clone());
    rt.spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Server { addr, rt: Some(rt) }
}

// ---------------------------------------------------------------- Bearer proxy

#[derive(Clone)]
struct Proxy {
    me: String,
    upstream: String,
    creds: (String, String),
    http: reqwest::Client,
    tokens: Arc<Mutex<HashMap<String, Vec<String>>>>,
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

/// A token server plus a registry front that demands Bearer tokens with the
/// right scopes, forwarding to a plain-HTTP registry.
pub struct BearerProxy {
    pub server: Server,
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

impl BearerProxy {
    pub fn start(upstream_addr: &str, user: &str, password: &str) -> BearerProxy {
        speculum_client::install_crypto_provider();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let upstream = format!("http://{upstream_addr}");
        let creds = (user.to_string(), password.to_string());
        let server = serve(move |me| {
            let st = Proxy {
                me,
                upstream,
                creds,
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap(),
                tokens: Arc::default(),
                log: l2,
            };
            Router::new()
                .route("/token", get(token))
                .fallback(forward)
                .with_state(st)
        });
        BearerProxy { server, log }
    }

    /// The scope lists of every token request so far.
    pub fn token_requests(&self) -> Vec<Vec<String>> {
        self.log.lock().unwrap().clone()
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let q = uri.query().unwrap_or("");
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn token(State(st): State<Proxy>, uri: Uri, headers: HeaderMap) -> Response {
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", st.creds.0, st.creds.1)
        )
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let scopes: Vec<String> = query_pairs(&uri)
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    st.log.lock().unwrap().push(scopes.clone());
    let mut tokens = st.tokens.lock().unwrap();
    let t = format!("tok{}", tokens.len() + 1);
    tokens.insert(t.clone(), scopes);
    axum::Json(serde_json::json!({"token": t, "expires_in": 300})).into_response()
}

fn granted(scopes: &[String], repo: &str, action: &str) -> bool {
    scopes.iter().any(|s| {
        s.strip_prefix("repository:")
            .and_then(|r| r.rsplit_once(':'))
            .is_some_and(|(name, actions)| name == repo && actions.split(',').any(|a| a == action))
    })
}

async fn forward(
    State(st): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().to_string();
    let mut needs: Vec<(String, &str)> = Vec::new();
    if let Some(rest) = path.strip_prefix("/v2/") {
        let cut = ["/manifests/", "/blobs/", "/tags/"]
            .iter()
            .filter_map(|m| rest.rfind(m))
            .min();
        if let Some(i) = cut {
            let repo = rest[..i].to_string();
            let action = match method {
                Method::GET | Method::HEAD => "pull",
                Method::DELETE => "delete",
                _ => "push",
            };
            needs.push((repo, action));
            if let Some((_, from)) = query_pairs(&uri).into_iter().find(|(k, _)| k == "from") {
                needs.push((from, "pull"));
            }
        }
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let scopes = token.and_then(|t| st.tokens.lock().unwrap().get(&t).cloned());
    let ok = match &scopes {
        None => false,
        Some(s) => needs.iter().all(|(r, a)| granted(s, r, a)),
    };
    if !ok {
        let scope = needs
            .first()
            .map(|(r, a)| format!(",scope=\"repository:{r}:{a}\""))
            .unwrap_or_default();
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                header::WWW_AUTHENTICATE,
                format!(
                    "Bearer realm=\"http://{}/token\",service=\"test\"{scope}",
                    st.me
                ),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
            ))
            .unwrap();
    }
    let url = format!(
        "{}{}",
        st.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = st.http.request(method, url);
    for (k, v) in headers.iter() {
        if k != header::HOST && k != header::AUTHORIZATION {
            req = req.header(k, v);
        }
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let resp = match req.body(reqwest::Body::wrap_stream(stream)).send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut b = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k == header::LOCATION {
            let loc = v
                .to_str()
                .unwrap_or("")
                .replace(&st.upstream, &format!("http://{}", st.me));
            b = b.header(k, loc);
        } else if k != header::TRANSFER_ENCODING && k != header::CONNECTION {
            b = b.header(k, v);
        }
    }
    b.body(Body::from_stream(resp.bytes_stream())).unwrap()
}

// ---------------------------------------------------------------- Hub and Quay

/// Tag names with their push time (unix seconds), per repository.
pub type TagTable = HashMap<String, Vec<(String, i64)>>;

/// Tags per repository with their ages, as both APIs report them.
#[derive(Clone, Default)]
pub struct SaasState {
    pub tags: Arc<Mutex<TagTable>>,
    pub deletes: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct SaasCtx {
    st: SaasState,
    me: String,
}

pub const HUB_USER: &str = "hubuser";
pub const HUB_PASS: &str = "hub-secret";
pub const QUAY_TOKEN: &str = "quay-app-token";
const HUB_JWT: &str = "hub-jwt-1";

pub fn saas_server(st: SaasState) -> Server {
    serve(move |me| {
        let ctx = SaasCtx { st, me };
        Router::new()
            .route("/v2/auth/token", post(hub_login))
            .route("/v2/repositories/{ns}/{repo}/tags", get(hub_list))
            .route(
                "/v2/repositories/{ns}/{repo}/tags/{tag}/",
                delete(hub_delete),
            )
            .route("/api/v1/repository/{ns}/{repo}/tag/", get(quay_list))
            .route(
                "/api/v1/repository/{ns}/{repo}/tag/{tag}",
                delete(quay_delete),
            )
            .with_state(ctx)
    })
}

async fn hub_login(axum::Json(body): axum::Json<serde_json::Value>) -> Response {
    if body["identifier"] == HUB_USER && body["secret"] == HUB_PASS {
        axum::Json(serde_json::json!({"access_token": HUB_JWT})).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"detail": "Incorrect authentication credentials"})),
        )
            .into_response()
    }
}

fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {token}"))
}

fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn hub_list(
    State(c): State<SaasCtx>,
    Path((ns, repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let all =
        c.st.tags
            .lock()
            .unwrap()
            .get(&format!("{ns}/{repo}"))
            .cloned()
            .unwrap_or_default();
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let size = 2; // small pages, to exercise `next`
    let chunk: Vec<_> = all.iter().skip((page - 1) * size).take(size).collect();
    let next = (page * size < all.len()).then(|| {
        format!(
            "http://{}/v2/repositories/{ns}/{repo}/tags?page_size={size}&page={}",
            c.me,
            page + 1
        )
    });
    let results: Vec<_> = chunk.iter().map(|(n, ts)| serde_json::json!({"name": n, "last_updated": rfc3339(*ts), "tag_status": "active"})).collect();
    axum::Json(
        serde_json::json!({"count": all.len(), "next": next, "previous": null, "results": results}),
    )
    .into_response()
}

async fn hub_delete(
    State(c): State<SaasCtx>,
    Path((ns, repo, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !bearer_is(&headers, HUB_JWT) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    remove(&c.st, &format!("{ns}/{repo}"), &tag, "hub")
}

fn remove(st: &SaasState, repo: &str, tag: &str, api: &str) -> Response {
    let mut tags = st.tags.lock().unwrap();
    let list = tags.entry(repo.to_string()).or_default();
    let before = list.len();
    list.retain(|(n, _)| n != tag);
    if list.len() == before {
        return (StatusCode::NOT_FOUND, "tag not found").into_response();
    }
    st.deletes
        .lock()
        .unwrap()
        .push(format!("{api}:{repo}:{tag}"));
    StatusCode::NO_CONTENT.into_response()
}

async fn quay_list(
    State(c): State<SaasCtx>,
    Path((ns, repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !bearer_is(&headers, QUAY_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let all =
        c.st.tags
            .lock()
            .unwrap()
            .get(&format!("{ns}/{repo}"))
            .cloned()
            .unwrap_or_default();
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let size = 2;
    let tags: Vec<_> = all
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|(n, ts)| serde_json::json!({"name": n, "start_ts": ts, "reversion": false, "manifest_digest": "sha256:00"}))
        .collect();
    axum::Json(
        serde_json::json!({"tags": tags, "page": page, "has_additional": page * size < all.len()}),
    )
    .into_response()
}

async fn quay_delete(
    State(c): State<SaasCtx>,
    Path((ns, repo, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !bearer_is(&headers, QUAY_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    remove(&c.st, &format!("{ns}/{repo}"), &tag, "quay")
}
