//! A small HTTP/1.1 client of the API, for the `herd` command's `--server`
//! (plain `http://HOST:PORT` on the machine or a trusted network; one
//! request per connection).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a call to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("{0:?} is not a server URL: write it like http://127.0.0.1:7500")]
    Url(String),
    /// The server could not be reached or its answer read.
    #[error("cannot reach the server at {url}: {source}: check that `herd serve` runs there")]
    Io {
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an error.
    #[error("the server said {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code.
        code: String,
        /// Its message (with the field, if any).
        message: String,
    },
}

/// A server, and the token to send it.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    addr: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `url` (`http://HOST:PORT`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        let addr = rest.split('/').next().unwrap_or_default().to_string();
        if addr.is_empty() || (!addr.contains(':') && addr.parse::<SocketAddr>().is_err()) {
            return Err(ClientError::Url(url.to_string()));
        }
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            addr,
            token,
        })
    }

    /// `method path` with a body: the JSON answer of a 2xx, or the error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        let io = |source| ClientError::Io {
            url: self.url.clone(),
            source,
        };
        let mut stream = TcpStream::connect(&self.addr).await.map_err(io)?;
        let auth = match &self.token {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(io)?;
        let bad = || io(std::io::Error::other("not an HTTP answer"));
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(bad)?;
        let head = String::from_utf8_lossy(&answer[..split]);
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let body = &answer[split + 4..];
        let json: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| io(std::io::Error::other(e)))?
        };
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let text = |k: &str| json[k].as_str().unwrap_or_default().to_string();
        let message = match json["field"].as_str() {
            Some(field) => format!("{field}: {}", text("message")),
            None => text("message"),
        };
        Err(ClientError::Api {
            status,
            code: text("error"),
            message,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call("GET", path, "application/json", b"").await
    }
}
