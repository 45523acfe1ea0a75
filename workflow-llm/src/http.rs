//! A minimal HTTP/1.1 client on hyper: one connection per request (a model call takes seconds,
//! a TCP handshake on the same network a millisecond), TLS with rustls when the `tls` feature
//! is on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::LlmError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the API lives: scheme, host, port and the path prefix (`/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The path without a trailing `/`.
    pub(crate) base_path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, LlmError> {
        let bad = |why: &str| LlmError::Config(format!("bad base URL `{url}`: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(bad(&format!("unsupported scheme `{other}`"))),
            None => return Err(bad("it needs a scheme, `http://` or `https://`")),
        };
        if https && !cfg!(feature = "tls") {
            return Err(LlmError::Config(format!(
                "`{url}` is https, but tidewater-llm was built without its `tls` feature; \
                 build with `--features workflow-llm/tls`, or use a plain http:// server \
                 (Ollama, vLLM, llama.cpp)"
            )));
        }
        let host = uri.host().ok_or_else(|| bad("it has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint {
            https,
            host,
            port,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The URL of `path` under the base (for messages).
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}{path}", self.port, self.base_path)
    }

    fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Builds a POST of a JSON body to `path` under the base.
    pub(crate) fn post(
        &self,
        path: &str,
        api_key: Option<&str>,
        accept: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, LlmError> {
        let mut builder = Request::post(format!("{}{path}", self.base_path))
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, accept)
            .header(
                hyper::header::USER_AGENT,
                concat!("workflow-llm/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        builder
            .body(Full::new(body))
            .map_err(|e| LlmError::Config(format!("cannot build the request: {e}")))
    }
}

/// The connection of one request: dropping it closes the connection at once, so that a
/// request abandoned on a timeout does not stay open (a server that notices the closed socket
/// stops computing the answer nobody reads, instead of making the retry queue behind it).
#[derive(Debug)]
pub(crate) struct Connection(Option<tokio::task::AbortHandle>);

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Sends one request on a new connection and returns the response head (the body streams)
/// with the connection, which must be kept while the body is read.
pub(crate) async fn send(
    endpoint: &Endpoint,
    request: Request<Full<Bytes>>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Connection), BoxError> {
    let tcp = tokio::time::timeout(
        connect_timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| format!("connecting took longer than {connect_timeout:?}"))??;
    tcp.set_nodelay(true)?;
    if endpoint.https {
        #[cfg(feature = "tls")]
        {
            let tls = tls::connect(&endpoint.host, tcp).await?;
            return exchange(tls, request).await;
        }
        #[cfg(not(feature = "tls"))]
        return Err("https needs the `tls` feature of tidewater-llm".into());
    }
    exchange(tcp, request).await
}

async fn exchange<S>(
    io: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Connection), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends when the response body is read, or when the `Connection` is
    // dropped (this future included: a timeout that drops it mid-request closes the socket).
    let task = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed with an error");
        }
    });
    let connection = Connection(Some(task.abort_handle()));
    let response = sender.send_request(request).await?;
    Ok((response, connection))
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::{Arc, OnceLock};

    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    use super::BoxError;

    fn config() -> Result<Arc<ClientConfig>, BoxError> {
        static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        if let Some(config) = CONFIG.get() {
            return Ok(config.clone());
        }
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
    }

    pub(super) async fn connect(
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, BoxError> {
        let name = ServerName::try_from(host.to_string())?;
        Ok(TlsConnector::from(config()?).connect(name, tcp).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:11434/v1/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 11434, "/v1")
        );
        assert_eq!(
            e.url("/chat/completions"),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        assert_eq!(e.authority(), "127.0.0.1:11434");
        let e = Endpoint::parse("http://localhost").unwrap();
        assert_eq!(
            (e.port, e.base_path.as_str(), e.authority().as_str()),
            (80, "", "localhost")
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(
            Endpoint::parse("localhost:8080"),
            Err(LlmError::Config(_))
        ));
        assert!(matches!(
            Endpoint::parse("ftp://x/"),
            Err(LlmError::Config(_))
        ));
        let https = Endpoint::parse("https://api.openai.com/v1");
        if cfg!(feature = "tls") {
            assert_eq!(https.unwrap().port, 443);
        } else {
            assert!(https.unwrap_err().to_string().contains("`tls` feature"));
        }
    }
}
