//! A client of the API, for the `herd` command's `--server` (plain
//! `http://HOST:PORT` on the machine or a trusted network: the server speaks
//! no TLS).
//!
//! hyper's pooled HTTP/1.1 client: connections are kept alive and reused
//! between calls of one [`Client`] (and its clones); bodies may come with a
//! length or chunked (the export streams); every call has a time limit
//! ([`Client::with_timeout`]).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri, header};
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a call may take, connection to the answer's last byte, unless
/// [`Client::with_timeout`] says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("{0:?} is not a server URL: write it like http://127.0.0.1:7500")]
    Url(String),
    /// The server could not be reached, or its answer not read in time or
    /// not understood.
    #[error("cannot reach the server at {url}: {source}: check that `herd serve` runs there")]
    Io {
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

/// A server, the token to send it, and the connections kept open to it.
/// Clones share the connections.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    token: Option<String>,
    timeout: Duration,
    pool: Pool<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `url` (`http://HOST:PORT`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let bad = || ClientError::Url(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http")
            || uri.host().is_none_or(str::is_empty)
            || uri.port().is_none()
        {
            return Err(bad());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            token,
            timeout: TIMEOUT,
            pool: Pool::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The same client with another time limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    fn io(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ClientError {
        ClientError::Io {
            url: self.url.clone(),
            source: source.into(),
        }
    }

    /// `method path` with a body: the whole body of a 2xx answer, or the
    /// error.
    pub async fn fetch(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Bytes, ClientError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| self.io(e))?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| self.io(e))?;
        let exchange = async {
            let response = self.pool.request(request).await.map_err(|e| self.io(e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.io(e))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                self.io(format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ))
            })??;
        if status.is_success() {
            return Ok(body);
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |k: &str| json[k].as_str().unwrap_or_default().to_string();
        let message = match json["field"].as_str() {
            Some(field) => format!("{field}: {}", text("message")),
            None if json["message"].is_string() => text("message"),
            // Not the API's error shape: say what came.
            None => String::from_utf8_lossy(&body).trim().to_string(),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            code: text("error"),
            message,
        })
    }

    /// `method path` with a body: the JSON answer of a 2xx (`null` when
    /// empty), or the error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        let body = self.fetch(method, path, content_type, body).await?;
        if body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| self.io(format!("not a JSON answer: {e}")))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call("GET", path, "application/json", b"").await
    }
}
