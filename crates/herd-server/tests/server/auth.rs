//! The bearer token, the loopback rule, CORS.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herd_server::{Bound, ServeError, ServerConfig};
use serde_json::json;

use super::support::{Harness, Sqlite, config};

fn with_token() -> ServerConfig {
    ServerConfig {
        token: Some("s3cret-token".into()),
        ..config()
    }
}

async fn status(h: &Harness, uri: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().uri(uri);
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let answer = h.send(request.body(Body::empty()).unwrap()).await;
    let json = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    if answer.status == StatusCode::UNAUTHORIZED {
        assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    (answer.status, json)
}

#[tokio::test]
async fn every_api_call_needs_the_token_when_one_is_set() {
    let h = Harness::idle(with_token()).await;
    for uri in [
        "/api/batches",
        "/api/batches/b1",
        "/api/batches/b1/tasks",
        "/api/events",
        "/api/nope",
    ] {
        let (code, body) = status(&h, uri, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(body["error"], "unauthorized");
        let (code, _) = status(&h, uri, Some("Bearer s3cret-tokem")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}: a wrong token");
        let (code, _) = status(&h, uri, Some("Bearer s3cret")).await;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "{uri}: a prefix of the token"
        );
        let (code, _) = status(&h, uri, Some("s3cret-token")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}: not a bearer header");
    }
    let (code, body) = status(&h, "/api/batches", Some("Bearer s3cret-token")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["batches"], json!([]));
    let (code, _) = status(&h, "/api/batches/b1", Some("Bearer s3cret-token")).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "past auth, the batch is unknown"
    );

    // A create without the token stores nothing.
    let request = Request::builder()
        .method("POST")
        .uri("/api/batches")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"command": "true", "records": ["a"]}).to_string(),
        ))
        .unwrap();
    assert_eq!(h.send(request).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.batch_count().await, 0);

    for open in ["/healthz", "/metrics", "/openapi.json"] {
        assert_eq!(status(&h, open, None).await.0, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn without_a_token_the_server_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let store = Arc::new(Sqlite::open(&url).await.unwrap());
    let open = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..config()
    };
    let Err(err) = Bound::bind(store.clone(), open).await else {
        panic!("a server open to the network without a token");
    };
    assert!(matches!(err, ServeError::Unprotected(_)), "{err}");
    assert!(err.to_string().contains("HERD_TOKEN"), "{err}");
    let local = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config()
    };
    assert!(Bound::bind(store, local).await.is_ok());
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_listed() {
    let origin = "https://dash.example";
    let request = || {
        Request::builder()
            .uri("/api/batches")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap()
    };
    let off = Harness::idle(config()).await;
    let answer = off.send(request()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        !answer
            .headers
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );

    let on = Harness::idle(ServerConfig {
        cors_origins: vec![origin.into()],
        ..config()
    })
    .await;
    let answer = on.send(request()).await;
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], origin);
}
