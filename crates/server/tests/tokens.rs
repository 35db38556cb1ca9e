//! The Bearer token flow over HTTP, in process: challenges, the token
//! endpoint, and every way a token can be wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use speculum_oci::Digest;
use speculum_server::token::{Claims, Grant, TokenKey};
use speculum_server::{Access, AppState, AuthPolicy, User, router};
use speculum_storage::Registry;
use tower::ServiceExt as _;

const SECRET: &[u8] = b"the configured secret";
const TTL: Duration = Duration::from_secs(300);

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn send(app: &Router, method: &str, uri: &str, auth: Option<&str>, body: Vec<u8>) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "registry.test:5000");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let r = app
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Users `writer` (write), `reader` (read); anonymous read as given.
fn make_app(anonymous_read: bool) -> (Router, AuthPolicy) {
    let policy = AuthPolicy::with_users(
        vec![
            User::plain("writer", "wpw", Access::Write),
            User::plain("reader", "rpw", Access::Read),
        ],
        anonymous_read,
    )
    .with_token_key(SECRET, "speculum", TTL);
    (
        router(AppState::new(Registry::memory(), policy.clone())),
        policy,
    )
}

async fn token(app: &Router, query: &str, auth: Option<&str>) -> Resp {
    send(
        app,
        "GET",
        &format!("/auth/token?{query}"),
        auth,
        Vec::new(),
    )
    .await
}

async fn token_for(app: &Router, query: &str, auth: Option<&str>) -> String {
    let r = token(app, query, auth).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_string()
}

/// A monolithic blob push to `repo` with `auth`.
async fn push_blob(app: &Router, repo: &str, auth: Option<&str>) -> Resp {
    let data = format!("blob of {repo}").into_bytes();
    let d = Digest::sha256(&data);
    send(
        app,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        auth,
        data,
    )
    .await
}

#[tokio::test]
async fn anonymous_probe_gets_a_bearer_challenge() {
    let (app, _) = make_app(true);
    let r = send(&app, "GET", "/v2/", None, Vec::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="http://registry.test:5000/auth/token",service="speculum""#)
    );
    // With a public URL the realm comes from it.
    let policy =
        AuthPolicy::buildset("zuul", "pw").with_public_url(Some("https://ir.example.org/".into()));
    let app2 = router(AppState::new(Registry::memory(), policy));
    let r = send(&app2, "GET", "/v2/", None, Vec::new()).await;
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer realm="https://ir.example.org/auth/token""#)
    );
    // Pulls work anonymously without a token where allowed.
    let r = send(&app, "GET", "/v2/x/tags/list", None, Vec::new()).await;
    assert_eq!(r.status, 404, "an unknown repository, not an auth error");
    // A push without credentials: a challenge for the scope it needs.
    let r = push_blob(&app, "a/b", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="http://registry.test:5000/auth/token",service="speculum",scope="repository:a/b:pull,push""#
        )
    );
}

#[tokio::test]
async fn docker_login_probe() {
    let (app, _) = make_app(true);
    // `docker login` sends its credentials with the first token request; a
    // wrong password is refused.
    let r = token(&app, "service=speculum", Some(&basic("writer", "bad"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "UNAUTHORIZED");
    // Valid credentials: a token without access, accepted by /v2/.
    let r = token(
        &app,
        "service=speculum&account=writer",
        Some(&basic("writer", "wpw")),
    )
    .await;
    assert_eq!(r.status, 200);
    let json = r.json();
    assert_eq!(json["token"], json["access_token"]);
    assert_eq!(json["expires_in"], 300);
    assert!(json["issued_at"].as_str().unwrap().contains('T'));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = json["token"].as_str().unwrap();
    assert_eq!(
        send(&app, "GET", "/v2/", Some(&bearer(t)), Vec::new())
            .await
            .status,
        200
    );
    // The login token grants nothing else.
    assert_eq!(push_blob(&app, "a/b", Some(&bearer(t))).await.status, 401);
}

/// Issue 9: podman's anonymous `search` asks for a token with neither
/// credentials nor scope. With anonymous read on it gets one that grants
/// nothing (and the catalog is then read anonymously); without, 401.
#[tokio::test]
async fn anonymous_token_without_scope() {
    let (app, policy) = make_app(true);
    let r = token(&app, "service=speculum", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = r.json()["token"].as_str().unwrap().to_string();
    let claims = policy.token_key().verify(&t, SystemTime::now()).unwrap();
    assert_eq!(claims.sub, "");
    assert!(claims.access.is_empty(), "{:?}", claims.access);
    let catalog = send(&app, "GET", "/v2/_catalog", Some(&bearer(&t)), Vec::new()).await;
    assert_eq!(catalog.status, 200);
    // The token grants no push.
    assert_eq!(push_blob(&app, "a/b", Some(&bearer(&t))).await.status, 401);

    let (closed, _) = make_app(false);
    let r = token(&closed, "service=speculum", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "UNAUTHORIZED");
}

#[tokio::test]
async fn push_with_a_token() {
    let (app, policy) = make_app(true);
    let t = token_for(
        &app,
        "service=speculum&scope=repository:a/b:pull,push&scope=repository:c:pull",
        Some(&basic("writer", "wpw")),
    )
    .await;
    let claims = policy.token_key().verify(&t, SystemTime::now()).unwrap();
    assert_eq!(claims.sub, "writer");
    assert_eq!(claims.aud, "speculum");
    assert_eq!(claims.iss, "speculum-registry");
    assert!(claims.exp > claims.iat && claims.nbf <= claims.iat);
    assert_eq!(claims.jti.len(), 32);
    assert_eq!(
        claims.access,
        vec![
            Grant {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into(), "push".into()]
            },
            Grant {
                kind: "repository".into(),
                name: "c".into(),
                actions: vec!["pull".into()]
            }
        ]
    );
    assert_eq!(push_blob(&app, "a/b", Some(&bearer(&t))).await.status, 201);
    // Out of scope: the token for a/b used on another repository, and a
    // pull-only grant used to push.
    for repo in ["a/c", "c"] {
        let r = push_blob(&app, repo, Some(&bearer(&t))).await;
        assert_eq!(r.status, 401, "{repo}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains(&format!("scope=\"repository:{repo}:pull,push\"")),
            "a fresh challenge for the needed scope"
        );
    }
    // HTTP Basic keeps working directly.
    assert_eq!(
        push_blob(&app, "x/y", Some(&basic("writer", "wpw")))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let (app, policy) = make_app(false);
    let now = SystemTime::now();
    let grant = |name: &str| Grant {
        kind: "repository".into(),
        name: name.into(),
        actions: vec!["pull".into(), "push".into()],
    };
    let key = policy.token_key();
    let good = key.sign(&key.claims("writer", vec![grant("a/b")], now));
    assert_eq!(
        push_blob(&app, "a/b", Some(&bearer(&good))).await.status,
        201
    );

    // Signed with another secret.
    let other = TokenKey::new(b"another secret", "speculum", TTL);
    let forged = other.sign(&other.claims("writer", vec![grant("a/b")], now));
    // Expired: issued two TTLs ago with the right secret.
    let expired = key.sign(&key.claims("writer", vec![grant("a/b")], now - 2 * TTL));
    // Not yet valid.
    let future = key.sign(&key.claims("writer", vec![grant("a/b")], now + TTL / 2));
    // For another service.
    let other_aud = TokenKey::new(SECRET, "other-registry", TTL);
    let wrong_aud = other_aud.sign(&other_aud.claims("writer", vec![grant("a/b")], now));
    // Tampered: a good token's payload swapped for one granting more.
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let mut claims: Claims = key.verify(&good, now).unwrap();
    claims.access = vec![grant("a/b"), grant("victim")];
    let payload = b64(&serde_json::to_vec(&claims).unwrap());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    // alg none, no signature.
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    // alg HS512 header on a HS256 signature.
    let hs512 = format!("{}.{}.{}", b64(br#"{"alg":"HS512"}"#), parts[1], parts[2]);

    for (what, t) in [
        ("forged", &forged),
        ("expired", &expired),
        ("future", &future),
        ("audience", &wrong_aud),
        ("tampered", &tampered),
        ("alg none", &none),
        ("alg HS512", &hs512),
        ("garbage", &"x.y.z".to_string()),
    ] {
        let repo = if what == "tampered" { "victim" } else { "a/b" };
        let r = push_blob(&app, repo, Some(&bearer(t))).await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.code(), "UNAUTHORIZED", "{what}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm="),
            "{what}"
        );
        // No anonymous read here: pulls with it are refused too, and /v2/.
        let r = send(
            &app,
            "GET",
            "/v2/a/b/tags/list",
            Some(&bearer(t)),
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 401, "{what}");
        let r = send(&app, "GET", "/v2/", Some(&bearer(t)), Vec::new()).await;
        assert_eq!(r.status, 401, "{what}");
    }
}

#[tokio::test]
async fn read_users_get_denied() {
    let (app, _) = make_app(false);
    // Basic: 403 DENIED.
    let r = push_blob(&app, "a/b", Some(&basic("reader", "rpw"))).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "DENIED");
    // Token: asked for push, granted pull only; the push is 403 DENIED.
    let t = token_for(
        &app,
        "scope=repository:a/b:pull,push",
        Some(&basic("reader", "rpw")),
    )
    .await;
    let r = push_blob(&app, "a/b", Some(&bearer(&t))).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "DENIED");
    // Issue 9: the refusal names what was refused, so Docker's client treats
    // it as final instead of retrying for about 50 s.
    assert_eq!(
        r.json()["errors"][0]["detail"],
        serde_json::json!([{"Type": "repository", "Name": "a/b", "Action": "push"}])
    );
    // Deletes too.
    let r = send(
        &app,
        "DELETE",
        "/v2/a/b/manifests/latest",
        Some(&bearer(&t)),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["errors"][0]["detail"][0]["Action"],
        serde_json::json!("delete")
    );
    // The read user pulls.
    let r = send(
        &app,
        "GET",
        "/v2/a/b/tags/list",
        Some(&bearer(&t)),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn mirror_clients_with_wrong_credentials_still_pull() {
    // Anonymous read on: Docker Hub credentials sent to a mirror get a pull
    // token, never a push one.
    let (app, policy) = make_app(true);
    let hub = basic("hubuser", "hub-password");
    let t = token_for(&app, "scope=repository:library/alpine:pull", Some(&hub)).await;
    let claims = policy.token_key().verify(&t, SystemTime::now()).unwrap();
    assert_eq!(claims.sub, "");
    assert_eq!(claims.access[0].actions, vec!["pull"]);
    let r = send(
        &app,
        "GET",
        "/v2/library/alpine/manifests/latest",
        Some(&bearer(&t)),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 404, "not an auth error");
    let r = token(
        &app,
        "scope=repository:library/alpine:pull,push",
        Some(&hub),
    )
    .await;
    assert_eq!(r.status, 401);
    // Anonymous, no credentials at all: a pull token.
    let t = token_for(&app, "scope=repository:library/alpine:pull", None).await;
    assert!(!t.is_empty());

    // Anonymous read off: no token without valid credentials.
    let (closed, _) = make_app(false);
    for auth in [None, Some(hub.as_str())] {
        let r = token(&closed, "scope=repository:library/alpine:pull", auth).await;
        assert_eq!(r.status, 401);
        let r = send(
            &closed,
            "GET",
            "/v2/library/alpine/tags/list",
            auth,
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let t = token_for(
        &closed,
        "scope=repository:library/alpine:pull",
        Some(&basic("reader", "rpw")),
    )
    .await;
    let r = send(
        &closed,
        "GET",
        "/v2/library/alpine/tags/list",
        Some(&bearer(&t)),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn catalog_scope() {
    let (app, _) = make_app(false);
    let r = send(&app, "GET", "/v2/_catalog", None, Vec::new()).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"registry:catalog:*\"")
    );
    let t = token_for(
        &app,
        "scope=registry:catalog:*",
        Some(&basic("reader", "rpw")),
    )
    .await;
    let r = send(&app, "GET", "/v2/_catalog", Some(&bearer(&t)), Vec::new()).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn health_and_metrics() {
    let (app, _) = make_app(false);
    let r = send(&app, "GET", "/healthz", None, Vec::new()).await;
    assert_eq!(r.status, 200);
    push_blob(&app, "a/b", Some(&basic("writer", "wpw"))).await;
    let r = send(&app, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.contains(
            r#"speculum_http_requests_total{route="uploads",method="POST",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"speculum_http_requests_total{route="healthz",method="GET",status="200"} 1"#
        )
    );
    let bytes_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("speculum_http_request_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(bytes_in, "blob of a/b".len() as u64);
    assert!(text.contains("speculum_upload_requests_in_flight 0"));

    // Disabled: 404.
    let state = AppState::new(Registry::memory(), AuthPolicy::open())
        .with_metrics(speculum_server::Metrics::new(), false);
    let off = router(state);
    assert_eq!(
        send(&off, "GET", "/metrics", None, Vec::new()).await.status,
        404
    );
}

/// Issue 9: the dummy hash checked for unknown users has the highest cost
/// configured, so with mixed costs an unknown name is not answered much
/// faster than the slow users (which would tell which names exist).
#[tokio::test]
async fn unknown_users_take_as_long_as_the_slowest_bcrypt_user() {
    let hash = |cost| {
        bcrypt::hash("pw", cost)
            .unwrap()
            .replacen("$2b$", "$2y$", 1)
    };
    let policy = AuthPolicy::with_users(
        vec![
            User::bcrypt("fast", &hash(4), Access::Write).unwrap(),
            User::bcrypt("slow", &hash(11), Access::Write).unwrap(),
        ],
        false,
    );
    let app = router(AppState::new(Registry::memory(), policy));
    let time = |user: &'static str| {
        let app = app.clone();
        async move {
            let start = std::time::Instant::now();
            let r = send(&app, "GET", "/v2/", Some(&basic(user, "wrong")), Vec::new()).await;
            assert_eq!(r.status, 401);
            start.elapsed()
        }
    };
    // Warm up, then take the best of three of each (the machine is shared).
    time("slow").await;
    let mut slow = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        slow = slow.min(time("slow").await);
        unknown = unknown.min(time("nobody").await);
    }
    // Cost 11 is 128 times cost 4: at the first entry's cost an unknown
    // name took about 1% of the slow user's time.
    assert!(
        unknown * 3 >= slow,
        "unknown user {unknown:?}, slow user {slow:?}"
    );
}
