//! A small client for a running node's HTTP API, used by the commands that talk to a node.

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long a command waits for the node to answer (longer than the node's own longest
/// wait: 20 s for a message's route and acknowledgement).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client for the node API at one base address.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `api`, given as `HOST:PORT` or as an `http://` URL.
    pub fn new(api: &str) -> anyhow::Result<Self> {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_owned()
        } else {
            format!("http://{api}")
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { base, http })
    }

    /// Sends a request to `/v1{path}` and returns the JSON answer, or the node's error
    /// message as an error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            if error.is_connect() {
                anyhow!(
                    "no node answers at {} (start one with `meshcore run`, or point --api at it)",
                    self.base
                )
            } else {
                anyhow::Error::new(error).context(format!("request to {url} failed"))
            }
        })?;
        let status = response.status();
        let value: Value = response.json().await.with_context(|| {
            format!(
                "the node at {} answered {status} with a body that is not JSON",
                self.base
            )
        })?;
        if status == StatusCode::OK {
            Ok(value)
        } else {
            let message = value["message"].as_str().unwrap_or("no message");
            Err(anyhow!("the node refused ({status}): {message}"))
        }
    }
}
