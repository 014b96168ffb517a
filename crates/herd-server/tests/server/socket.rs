//! One server over a real socket: bound, serving, stopped.

use std::sync::Arc;

use herd_server::{Bound, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{Sqlite, config};

/// One HTTP/1.1 exchange on a fresh connection: status and body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_socket_serves_the_api_runs_batches_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let store = Arc::new(Sqlite::open(&url).await.unwrap());
    let bound = Bound::bind(
        store,
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config()
        },
    )
    .await
    .unwrap();
    let addr = bound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));

    let (status, body) = http(
        addr,
        "POST",
        "/api/batches",
        Some(json!({"command": ["echo", "{}"], "records": ["one", "two"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The batch's event stream ends with the batch: read it to the end.
    let (status, events) = http(addr, "GET", &format!("/api/batches/{id}/events"), None).await;
    assert_eq!(status, 200);
    assert!(
        events.contains("\"to\":\"succeeded\",\"type\"") || events.contains("\"type\":\"batch\""),
        "{events}"
    );
    let (status, body) = http(addr, "GET", &format!("/api/batches/{id}"), None).await;
    assert_eq!(status, 200);
    let batch: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(batch["state"], "succeeded", "{batch}");
    assert_eq!(batch["counts"]["succeeded"], 2);

    stop.send(()).unwrap();
    server.await.unwrap().expect("a clean stop");
    // No longer listening. The port is free again, and another test's
    // listener may take it at once: a connection that is accepted must at
    // least not reach this server (which would know the batch).
    if let Ok(mut stream) = TcpStream::connect(addr).await {
        let request =
            format!("GET /api/batches/{id} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            stream.read_to_end(&mut answer).await
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.contains("\"succeeded\""),
            "still served after the stop: {answer}"
        );
    }
}
