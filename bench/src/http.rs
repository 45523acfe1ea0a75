//! The HTTP scenario: runs per second through `POST /workflows/chain/run` with keep-alive
//! connections on loopback, against tidewater-server or llama-agents-server (bench/http_peer.py)
//! serving the same five-step chain. See docs/benchmarks.md.
//!
//! ```text
//! http-bench serve --port 8181                  # tidewater-server serving `chain`
//! http-bench load --port 8181 --conns 16 --seconds 5 --label tidewater
//! ```
//! `load` prints one JSON line: `{"scenario": "http_run", "impl": .., "runs_per_s": ..}`.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Input {
    n: u64,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct A(u64);
#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct B(u64);
#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct C(u64);
#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct D(u64);

/// The chain of the bench's `chain5` scenario, served over HTTP.
struct Chain;

#[workflow]
impl Chain {
    #[step]
    async fn s1(&self, ev: StartEvent<Input>) -> A {
        A(ev.0.n + 1)
    }
    #[step]
    async fn s2(&self, ev: A) -> B {
        B(ev.0 + 1)
    }
    #[step]
    async fn s3(&self, ev: B) -> C {
        C(ev.0 + 1)
    }
    #[step]
    async fn s4(&self, ev: C) -> D {
        D(ev.0 + 1)
    }
    #[step]
    async fn s5(&self, ev: D) -> StopEvent<u64> {
        StopEvent(ev.0 + 1)
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// One keep-alive connection: sequential runs until `deadline`; returns how many completed.
async fn client(port: u16, deadline: Instant) -> std::io::Result<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let body = r#"{"start_event": {"n": 1}}"#;
    let request = format!(
        "POST /workflows/chain/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut done = 0;
    while Instant::now() < deadline {
        stream.write_all(request.as_bytes()).await?;
        buf.clear();
        // Head, then a Content-Length body.
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(std::io::Error::other)?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!("not 200: {head}")));
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_end..head_end + length];
        if !body.windows(11).any(|w| w == b"\"completed\"") {
            return Err(std::io::Error::other("run did not complete"));
        }
        done += 1;
    }
    Ok(done)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port", "8181").parse().expect("--port");
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            tidewater_server::Server::new()
                .serve_workflow("chain", Chain.runner())
                .serve_on(listener, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .expect("serve");
        }
        Some("load") => {
            let conns: usize = arg(&args, "--conns", "16").parse().expect("--conns");
            let seconds: f64 = arg(&args, "--seconds", "5").parse().expect("--seconds");
            let label = arg(&args, "--label", "tidewater");
            // Warm up one second, then measure.
            let warm = Instant::now() + Duration::from_secs(1);
            let _ = futures_util::future::join_all((0..conns).map(|_| client(port, warm))).await;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let results =
                futures_util::future::join_all((0..conns).map(|_| client(port, deadline))).await;
            let elapsed = start.elapsed().as_secs_f64();
            let mut total = 0;
            for r in results {
                total += r.unwrap_or_else(|e| panic!("load against port {port}: {e}"));
            }
            println!(
                "{{\"scenario\": \"http_run\", \"impl\": \"{label}\", \"conns\": {conns}, \"runs\": {total}, \"seconds\": {elapsed:.3}, \"runs_per_s\": {:.1}}}",
                total as f64 / elapsed
            );
        }
        _ => {
            eprintln!(
                "usage: http-bench serve --port P | load --port P [--conns C] [--seconds S] [--label L]"
            );
            std::process::exit(2);
        }
    }
}
