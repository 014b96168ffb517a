//! The API's client (`herd_server::client`, behind `herd --server`): over
//! a real server, and over hand-written peers for what a server may do on
//! the wire (keep a connection, chunk a body, never answer).

use std::sync::Arc;
use std::time::Duration;

use herd_server::client::{Client, ClientError};
use herd_server::{Bound, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::support::{Sqlite, config};

/// A server on a free loopback port; dropping the sender stops it.
async fn server() -> (String, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let store = Arc::new(Sqlite::open(&url).await.unwrap());
    let listen = "127.0.0.1:0".parse().unwrap();
    let bound = Bound::bind(store, ServerConfig { listen, ..config() })
        .await
        .unwrap();
    let addr = bound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop, dir)
}

/// Reads one request's head and body (by Content-Length) off `stream`;
/// false at the end of the connection.
async fn read_request(stream: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0;
    let mut first = true;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap() == 0 {
            return false;
        }
        if line.trim_end().is_empty() && !first {
            break;
        }
        first = false;
        if let Some((name, value)) = line.trim_end().split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    true
}

#[test]
fn a_url_that_is_not_http_host_port_is_refused_saying_how_to_write_it() {
    for url in [
        "127.0.0.1:7500",
        "https://h:7500",
        "http://",
        "http://h",
        "not a url",
    ] {
        let e = Client::new(url, None).unwrap_err();
        assert!(matches!(e, ClientError::Url(_)), "{url}: {e:?}");
        assert!(e.to_string().contains("http://127.0.0.1:7500"), "{e}");
    }
    for url in [
        "http://127.0.0.1:7500",
        "http://localhost:7500/",
        "http://[::1]:7500",
    ] {
        Client::new(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[tokio::test]
async fn no_server_at_the_address_says_what_to_check() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::new(&format!("http://{addr}"), None).unwrap();
    let e = client.get("/api/batches").await.unwrap_err();
    assert!(matches!(e, ClientError::Io { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("cannot reach the server at http://{addr}")),
        "{text}"
    );
    assert!(
        text.contains("check that `herd serve` runs there"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_errors_come_back_with_status_code_and_field() {
    let (url, _stop, _dir) = server().await;
    let client = Client::new(&url, None).unwrap();
    match client.get("/api/batches/b999").await.unwrap_err() {
        ClientError::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (404, "unknown_batch"));
        }
        e => panic!("{e:?}"),
    }
    let e = client
        .call(
            "POST",
            "/api/batches",
            "application/json",
            br#"{"command": ["true"], "records": ["a"], "priority": "urgent"}"#,
        )
        .await
        .unwrap_err();
    match &e {
        ClientError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 422, "{e}");
            assert!(message.starts_with("priority: "), "{message}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_export_is_read_to_its_end() {
    let (url, _stop, _dir) = server().await;
    let client = Client::new(&url, None).unwrap();
    // More tasks than fit one page of the export's reads.
    let records: Vec<String> = (0..2500).map(|i| format!("r{i}")).collect();
    let body = serde_json::json!({"command": ["true"], "records": records, "paused": true});
    let batch = client
        .call(
            "POST",
            "/api/batches",
            "application/json",
            body.to_string().as_bytes(),
        )
        .await
        .unwrap();
    let id = batch["id"].as_str().unwrap();
    let export = client
        .fetch(
            "GET",
            &format!("/api/batches/{id}/export?format=jsonl"),
            "application/json",
            b"",
        )
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = export
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2500);
    assert_eq!(lines[2499]["job"], 2500, "{}", lines[2499]);
}

#[tokio::test]
async fn calls_share_one_kept_connection_and_read_chunked_bodies() {
    // A peer that takes one connection only and answers two requests on
    // it, the second chunked: a client that opened a second connection
    // would wait on it to its time limit.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        assert!(read_request(&mut stream).await);
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"n\": 1}")
            .await
            .unwrap();
        assert!(read_request(&mut stream).await);
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"n\"\r\n4\r\n: 2}\r\n0\r\n\r\n")
            .await
            .unwrap();
        stream
    });
    let client = Client::new(&format!("http://{addr}"), None)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    assert_eq!(client.get("/a").await.unwrap()["n"], 1);
    assert_eq!(client.clone().get("/b").await.unwrap()["n"], 2);
    peer.await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_at_the_time_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (read, got_request) = tokio::sync::oneshot::channel();
    let _peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        read_request(&mut stream).await;
        let _ = read.send(());
        // Hold the connection open, answering nothing.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let client = Client::new(&format!("http://{addr}"), None)
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let e = client.get("/api/batches").await.unwrap_err();
    got_request.await.expect("the request reached the peer");
    assert!(matches!(e, ClientError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("no answer within 300ms"), "{e}");
}
