//! Test workflows and a small HTTP/1.1 client over a raw socket on 127.0.0.1 (so a test sees
//! every byte: status lines, SSE frames, a connection dropped mid-stream).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidewater::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- workflows

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Topic {
    pub topic: String,
    pub steps: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    pub done: u32,
    pub of: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
pub struct Outline {
    pub topic: String,
    pub steps: u32,
}

/// Streams `steps` progress events, then answers.
#[derive(Default)]
pub struct Report;

#[workflow(serve = "report")]
impl Report {
    #[step]
    async fn outline(&self, ev: StartEvent<Topic>) -> Outline {
        Outline {
            topic: ev.0.topic,
            steps: ev.0.steps,
        }
    }

    #[step]
    async fn write(
        &self,
        ctx: &Context<Self>,
        ev: Outline,
    ) -> Result<StopEvent<String>, StepError> {
        if ev.topic == "fail" {
            return Err("the topic is cursed".into());
        }
        for done in 1..=ev.steps {
            ctx.write_event_to_stream(Progress { done, of: ev.steps });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(StopEvent(format!(
            "report on {} in {} steps",
            ev.topic, ev.steps
        )))
    }
}

pub type StepError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(request = Verdict)]
pub struct Review {
    pub text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(response)]
pub struct Verdict {
    pub approved: bool,
}

/// Asks a human, then answers with the verdict.
#[derive(Default)]
pub struct Approval;

#[workflow(serve = "approval")]
impl Approval {
    #[step]
    async fn propose(&self, ev: StartEvent<Topic>) -> Review {
        Review {
            text: format!("post about {}", ev.0.topic),
        }
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> StopEvent<bool> {
        StopEvent(ev.approved)
    }
}

/// Durable: asks a human, then publishes or drops; counts its proposals (a side effect that
/// must happen once whatever the evictions, restarts and shutdowns).
#[derive(Default)]
pub struct Ask {
    pub proposals: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[workflow(durable)]
impl Ask {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Review {
        self.proposals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Review { text: ev.0 }
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> StopEvent<String> {
        StopEvent(if ev.approved { "published" } else { "dropped" }.into())
    }
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tidewater-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
pub struct Tick {
    pub n: u64,
}

/// Ticks every 10 ms until cancelled (or `limit` ticks).
pub struct Ticker;

#[workflow]
impl Ticker {
    #[step]
    async fn tick(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> StopEvent<u64> {
        for n in 0..ev.0 {
            ctx.write_event_to_stream(Tick { n });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        StopEvent(ev.0)
    }
}

// ---------------------------------------------------------------- client

pub async fn spawn(server: tidewater_server::Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve_on(listener, std::future::pending()));
    addr
}

pub fn server() -> tidewater_server::Server {
    tidewater_server::Server::new()
        .serve_workflow("ticker", Ticker.runner())
        .heartbeat(Some(Duration::from_millis(50)))
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`) and reads the whole reply.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut stream = open(addr, method, path, headers, body).await;
    let (status, headers) = read_head(&mut stream).await;
    let body = read_body(&mut stream, &headers).await;
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], None).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(addr, "POST", path, &[], Some(body)).await
}

pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(body) = body {
        req.push_str(body);
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    BufReader::new(stream)
}

pub async fn read_head(stream: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .expect("a status line")
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
}

pub async fn read_body(stream: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> String {
    let mut body = Vec::new();
    if is_chunked(headers) {
        while let Some(chunk) = read_chunk(stream).await {
            body.extend(chunk);
        }
    } else {
        stream.read_to_end(&mut body).await.unwrap();
    }
    String::from_utf8(body).unwrap()
}

/// One chunk of a chunked body; `None` at its end.
pub async fn read_chunk(stream: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    stream.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// A server-sent event frame: `(id, data)`, or a heartbeat comment.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Event(u64, Value),
    Heartbeat,
}

/// Reads an SSE body frame by frame.
pub struct Sse {
    pub stream: BufReader<TcpStream>,
    pending: String,
}

impl Sse {
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Sse) {
        let mut stream = open(addr, "GET", path, headers, None).await;
        let (status, headers) = read_head(&mut stream).await;
        if status == 200 {
            assert!(is_chunked(&headers));
        }
        (
            status,
            Sse {
                stream,
                pending: String::new(),
            },
        )
    }

    /// The next frame; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let frame: String = self.pending.drain(..end + 2).collect();
                if frame.starts_with(':') {
                    return Some(Frame::Heartbeat);
                }
                let mut id = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                return Some(Frame::Event(id.expect("an id"), data.expect("data")));
            }
            let chunk = read_chunk(&mut self.stream).await?;
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every event frame until the end (heartbeats skipped).
    pub async fn events(&mut self) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        while let Some(frame) = self.next().await {
            if let Frame::Event(id, data) = frame {
                out.push((id, data));
            }
        }
        out
    }
}

/// The types of a handler's whole event log, read as NDJSON.
pub async fn log_types(addr: SocketAddr, id: &str) -> Vec<String> {
    let log = get(addr, &format!("/events/{id}?sse=false&after_sequence=-1")).await;
    log.body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Polls `GET /handlers/{id}` until the handler is no longer running.
pub async fn wait_ended(addr: SocketAddr, id: &str) -> Value {
    for _ in 0..500 {
        let reply = get(addr, &format!("/handlers/{id}")).await;
        if reply.status != 202 {
            return reply.json();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("handler {id} still running");
}
